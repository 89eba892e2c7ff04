"""The classical family: separates touching nuclei, is local given its image-wide values."""

from __future__ import annotations

import numpy as np
import pytest

from aiod import metrics, synthetic
from aiod.errors import ModelError
from aiod.models import classical, resolve


class ArrayImage:
    """The part of ImageSource that prepare() uses, over an in-memory array."""

    def __init__(self, array):
        self.array = array
        self.spatial_shape = array.shape

    def read(self, box, channel=None):
        return self.array[box]


def nuclei_params(**overrides):
    return classical.Params(**resolve("classical", "nuclei", overrides)["params"])


@pytest.mark.parametrize("shape, radius", [((256, 256), (7.0, 12.0)), ((40, 128, 128), (6.0, 10.0))])
def test_touching_synthetic_nuclei_are_found_one_by_one(shape, radius):
    gt = synthetic.touching_nuclei(shape, n=50, radius=radius, seed=3)
    image = synthetic.render_nuclei(gt, seed=4)
    params = nuclei_params()
    labels = classical.segment(image, params, classical.prepare(ArrayImage(image), None, params))
    assert labels.dtype == np.uint32
    assert metrics.match_labels(gt, labels, thresh=0.5).f1 >= 0.95  # measured: 1.0 in 2D, 0.96 in 3D


def test_result_inside_a_box_does_not_depend_on_what_lies_beyond_its_halo():
    gt = synthetic.touching_nuclei((256, 256), n=60, radius=(7.0, 12.0), seed=8)
    image = synthetic.render_nuclei(gt, seed=9)
    params = nuclei_params()
    prepared = classical.prepare(ArrayImage(image), None, params)
    whole = classical.segment(image, params, prepared)
    halo = classical.min_halo(params)
    part = classical.segment(image[:128 + halo, :], params, prepared)
    core_whole, core_part = whole[:128 - halo, :], part[:128 - halo, :]
    # same partition of the core (ids may differ): each pair of labels maps one to one
    pairs = np.unique(np.stack([core_whole.ravel(), core_part.ravel()]), axis=1)
    assert len(set(pairs[0])) == len(set(pairs[1])) == pairs.shape[1]


def test_empty_image_gives_no_objects():
    image = np.full((64, 64), 7, dtype=np.uint16)
    params = nuclei_params()
    labels = classical.segment(image, params, classical.prepare(ArrayImage(image), None, params))
    assert labels.max() == 0


def test_fixed_threshold_is_used_as_given():
    image = np.arange(100, dtype=np.uint16).reshape(10, 10)
    assert classical.prepare(ArrayImage(image), None, nuclei_params(threshold=42.0))["threshold"] == 42.0


def test_min_size_removes_small_objects():
    image = np.zeros((64, 64), dtype=np.uint16)
    image[5:25, 5:25] = 1000   # 400 px
    image[40:44, 40:44] = 1000  # 16 px
    params = nuclei_params(min_size=50, sigma=0.0, intensity_weight=0.0)
    labels = classical.segment(image, params, {"threshold": 500.0, "high": 1000.0})
    assert len(np.unique(labels)) == 2 and labels[10, 10] > 0 and labels[42, 42] == 0


def test_threshold_sample_reads_bounded_blocks_of_a_large_image(monkeypatch):
    monkeypatch.setattr(classical, "SAMPLE_VOXELS", 10_000)
    reads = []

    class Recorder(ArrayImage):
        def read(self, box, channel=None):
            reads.append(box)
            return super().read(box, channel)

    image = np.random.default_rng(0).integers(0, 1000, size=(1024, 1024), dtype=np.uint16)
    classical.prepare(Recorder(image), None, nuclei_params())
    assert sum(np.prod([s.stop - s.start for s in box]) for box in reads) <= 2 * 512 * 512


@pytest.mark.parametrize("model, version, overrides, message", [
    ("celpose", "nuclei", {}, "unknown model 'celpose'; available models: classical"),
    ("classical", "nucleus", {}, "unknown version 'nucleus' of model 'classical' (did you mean 'nuclei'?); available versions: nuclei, cells"),
    ("classical", "nuclei", {"min_sise": 3}, "params.yaml: unknown parameter 'min_sise' for classical/nuclei (did you mean 'min_size'?)"),
    ("classical", "nuclei", {"sigma": -1}, "params.yaml: parameter 'sigma' of classical/nuclei: Input should be greater than or equal to 0 (got -1)"),
])
def test_bad_model_requests_are_refused_with_the_choices(model, version, overrides, message):
    with pytest.raises(ModelError) as err:
        resolve(model, version, overrides, source="params.yaml")
    assert message in str(err.value)


def test_resolved_spec_holds_every_parameter_typed():
    spec = resolve("classical", "cells", {"min_size": 10})
    assert spec["family"] == "classical" and spec["version"] == "cells"
    assert spec["params"]["min_size"] == 10 and spec["params"]["sigma"] == 2.0
    assert set(spec["params"]) == set(classical.Params.model_fields)
