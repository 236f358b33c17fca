"""napari dock widgets: thin layers over :mod:`napari_persam.core` (Qt lives only here)."""
