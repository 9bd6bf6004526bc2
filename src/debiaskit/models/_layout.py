"""The memory layout of image batches: channels-last where it is faster and changes nothing but rounding.

Why: on a CPU, PyTorch's oneDNN convolutions often run faster on channels-last (NHWC) inputs than on the default
NCHW ones (1 thread, median step: simple-conv-small, batch 256: training 117 -> 71 ms, forward 63 -> 21 ms; ResNet18
on 32x32, batch 64: training 2.27 -> 2.05 s; the stride-1 SimpleConvNet: training +1 %, forward +5-10 %;
docs/design/cpu-layout.md). The decision depends on the model alone, never on a timing, so a run stays
reproducible. The model's parameters are left as they are - a saved or exported model is unchanged - only
the batches fed to it are laid out differently, and only where the model's own forward accepts them and gives
the same outputs: a model that calls ``.view`` on a 4-D activation, say, keeps the default layout.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

DEFAULT = torch.contiguous_format
CHANNELS_LAST = torch.channels_last


def batch_memory_format(
    model: nn.Module, example: Tensor, *, device: str | torch.device = "cpu"
) -> torch.memory_format:
    """``torch.channels_last`` for ``model``'s input batches when they are 4-D images on a CPU, the model has a
    2-D convolution, and its forward on ``example`` laid out that way succeeds and matches the default layout's
    output to float rounding; else ``torch.contiguous_format``. The check runs in eval mode without gradients
    (no batch-norm statistics move) and restores the training mode."""
    if torch.device(device).type != "cpu" or example.dim() != 4:
        return DEFAULT
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return DEFAULT
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            reference = model(example)
            other = model(example.contiguous(memory_format=CHANNELS_LAST))
        same = (
            isinstance(reference, Tensor)
            and isinstance(other, Tensor)
            and reference.shape == other.shape
            and bool(torch.allclose(reference.float(), other.float(), rtol=1e-3, atol=1e-4))
        )
    except Exception:  # e.g. a .view on a channels-last activation, an assert on contiguity: the default layout
        same = False
    finally:
        model.train(was_training)
    return CHANNELS_LAST if same else DEFAULT


def laid_out(x: Tensor, memory_format: torch.memory_format | None) -> Tensor:
    """``x`` in ``memory_format`` (4-D tensors only; anything else, or None, as it is)."""
    if memory_format is None or memory_format == DEFAULT or x.dim() != 4:
        return x
    return x.contiguous(memory_format=memory_format)
