"""Reading checkpoint files safely and telling which model a state dict belongs to.

A checkpoint is read with ``torch.load(weights_only=True)``, which refuses any
pickled Python object, so opening a file never runs code from it. Before a model
is built, the state dict's image encoder is described from its key names and
tensor shapes (embedding width and depth), so a checkpoint of another model
(a ViT-H file for vit_b, say) is reported by name instead of as a list of
mismatched keys.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import zipfile
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from napari_persam.core.models.errors import CheckpointError

if TYPE_CHECKING:  # pragma: no cover
    import torch

_VIT_BLOCK = re.compile(r"^image_encoder\.blocks\.(\d+)\.")
_TINYVIT_OFFICIAL_BLOCK = re.compile(r"^image_encoder\.layers\.(\d+)\.blocks\.(\d+)\.")
_TINYVIT_TIMM_BLOCK = re.compile(r"^image_encoder\.stages\.(\d+)\.blocks\.(\d+)\.")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.pth``/``.pt`` file without executing code.

    Parameters
    ----------
    path : path
        A file written by ``torch.save`` holding a state dict, or a dict with the
        state dict under ``"model"`` or ``"state_dict"`` (training checkpoints).

    Returns
    -------
    dict of str to tensor
        On the CPU. Zip-format files are memory-mapped, so a 2.5 GB checkpoint
        does not need 2.5 GB of extra memory while it is copied into a model.

    Raises
    ------
    FileNotFoundError
        If ``path`` is not a file.
    CheckpointError
        If the file carries pickled objects (refused by ``weights_only=True``),
        is truncated or is not a PyTorch checkpoint at all (random bytes, another
        kind of file), or holds no state dict. The message never repeats torch's
        advice to load with ``weights_only=False``.
    """
    import torch

    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f"Checkpoint {path!r} is a folder; name the checkpoint file (.pth).")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint {path!r} does not exist.")
    # mmap needs the zip format every torch.save since PyTorch 1.6 writes.
    mmap = zipfile.is_zipfile(path)
    if not mmap and not _starts_like_a_pickle(path):
        raise CheckpointError(
            f"{path!r} is not a PyTorch checkpoint: it is neither the zip archive torch.save "
            "writes nor its older pickle format. Choose the model's .pth file, or delete this "
            "file and download the checkpoint again."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        detail = _unpickler_detail(error)
        if "global" not in detail.lower():
            raise CheckpointError(
                f"{path!r} is not a readable PyTorch checkpoint ({detail or 'damaged data'}); "
                "it is truncated or damaged. Delete it and download the checkpoint again."
            ) from error
        raise CheckpointError(
            f"Refused to load {path!r}: it carries pickled Python objects, which could run "
            f"code when loaded, so only plain weight files are accepted (weights_only=True). "
            f"Details: {detail}. Use the publisher's original checkpoint, or "
            "re-save only the model's state_dict() from a trusted environment."
        ) from error
    except Exception as error:  # torch raises RuntimeError, EOFError, ValueError...
        raise CheckpointError(
            f"Could not read checkpoint {path!r}: {_first_line(error)}. The file is "
            "truncated or is not a PyTorch checkpoint; delete it and download it again."
        ) from error
    return _unwrap(state, path)


def _unwrap(state: Any, path: str) -> dict[str, torch.Tensor]:
    import torch

    for wrapper in ("model", "state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(
            f"Checkpoint {path!r} holds no state dict (found {type(state).__name__})."
        )
    tensors = {str(key): value for key, value in state.items()}
    not_tensors = [key for key, value in tensors.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(
            f"Checkpoint {path!r} is not a state dict of tensors: {not_tensors[:3]} are not."
        )
    return tensors


def _starts_like_a_pickle(path: str) -> bool:
    """Whether the file starts with a pickle protocol 2+ header (torch's legacy format)."""
    with open(path, "rb") as stream:
        return stream.read(1) == b"\x80"


def _unpickler_detail(error: BaseException) -> str:
    """What torch's weights-only unpickler refused, without torch's advice around it.

    torch's message suggests re-running with ``weights_only=False``, which would run
    the file's code: that advice is never passed on.
    """
    text = str(error)
    marker = "WeightsUnpickler error:"
    if marker not in text:
        return ""
    detail = " ".join(text.split(marker, 1)[1].split())
    for end in (" was not an allowed global", " Check the documentation", " Please use"):
        detail = detail.split(end, 1)[0]
    return detail.strip().rstrip(".")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def encoder_signature(state: Mapping[str, Any]) -> str:
    """Describe the image encoder of a whole-SAM state dict from keys and shapes.

    Returns a short text such as ``"ViT, width 768, 12 blocks"`` or
    ``"TinyViT, widths 64-128-160-320"``, equal for checkpoints of the same
    architecture; ``""`` when the state dict has no SAM image encoder.
    """
    patch = state.get("image_encoder.patch_embed.proj.weight")
    if patch is not None:
        depth = len({m.group(1) for key in state if (m := _VIT_BLOCK.match(key))})
        return f"ViT, width {int(patch.shape[0])}, {depth} blocks"
    widths = _tinyvit_widths(state)
    if widths:
        return "TinyViT, widths " + "-".join(str(width) for width in widths)
    return ""


def _tinyvit_widths(state: Mapping[str, Any]) -> list[int]:
    """Per-stage widths of a TinyViT encoder in either key layout (official or timm)."""
    widths: dict[int, int] = {}
    for key, value in state.items():
        match = _TINYVIT_OFFICIAL_BLOCK.match(key) or _TINYVIT_TIMM_BLOCK.match(key)
        if match is None or getattr(value, "ndim", 0) < 1:
            continue
        stage = int(match.group(1))
        # MBConv's last convolution and the attention's norm both have the stage
        # width as their first dimension (MBConv's first one has 4x the width).
        tail = key[match.end() :]
        if tail in ("conv3.c.weight", "conv3.conv.weight", "attn.norm.weight"):
            widths.setdefault(stage, int(value.shape[0]))
    return [widths[stage] for stage in sorted(widths)]


def signature_of_model(sam: torch.nn.Module) -> str:
    """:func:`encoder_signature` of a built model (its own state dict)."""
    return encoder_signature(sam.state_dict())


@contextlib.contextmanager
def skip_random_init() -> Iterator[None]:
    """Within this block, torch's random weight initialisers do nothing (this thread only).

    Building ViT-H draws 640 million random numbers (about 20 s on two CPU
    cores) that a checkpoint overwrites at once. Only use this when every
    parameter is loaded afterwards with strict key matching; constant
    initialisers and buffers computed from shapes are left alone. A torch
    function mode is thread-local, so other threads building models are not
    affected.
    """
    import torch
    from torch.overrides import TorchFunctionMode

    init = torch.nn.init
    skipped = {
        torch.Tensor.uniform_,
        torch.Tensor.normal_,
        init.uniform_,
        init.normal_,
        init.trunc_normal_,
        init.kaiming_uniform_,
        init.kaiming_normal_,
        init.xavier_uniform_,
        init.xavier_normal_,
    }

    class _SkipRandomInit(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in skipped:
                return args[0] if args else kwargs.get("tensor")
            return func(*args, **kwargs)

    with _SkipRandomInit():
        yield
