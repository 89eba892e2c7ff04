"""Save a screenshot of napari's window with the AIoD dock widget, a published mask over its image
and the substack plan of the image.

tests/test_napari_run.py runs this under Xvfb in a process of its own: its other tests run Qt's
offscreen platform, on which napari's OpenGL canvas cannot start, and a Qt application keeps the
platform it started with. Usage: napari_screenshot.py RESULT.ome.zarr IMAGE ROOT_DIR OUT.png;
writes OUT.png (the window) and OUT-canvas.png (napari's canvas alone).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "napari-aiod" / "src")]

import napari  # noqa: E402
from qtpy.QtWidgets import QApplication  # noqa: E402

from napari_aiod.layers import add_result  # noqa: E402
from napari_aiod.widget import AiodWidget  # noqa: E402


def main(result: Path, image: Path, root_dir: Path, out: Path) -> None:
    # napari's notice that its PyQt5 support is deprecated would cover part of the canvas
    from napari._qt import qt_main_window
    qt_main_window.SHOW_QT_WARNING = False
    viewer = napari.Viewer(title="AIoD", show=True)
    viewer.window.resize(1500, 950)
    widget = AiodWidget(viewer)
    widget.root_dir.setText(str(root_dir))
    widget.outdir.setText(str(result.parent))
    widget.set_model("classical", "nuclei")
    widget.add_image_paths([image])
    widget.num_substacks.setText("2")
    viewer.window.add_dock_widget(widget, name="AIoD segmentation", area="right")
    add_result(viewer, result, image, name=f"{image.stem} classical_nuclei")
    widget.preview_plan()
    viewer.reset_view()
    for _ in range(20):
        QApplication.processEvents()
    viewer.screenshot(path=str(out), canvas_only=False, flash=False)
    viewer.screenshot(path=str(out.with_name(f"{out.stem}-canvas.png")), canvas_only=True, flash=False)
    viewer.close()


if __name__ == "__main__":
    main(*map(Path, sys.argv[1:5]))
