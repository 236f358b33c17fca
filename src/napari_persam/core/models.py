"""The model registry: building SAM variants, with or without a checkpoint.

Every builder returns a randomly initialised model (for tests and demos) when no
checkpoint is given. Checkpoints are read with ``weights_only=True`` so loading
never runs code from the file, checked against the model they are meant for
(by the shapes of their image encoder) before anything is built, and loaded
with strict key matching.

The published checkpoints are found in, or downloaded into, a cache folder by
:mod:`napari_persam.core.weights`; :func:`iter_load_model` does both steps as a
progress generator for thread workers, :func:`load_model` for scripts.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Generator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from segment_anything.modeling import Sam

    from napari_persam.core.progress import Progress

DEFAULT_MODEL = "vit_b"
TINY_MODEL = "tiny"


@dataclass(frozen=True)
class ModelSpec:
    """One entry of the registry.

    Attributes
    ----------
    name : str
        Registry key (``"vit_b"``...).
    description : str
        One line for menus and ``napari-persam models list``.
    builder : callable
        ``builder() -> Sam`` returning a randomly initialised model in eval mode.
    url : str
        The publisher's download address of the checkpoint; ``""`` when the model
        has no published weights (``"tiny"``).
    filename : str
        The checkpoint's file name in the cache folder (the publisher's name).
    size : int
        Size of the checkpoint file in bytes.
    sha256 : str
        SHA-256 of the checkpoint file, lowercase hex.
    signature : str
        The image encoder as :func:`napari_persam.core.state_dicts.encoder_signature`
        describes it; used to name the model a wrong checkpoint belongs to.
    convert_state : callable or None
        Renames a checkpoint's keys to this model's module names (MobileSAM's
        official names to timm's); ``None`` when they already match.
    """

    name: str
    description: str
    builder: Callable[[], Sam]
    url: str = ""
    filename: str = ""
    size: int = 0
    sha256: str = ""
    signature: str = ""
    convert_state: Callable[[dict], dict] | None = None

    @property
    def downloadable(self) -> bool:
        """Whether the model has published weights to fetch."""
        return bool(self.url and self.filename and self.sha256)


def _segment_anything_builder(name: str) -> Sam:
    from segment_anything import sam_model_registry

    # checkpoint=None: segment_anything's own loader uses a plain torch.load, which
    # can execute pickled code, so checkpoints are loaded by load_checkpoint instead.
    return sam_model_registry[name](checkpoint=None).eval()


def _mobile_sam_builder() -> Sam:
    from napari_persam.core.mobile_sam import build_mobile_sam

    return build_mobile_sam()


def _mobile_sam_converter(state: dict) -> dict:
    from napari_persam.core.mobile_sam import official_to_timm_state_dict

    return official_to_timm_state_dict(state)


def build_tiny_sam(
    *,
    seed: int = 0,
    img_size: int = 1024,
    encoder_dim: int = 48,
    encoder_depth: int = 2,
    prompt_dim: int = 256,
) -> Sam:
    """A small randomly initialised SAM for tests, demos and CI (no download).

    Same classes and geometry as the real models (``img_size`` 1024 and 16 px
    patches give the 64x64 feature grid and 256 channels of SAM), but a two-block
    image encoder of width ``encoder_dim`` so one image encodes in well under a
    second on a laptop CPU. Seeded: the same ``seed`` gives the same weights.
    """
    import torch
    from segment_anything.modeling import ImageEncoderViT

    from napari_persam.core.sam_assembly import sam_around_encoder

    patch = 16
    # fork_rng: seeding must not change the caller's global random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = ImageEncoderViT(
            depth=encoder_depth,
            embed_dim=encoder_dim,
            img_size=img_size,
            mlp_ratio=2.0,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=2,
            patch_size=patch,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=(encoder_depth - 1,),
            window_size=8,
            out_chans=prompt_dim,
        )
        return sam_around_encoder(
            encoder,
            img_size=img_size,
            grid=img_size // patch,
            prompt_dim=prompt_dim,
            decoder_mlp_dim=256,
            iou_head_hidden_dim=64,
        )


_SAM_RELEASE = "https://dl.fbaipublicfiles.com/segment_anything/"

# URLs, sizes and SHA-256 hashes of the publishers' files. segment-anything's URLs
# are in its README; MobileSAM's file is in its repository's weights/ folder.
# Sizes and hashes agree between independent projects that pin these files
# (micro-sam's model registry and several download manifests); see docs/models.md.
MODEL_REGISTRY: dict[str, ModelSpec] = {
    "vit_b": ModelSpec(
        "vit_b",
        "SAM ViT-B (91M parameters, 375 MB; the default)",
        partial(_segment_anything_builder, "vit_b"),
        url=_SAM_RELEASE + "sam_vit_b_01ec64.pth",
        filename="sam_vit_b_01ec64.pth",
        size=375_042_383,
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        signature="ViT, width 768, 12 blocks",
    ),
    "vit_l": ModelSpec(
        "vit_l",
        "SAM ViT-L (308M parameters, 1.2 GB)",
        partial(_segment_anything_builder, "vit_l"),
        url=_SAM_RELEASE + "sam_vit_l_0b3195.pth",
        filename="sam_vit_l_0b3195.pth",
        size=1_249_524_607,
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        signature="ViT, width 1024, 24 blocks",
    ),
    "vit_h": ModelSpec(
        "vit_h",
        "SAM ViT-H (636M parameters, 2.6 GB; best, slowest)",
        partial(_segment_anything_builder, "vit_h"),
        url=_SAM_RELEASE + "sam_vit_h_4b8939.pth",
        filename="sam_vit_h_4b8939.pth",
        size=2_564_550_879,
        sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        signature="ViT, width 1280, 32 blocks",
    ),
    "vit_t": ModelSpec(
        "vit_t",
        "MobileSAM TinyViT (10M parameters, 41 MB; fastest on CPU)",
        _mobile_sam_builder,
        url="https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
        filename="mobile_sam.pt",
        size=40_728_226,
        sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        signature="TinyViT, widths 64-128-160-320",
        convert_state=_mobile_sam_converter,
    ),
    TINY_MODEL: ModelSpec(
        TINY_MODEL,
        "Tiny random SAM for tests and demos (no weights, meaningless masks)",
        build_tiny_sam,
        signature="ViT, width 48, 2 blocks",
    ),
}


def model_names() -> list[str]:
    """Registry keys in menu order."""
    return list(MODEL_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``, or a ValueError listing the known names."""
    try:
        return MODEL_REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"Unknown model {name!r}; choose one of {', '.join(MODEL_REGISTRY)}."
        ) from None


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
    napari_persam.core.state_dicts.CheckpointError
        If the file is unsafe or unreadable, or belongs to another model (the
        message names both).
    """
    from napari_persam.core.devices import resolve_device
    from napari_persam.core.state_dicts import read_state_dict, skip_random_init

    spec = get_spec(name)
    target = resolve_device(device)
    if checkpoint is None:
        sam = spec.builder()
    else:
        path = os.fspath(checkpoint)
        state = prepare_state_dict(read_state_dict(path), spec, source=f"Checkpoint {path}")
        # Random initial weights would be overwritten at once (strictly, every key).
        with skip_random_init():
            sam = spec.builder()
        _load_strict(sam, state, spec.name, f"Checkpoint {path}")
    # Moved and switched to eval once, here; callers get a model ready to run.
    return sam.to(target).eval()


def load_checkpoint(sam: Sam, checkpoint: str | os.PathLike, *, model_name: str = "") -> Sam:
    """Load a state dict into an existing ``sam`` safely and strictly.

    ``torch.load(weights_only=True)`` refuses files that carry pickled objects, so
    a checkpoint can never run code. With ``model_name`` a registry key, the
    checkpoint is first checked to belong to that model and its keys are renamed
    as that model needs (MobileSAM); keys must then match exactly.
    """
    from napari_persam.core.state_dicts import read_state_dict

    path = os.fspath(checkpoint)
    state = read_state_dict(path)
    if model_name in MODEL_REGISTRY:
        state = prepare_state_dict(state, MODEL_REGISTRY[model_name], source=f"Checkpoint {path}")
    else:
        from napari_persam.core.mobile_sam import official_to_timm_state_dict

        state = official_to_timm_state_dict(state)
    _load_strict(sam, state, model_name or type(sam).__name__, f"Checkpoint {path}")
    return sam


def prepare_state_dict(state: dict, spec: ModelSpec, *, source: str = "the checkpoint") -> dict:
    """Check that ``state`` is a checkpoint of ``spec``'s model and rename its keys.

    Raises a :class:`~napari_persam.core.state_dicts.CheckpointError` naming the
    model the checkpoint belongs to when it is another one.
    """
    from napari_persam.core.state_dicts import CheckpointError, encoder_signature

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
    return spec.convert_state(state) if spec.convert_state is not None else state


def _load_strict(sam: Sam, state: dict, model_name: str, source: str) -> None:
    result = sam.load_state_dict(state, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        from napari_persam.core.state_dicts import CheckpointError

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
        platform's user cache (see :func:`napari_persam.core.weights.cache_folder`).
    url : str, optional
        Download from here instead of the publisher (a mirror); the checksum is
        still the registry's.

    Raises
    ------
    napari_persam.core.weights.WeightsError
        If the checkpoint cannot be downloaded or fails verification; the message
        says where to put the file by hand.
    napari_persam.core.state_dicts.CheckpointError
        If the checkpoint is unsafe, unreadable or of another model.
    """
    from napari_persam.core.devices import resolve_device
    from napari_persam.core.progress import Progress

    spec = get_spec(name)
    target = resolve_device(device)  # a bad device fails before any download
    if checkpoint is None and spec.downloadable:
        from napari_persam.core.weights import iter_ensure_checkpoint

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
    from napari_persam.core.progress import run
    from napari_persam.core.terminal_progress import TerminalProgress

    work = iter_load_model(name, checkpoint=checkpoint, device=device, cache_dir=cache_dir, url=url)
    if progress is False:
        return run(work)
    bar = TerminalProgress(sys.stderr if progress is True else progress)
    try:
        return run(work, on_progress=bar)
    finally:
        bar.close()
