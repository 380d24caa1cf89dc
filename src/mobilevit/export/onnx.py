"""ONNX export (``torch.onnx`` dynamo exporter), int8 static quantization and an ONNX Runtime runner.

Dynamic shapes: ``dynamic=True`` exports batch, height and width as symbols. MobileViT blocks then
always keep their bilinear resize to the next multiple of the patch size (an exact identity when the
side already is one), so the graph is correct for any input of at least 32x32, not only for sizes
that are multiples of 32 (at 224, the last MobileViT block sees a 7x7 map and must resize it).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from mobilevit.errors import require_extra
from mobilevit.export import machine

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MIN_OPSET = 17  # LayerNormalization
EXPORTER_OPSET = 18  # the dynamo exporter's own opset; lower ones are converted afterwards
# torch.export specialises dimensions of size 1, so a dynamic export is traced at batch >= 2 and sides
# >= 128, where no feature map side, patch grid side or token count is 1.
DYNAMIC_MIN_BATCH, DYNAMIC_MIN_SIDE = 2, 128
_UNCONVERTED_DOMAIN = "mobilevit.unconverted"  # ops that _convert_version keeps as they are
# Quantized: the convolutions and linear layers, where the time goes, and the ops between them (SiLU's
# Sigmoid and Mul, residual Adds, layout ops), so that activations stay int8 from one conv to the next:
# with only Conv/MatMul/Gemm quantized, the Quantize/Dequantize pairs around every SiLU cost more than
# the integer kernels save. The attention products (activation x activation, one of them the softmax
# output) stay fp32: quantizing them costs top-1 agreement with fp32.
QUANTIZED_OPS = (
    "Conv", "MatMul", "Gemm", "Sigmoid", "Mul", "Add", "Concat", "Transpose", "Reshape", "GlobalAveragePool",
    "ReduceMean",
)  # fmt: skip
# On x86 CPUs without VNNI (AVX2 alone), ONNX Runtime's uint8 x int8 kernels (VPMADDUBSW) add each pair of
# products in a signed 16-bit register, which saturates unless 255 * (|w1| + |w2|) <= 32767: int8 weights
# must stay within [-64, 64], ONNX Runtime's reduce_range. Full-range weights (-127..127) overflow there and
# change the predictions, while being exact on VNNI CPUs.
U8_MAX, INT16_MAX = 255, 32767
PORTABLE_WEIGHT_MAX = INT16_MAX // (2 * U8_MAX)  # 64
# Where the weight enters each integer op (QOperator format) or the float op a DequantizeLinear feeds (QDQ).
WEIGHT_INPUT = {"QLinearConv": 3, "QLinearMatMul": 3, "QGemm": 3, "ConvInteger": 1, "MatMulInteger": 1}
QDQ_WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}


def require_onnx() -> None:
    """Raise an ImportError with the install hint when the ``onnx`` extra is missing."""
    require_extra("onnx", "ONNX export", "onnx", "onnxscript", "onnxruntime")


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    example: torch.Tensor,
    *,
    dynamic: bool = False,
    opset: int = 17,
    fp16: bool = False,
) -> Path:
    """Export ``model`` (in eval mode) to a single ONNX file with input ``input`` and output ``logits``
    (or the names in the module's ``output_names``, for one with several outputs).

    The dynamo exporter writes opset 18; an older ``opset`` is reached with ONNX's version converter
    after the exporter's graph optimisation (before it, some axes are not constants yet and the
    conversion fails). ``fp16`` then converts the graph with :func:`to_fp16`.
    """
    require_onnx()
    import onnx

    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old: MobileViT's LayerNorm needs opset {MIN_OPSET} or newer")
    if dynamic and (example.shape[0] < DYNAMIC_MIN_BATCH or min(example.shape[-2:]) < DYNAMIC_MIN_SIDE):
        raise ValueError(
            f"a dynamic export needs an example of batch >= {DYNAMIC_MIN_BATCH} and sides >= {DYNAMIC_MIN_SIDE} "
            f"(got {tuple(example.shape)}): torch.export would fix the dimensions that are 1 at a smaller size"
        )
    dims = {0: "batch", 2: "height", 3: "width"}
    program = torch.onnx.export(
        model.eval(),
        (example,),
        dynamo=True,
        opset_version=max(opset, EXPORTER_OPSET),
        input_names=[INPUT_NAME],
        output_names=list(getattr(model, "output_names", (OUTPUT_NAME,))),
        dynamic_shapes=(dims,) if dynamic else None,
        verbose=False,
    )
    proto = program.model_proto
    if opset < EXPORTER_OPSET:
        proto = _strip_default_noop_attribute(_convert_version(proto, opset))
    if fp16:
        proto = to_fp16(proto)
    onnx.checker.check_model(proto, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, path)
    return path


def to_fp16(proto):
    """The graph with fp16 weights and activations, by ONNX Runtime's float16 conversion (what its
    transformer optimizer's ``--float16`` runs: the converter, then Cast clean-up), with fp32 input and
    outputs (``keep_io_types``): callers pass the same float32 images as to the fp32 file, for the cost
    of one Cast at each end. The converter appends those Casts after the nodes that read them; the
    nodes are sorted again, as ONNX's checker requires."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(proto)
    # ONNX's shape inference: the symbolic one (for ONNX Runtime's fused ops) cannot follow a dynamic graph
    model.convert_float_to_float16(use_symbolic_shape_infer=False, keep_io_types=True)
    model.topological_sort()
    return model.model


