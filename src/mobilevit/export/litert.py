"""LiteRT (formerly TensorFlow Lite) export: a ``.tflite`` flatbuffer converted by Google's
``litert-torch`` from ``torch.export``, and a runner on the LiteRT interpreter (CPU, whose default
delegate is XNNPACK), the runtime Android apps embed through ML Kit and MediaPipe.

Layout: the file takes NHWC images, [1, H, W, 3] RGB in [0, 1], because that is the buffer Android's
image APIs (``Bitmap``, MediaPipe's ``MPImage``, LiteRT's ``TensorImage``) hand an app; dense outputs
are NHWC as well (a segmenter's [1, H, W, K]), logits stay [1, K]. The transposes are in the graph
(``litert_torch.to_channel_last_io``). Shapes are static: one file per input size.

The model is converted with v1's attention and unfold in XNNPACK's ops (:func:`~mobilevit.export.
xnnpack.for_xnnpack`; ``CONVERTER_WRITES`` stay, as the converter writes them in ops XNNPACK takes).
Unfold's strided slices would otherwise stay outside the delegate and cut the file into 4 XNNPACK
partitions; :func:`placement` reports them. The transformer layers' norm affines are folded into the
projections after them, and fp32 files write LayerNorm as :class:`TokenLayerNorm` (fewer ops).

int8: static post-training quantization by PT2E with litert-torch's own quantizer (int8 per-channel
symmetric weights, int8 per-tensor activations from histogram-calibrated ranges), which the converter
lowers to LiteRT's int8 convolutions and fully connected layers; ops without an int8 form stay float
between them. An int8 file's input and outputs are int8 too, with their scale and zero point in the
file.

fp16: the fp32 file's weights cast to fp16 by Google's AI Edge (LiteRT) Quantizer, each feeding its op
through a DEQUANTIZE (weight-only float casting, the LiteRT form of float16 quantization). The input,
outputs and activations stay fp32: the CPU interpreter (XNNPACK) turns the weights back into fp32 when
it loads the file, and the GPU delegate can compute in fp16.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mobilevit.data.calibration import fixed_size_batches
from mobilevit.errors import require_extra
from mobilevit.export.xnnpack import Placement, for_xnnpack
from mobilevit.models.mobilevitv2 import LinearSelfAttention

# Modules that LiteRT's converter already writes in ops XNNPACK takes (norms as its mean and rsqrt ops,
# v2's split and sum): rewriting them adds work, and v2's rewrite (a softmax on a reshaped view) breaks
# int8 files, whose softmax output must keep the fixed 1/256 scale LiteRT's kernel requires.
CONVERTER_WRITES = (nn.LayerNorm, nn.GroupNorm, LinearSelfAttention)


class TokenLayerNorm(nn.Module):
    """LayerNorm over the last axis written as keepdim means: 8 LiteRT ops where the converter's own
    lowering writes 12 (its means drop the axis and reshapes put it back), for fp32 files. int8 files keep
    the converter's: the quantizer would put this one's variance in int8."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.eps = norm.eps
        self.weight, self.bias = norm.weight, norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=-1, keepdim=True)
        x = centred * torch.rsqrt((centred * centred).mean(dim=-1, keepdim=True) + self.eps)
        return x if self.weight is None else x * self.weight + self.bias


def require_litert() -> None:
    """Raise an ImportError with the install hint when the ``litert`` extra is missing."""
    require_extra("litert", "LiteRT export", "litert_torch", "ai_edge_litert.interpreter", "ai_edge_quantizer")


