"""aiod.ngff: OME-Zarr 0.5 label output, pyramids, small images and TIFF export."""

import json
import math

import numpy as np
import pytest
import tifffile

from aiod import ngff
from aiod.errors import InputError
from aiod.imageio import open_image


def zattrs(path):
    return json.loads((path / "zarr.json").read_text())


def random_labels(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 1000, shape).astype("uint32")


def write_labels(root, name, data, axes, chunks, scale=None):
    arr = ngff.create_labels(root, name, data.shape, axes, data.dtype, chunks=chunks, scale=scale)
    for start in range(0, data.shape[0], chunks[0]):  # chunk-row by chunk-row, as merge does
        arr[start:start + chunks[0]] = data[start:start + chunks[0]]
    return arr


@pytest.mark.parametrize("shape,axes,chunks", [((130, 150), "YX", (32, 64)),
                                               ((20, 70, 90), "ZYX", (8, 32, 32))])
def test_labels_round_trip(tmp_path, shape, axes, chunks):
    data = random_labels(shape)
    root = tmp_path / "img.ome.zarr"
    write_labels(root, "cells", data, axes, chunks)
    n = ngff.finish_labels(root, "cells")
    assert n > 1
    level0 = ngff.open_labels(root, "cells")
    assert level0.dtype == np.uint32 and level0.chunks == chunks
    np.testing.assert_array_equal(level0[...], data)
    np.testing.assert_array_equal(ngff.open_labels(root)[...], data)  # first label by default


def test_default_chunks_are_clipped_to_the_shape(tmp_path):
    a2 = ngff.create_labels(tmp_path / "a.ome.zarr", "x", (50, 3000), "YX", "uint32")
    a3 = ngff.create_labels(tmp_path / "b.ome.zarr", "x", (10, 300, 60), "ZYX", "uint64")
    assert a2.chunks == (50, 1024)
    assert a3.chunks == (10, 128, 60)


def test_metadata_follows_ngff_05(tmp_path):
    data = random_labels((40, 200, 150))
    root = tmp_path / "img.ome.zarr"
    write_labels(root, "cells", data, "ZYX", (16, 32, 32), scale=(1.0, 1.0, 1.0))
    n = ngff.finish_labels(root, "cells")

    assert zattrs(root)["attributes"]["ome"]["version"] == "0.5"
    labels = zattrs(root / "labels")
    assert labels["node_type"] == "group"
    assert labels["attributes"]["ome"] == {"version": "0.5", "labels": ["cells"]}

    ome = zattrs(root / "labels" / "cells")["attributes"]["ome"]
    assert ome["version"] == "0.5"
    assert "image-label" in ome
    ms = ome["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    assert all(a["type"] == "space" for a in ms["axes"])
    assert [d["path"] for d in ms["datasets"]] == [str(i) for i in range(n)]

    shapes = []
    for i, d in enumerate(ms["datasets"]):
        meta = zattrs(root / "labels" / "cells" / d["path"])
        assert meta["node_type"] == "array" and meta["dimension_names"] == ["z", "y", "x"]
        shapes.append(tuple(meta["shape"]))
        assert d["coordinateTransformations"][0]["type"] == "scale"
    scales = [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]]
    assert scales[0] == [1.0, 1.0, 1.0]
    for i in range(1, n):
        for axis in range(3):
            factor = scales[i][axis] / scales[i - 1][axis]
            assert factor in (1.0, 2.0)
            assert factor == 2.0 or axis == 0  # Y and X are always halved
            expected = math.ceil(shapes[i - 1][axis] / factor)
            assert shapes[i][axis] == expected
    last = shapes[-1]
    assert all(s <= c for s, c in zip(last, (16, 32, 32)))  # the top level fits one chunk
    assert any(s > c for s, c in zip(shapes[-2], (16, 32, 32)))  # ...and is the first that does


def test_pyramid_levels_are_nearest_neighbour_samples(tmp_path):
    data = random_labels((33, 47), seed=3)
    root = tmp_path / "img.ome.zarr"
    write_labels(root, "cells", data, "YX", (8, 8))
    n = ngff.finish_labels(root, "cells")
    expected = data
    for level in range(1, n):
        expected = expected[::2, ::2]
        np.testing.assert_array_equal(ngff.open_labels(root, "cells", level)[...], expected)


def test_anisotropic_z_is_kept_until_y_and_x_catch_up(tmp_path):
    root = tmp_path / "img.ome.zarr"
    ngff.create_labels(root, "cells", (64, 512, 512), "ZYX", "uint32", chunks=(8, 16, 16),
                       scale=(4.0, 1.0, 1.0))
    n = ngff.finish_labels(root, "cells", max_levels=5)
    ms = zattrs(root / "labels" / "cells")["attributes"]["ome"]["multiscales"][0]
    scales = [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]]
    assert n == 5
    assert scales == [[4.0, 1.0, 1.0], [4.0, 2.0, 2.0], [4.0, 4.0, 4.0], [8.0, 8.0, 8.0],
                      [16.0, 16.0, 16.0]]
    assert ngff.open_labels(root, "cells", 4).shape == (16, 32, 32)


