"""Turning any microscopy or photo array into the 8-bit RGB image SAM expects.

SAM's encoder was trained on 8-bit RGB photos. Microscopy users bring 16-bit,
float, integer and boolean images, grey or with several channels; they expect the
contrast of a viewer's auto-contrast, so those are scaled by robust percentiles.
"""

from __future__ import annotations

import numpy as np

from napari_persam.core.errors import InputError, option

#: Percentiles mapped to 0 and 255 for non-8-bit images (like napari's auto-contrast
#: but robust to a few hot pixels).
LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5

# Percentiles of very large images are estimated on a strided subsample: exact
# percentiles of a 100-megapixel image would cost seconds and change nothing visible.
_PERCENTILE_SAMPLE = 4_000_000


#: Per-channel (low, high) contrast limits: these map to 0 and 255.
Limits = tuple[tuple[float, float], ...]


def prepare_image(
    image: np.ndarray,
    *,
    channels: tuple[int, ...] | None = None,
    limits: Limits | None = None,
) -> np.ndarray:
    """An RGB uint8 copy of a 2D image.

    Parameters
    ----------
    image : array, (H, W) or (H, W, C)
        Any numeric or boolean dtype. C = 1 is grey, 3 is RGB, 4 is RGBA (alpha
        dropped); other channel counts need ``channels``.
    channels : tuple of int, optional
        One channel index (shown as grey) or three (as R, G, B) of the last axis.
    limits : tuple of (low, high), optional
        Contrast limits per selected channel (from :func:`contrast_limits`) instead
        of this image's own: the tiles of one large image are all scaled alike.

    Returns
    -------
    (H, W, 3) uint8
        uint8 images are used as they are; bool becomes 0/255; every other dtype is
        scaled per channel so the 0.5th percentile maps to 0 and the 99.5th to 255.

    Raises
    ------
    ValueError
        For a wrong number of dimensions or channels, NaN or infinite pixels, or a
        non-numeric dtype, saying what to do.
    """
    array = _checked(image, channels)
    if array.dtype == np.uint8:
        scaled = array
    elif array.dtype == np.bool_:
        scaled = array.astype(np.uint8) * np.uint8(255)
    else:
        if limits is None:
            limits = _limits_of(array)
        if len(limits) != array.shape[-1]:
            raise ValueError(f"{len(limits)} contrast limits for {array.shape[-1]} channel(s).")
        scaled = np.stack(
            [_scale(array[..., c], *limits[c]) for c in range(array.shape[-1])], axis=-1
        )
    if scaled.shape[-1] == 1:
        scaled = np.repeat(scaled, 3, axis=-1)
    return np.ascontiguousarray(scaled)


def prepare_mask(mask: np.ndarray, image_shape: tuple[int, ...]) -> np.ndarray:
    """A boolean object mask (nonzero = object) checked against its image.

    Parameters
    ----------
    mask : array, (H, W)
        Any numeric or boolean dtype; nonzero pixels are the object.
    image_shape : tuple
        Shape of the image the mask belongs to; its first two entries must be (H, W).

    Raises
    ------
    ValueError
        If the mask is not 2D, differs in shape from the image, has NaN values or is
        empty.
    """
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(
            f"The reference mask must be 2D (H, W), got shape {array.shape}. "
            "For a stack, pass the mask of the reference slice (e.g. labels[z])."
        )
    if array.shape != tuple(image_shape[:2]):
        raise ValueError(
            f"The reference mask has shape {array.shape} but the image has shape "
            f"{tuple(image_shape)}; paint the mask on a layer with the image's shape."
        )
    if array.dtype.kind == "f" and np.isnan(array).any():
        raise ValueError("The reference mask contains NaN; use 0 for background.")
    boolean = array != 0
    if not boolean.any():
        raise ValueError(
            "The reference mask is empty: paint the object you want to find "
            "(any nonzero label) before learning."
        )
    return boolean


def _select_channels(array: np.ndarray, channels: tuple[int, ...] | None) -> np.ndarray:
    count = array.shape[-1]
    if channels is not None:
        bad = [c for c in channels if not -count <= c < count]
        if bad:
            raise InputError(
                f"Channel(s) {bad} do not exist: the image has {count} channel(s) "
                f"in its last axis (indices 0..{count - 1}); choose others with "
                f"{option('channels')}."
            )
        return array[..., list(channels)]
    if count in (1, 3):
        return array
    if count == 4:
        return array[..., :3]  # RGBA: the alpha channel is not image content
    raise InputError(
        f"Image has {count} channels in its last axis (shape {array.shape}); SAM takes "
        f"grey or RGB. Choose one channel (grey) or three (RGB) with {option('channels')}, "
        "or pass one slice if the last axis is not channels."
    )


def contrast_limits(image, *, channels: tuple[int, ...] | None = None) -> Limits | None:
    """The contrast limits :func:`prepare_image` would use for ``image`` as a whole.

    ``image`` may be a lazy array (zarr, dask, a memory-mapped TIFF) of any size:
    only a strided subsample of about four million pixels is read. ``None`` for
    uint8 and bool images, which are used as they are.
    """
    shape = tuple(int(n) for n in image.shape)
    step = max(1, int(np.ceil(np.sqrt(shape[0] * shape[1] / _PERCENTILE_SAMPLE))))
    sample = _checked(np.asarray(image[::step, ::step]), channels)
    if sample.dtype in (np.uint8, np.bool_):
        return None
    return _limits_of(sample)


def _checked(image, channels: tuple[int, ...] | None) -> np.ndarray:
    """``image`` as an (H, W, C) numpy array with the chosen channels, or a clear ValueError."""
    array = np.asarray(image)
    if array.dtype.kind not in "biuf":
        raise ValueError(
            f"Image dtype {array.dtype} is not numeric; pass an integer, float or boolean array."
        )
    if array.ndim == 2:
        array = array[..., np.newaxis]
    elif array.ndim != 3:
        raise ValueError(
            f"Expected a 2D image (H, W) or (H, W, C), got shape {array.shape}. "
            "For a stack, pass one slice at a time (e.g. image[z])."
        )
    array = _select_channels(array, channels)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise ValueError(
            f"Image has {bad} NaN or infinite pixel(s); replace them first "
            "(e.g. numpy.nan_to_num(image)) so the contrast can be computed."
        )
    return array


def _limits_of(array: np.ndarray) -> Limits:
    return tuple(_channel_limits(array[..., c]) for c in range(array.shape[-1]))


def _channel_limits(channel: np.ndarray) -> tuple[float, float]:
    values = channel.astype(np.float64, copy=False)
    sample = values.ravel()
    if sample.size > _PERCENTILE_SAMPLE:
        sample = sample[:: sample.size // _PERCENTILE_SAMPLE]
    low, high = np.percentile(sample, [LOW_PERCENTILE, HIGH_PERCENTILE])
    if high <= low:
        # Flat (or nearly binary) image: fall back to the full range so a 0/1 or
        # constant image still shows its structure instead of turning black.
        low, high = float(values.min()), float(values.max())
    return float(low), float(high)


def _scale(channel: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros(channel.shape, dtype=np.uint8)
    values = channel.astype(np.float64, copy=False)
    scaled = (values - low) * (255.0 / (high - low))
    return np.clip(scaled, 0, 255).round().astype(np.uint8)
