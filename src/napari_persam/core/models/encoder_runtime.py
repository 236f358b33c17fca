"""Running an exported image encoder on a fast CPU runtime, and choosing the backend.

:class:`RuntimeEncoder` is called like ``sam.image_encoder`` (a (1, 3, S, S) float32
tensor in, the embedding out) but runs the ONNX export of
:mod:`.encoder_export` with OpenVINO or ONNX Runtime. Measured on the CPU against
PyTorch's eager forward (BENCHMARKS.md), both are faster, and each keeps its
intermediate buffers between calls, so the per-image page-fault storm of large
freed temporaries does not happen on this path.

:func:`iter_image_encoder` turns ``PerSAMConfig.encoder_backend`` into an encoder:
``"auto"`` takes OpenVINO, then ONNX Runtime, on a CPU, and PyTorch elsewhere; a
runtime that is missing, fails to export or fails to load gives PyTorch with one
warning, never a stopped run.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import warnings
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from napari_persam.core.models.encoder_export import (
    ExportError,
    iter_exported_encoder,
    weights_id,
)
from napari_persam.core.models.export_child import ExportFailed
from napari_persam.core.progress import Progress

if TYPE_CHECKING:  # pragma: no cover
    import torch

RUNTIMES = ("openvino", "onnxruntime")
#: Preference of ``"auto"`` on a CPU, fastest first (measured, see BENCHMARKS.md).
AUTO_ORDER = ("openvino", "onnxruntime")
#: The largest difference to PyTorch's embedding an export may show when it is made.
EXPORT_TOLERANCE = 1e-4


class BackendUnavailable(RuntimeError):
    """A runtime cannot be used here; the message says why."""


def runtime_installed(name: str) -> bool:
    """Whether the Python package of runtime ``name`` can be imported here."""
    return importlib.util.find_spec(name) is not None


class RuntimeEncoder:
    """An exported image encoder run by OpenVINO or ONNX Runtime.

    Parameters
    ----------
    backend : {"openvino", "onnxruntime"}
    path : path
        The ONNX file.
    threads : int
        CPU threads of the runtime (torch's count by default: the same cores).
    precision : {"float32", "bfloat16"}
        OpenVINO only: its inference precision. OpenVINO would pick bfloat16 by
        itself on CPUs that have it, which changes embeddings by about 1e-2, so
        float32 is always asked for explicitly.

    Calls are serialised (one inference request, reused: its buffers stay
    allocated between images).
    """

    def __init__(
        self, backend: str, path: str | os.PathLike, *, threads: int, precision: str = "float32"
    ) -> None:
        if backend not in RUNTIMES:
            raise ValueError(f"Unknown runtime {backend!r}; one of {', '.join(RUNTIMES)}.")
        self.backend = backend if precision == "float32" else f"{backend}-{precision}"
        self.runtime = backend
        self.path = os.fspath(path)
        self.threads = int(threads)
        self._lock = threading.Lock()
        try:
            if backend == "openvino":
                self._run = self._load_openvino(precision)
            else:
                self._run = self._load_onnxruntime()
        except Exception as error:
            raise BackendUnavailable(
                f"{backend} could not load the exported encoder: {error}"
            ) from error

    def _load_openvino(self, precision: str):
        import openvino

        core = openvino.Core()
        compiled = core.compile_model(
            self.path,
            "CPU",
            {
                "INFERENCE_PRECISION_HINT": "bf16" if precision == "bfloat16" else "f32",
                "INFERENCE_NUM_THREADS": self.threads,
                "PERFORMANCE_HINT": "LATENCY",
            },
        )
        request = compiled.create_infer_request()

        def run(pixels):
            request.infer({0: pixels})
            return request.get_output_tensor(0).data.copy()  # the request reuses its buffer

        return run

    def _load_onnxruntime(self):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(
            self.path, options, providers=["CPUExecutionProvider"]
        )
        name = session.get_inputs()[0].name

        def run(pixels):
            return session.run(None, {name: pixels})[0]

        return run

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """(1, 3, S, S) float tensor -> (1, C, gh, gw) float32 tensor on the CPU."""
        import numpy as np
        import torch

        pixels = np.ascontiguousarray(batch.detach().float().cpu().numpy())
        with self._lock:
            features = self._run(pixels)
        return torch.from_numpy(np.asarray(features, dtype=np.float32))

    def __repr__(self) -> str:
        return f"RuntimeEncoder({self.backend!r}, {self.path!r}, threads={self.threads})"


def max_difference(encoder: RuntimeEncoder, reference: torch.nn.Module, img_size: int) -> float:
    """Largest absolute difference of ``encoder``'s embedding to ``reference``'s, one input.

    The input looks like a normalised image (values of about -2..2), seeded.
    """
    import torch

    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(1, 3, img_size, img_size, generator=generator).clamp(-2.2, 2.7)
    with torch.inference_mode():
        expected = reference(pixels).float()
    return float((encoder(pixels) - expected).abs().max())


def iter_image_encoder(
    sam: Any,
    *,
    backend: str,
    device: torch.device,
    encoder_dtype: str = "float32",
    compile_encoder: bool = False,
    model_name: str,
    checkpoint_sha256: str | None,
    threads: int | None = None,
    root: str | os.PathLike | None = None,
) -> Generator[Progress, None, Any]:
    """The image encoder an engine should use, as a progress generator.

    Parameters
    ----------
    sam : Sam
        The loaded model (not modified).
    backend : {"auto", "torch", "openvino", "onnxruntime"}
        ``PerSAMConfig.encoder_backend``.
    device : torch.device
        The engine's device; runtimes are used on the CPU only.
    encoder_dtype : str
        ``PerSAMConfig.encoder_dtype``; the runtimes run float32 (OpenVINO also
        bfloat16 where it is native), so ``"auto"`` keeps PyTorch for the others.
    compile_encoder : bool
        PyTorch only: ``torch.compile`` the encoder.
    model_name, checkpoint_sha256 : str, str or None
        Name the export (see :func:`.encoder_export.weights_id`).
    threads : int, optional
        Runtime threads; default torch's.
    root : path, optional
        The cache root.

    Returns
    -------
    callable or None
        A :class:`RuntimeEncoder`, a compiled torch encoder, or ``None`` for
        ``sam.image_encoder`` itself. Falling back to PyTorch warns once, saying why.
    """
    import torch

    if backend == "torch" or (backend == "auto" and device.type != "cpu"):
        return _torch_encoder(sam, compile_encoder)
    if device.type != "cpu":
        _fall_back(f"encoder_backend={backend!r} runs on the CPU, and this engine uses {device}")
        return _torch_encoder(sam, compile_encoder)
    if backend == "auto":
        if encoder_dtype != "float32":
            return _torch_encoder(sam, compile_encoder)
        candidates = [name for name in AUTO_ORDER if runtime_installed(name)]
        if not candidates:
            return _torch_encoder(sam, compile_encoder)  # nothing to fall back from
    else:
        if not runtime_installed(backend):
            _fall_back(
                f"{backend} is not installed (pip install {backend}, or choose another "
                "encoder_backend)"
            )
            return _torch_encoder(sam, compile_encoder)
        candidates = [backend]
    encoder = sam.image_encoder
    img_size = int(encoder.img_size)
    threads = int(threads or torch.get_num_threads())
    reasons = []
    for name in candidates:
        try:
            path = yield from iter_exported_encoder(
                encoder,
                model_name=model_name,
                img_size=img_size,
                weights=weights_id(encoder, checkpoint_sha256),
                root=root,
                check=lambda onnx, name=name: _check_export(name, onnx, encoder, img_size, threads),
            )
            yield Progress(0, 1, f"loading the image encoder into {name}")
            runtime = RuntimeEncoder(name, path, threads=threads, precision=encoder_dtype)
            yield Progress(1, 1, f"image encoder on {name}")
            return runtime
        except (ExportError, BackendUnavailable, OSError) as error:
            reasons.append(f"{name}: {error}")
            if isinstance(error, ExportFailed):
                break  # the next runtime would need the same export (and wait for it again)
    _fall_back("; ".join(reasons))
    return _torch_encoder(sam, compile_encoder)


def _check_export(name: str, onnx_path, encoder, img_size: int, threads: int) -> dict[str, Any]:
    """Refuse an export whose embedding differs from PyTorch's beyond the tolerance."""
    runtime = RuntimeEncoder(name, onnx_path, threads=threads)
    difference = max_difference(runtime, encoder, img_size)
    if not difference <= EXPORT_TOLERANCE:
        raise ExportError(
            f"the exported encoder differs from PyTorch's by {difference:.2g} "
            f"(more than {EXPORT_TOLERANCE:g}) on {name}"
        )
    return {"checked_with": name, "max_abs_difference": difference}


class CompiledEncoder:
    """``torch.compile`` of SAM's image encoder; the ``Sam`` itself is not changed."""

    backend = "torch.compile"

    def __init__(self, encoder: torch.nn.Module) -> None:
        import torch

        self._compiled = torch.compile(encoder)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self._compiled(batch)


def _torch_encoder(sam: Any, compile_encoder: bool) -> CompiledEncoder | None:
    return CompiledEncoder(sam.image_encoder) if compile_encoder else None


def _fall_back(reason: str) -> None:
    warnings.warn(
        f"The image encoder runs on PyTorch instead: {reason}.", RuntimeWarning, stacklevel=3
    )