def test_finishing_twice_rebuilds_the_same_levels(tmp_path):
    data = random_labels((100, 100))
    root = tmp_path / "img.ome.zarr"
    write_labels(root, "cells", data, "YX", (16, 16))
    n1 = ngff.finish_labels(root, "cells")
    n2 = ngff.finish_labels(root, "cells", max_levels=2)
    assert (n1, n2) == (4, 2)
    assert sorted(p.name for p in (root / "labels" / "cells").iterdir()) == ["0", "1", "zarr.json"]


def test_second_label_image_is_added_to_the_list(tmp_path):
    root = tmp_path / "img.ome.zarr"
    ngff.create_labels(root, "cells", (10, 10), "YX", "uint32")
    ngff.create_labels(root, "nuclei", (10, 10), "YX", "uint16")
    ngff.create_labels(root, "cells", (10, 10), "YX", "uint32")  # replaced, listed once
    assert zattrs(root / "labels")["attributes"]["ome"]["labels"] == ["cells", "nuclei"]
    assert ngff.open_labels(root, "nuclei").dtype == np.uint16


def test_labels_beside_an_image_point_back_to_it(tmp_path):
    root = tmp_path / "img.ome.zarr"
    ngff.write_image(root, np.zeros((10, 10), "uint8"), "YX")
    ngff.create_labels(root, "cells", (10, 10), "YX", "uint32")
    ome = zattrs(root / "labels" / "cells")["attributes"]["ome"]
    assert ome["image-label"]["source"] == {"image": "../../"}
    assert "multiscales" in zattrs(root)["attributes"]["ome"]  # the image metadata is kept


def test_create_labels_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="label axes must be 'YX' or 'ZYX'"):
        ngff.create_labels(tmp_path / "a.zarr", "x", (2, 10, 10), "CYX", "uint32")
    with pytest.raises(ValueError, match="integer"):
        ngff.create_labels(tmp_path / "a.zarr", "x", (10, 10), "YX", "float32")


def test_open_labels_errors(tmp_path):
    root = tmp_path / "img.ome.zarr"
    ngff.write_image(root, np.zeros((10, 10), "uint8"), "YX")
    with pytest.raises(InputError, match="no label images"):
        ngff.open_labels(root)
    ngff.create_labels(root, "cells", (10, 10), "YX", "uint32")
    with pytest.raises(InputError, match="level 3 does not exist; levels are 0..0"):
        ngff.open_labels(root, "cells", level=3)
    with pytest.raises(InputError, match="no label image here"):
        ngff.open_labels(root, "other")


def test_open_image_reads_a_written_image_with_axes_and_scale(tmp_path):
    data = random_labels((2, 6, 20, 30)).astype("uint16")
    root = tmp_path / "img.ome.zarr"
    ngff.write_image(root, data, "CZYX", scale=(2.0, 0.5, 0.25))
    ome = zattrs(root)["attributes"]["ome"]
    assert ome["version"] == "0.5"
    assert [a["type"] for a in ome["multiscales"][0]["axes"]] == ["channel", "space", "space",
                                                                  "space"]
    with open_image(root) as img:
        assert (img.axes, img.shape, img.scale) == ("CZYX", (2, 6, 20, 30), (2.0, 0.5, 0.25))
        np.testing.assert_array_equal(img.read((slice(1, 3), slice(5, 9), slice(0, 7))),
                                      data[:, 1:3, 5:9, 0:7])


def test_write_image_wants_ngff_axis_order(tmp_path):
    with pytest.raises(ValueError, match="NGFF order"):
        ngff.write_image(tmp_path / "a.zarr", np.zeros((4, 4, 2)), "YXC")


@pytest.mark.parametrize("shape,axes,chunks", [((70, 90), "YX", (32, 32)),
                                               ((5, 40, 50), "ZYX", (2, 16, 32))])
def test_export_tiff_matches_level_0(tmp_path, shape, axes, chunks):
    data = random_labels(shape)
    root = tmp_path / "img.ome.zarr"
    scale = (3.0, 0.5, 0.5)[-len(axes):]
    write_labels(root, "cells", data, axes, chunks, scale=scale)
    out = tmp_path / "cells.tif"
    ngff.export_tiff(root, "cells", out)
    with tifffile.TiffFile(out) as tf:
        assert tf.is_bigtiff and tf.is_ome
        assert tf.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert tf.pages[0].is_tiled
        np.testing.assert_array_equal(tf.asarray(), data)
    with open_image(out) as img:
        assert (img.axes, img.scale) == (axes, scale)
    assert not list(tmp_path.glob(".*partial"))


def test_export_tiff_streams_tile_rows_when_a_plane_is_over_budget(tmp_path, monkeypatch):
    data = random_labels((3, 50, 70))
    root = tmp_path / "img.ome.zarr"
    write_labels(root, "cells", data, "ZYX", (2, 16, 16))
    monkeypatch.setattr(ngff, "EXPORT_BUDGET", 1000)  # smaller than one plane
    ngff.export_tiff(root, "cells", tmp_path / "cells.tif")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "cells.tif"), data)


