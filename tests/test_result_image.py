"""`--publish_image`: the input image written into the published result, which then opens as one
NGFF image with its labels in ome-zarr-py (the reference reader) and napari-ome-zarr (napari's
own, which finds a label image's image only two folders above it); the cache entry is untouched."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from aiod import ngff, publish
from family_artifacts import folder_state
from test_ngff import ome_zarr_nodes, random_labels, write_labels, zattrs

LABELS = random_labels((40, 48))


def cache_entry(tmp_path):
    """A cached result apart from its image: labels of 40x48 in 16x16 chunks, three levels."""
    entry = tmp_path / "cache" / "entry"
    if not entry.exists():
        write_labels(entry / "labels.ome.zarr", "classical_nuclei", LABELS, "YX", (16, 16), scale=(0.5, 0.5))
        assert ngff.finish_labels(entry / "labels.ome.zarr", "classical_nuclei") == 3
    return entry


def publish_with_image(tmp_path, image, mode="copy", axes=None, with_image=True):
    entry = cache_entry(tmp_path)
    record = {"id": "a", "key": "k", "cache_entry": str(entry), "aiod_version": "test", "image": str(image)}
    publish.publish(outdir=tmp_path / "results", sample_id="a", labels=entry / "labels.ome.zarr", record=record,
                    mode=mode, image=(image, axes) if with_image else None)
    return tmp_path / "results" / "a.ome.zarr"


def level(result, k):
    import zarr
    return zarr.open_array(store=str(result / str(k)), mode="r")[...]


@pytest.mark.parametrize("mode", ["copy", "link", "symlink"])
def test_a_tiff_image_published_into_its_result_opens_with_the_labels_in_ome_zarr_py(tmp_path, mode, caplog):
    pixels = np.arange(40 * 48, dtype="uint16").reshape(40, 48)
    tifffile.imwrite(tmp_path / "img.tif", pixels)
    entry = cache_entry(tmp_path)
    before = folder_state(entry)
    result = publish_with_image(tmp_path, tmp_path / "img.tif", mode)
    assert folder_state(entry) == before  # the cache entry stays the mask alone
    for k, step in enumerate((1, 2, 4)):  # the labels' levels: every 2nd pixel, as theirs
        assert not (result / str(k)).is_symlink()
        np.testing.assert_array_equal(level(result, k), pixels[::step, ::step])
    ms = zattrs(result)["attributes"]["ome"]["multiscales"][0]
    assert [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]] == [[0.5, 0.5], [1.0, 1.0], [2.0, 2.0]]
    assert zattrs(result / "labels" / "classical_nuclei")["attributes"]["ome"]["image-label"]["source"] == {
        "image": "../../"}
    with caplog.at_level("WARNING"):
        nodes = ome_zarr_nodes(result)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("ome_zarr")] == []
    by_path = {n.zarr.path.rstrip("/"): n for n in nodes}
    assert set(by_path) == {str(result), str(result / "labels"), str(result / "labels" / "classical_nuclei")}
    np.testing.assert_array_equal(by_path[str(result)].data[0].compute(), pixels)
    np.testing.assert_array_equal(by_path[str(result / "labels" / "classical_nuclei")].data[0].compute(), LABELS)


def test_napari_ome_zarr_opens_the_image_and_its_labels_from_the_result(tmp_path):
    from napari_ome_zarr import napari_get_reader

    pixels = np.random.default_rng(1).integers(0, 4000, (2, 40, 48)).astype("uint16")  # two channels
    image = tmp_path / "img.ome.zarr"
    ngff.write_image(image, pixels, "CYX")
    result = publish_with_image(tmp_path, image)
    layers = napari_get_reader(str(result))(str(result))
    kinds = [kind for _, _, kind in layers]
    assert sorted(kinds) == ["image", "labels"], kinds
    data = {kind: data for data, _, kind in layers}
    assert len(data["image"]) == len(data["labels"]) == 3  # every level of both
    np.testing.assert_array_equal(np.asarray(data["image"][0]), pixels)
    np.testing.assert_array_equal(np.asarray(data["image"][1]), pixels[:, ::2, ::2])  # channels kept whole
    np.testing.assert_array_equal(np.asarray(data["labels"][0]), LABELS)


def test_an_identical_rerun_keeps_the_image_and_a_run_without_the_option_takes_it_out(tmp_path):
    tifffile.imwrite(tmp_path / "img.tif", np.ones((40, 48), "uint8"))
    result = publish_with_image(tmp_path, tmp_path / "img.tif")
    written = folder_state(result)
    assert publish_with_image(tmp_path, tmp_path / "img.tif") == result
    assert folder_state(result) == written  # nothing written again
    publish_with_image(tmp_path, tmp_path / "img.tif", with_image=False)
    assert not (result / "0").exists() and "multiscales" not in zattrs(result)["attributes"]["ome"]
    assert "source" not in zattrs(result / "labels" / "classical_nuclei")["attributes"]["ome"]["image-label"]
    publish_with_image(tmp_path, tmp_path / "img.tif")
    np.testing.assert_array_equal(level(result, 0), np.ones((40, 48), "uint8"))


def test_an_image_whose_axes_differ_from_the_labels_is_refused_and_nothing_is_published(tmp_path):
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((3, 40, 48), "uint8"), photometric="minisblack", metadata={"axes": "ZYX"})
    with pytest.raises(ValueError, match="spatial axes ZYX, the labels' YX"):
        publish_with_image(tmp_path, tmp_path / "img.tif")
    assert list((tmp_path / "results").iterdir()) == []
