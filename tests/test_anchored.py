"""Network evaluation anchored to the image (aiod.models.anchored): a box gives bit for bit the
whole image's values beyond `covered` pixels from its inner edges, for a stand-in network whose
output at every pixel depends on its whole tile (as Cellpose's style vector makes it)."""

from __future__ import annotations

import numpy as np
import pytest

from aiod.models import anchored


def tile_dependent(tiles: np.ndarray) -> np.ndarray:
    """Per pixel: its value, the tile's mean (a 'style') and a neighbour product: (N, 3, ty, tx)."""
    mean = tiles.mean(axis=(1, 2, 3), keepdims=True)
    shifted = np.roll(tiles[:, :1], 1, axis=-1)
    return np.concatenate([tiles[:, :1] + mean, tiles[:, :1] * shifted, np.broadcast_to(mean, tiles[:, :1].shape)],
                          axis=1)


@pytest.mark.parametrize("length, scale, origin, size", [(1000, 1.32, 137, 700), (517, 0.61, 3, 500),
                                                         (300, 1.0, 41, 200), (64, 2.7, 0, 64)])
def test_a_box_resamples_to_exactly_the_whole_axis_samples(length, scale, origin, size):
    line = np.random.default_rng(0).random((2, length), dtype=np.float32)
    m = anchored.resized_length(length, scale)
    whole, start0 = anchored.resample(line, 1, length, m, 0)
    assert start0 == 0 and whole.shape == (2, m)
    part, start = anchored.resample(line[:, origin:origin + size], 1, length, m, origin)
    assert part.shape[1] > 0 and np.array_equal(part, whole[:, start:start + part.shape[1]])
    # every sample whose two neighbours the box holds, and no other
    back, _ = anchored.resample(whole, 1, m, length, 0)
    assert back.shape == line.shape


def test_tiles_are_laid_from_the_image_not_the_box():
    assert anchored.tile_starts(1000, 224, 192, 8) == [-8, 184, 376, 568, 760, 784]  # the last ends at 1008
    assert anchored.tile_starts(100, 128, 192, 8) == [-8]  # one tile, padded past the image's end
    assert anchored.tile_size(100, 224, 8, 16) == 128


@pytest.mark.parametrize("scale", [1.0, 1.32, 0.7])
def test_a_box_gives_the_whole_images_values_beyond_one_tile_from_its_inner_edges(scale):
    shape, (oy, ox), end = (1200, 1000), (213, 301), 1000  # box starts no tile stride divides
    image = np.random.default_rng(1).random((1, *shape), dtype=np.float32)
    whole = anchored.evaluate(tile_dependent, image, (0, 0), shape, scale, n_out=3, fill=(0, 0, -1))
    assert whole.shape == (3, *shape) and np.all(whole[2] > 0)  # every pixel covered
    box = anchored.evaluate(tile_dependent, image[:, oy:end, ox:], (oy, ox), shape, scale, n_out=3, fill=(0, 0, -1))
    assert box.shape == (3, end - oy, shape[1] - ox)
    c = anchored.covered(scale)
    # exact beyond `covered` from the inner edges (top, left, bottom); the right edge is the image's
    assert box[:, c:-c, c:].size and np.array_equal(box[:, c:-c, c:], whole[:, oy + c:end - c, ox + c:])
    assert np.any(box[2, :c] != whole[2, oy:oy + c, ox:])  # near an inner edge: not the whole's
    # the same box evaluated as if it were an image of its own (tiles from its first pixel) differs
    # all over, not only at its edges
    alone = anchored.evaluate(tile_dependent, image[:, oy:end, ox:], (0, 0), (end - oy, shape[1] - ox), scale,
                              n_out=3, fill=(0, 0, -1))
    assert np.mean(alone[:, c:-c, c:] != whole[:, oy + c:end - c, ox + c:]) > 0.5


def test_pixels_no_tile_reached_get_the_fill_value():
    image = np.ones((1, 600, 600), np.float32)
    box = anchored.evaluate(tile_dependent, image[:, 100:500, 100:500], (100, 100), (600, 600), 1.0, n_out=3,
                            fill=(0, 0, -7))  # holds the tiles at 184 only: rows and columns 84-307
    assert np.all(box[2, :8] == -7) and np.all(box[2, -8:] == -7)  # the box's inner edges
    assert np.all(box[2, 150, 84:308] > 0) and np.all(box[2, 150, 308:] == -7)


def test_every_batch_has_the_same_number_of_tiles():
    sizes = []

    def network(tiles):
        sizes.append(tiles.shape[0])
        return tile_dependent(tiles)

    anchored.evaluate(network, np.zeros((1, 900, 500), np.float32), (0, 0), (900, 500), 1.0, n_out=3, fill=(0, 0, 0),
                      batch=4)
    assert len(sizes) > 1 and set(sizes) == {4}