def _convert_version(proto, opset: int):
    """ONNX's version converter, which has no Split adapter from opset 18 and refuses a whole model
    with one (MobileViTv2's query/key/value split). A Split whose sizes are an input already is a valid
    Split-13 (opset 18 only added ``num_outputs``): those are moved to a private domain, which the
    converter leaves alone, and back."""
    import onnx.version_converter
    from onnx import helper

    unchanged = [
        node
        for node in proto.graph.node
        if node.op_type == "Split"
        and node.domain in ("", "ai.onnx")
        and len(node.input) == 2
        and not any(a.name == "num_outputs" for a in node.attribute)
    ]
    for node in unchanged:
        node.domain = _UNCONVERTED_DOMAIN
    proto.opset_import.append(helper.make_opsetid(_UNCONVERTED_DOMAIN, 1))
    converted = onnx.version_converter.convert_version(proto, opset)
    for node in converted.graph.node:
        if node.domain == _UNCONVERTED_DOMAIN:
            node.domain = ""
    imports = [o for o in converted.opset_import if o.domain != _UNCONVERTED_DOMAIN]
    del converted.opset_import[:]
    converted.opset_import.extend(imports)
    return converted


def _strip_default_noop_attribute(proto):
    """ONNX's 18 -> 17 converter moves Reduce* axes back to an attribute but keeps the opset-18 attribute
    ``noop_with_empty_axes``, which opset 17 rejects; at its default (0) dropping it changes nothing."""
    for node in proto.graph.node:
        for attr in list(node.attribute):
            if node.op_type.startswith("Reduce") and attr.name == "noop_with_empty_axes":
                if attr.i:
                    raise ValueError(f"{node.name}: noop_with_empty_axes=1 cannot be expressed before opset 18")
                node.attribute.remove(attr)
    return proto


class Int8PortabilityError(RuntimeError):
    """An int8 ONNX file whose integer kernels would overflow on this CPU."""


