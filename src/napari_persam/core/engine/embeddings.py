"""Image encoder calls and the in-memory embedding cache.

Encoding is by far the most expensive step (seconds per image for ViT-B on a CPU),
so every image is encoded once per model: learning and segmenting the same image,
or re-running with other options, reuse the cached features.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from napari_persam.core.engine.geometry import SamGeometry

#: ``encoder(batch) -> features``: SAM's image encoder or a stand-in for it (an exported
#: copy run by another runtime). ``batch`` is (1, 3, S, S) float32, normalised and
#: padded by ``sam.preprocess``; ``features`` (1, C, gh, gw). Its ``backend``
#: attribute (``"torch"``, ``"openvino"``...) names it in embedding cache keys.
ImageEncoder = Callable[[torch.Tensor], torch.Tensor]

_AUTOCAST = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def encoder_backend(encoder: ImageEncoder | None) -> str:
    """The backend name of ``encoder`` (``"torch"`` for ``None`` or a plain module)."""
    return str(getattr(encoder, "backend", "torch")) if encoder is not None else "torch"


@dataclass(frozen=True)
class ImageEmbedding:
    """An encoded image.

    Attributes
    ----------
    features : (1, C, gh, gw) float32 tensor
        SAM's image embedding, on the engine's device.
    geometry : SamGeometry
        How the image maps onto the feature grid.
    """

    features: torch.Tensor
    geometry: SamGeometry


def image_digest(rgb: np.ndarray) -> str:
    """Content hash of a prepared (H, W, 3) uint8 image, shape included."""
    hasher = hashlib.blake2b(digest_size=20)
    hasher.update(repr((rgb.shape, str(rgb.dtype))).encode())
    hasher.update(np.ascontiguousarray(rgb).data)
    return hasher.hexdigest()


def model_fingerprint(module: torch.nn.Module) -> str:
    """A cheap identity of a model's architecture and weights.

    Hashes every parameter's name, shape and dtype, and a strided sample of its
    values: different checkpoints or random seeds differ in the sample, while a
    full hash of ViT-H (2.5 GB) would cost seconds on every engine start.
    """
    hasher = hashlib.blake2b(digest_size=16)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            hasher.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            flat = tensor.detach().reshape(-1)
            if flat.numel():
                step = max(1, flat.numel() // 64)
                sample = flat[::step][:64].float().cpu().numpy()
                hasher.update(sample.tobytes())
    return hasher.hexdigest()


class EmbeddingCache:
    """Least-recently-used cache of :class:`ImageEmbedding` keyed by content and model.

    Thread-safe, because the napari widget encodes in a worker thread while the
    user may start another run.
    """

    def __init__(self, max_items: int = 16) -> None:
        self.max_items = max_items
        self._items: OrderedDict[tuple, ImageEmbedding] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple) -> ImageEmbedding | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item

    def put(self, key: tuple, value: ImageEmbedding) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def encode_image(
    sam: torch.nn.Module,
    rgb: np.ndarray,
    *,
    device: torch.device,
    encoder_dtype: str = "float32",
    encoder: ImageEncoder | None = None,
    frame_side: int | None = None,
) -> ImageEmbedding:
    """Run SAM's image encoder on one prepared image.

    Parameters
    ----------
    sam : segment_anything.modeling.Sam
        Any SAM; its ``image_encoder.img_size`` sets the geometry.
    rgb : (H, W, 3) uint8
        From :func:`napari_persam.core.engine.images.prepare_image`.
    device : torch.device
        Where the encoder runs (the model must already be there).
    encoder_dtype : {"float32", "bfloat16", "float16"}
        bfloat16 and float16 run a PyTorch encoder under autocast; features come back
        as float32. Another backend applies its own precision.
    encoder : callable, optional
        Runs instead of ``sam.image_encoder`` (see :data:`ImageEncoder`).
    frame_side : int, optional
        Encode ``rgb`` as a tile: SAM's input side stands for this many pixels
        (see :class:`SamGeometry`); ``None`` is a whole image.
    """
    # Checks the size before paying for encoding.
    geometry = geometry_for(sam, rgb.shape, frame_side=frame_side)
    resized = _resize_like_sam(rgb, geometry)
    pixels = torch.as_tensor(resized, device=device).permute(2, 0, 1).contiguous()[None]
    run = sam.image_encoder if encoder is None else encoder
    with torch.inference_mode():
        batch = sam.preprocess(pixels.float())  # normalise, pad bottom/right to img_size
        if encoder_dtype in _AUTOCAST and encoder_backend(encoder) == "torch":
            with torch.autocast(device_type=device.type, dtype=_AUTOCAST[encoder_dtype]):
                features = run(batch)
        else:
            features = run(batch)
    features = features.to(device=device, dtype=torch.float32)
    if tuple(features.shape[-2:]) != geometry.grid_hw:
        raise ValueError(
            f"The image encoder returned a {tuple(features.shape[-2:])} feature grid but the "
            f"prompt encoder expects {geometry.grid_hw}; the model's parts do not fit together."
        )
    return ImageEmbedding(features=features, geometry=geometry)


def geometry_for(
    sam: torch.nn.Module, image_shape: tuple[int, ...], *, frame_side: int | None = None
) -> SamGeometry:
    """SAM's geometry for an image (or a tile, with ``frame_side``) of ``image_shape``."""
    return SamGeometry(
        original_hw=(int(image_shape[0]), int(image_shape[1])),
        img_size=int(sam.image_encoder.img_size),
        grid_hw=tuple(int(v) for v in sam.prompt_encoder.image_embedding_size),
        frame_side=frame_side,
    )


def _resize_like_sam(rgb: np.ndarray, geometry: SamGeometry) -> np.ndarray:
    """SAM's own resize (PIL bilinear on uint8) to the geometry's resized shape.

    For a whole image this is exactly ``ResizeLongestSide.apply_image``, so features
    match ``SamPredictor``'s; a tile is resized the same way to its fixed scale.
    """
    from segment_anything.utils.transforms import ResizeLongestSide
    from torchvision.transforms.functional import resize, to_pil_image

    if geometry.frame_side is None:
        return ResizeLongestSide(geometry.img_size).apply_image(rgb)
    if tuple(rgb.shape[:2]) == geometry.resized_hw:
        return rgb
    return np.array(resize(to_pil_image(rgb), list(geometry.resized_hw)))
