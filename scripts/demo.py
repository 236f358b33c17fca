"""Open napari with a sample image, its painted reference and the PerSAM widget.

Press Run in the widget: the first run downloads the chosen SAM checkpoint once
(ViT-B, 375 MB) into the cache folder (see docs/models.md); pick the model "tiny"
to try the plugin without a download (its masks are meaningless).
"""

import argparse
from pathlib import Path

import napari


def main(sample: str = "coins", *, headless: bool = False) -> None:
    viewer = napari.Viewer(title="napari-persam demo")
    viewer.open_sample("napari-persam", sample)
    viewer.window.add_plugin_dock_widget("napari-persam", "PerSAM")
    if headless:
        from qtpy.QtCore import QTimer

        shot = Path("demo.png").resolve()

        def save_and_quit() -> None:
            viewer.screenshot(str(shot), canvas_only=False)
            print(f"napari opened with the PerSAM widget on {sample!r}; screenshot: {shot}")
            viewer.close()

        QTimer.singleShot(3000, save_and_quit)
    napari.run()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sample", nargs="?", default="coins", help="sample data (coins, ...)")
    parser.add_argument(
        "--headless", action="store_true", help="save a screenshot after 3 s and quit (no screen)"
    )
    arguments = parser.parse_args()
    main(arguments.sample, headless=arguments.headless)
