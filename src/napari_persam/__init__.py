"""napari-persam: paint one object, get every object like it.

Personalized segmentation with the Segment Anything Model (PerSAM and PerSAM-F,
Zhang et al. 2023, arXiv 2305.03048) for napari, Python scripts and the command line.

The headless library lives in :mod:`napari_persam.core`; importing this package
imports nothing heavy, so napari can list the plugin without loading torch.
"""

__version__ = "0.2.0"

__all__ = ["__version__"]
