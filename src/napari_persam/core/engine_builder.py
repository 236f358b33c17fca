"""The one place that assembles a model, its embedding caches and a PerSAM engine.

The command line, Dask workers, the napari widget and ``evaluate`` all build their
engines here, so each gets the same model, the same caches and the same checkpoint
hash for the same request. Two steps, because the widget keeps a loaded model
across Runs with other options: :func:`iter_load` gives a :class:`LoadedModel`
(the model, its checkpoint's SHA-256 and its in-memory embedding cache), and
:meth:`LoadedModel.engine` an engine for one set of options. :func:`build_engine`
does both for scripts.

The image encoder's backend (``PerSAMConfig.encoder_backend``) is chosen here too:
on a CPU the encoder is exported once per checkpoint and run by OpenVINO or ONNX
Runtime (:mod:`napari_persam.core.models.encoder_runtime`), and the engine gets
it as its ``image_encoder``; the engine itself knows nothing of files or runtimes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_persam.core.config import PerSAMConfig
from napari_persam.core.models.registry import DEFAULT_MODEL
from napari_persam.core.progress import Progress, run

if TYPE_CHECKING:  # pragma: no cover
    from segment_anything.modeling import Sam

    from napari_persam.core.engine.embeddings import EmbeddingCache
    from napari_persam.core.engine.persam import PerSAM
    from napari_persam.core.io.disk_cache import DiskEmbeddingCache

#: ``factory(name, *, checkpoint, device)`` -> generator yielding Progress and
#: returning a ``Sam``: :func:`napari_persam.core.models.iter_load_model` by default.
#: Steps with ``total`` above 1 count bytes (download, hashing).
ModelFactory = Callable[..., Generator[Progress, None, "Sam"]]

DEFAULT_CACHE_BYTES = 4 * 1024**3


@dataclass(frozen=True)
class EngineSpec:
    """Everything needed to build an engine (plain, hashable data: it travels to Dask workers).

    Attributes
    ----------
    model : str
        Registry name (``"vit_b"``, ..., ``"tiny"``).
    checkpoint : str or None
        Weights file used as is; ``None`` finds or downloads the published one.
    device : str or None
        ``None`` or ``"auto"`` picks CUDA, then MPS, then CPU.
    config : PerSAMConfig
        The engine's options.
    disk_cache : bool
        Also keep embeddings on disk (shared by the widget, the command line and
        later sessions), not only in memory.
    cache_dir : str or None
        The disk cache's folder; ``None`` is :func:`napari_persam.core.paths.embeddings_dir`.
    cache_max_bytes : int
        Size cap of the disk cache.
    torch_threads : int or None
        CPU threads for torch in this process; ``None`` leaves the setting alone.
    """

    model: str = DEFAULT_MODEL
    checkpoint: str | None = None
    device: str | None = None
    config: PerSAMConfig = field(default_factory=PerSAMConfig)
    disk_cache: bool = True
    cache_dir: str | None = None
    cache_max_bytes: int = DEFAULT_CACHE_BYTES
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        if self.cache_max_bytes <= 0:
            raise ValueError(f"cache_max_bytes must be positive, got {self.cache_max_bytes}.")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads must be 1 or more, got {self.torch_threads}.")

    @property
    def device_name(self) -> str | None:
        return None if self.device in (None, "auto") else self.device


class LoadedModel:
    """A model ready to run, with the caches its engines share.

    Attributes
    ----------
    sam : Sam
    name : str
        Registry name.
    checkpoint_sha256 : str or None
        SHA-256 of its weights: the registry's (verified on download) for published
        weights, computed once for a file of the user's, ``None`` when unknown.
    memory : EmbeddingCache
        In-memory embeddings, shared by every engine made from this model.
    threads : int or None
        CPU threads for the encoder runtimes (``None``: torch's count).
    """

    def __init__(
        self,
        sam: Sam,
        *,
        name: str,
        checkpoint_sha256: str | None,
        memory_items: int = 16,
        threads: int | None = None,
    ) -> None:
        from napari_persam.core.engine.embeddings import EmbeddingCache

        self.sam = sam
        self.name = name
        self.checkpoint_sha256 = checkpoint_sha256
        self.memory = EmbeddingCache(memory_items)
        self.threads = threads
        self._disk: dict[tuple[Path, int], DiskEmbeddingCache] = {}
        self._unusable: set[tuple[Path, int]] = set()
        self._encoders: dict[tuple, Any] = {}

    def iter_encoder(self, spec: EngineSpec) -> Generator[Progress, None, Any]:
        """The image encoder for ``spec``'s backend, exported or loaded once per model.

        Returns ``None`` for PyTorch's own forward, else a callable for
        ``PerSAM(image_encoder=...)``. A backend that cannot be used here falls
        back to PyTorch with one warning (and is not tried again for this model).
        """
        from napari_persam.core.devices import resolve_device
        from napari_persam.core.models.encoder_runtime import iter_image_encoder

        config = spec.config
        device = resolve_device(spec.device_name)
        key = (config.encoder_backend, config.encoder_dtype, config.compile_encoder, str(device))
        if key not in self._encoders:
            self._encoders[key] = yield from iter_image_encoder(
                self.sam,
                backend=config.encoder_backend,
                device=device,
                encoder_dtype=config.encoder_dtype,
                compile_encoder=config.compile_encoder,
                model_name=self.name,
                checkpoint_sha256=self.checkpoint_sha256,
                threads=self.threads,
            )
        return self._encoders[key]

    def cache(
        self, *, disk_cache: bool, cache_dir: str | os.PathLike | None, max_bytes: int, device
    ) -> EmbeddingCache | DiskEmbeddingCache:
        """The memory cache, or the disk cache in ``cache_dir`` with the memory one in front.

        A disk cache is made once per folder, so its counters describe this model's
        whole session. A folder that cannot be used (read-only, not a folder) is
        warned about once, as a :class:`~napari_persam.core.io.disk_cache.CacheWarning`,
        and the memory cache is used instead: a cache is a speed-up, never a
        reason to fail.
        """
        if not disk_cache:
            return self.memory
        import warnings

        from napari_persam.core.io.disk_cache import (
            CacheUnavailable,
            CacheWarning,
            DiskEmbeddingCache,
        )
        from napari_persam.core.paths import embeddings_dir

        folder = Path(cache_dir) if cache_dir is not None else embeddings_dir()
        key = (folder, int(max_bytes))
        if key in self._unusable:
            return self.memory
        if key not in self._disk:
            try:
                # No checkpoint hash in the signature: the model fingerprint already names
                # the weights, so the widget, learn and segment share entries.
                self._disk[key] = DiskEmbeddingCache(
                    folder, max_bytes=max_bytes, device=device, memory=self.memory
                )
            except CacheUnavailable as error:
                self._unusable.add(key)
                warnings.warn(
                    f"{error} Running without the disk cache: images are encoded anew.",
                    CacheWarning,
                    stacklevel=2,
                )
                return self.memory
        return self._disk[key]

    @property
    def disk_caches(self) -> list[DiskEmbeddingCache]:
        """The disk caches made so far (their counters are for tests and scripts)."""
        return list(self._disk.values())

    def engine(self, spec: EngineSpec) -> PerSAM:
        """A PerSAM engine with ``spec``'s options and caches on this model."""
        from napari_persam.core.devices import resolve_device
        from napari_persam.core.engine.persam import PerSAM

        device = resolve_device(spec.device_name)
        cache = self.cache(
            disk_cache=spec.disk_cache,
            cache_dir=spec.cache_dir,
            max_bytes=spec.cache_max_bytes,
            device=device,
        )
        return PerSAM(
            self.sam,
            config=spec.config,
            device=device,
            cache=cache,
            model_name=self.name,
            checkpoint_sha256=self.checkpoint_sha256,
            image_encoder=run(self.iter_encoder(spec)),  # prepared by iter_load as a rule
        )


def iter_load(
    spec: EngineSpec, *, factory: ModelFactory | None = None
) -> Generator[Progress, None, LoadedModel]:
    """Load ``spec``'s model (downloading it once if needed) and hash its checkpoint.

    ``factory`` replaces the registry's loader (tests, the user's own SAM variant);
    then a model without a checkpoint file has no known hash.
    """
    from napari_persam.core.models.llvm_clash import keep_triton_out_beside_system_llvm

    # Before torchvision is imported: in napari's process (Mesa's OpenGL) importing
    # triton, which torchvision's import probes for, would crash it.
    keep_triton_out_beside_system_llvm()
    from napari_persam.core.models.checkpoints import iter_model_sha256
    from napari_persam.core.models.loading import iter_load_model

    if spec.torch_threads is not None:
        import torch

        torch.set_num_threads(spec.torch_threads)
    loader = factory if factory is not None else iter_load_model
    sam = yield from loader(spec.model, checkpoint=spec.checkpoint, device=spec.device_name)
    if spec.checkpoint is None and factory is not None:
        sha256 = None  # another factory may have built anything
    else:
        sha256 = yield from iter_model_sha256(spec.model, spec.checkpoint)
    loaded = LoadedModel(
        sam,
        name=spec.model,
        checkpoint_sha256=sha256,
        memory_items=spec.config.cache_size,
        threads=spec.torch_threads,
    )
    yield from loaded.iter_encoder(spec)  # the one-time export shows its progress here
    return loaded


def iter_build_engine(
    spec: EngineSpec, *, factory: ModelFactory | None = None
) -> Generator[Progress, None, PerSAM]:
    """:func:`iter_load` and :meth:`LoadedModel.engine` in one progress generator."""
    loaded = yield from iter_load(spec, factory=factory)
    return loaded.engine(spec)


def build_engine(spec: EngineSpec | None = None, **fields) -> PerSAM:
    """A ready engine for ``spec`` (or for ``EngineSpec(**fields)``), for scripts.

    Examples
    --------
    >>> engine = build_engine(model="vit_t", disk_cache=False)  # doctest: +SKIP
    """
    return run(iter_build_engine(spec if spec is not None else EngineSpec(**fields)))
