"""LiteRT (formerly TensorFlow Lite) export: a ``.tflite`` flatbuffer converted by Google's
``litert-torch`` from ``torch.export``, and a runner on the LiteRT interpreter (CPU, whose default
delegate is XNNPACK), the runtime Android apps embed through ML Kit and MediaPipe.

Layout: the file takes NHWC images, [1, H, W, 3] RGB in [0, 1], because that is the buffer Android's
image APIs (``Bitmap``, MediaPipe's ``MPImage``, LiteRT's ``TensorImage``) hand an app; dense outputs
are NHWC as well (a segmenter's [1, H, W, K]), logits stay [1, K]. The transposes are in the graph
(``litert_torch.to_channel_last_io``). Shapes are static: one file per input size.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

INSTALL_HINT = "LiteRT export needs litert-torch and ai-edge-litert: pip install 'mobilevit[litert]'"


def require_litert() -> None:
    """Raise an ImportError with the install hint when the ``litert`` extra is missing."""
    try:
        import ai_edge_litert.interpreter  # noqa: F401
        import litert_torch  # noqa: F401
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err


def export_litert(model: nn.Module, path: str | os.PathLike, example: torch.Tensor) -> Path:
    """Convert ``model`` for NCHW inputs shaped like ``example`` into a ``.tflite`` file taking NHWC."""
    require_litert()
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")  # its per-pass progress lines; set "y" to see them
    import litert_torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        outputs = model(example)
    dense = isinstance(outputs, torch.Tensor) and outputs.ndim == 4  # a segmenter's [B, K, H, W]
    nhwc = litert_torch.to_channel_last_io(model, args=[0], outputs=[0] if dense else [])
    edge = litert_torch.convert(nhwc.eval(), (example.permute(0, 2, 3, 1).contiguous(),))
    partial = path.with_name(f".{path.name}.partial")
    edge.export(str(partial))
    partial.replace(path)  # a killed export leaves no half-written file under the real name
    return path


class LiteRTRunner:
    """The ``.tflite`` file in the LiteRT interpreter, called like the PyTorch model: NCHW tensors in,
    the model's outputs out (NCHW dense maps, a tuple for several outputs, in the model's order); the
    NHWC conversion happens here, outside the file."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        require_litert()
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads or torch.get_num_threads())
        self.interpreter.allocate_tensors()
        self.run = self.interpreter.get_signature_runner()  # outputs by name: output_0, output_1...
        self.input_shape = tuple(int(s) for s in self.interpreter.get_input_details()[0]["shape"])  # (B, H, W, C)

    def __call__(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        nhwc = x.detach().cpu().float().permute(0, 2, 3, 1).contiguous()
        if tuple(nhwc.shape) != self.input_shape:
            batch, height, width, channels = self.input_shape
            raise ValueError(
                f"{self.path} was exported for inputs of shape {(batch, channels, height, width)}, got {tuple(x.shape)}"
            )
        results = self.run(args_0=nhwc.numpy())
        outputs = [torch.from_numpy(results[f"output_{i}"].copy()) for i in range(len(results))]
        outputs = [o.permute(0, 3, 1, 2) if o.ndim == 4 else o for o in outputs]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)
