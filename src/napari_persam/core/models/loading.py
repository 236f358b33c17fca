"""Getting a model ready to run: find or download its checkpoint, build it, load safely.

Checkpoints are read with ``weights_only=True`` so loading never runs code from the
file, checked against the model they are meant for (by the shapes of their image
encoder) before anything is built, and loaded with strict key matching.
:func:`iter_load_model` does every step as a progress generator for thread
workers, :func:`load_model` for scripts.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator
from typing import TYPE_CHECKING, TextIO

from napari_persam.core.models.builders import build_architecture, convert_state
from napari_persam.core.models.errors import CheckpointError
from napari_persam.core.models.registry import DEFAULT_MODEL, MODEL_REGISTRY, ModelSpec, get_spec

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from segment_anything.modeling import Sam

    from napari_persam.core.progress import Progress


def build_model(
    name: str = DEFAULT_MODEL,
    *,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device | None = "cpu",
) -> Sam:
    """Build model ``name``, load ``checkpoint`` if given, move it to ``device``, eval mode.

    Parameters
    ----------
    name : str
        A registry key, see :func:`model_names`.
    checkpoint : path, optional
        A ``.pth``/``.pt`` state dict in the publisher's key layout, used as is
        (not checked against the registry's hash). ``None`` gives random weights.
    device : str, torch.device or None
        Where the model runs; ``None`` picks the best available device.

    Raises
    ------
    CheckpointError
        If the file is unsafe or unreadable, or belongs to another model (the
        message names both).
    """
    from napari_persam.core.devices import resolve_device
    from napari_persam.core.models.state_dicts import read_state_dict, skip_random_init

    spec = get_spec(name)
    target = resolve_device(device)
    if checkpoint is None:
        sam = build_architecture(spec.architecture)
    else:
        path = os.fspath(checkpoint)
        state = prepare_state_dict(read_state_dict(path), spec, source=f"Checkpoint {path}")
        # Random initial weights would be overwritten at once (strictly, every key).
        with skip_random_init():
            sam = build_architecture(spec.architecture)
        _load_strict(sam, state, spec.name, f"Checkpoint {path}")
    # Moved and switched to eval once, here; callers get a model ready to run.
    return sam.to(target).eval()


def prepare_state_dict(state: dict, spec: ModelSpec, *, source: str = "the checkpoint") -> dict:
    """Check that ``state`` is a checkpoint of ``spec``'s model and rename its keys.

    Raises a :class:`CheckpointError` naming the model the checkpoint belongs to
    when it is another one.
    """
    from napari_persam.core.models.state_dicts import encoder_signature

    found = encoder_signature(state)
    if spec.signature and found != spec.signature:
        owners = [other.name for other in MODEL_REGISTRY.values() if other.signature == found]
        if owners:
            raise CheckpointError(
                f"{source} holds weights of model {owners[0]!r} ({found}), not of "
                f"{spec.name!r} ({spec.signature}). Choose model {owners[0]!r} for this file"
                + (f", or use {spec.filename} for {spec.name!r}." if spec.filename else ".")
            )
        raise CheckpointError(
            f"{source} does not fit model {spec.name!r}: its image encoder is "
            f"{found or 'missing (this is not a SAM checkpoint)'}, while {spec.name!r} "
            f"needs {spec.signature}."
        )
    return convert_state(spec, state)


def _load_strict(sam: Sam, state: dict, model_name: str, source: str) -> None:
    result = sam.load_state_dict(state, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise CheckpointError(
            f"{source} does not fit model {model_name!r}: keys {'; '.join(parts)}. "
            "Is it a checkpoint of another model or a modified file?"
        )


def iter_load_model(
    name: str = DEFAULT_MODEL,
    *,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
    url: str | None = None,
) -> Generator[Progress, None, Sam]:
    """Get a model ready to run, as a progress generator (for thread workers).

    Yields :class:`~napari_persam.core.progress.Progress` while working (bytes
    while the checkpoint downloads or is verified) and returns the ``Sam`` in eval
    mode on ``device``. Never prints; closing the generator cancels a download
    and leaves no partial file.

    Parameters
    ----------
    name : str
        Registry key. ``"tiny"`` needs no checkpoint.
    checkpoint : path, optional
        Weights file used as is. Without it, the registry's checkpoint is found
        in the cache folder or downloaded, and verified by its SHA-256.
    device : str, torch.device or None
        ``None`` picks CUDA, then MPS, then CPU.
    cache_dir : path, optional
        Folder of downloaded checkpoints; default ``$NAPARI_PERSAM_CACHE`` or the
        platform's user cache (see :func:`napari_persam.core.paths.checkpoints_dir`).
    url : str, optional
        Download from here instead of the publisher (a mirror); the checksum is
        still the registry's.

    Raises
    ------
    napari_persam.core.models.errors.WeightsError
        If the checkpoint cannot be downloaded or fails verification; the message
        says where to put the file by hand.
    CheckpointError
        If the checkpoint is unsafe, unreadable or of another model.
    """
    from napari_persam.core.devices import resolve_device
    from napari_persam.core.progress import Progress

    spec = get_spec(name)
    target = resolve_device(device)  # a bad device fails before any download
    if checkpoint is None and spec.downloadable:
        from napari_persam.core.models.checkpoints import iter_ensure_checkpoint

        checkpoint = yield from iter_ensure_checkpoint(spec, cache_dir=cache_dir, url=url)
    yield Progress(0, 1, f"loading {name}")
    sam = build_model(name, checkpoint=checkpoint, device=target)
    yield Progress(1, 1, f"loaded {name} on {target}")
    return sam


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
    url: str | None = None,
    progress: bool | TextIO = False,
) -> Sam:
    """:func:`iter_load_model` for scripts: returns the model when it is ready.

    Parameters
    ----------
    progress : bool or text stream
        ``True`` draws a progress bar on stderr (downloads take minutes), a
        stream draws it there, ``False`` stays silent.
    """
    from napari_persam.core.progress import TerminalProgress, run

    work = iter_load_model(name, checkpoint=checkpoint, device=device, cache_dir=cache_dir, url=url)
    if progress is False:
        return run(work)
    bar = TerminalProgress(sys.stderr if progress is True else progress)
    try:
        return run(work, on_progress=bar)
    finally:
        bar.close()
