"""napari-aiod's reader: an AIoD result opened in napari (File > Open) shows its image and its mask
together, whatever the input was, with no copy of the image; other OME-Zarr folders are left to
other readers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from aiod import ngff
from test_ngff import write_labels
from test_result_image import LABELS, cache_entry, publish_with_image


def opened(path):
    """The layers napari makes of `path` with this plugin's reader, found as napari finds it (its
    test plugin hides installed plugins: discovered here)."""
    import npe2
    from napari.components import ViewerModel

    npe2.PluginManager.instance().discover()
    viewer = ViewerModel()
    layers = viewer.open(str(path), plugin="napari-aiod")
    return {type(layer).__name__: layer for layer in layers}


def assert_image_and_mask(path, pixels):
    layers = opened(path)
    assert set(layers) == {"Image", "Labels"}
    image, labels = layers["Image"], layers["Labels"]
    np.testing.assert_array_equal(np.asarray(image.data[0] if image.multiscale else image.data), pixels)
    np.testing.assert_array_equal(np.asarray(labels.data[0]), LABELS)  # the mask's levels, lazily
    assert list(labels.scale) == [0.5, 0.5] and labels.multiscale


def test_a_result_of_a_tiff_opens_with_the_tiff_its_record_names(tmp_path):
    pixels = np.arange(40 * 48, dtype="uint16").reshape(40, 48)
    tifffile.imwrite(tmp_path / "img.tif", pixels)
    assert_image_and_mask(publish_with_image(tmp_path, tmp_path / "img.tif", with_image=False), pixels)


@pytest.mark.parametrize("inside", [False, True])
def test_a_result_of_an_ome_zarr_opens_with_the_image_it_names_or_holds(tmp_path, inside):
    pixels = np.arange(40 * 48, dtype="uint16").reshape(40, 48) * 3
    ngff.write_image(tmp_path / "img.ome.zarr", pixels, "YX")
    result = publish_with_image(tmp_path, tmp_path / "img.ome.zarr", with_image=inside)
    assert ngff.image_group(result) == (result if inside else None)
    assert_image_and_mask(result, pixels)


def test_a_cache_entry_opens_with_the_image_its_manifest_names_and_a_moved_image_leaves_the_mask(tmp_path):
    pixels = np.full((40, 48), 7, "uint8")
    tifffile.imwrite(tmp_path / "img.tif", pixels)
    entry = cache_entry(tmp_path)
    (entry / "manifest.json").write_text(json.dumps({"image": {"path": str(tmp_path / "img.tif")}}))
    assert_image_and_mask(entry / "labels.ome.zarr", pixels)
    (tmp_path / "img.tif").rename(tmp_path / "moved.tif")
    assert set(opened(entry / "labels.ome.zarr")) == {"Labels"}


def test_an_ome_zarr_that_aiod_did_not_write_is_left_to_other_readers(tmp_path):
    from napari_aiod.reader import get_reader

    ngff.write_image(tmp_path / "img.ome.zarr", np.zeros((8, 8), "uint8"), "YX")
    write_labels(tmp_path / "img.ome.zarr", "cells", np.ones((8, 8), "uint32"), "YX", (8, 8))
    assert get_reader(str(tmp_path / "img.ome.zarr")) is None
    assert get_reader(str(tmp_path / "nothing.ome.zarr")) is None
