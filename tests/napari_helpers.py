"""What the napari plugin's tests share: the engine for the widget's runs, the Qt application,
a widget set up for a test's folders, and waiting for a run (tests/test_napari*.py)."""

from __future__ import annotations

import os
import time

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("napari")
pytest.importorskip("napari_aiod")

from napari.components import ViewerModel  # noqa: E402

from napari_aiod.widget import AiodWidget  # noqa: E402
from pipeline_helpers import NEXTFLOW  # noqa: E402

BIG = (1100, 1100)  # larger than one 1024² chunk: the published mask has a pyramid of 2 levels


@pytest.fixture(scope="module", autouse=True)
def engine():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIOD_NEXTFLOW", NEXTFLOW)
        mp.setenv("NXF_OFFLINE", "true")
        yield


@pytest.fixture(scope="module")
def qt(qapp):
    return qapp


def make_widget(tmp, viewer=None) -> AiodWidget:
    w = AiodWidget(viewer or ViewerModel())
    w.root_dir.setText(str(tmp / "root"))
    w.outdir.setText(str(tmp / "results"))
    w.profile.setCurrentText("test")
    w.num_substacks.setText("1")
    return w


def wait(qapp, done, timeout=600):
    end = time.monotonic() + timeout
    while not done():
        if time.monotonic() > end:
            raise AssertionError(f"not done after {timeout} s")
        qapp.processEvents()
        time.sleep(0.05)


def run_widget(qapp, w: AiodWidget) -> int:
    codes = []
    w.run_finished.connect(codes.append)
    w.run_button.click()
    wait(qapp, lambda: codes)
    return codes[0]