def export_litert(
    model: nn.Module,
    path: str | os.PathLike,
    example: torch.Tensor,
    calibration: torch.Tensor | None = None,
    *,
    fp16: bool = False,
    rewrite: bool = True,
) -> Path:
    """Convert ``model`` for NCHW inputs shaped like ``example`` into a ``.tflite`` file taking NHWC;
    int8 when ``calibration`` [N, 3, H, W] (images preprocessed like real inputs) is given, with fp16
    weights when ``fp16``. ``rewrite`` (default) converts :func:`for_xnnpack`'s copy of the model, with
    LayerNorm as :class:`TokenLayerNorm` in fp32 and SiLU as :class:`SigmoidGate` in int8; False converts
    the model as it is (the converter's standard recipe, for comparing with other implementations)."""
    if fp16 and calibration is not None:
        raise ValueError("a LiteRT file is either int8 (calibration images given) or fp16, not both")
    require_litert()
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")  # its per-pass progress lines; set "y" to see them
    import litert_torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        outputs = model(example)
    dense = isinstance(outputs, torch.Tensor) and outputs.ndim == 4  # a segmenter's [B, K, H, W]
    if rewrite and calibration is None:
        keep = tuple(kind for kind in CONVERTER_WRITES if kind is not nn.LayerNorm)
        model = for_xnnpack(model, keep=keep, replace={nn.LayerNorm: TokenLayerNorm})
    elif rewrite:
        model = for_xnnpack(model, keep=CONVERTER_WRITES)
        _rewrite_silu(model)
    nhwc = litert_torch.to_channel_last_io(model, args=[0], outputs=[0] if dense else []).eval()
    example = _nhwc(example)
    if calibration is None:
        edge = litert_torch.convert(nhwc, (example,))
    else:
        quantized, quant_config = _quantize_int8(nhwc, example, calibration)
        edge = litert_torch.convert(quantized, (example,), quant_config=quant_config)
    content = edge.model_content()
    if fp16:
        content = _fp16_weights(content)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(content)
    partial.replace(path)  # a killed export leaves no half-written file under the real name
    return path


