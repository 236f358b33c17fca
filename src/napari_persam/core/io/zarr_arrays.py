"""Creating zarr arrays with zarr 3 (Python 3.11+) and zarr 2 (Python 3.10) alike.

zarr 3 dropped Python 3.10, and its ``create_array`` does not exist in zarr 2; the
project supports both, so array creation goes through this one function.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def create_array(
    store: str,
    *,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dtype: Any,
    attributes: dict[str, Any],
    fill_value: Any = 0,
    compress: bool = True,
):
    """Create a new zarr array at the folder ``store`` (fails if one exists).

    Parameters
    ----------
    store : str
        Folder of the new array.
    shape, chunks : tuple of int
    dtype : numpy dtype
    attributes : dict
        JSON-serialisable attributes stored with the array.
    fill_value : scalar
        Value of chunks never written.
    compress : bool
        False stores chunks raw (for data that barely compresses).
    """
    import zarr

    if hasattr(zarr, "create_array"):  # zarr 3
        options = {} if compress else {"compressors": None}
        return zarr.create_array(
            store=store,
            shape=shape,
            chunks=chunks,
            dtype=np.dtype(dtype),
            fill_value=fill_value,
            attributes=attributes,
            **options,
        )
    options = {} if compress else {"compressor": None}
    array = zarr.open_array(
        store,
        mode="w-",
        shape=shape,
        chunks=chunks,
        dtype=np.dtype(dtype),
        fill_value=fill_value,
        **options,
    )
    array.attrs.update(attributes)
    return array
