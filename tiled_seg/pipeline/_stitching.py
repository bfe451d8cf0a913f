"""Stitch the scratch tiles: match neighbours on workers, then serve global labels lazily.

Workers read tile labels from scratch themselves; only the small matches come
back. The stitched image is a dask array with one block per tile core, each
block task carrying only its own tile's lookup table, so no task ever holds
the whole plan.
"""

from __future__ import annotations

from typing import Sequence

import dask
import dask.array as da
import numpy as np
from distributed import Client

from tiled_seg._manifest import TileResult
from tiled_seg.pipeline._tiles import scratch_array
from tiled_seg.stitch import StitchPlan, TileMatches, apply_lookup, build_lookup_tables, match_tiles
from tiled_seg.tiling import Tile, TileGrid


def _tile_labels(scratch: str, name: str, tile: Tile) -> np.ndarray:
    height, width = tile.halo.shape
    return scratch_array(scratch, name)[tile.index, :height, :width]


def _match_pair(scratch: str, tile_a: Tile, tile_b: Tile, min_overlap: float) -> TileMatches:
    return match_tiles(
        tile_a,
        _tile_labels(scratch, "objects", tile_a),
        tile_b,
        _tile_labels(scratch, "objects", tile_b),
        min_overlap=min_overlap,
    )


def stitch_tiles(
    client: Client, scratch: str, grid: TileGrid, results: Sequence[TileResult], min_overlap: float
) -> StitchPlan:
    """Match every neighbouring tile pair on the workers and join the matches into one plan.

    Parameters
    ----------
    client : distributed.Client
        Where the pair matches run.
    scratch : str
        Scratch store holding every tile's ``objects`` labels.
    grid : TileGrid
        The run's tiles.
    results : sequence of TileResult
        One per tile, in tile index order.
    min_overlap : float
        Overlap a mutual best pair must exceed to be joined, in ``[0, 1)``
        (see :func:`tiled_seg.stitch.match_tiles`).
    """
    pairs = grid.neighbour_pairs()
    futures = [
        client.submit(_match_pair, scratch, grid.tiles[a], grid.tiles[b], min_overlap, pure=False)
        for a, b in pairs
    ]
    matches = dict(zip(pairs, client.gather(futures)))
    return build_lookup_tables(grid, [r.core_ids for r in results], matches)


def _core_block(scratch: str, name: str, tile: Tile, lut: np.ndarray) -> np.ndarray:
    core = tile.core.relative_to(tile.halo)
    return apply_lookup(_tile_labels(scratch, name, tile)[core.slices], lut)


def stitched_array(scratch: str, name: str, grid: TileGrid, plan: StitchPlan) -> da.Array:
    """Global labels as a dask array, one block per tile core.

    Each block task carries only its own tile's lookup table.
    """
    rows: list[list[da.Array]] = []
    for tile in grid.tiles:
        block = da.from_delayed(
            dask.delayed(_core_block)(scratch, name, tile, plan.luts[tile.index]),
            shape=tile.core.shape,
            dtype=np.uint32,
        )
        if tile.grid_yx[1] == 0:
            rows.append([])
        rows[-1].append(block)
    return da.block(rows)
