"""napari dock widgets (Qt and napari are imported here, never in ``core``)."""

from napari_persam._widgets._persam_widget import PerSAMMenuWidget, PerSAMWidget

__all__ = ["PerSAMMenuWidget", "PerSAMWidget"]
