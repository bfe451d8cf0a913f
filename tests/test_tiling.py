"""Tests of the tile grid."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from tiled_seg.errors import TileLayoutError
from tiled_seg.tiling import Box, plan_tiles


@pytest.mark.parametrize(
    ("shape", "tile", "halo", "chunk"),
    [
        ((100, 150), 32, 8, (16, 16)),
        ((64, 64), 64, 10, (64, 64)),
        ((97, 33), 16, 16, (8, 4)),
        ((5, 7), 64, 3, (64, 64)),
    ],
)
def test_cores_partition_the_slide_and_halos_are_clipped_grown_cores(shape, tile, halo, chunk):
    grid = plan_tiles(shape, tile, halo, chunk)
    cover = np.zeros(shape, dtype=int)
    for index, t in enumerate(grid.tiles):
        assert t.index == index
        assert t.grid_yx == divmod(index, grid.grid_shape[1])
        cover[t.core.slices] += 1
        expected = Box(
            max(t.core.y0 - halo, 0),
            min(t.core.y1 + halo, shape[0]),
            max(t.core.x0 - halo, 0),
            min(t.core.x1 + halo, shape[1]),
        )
        assert t.halo == expected
        assert t.core.y0 % chunk[0] == 0 and t.core.x0 % chunk[1] == 0
        assert t.core.shape[0] <= grid.tile_px[0] and t.core.shape[1] <= grid.tile_px[1]
    np.testing.assert_array_equal(cover, 1)
    assert len(grid.tiles) == grid.grid_shape[0] * grid.grid_shape[1]


def test_edge_tiles_have_smaller_cores():
    grid = plan_tiles((100, 150), 64, 8, (32, 32))
    assert grid.grid_shape == (2, 3)
    assert grid.tiles[0].core.shape == (64, 64)
    assert grid.tiles[-1].core.shape == (100 - 64, 150 - 128)


def test_slide_smaller_than_one_tile_is_one_tile_without_pairs():
    grid = plan_tiles((20, 30), 64, 10)
    assert len(grid.tiles) == 1
    assert grid.tiles[0].core == grid.tiles[0].halo == Box(0, 20, 0, 30)
    assert grid.neighbour_pairs() == []


def test_neighbour_pairs_are_exactly_the_touching_cores_including_diagonals():
    grid = plan_tiles((90, 90), 30, 5)
    pairs = grid.neighbour_pairs()
    assert pairs == sorted(pairs)
    expected = []
    for i, a in enumerate(grid.tiles):
        grown = Box(a.core.y0 - 1, a.core.y1 + 1, a.core.x0 - 1, a.core.x1 + 1)
        expected += [(i, j) for j in range(i + 1, len(grid.tiles)) if grown.intersect(grid.tiles[j].core)]
    assert pairs == expected
    assert len(pairs) == 6 + 6 + 8  # 3x3 grid: horizontal, vertical, diagonal


def test_tile_size_is_aligned_up_to_the_chunk_per_axis_with_a_warning():
    with pytest.warns(UserWarning, match="not a multiple of the zarr chunk"):
        grid = plan_tiles((200, 200), 50, 5, chunk_yx=(32, 20))
    assert grid.tile_px == (64, 60)
    assert grid.tiles[1].core.x0 == 60


def test_aligned_tile_size_gives_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grid = plan_tiles((200, 200), 64, 5, chunk_yx=(32, 16))
    assert grid.tile_px == (64, 64)


def test_halo_larger_than_tile_is_refused_naming_both_and_the_fix():
    with pytest.raises(TileLayoutError, match=r"halo_px=40.*\(32, 32\).*Raise tile_px or lower halo_px"):
        plan_tiles((100, 100), 32, 40)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"halo_px": 0}, "halo_px must be a positive integer.*at least 1 px"),
        ({"halo_px": -2}, "halo_px"),
        ({"halo_px": 2.5}, "halo_px"),
        ({"tile_px": 0}, "tile_px"),
        ({"tile_px": True}, "tile_px"),
        ({"shape_yx": (0, 10)}, r"shape_yx\[0\]"),
        ({"shape_yx": (10, 10, 3)}, "shape_yx must be"),
        ({"chunk_yx": (0, 8)}, "chunk_yx"),
    ],
)
def test_invalid_sizes_are_refused(kwargs, match):
    args = {"shape_yx": (100, 100), "tile_px": 32, "halo_px": 4} | kwargs
    with pytest.raises(TileLayoutError, match=match):
        plan_tiles(**args)


def test_box_geometry():
    box = Box(2, 10, 3, 7)
    assert box.shape == (8, 4)
    assert np.zeros((20, 20))[box.slices].shape == box.shape
    assert box.intersect(Box(10, 12, 0, 20)) is None
    assert box.intersect(Box(0, 5, 5, 20)) == Box(2, 5, 5, 7)
    assert Box(4, 6, 3, 4).relative_to(box) == Box(2, 4, 0, 1)
    with pytest.raises(TileLayoutError, match="does not lie inside"):
        Box(0, 6, 3, 4).relative_to(box)
    with pytest.raises(TileLayoutError, match="negative size"):
        Box(5, 4, 0, 1)