def saturating_weights(path: str | os.PathLike) -> list[str]:
    """The int8 weights of an ONNX file's integer convolutions and matmuls that can overflow ONNX
    Runtime's 16-bit pair sums on x86 CPUs without VNNI (see ``PORTABLE_WEIGHT_MAX``): empty for a file
    that computes the same on every CPU. Weights of uint8 type (U8U8) take another kernel and never do."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(path).graph
    weights = {t.name: t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8}
    dequantized = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    used = set()
    for node in graph.node:
        if node.op_type in WEIGHT_INPUT and len(node.input) > WEIGHT_INPUT[node.op_type]:
            used.add(node.input[WEIGHT_INPUT[node.op_type]])
        elif node.op_type in QDQ_WEIGHT_INPUT and len(node.input) > QDQ_WEIGHT_INPUT[node.op_type]:
            used.add(dequantized.get(node.input[QDQ_WEIGHT_INPUT[node.op_type]]))
    return sorted(
        name
        for name in used & weights.keys()
        if abs(numpy_helper.to_array(weights[name]).astype(int)).max(initial=0) > PORTABLE_WEIGHT_MAX
    )


def check_int8_runs_here(path: str | os.PathLike) -> None:
    """Refuse a file whose int8 weights this CPU's kernels would overflow (x86 without VNNI), rather
    than return wrong logits. Files from :func:`quantize_onnx` run everywhere."""
    if not machine.is_x86() or machine.has_vnni():
        return
    overflowing = saturating_weights(path)
    if overflowing:
        raise Int8PortabilityError(
            f"{path}: {len(overflowing)} int8 weight tensors (e.g. {overflowing[0]}) exceed +-{PORTABLE_WEIGHT_MAX}, "
            "which ONNX Runtime's integer kernels overflow on x86 CPUs without VNNI, as this one "
            f"({machine.isa_level()}): its outputs would be wrong. Quantize with reduce_range (7-bit weights) or "
            "uint8 weights (re-export with 'mobilevit export --int8'), or run it on a CPU with VNNI or on ARM."
        )


def int8_speed_note(speedup: float) -> str:
    """What int8's measured speed-up over fp32 (on this CPU, batch 1) means for the user."""
    where = machine.describe_cpu(machine.cpu_info())
    note = f"int8 ran {speedup:.2f}x as fast as fp32 ONNX Runtime on this CPU ({where}), batch 1"
    if speedup >= 1:
        return note
    reason = (
        "x86 CPUs without VNNI have no fast 8-bit dot product"
        if machine.is_x86() and not machine.has_vnni()
        else "SiLU, LayerNorm and softmax have no integer kernels"
    )
    return f"{note}: int8 is slower than fp32 here ({reason}); deploy the fp32 file on CPUs like this one"


class _CalibrationReader:
    """Feeds the calibration images one at a time (the exported batch size may be fixed at 1)."""

    def __init__(self, images: torch.Tensor) -> None:
        self._batches: Iterator[torch.Tensor] = iter(images.split(1))

    def get_next(self) -> dict | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch.numpy()}


def quantize_onnx(
    fp32_path: str | os.PathLike, path: str | os.PathLike, calibration: torch.Tensor, *, portable: bool = True
) -> Path:
    """Static int8 post-training quantization of an exported fp32 model, calibrated on ``calibration``.

    QDQ format, ONNX Runtime's recommended default: per-channel int8 weights and uint8 activations, which
    its CPU provider fuses into integer kernels (QLinearConv, QGemm, QLinearSigmoid...). ``portable``
    weights are 7-bit (reduce_range), so that the file computes the same on every CPU (see
    ``PORTABLE_WEIGHT_MAX``); ``portable=False`` keeps 8 bits, exact only on x86 CPUs with VNNI and on ARM
    (:class:`OnnxRunner` refuses it elsewhere). benchmarks/int8.py measures what each costs. Activations are uint8
    because ONNX Runtime's fast x86 kernels multiply unsigned by signed bytes (int8 activations, S8S8,
    take slower ones). Min-max calibration: percentile and entropy calibration agree no better with fp32.
    """
    require_onnx()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # ONNX shape inference and graph fusions; the symbolic shape inference cannot follow the dynamic graph
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(path),
            _CalibrationReader(calibration),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS),
            nodes_to_exclude=_activation_matmuls(prepared),
            per_channel=True,
            reduce_range=portable,
            activation_type=QuantType.QUInt8,  # u8 activations x s8 weights: MLAS's fast x86 kernels
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    overflowing = saturating_weights(path) if portable else []
    if overflowing:  # a change in ONNX Runtime's quantizer, not in the model: say so rather than ship the file
        raise Int8PortabilityError(f"{path}: reduce_range left weights beyond +-{PORTABLE_WEIGHT_MAX}: {overflowing}")
    return path


def _activation_matmuls(path: Path) -> list[str]:
    """MatMul nodes whose two inputs are both activations: the attention products q k^T and A v."""
    import onnx

    graph = onnx.load(path).graph
    weights = {t.name for t in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and not weights.intersection(n.input)]


class OnnxRunner:
    """An ONNX Runtime CPU session that takes and returns torch tensors (a tuple of them for a model
    with several outputs).

    ``threads`` sets the intra-op thread count (None: ONNX Runtime's default, one per core), so
    benchmarks can pin it and serving can share the machine.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        require_onnx()
        import onnxruntime as ort

        check_int8_runs_here(path)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        outputs = self.session.run(None, {self.input_name: x.detach().cpu().float().contiguous().numpy()})
        tensors = tuple(torch.from_numpy(out) for out in outputs)
        return tensors[0] if len(tensors) == 1 else tensors
