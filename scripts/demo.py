"""Open napari with a sample image, its painted reference and the PerSAM widget.

Press Run in the widget: the first run downloads the chosen SAM checkpoint once
(ViT-B, 375 MB) into the cache folder (see docs/models.md); pick the model "tiny"
to try the plugin without a download (its masks are meaningless).
"""

import sys

import napari


def main(sample: str = "coins") -> None:
    viewer = napari.Viewer(title="napari-persam demo")
    viewer.open_sample("napari-persam", sample)
    viewer.window.add_plugin_dock_widget("napari-persam", "PerSAM")
    napari.run()


if __name__ == "__main__":
    main(*sys.argv[1:2])