class SigmoidGate(nn.Module):
    """SiLU written as x * sigmoid(x), for int8 files. The int8 quantizer annotates sigmoid (fixed 1/256
    output scale) and mul but not silu, so a SiLU module stays a float island: dequantize, LOGISTIC and MUL
    in fp32, quantize, after nearly every conv. Written as two ops, both run in int8."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


def _rewrite_silu(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.SiLU):
            setattr(module, name, SigmoidGate())
        else:
            _rewrite_silu(child)


def _fp16_weights(content: bytes) -> bytes:
    """The ``.tflite`` flatbuffer ``content`` with every op's float weights stored as fp16 (AI Edge
    Quantizer's weight-only float casting; litert-torch's ``full_fp16_recipe`` runs the same recipe
    but prints a progress bar and a report)."""
    from ai_edge_quantizer import algorithm_manager, qtyping, quantizer

    fp16 = quantizer.Quantizer(bytearray(content))
    fp16.add_weight_only_config(
        regex=".*",
        operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        num_bits=16,
        granularity=qtyping.QuantGranularity.TENSORWISE,
        algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING,
    )
    return bytes(fp16.quantize(enable_progress_bar=False, enable_progress_report=False).quantized_model)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).contiguous()


def _quantize_int8(nhwc: nn.Module, example: torch.Tensor, calibration: torch.Tensor) -> tuple[nn.Module, Any]:
    """The NHWC model with quantize/dequantize pairs whose activation ranges were observed on
    ``calibration`` (NCHW, fed in batches of the example's size, at which the graph is traced), and the
    ``QuantConfig`` that tells the converter to fold them into integer kernels."""
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True)
    )
    prepared = prepare_pt2e(torch.export.export(nhwc, (example,)).module(), quantizer)
    with torch.no_grad():
        for chunk in fixed_size_batches(calibration, example.shape[0]):
            prepared(_nhwc(chunk))
    quantized = convert_pt2e(prepared, fold_quantize=False)
    # exported from the eval-mode model, so already in eval form; the converter warns on this flag alone
    quantized.training = False
    return quantized, QuantConfig(pt2e_quantizer=quantizer)


class LiteRTRunner:
    """The ``.tflite`` file run by LiteRT's ``CompiledModel`` on the CPU (XNNPACK), called like the PyTorch
    model: NCHW float tensors in, the model's float outputs out (NCHW dense maps, a tuple for several
    outputs, in the model's order). The NHWC conversion happens here, outside the file, and so does the
    (de)quantization of an int8 file's int8 input and outputs, with the scale and zero point written in
    the file.

    ``CompiledModel`` is LiteRT's current runtime API, the one its Android and iOS SDKs expose; it ran
    these files much faster than the older ``Interpreter`` here, with the same results. The
    interpreter is still loaded, unallocated, for what only it describes: tensor details and
    :meth:`placement`.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        require_litert()
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.cpu_options import CpuOptions
        from ai_edge_litert.interpreter import Interpreter
        from ai_edge_litert.options import Options

        self.path = Path(path)
        self.threads = threads or torch.get_num_threads()
        self.interpreter = Interpreter(model_path=str(self.path), num_threads=self.threads)
        signature = self.interpreter.get_signature_runner()  # outputs by name: output_0, output_1...
        self.input = signature.get_input_details()["args_0"]
        self.outputs = signature.get_output_details()
        self.input_shape = tuple(int(s) for s in self.input["shape"])  # (B, H, W, C)
        options = Options(cpu_options=CpuOptions(num_threads=self.threads))
        self.model = CompiledModel.from_file(str(self.path), options=options)
        self.output_names = self.model.get_signature_by_index(0)["outputs"]
        self.input_buffers = self.model.create_input_buffers(0)
        self.output_buffers = self.model.create_output_buffers(0)

    def placement(self) -> Placement:
        """Where the file's ops run once the interpreter has applied its XNNPACK delegate."""
        self.interpreter.allocate_tensors()
        return placement(self.interpreter)

    def __call__(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        # The layout change and (de)quantization run in NumPy, on one thread: a torch op here would wake
        # torch's OpenMP workers, which then spin on the cores XNNPACK's threads need (LiteRT ran about
        # 1.7x slower with 2 threads on 2 cores).
        nhwc = np.ascontiguousarray(x.detach().cpu().float().numpy().transpose(0, 2, 3, 1))
        if nhwc.shape != self.input_shape:
            batch, height, width, channels = self.input_shape
            raise ValueError(
                f"{self.path} was exported for inputs of shape {(batch, channels, height, width)}, got {tuple(x.shape)}"
            )
        self.input_buffers[0].write(_quantize(nhwc, self.input))
        self.model.run_by_index(0, self.input_buffers, self.output_buffers)
        pairs = zip(self.output_buffers, self.output_names, strict=True)
        outputs = [torch.from_numpy(self._read(buffer, self.outputs[name])) for buffer, name in pairs]
        outputs = [o.permute(0, 3, 1, 2) if o.ndim == 4 else o for o in outputs]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    @staticmethod
    def _read(buffer: Any, detail: dict) -> np.ndarray:
        shape = tuple(int(s) for s in detail["shape"])
        return _dequantize(buffer.read(int(np.prod(shape)), detail["dtype"]).reshape(shape), detail)


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    """``x`` as the tensor ``detail`` describes: unchanged for float, else round(x / scale) + zero point."""
    scale, zero_point = detail["quantization"]
    if not scale:
        return x
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(detail["dtype"])


def _dequantize(q: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    return ((q.astype(np.float32) - zero_point) * scale).astype(np.float32) if scale else q.copy()


def placement(interpreter: Any) -> Placement:
    """The :class:`~mobilevit.export.xnnpack.Placement` of an interpreter's ops after its default XNNPACK
    delegate replaced what it takes. Its op list (``_get_ops_details``, the interpreter's one view of the
    graph) still holds the replaced ops beside the DELEGATE nodes, so the ops that run outside are found
    by walking back from the outputs: a tensor that no DELEGATE node writes is written by an op outside."""
    ops = interpreter._get_ops_details()
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    writer = {int(t): op for op in ops if op["op_name"] != "DELEGATE" for t in op["outputs"]}
    writer |= {int(t): op for op in delegates for t in op["outputs"]}  # a delegate's outputs are its own
    outside: dict[int, dict] = {}
    pending = [int(t["index"]) for t in interpreter.get_output_details()]
    seen: set[int] = set()
    while pending:
        tensor = pending.pop()
        op = writer.get(tensor)
        if tensor in seen or op is None:  # a graph input or a constant
            continue
        seen.add(tensor)
        if op["op_name"] != "DELEGATE":
            outside[op["index"]] = op
        pending.extend(int(t) for t in op["inputs"] if t >= 0)
    inside = len(ops) - len(delegates) - len(outside)
    counts = Counter(op["op_name"] for op in outside.values())
    return Placement(len(delegates), inside, dict(counts.most_common()))