def published_result(tmp_path, image, mode="copy", sample_id="a"):
    """A result made apart from its image (as the pipeline caches it), published by `mode`."""
    from aiod import publish
    entry = tmp_path / "cache" / "entry"
    if not entry.exists():
        write_labels(entry / "labels.ome.zarr", "classical_nuclei", random_labels((40, 48)), "YX", (16, 16))
        ngff.finish_labels(entry / "labels.ome.zarr", "classical_nuclei")
    record = {"id": sample_id, "key": "k", "cache_entry": str(entry), "aiod_version": "test", "image": str(image)}
    publish.publish(outdir=tmp_path / "results", sample_id=sample_id, labels=entry / "labels.ome.zarr", record=record,
                    mode=mode)
    return tmp_path / "results" / f"{sample_id}.ome.zarr"


def ome_zarr_nodes(path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    return list(Reader(parse_url(str(path)))())


@pytest.mark.parametrize("mode", ["copy", "link", "symlink"])
def test_ome_zarr_py_opens_a_published_mask_with_its_ome_zarr_image_without_warnings(tmp_path, mode, caplog):
    image = tmp_path / "data" / "img.ome.zarr"
    ngff.write_image(image, np.arange(40 * 48, dtype="uint16").reshape(40, 48), "YX")
    result = published_result(tmp_path, image, mode)
    label = zattrs(result / "labels" / "classical_nuclei")["attributes"]["ome"]["image-label"]
    assert label["source"] == {"image": "../../../../data/img.ome.zarr"}
    with caplog.at_level("WARNING"):
        nodes = ome_zarr_nodes(result / "labels" / "classical_nuclei")
    assert [r.getMessage() for r in caplog.records if r.name.startswith("ome_zarr")] == []
    by_path = {n.zarr.path: n for n in nodes}
    assert set(by_path) == {str(image), str(result / "labels" / "classical_nuclei")}
    assert np.array_equal(by_path[str(image)].data[0].compute(), np.arange(40 * 48).reshape(40, 48))
    labels = by_path[str(result / "labels" / "classical_nuclei")]
    assert np.array_equal(labels.data[0].compute(), random_labels((40, 48)))
    cached = zattrs(tmp_path / "cache" / "entry" / "labels.ome.zarr" / "labels" / "classical_nuclei")
    assert "source" not in cached["attributes"]["ome"]["image-label"]  # the shared entry names no one's image


def test_a_published_mask_names_the_group_of_an_image_given_as_its_level_0_array(tmp_path):
    image = tmp_path / "img.ome.zarr"
    ngff.write_image(image, np.zeros((40, 48), "uint8"), "YX")
    assert ngff.image_group(image / "0") == image and ngff.image_group(image) == image
    result = published_result(tmp_path, image / "0")
    assert zattrs(result / "labels" / "classical_nuclei")["attributes"]["ome"]["image-label"]["source"] == {
        "image": "../../../../img.ome.zarr"}


def test_a_mask_of_a_tiff_names_no_image_and_is_published_as_cached(tmp_path):
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((40, 48), "uint8"))
    assert ngff.image_group(tmp_path / "img.tif") is None
    result = published_result(tmp_path, tmp_path / "img.tif")
    cached = tmp_path / "cache" / "entry" / "labels.ome.zarr" / "labels" / "classical_nuclei" / "zarr.json"
    assert (result / "labels" / "classical_nuclei" / "zarr.json").read_bytes() == cached.read_bytes()


@pytest.mark.parametrize("mode", ["copy", "link", "symlink"])
def test_republishing_keeps_a_mask_that_names_its_image_until_the_image_moves(tmp_path, mode):
    image = tmp_path / "data" / "img.ome.zarr"
    ngff.write_image(image, np.zeros((40, 48), "uint8"), "YX")
    result = published_result(tmp_path, image, mode)

    def state():
        return {p: (p.lstat().st_ino, p.lstat().st_mtime_ns) for p in sorted(result.rglob("*"))}

    first = state()
    assert published_result(tmp_path, image, mode) == result and state() == first  # nothing copied again
    moved = tmp_path / "elsewhere" / "img.ome.zarr"
    moved.parent.mkdir()
    image.rename(moved)
    published_result(tmp_path, moved, mode)
    assert zattrs(result / "labels" / "classical_nuclei")["attributes"]["ome"]["image-label"]["source"] == {
        "image": "../../../../elsewhere/img.ome.zarr"}
    if mode == "link":  # the new metadata file replaced the hard link: the cache entry is as it was
        cached = tmp_path / "cache" / "entry" / "labels.ome.zarr" / "labels" / "classical_nuclei" / "zarr.json"
        assert "source" not in json.loads(cached.read_text())["attributes"]["ome"]["image-label"]
