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
from distributed import Client, Future

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


class PairMatcher:
    """Match each neighbouring tile pair on the workers as soon as both its tiles are done.

    Feed it every finished tile with :meth:`add` (for example as the
    ``on_tile`` callback of :func:`tiled_seg.pipeline._tiles.segment_tiles`);
    :meth:`plan` then waits only for the matches still running.

    Parameters
    ----------
    client : distributed.Client
        Where the pair matches run.
    scratch : str
        Scratch store holding every tile's ``objects`` labels.
    grid : TileGrid
        The run's tiles.
    min_overlap : float
        Overlap a mutual best pair must exceed to be joined, in ``[0, 1)``
        (see :func:`tiled_seg.stitch.match_tiles`).
    skipped : sequence of int
        Tiles without tissue and without labels: their pairs match nothing.
    """

    def __init__(
        self, client: Client, scratch: str, grid: TileGrid, min_overlap: float,
        skipped: Sequence[int] = (),
    ) -> None:
        self._client, self._scratch, self._grid = client, scratch, grid
        self._min_overlap = min_overlap
        self._skipped = set(skipped)
        self._pairs: dict[int, list[tuple[int, int]]] = {tile.index: [] for tile in grid.tiles}
        for a, b in grid.neighbour_pairs():
            self._pairs[a].append((a, b))
            self._pairs[b].append((a, b))
        self._done: set[int] = set()
        self._futures: dict[tuple[int, int], Future] = {}

    def add(self, result: TileResult) -> None:
        """Note a finished tile; start the matches of its pairs whose other tile is done."""
        self._done.add(result.index)
        for a, b in self._pairs[result.index]:
            if a in self._done and b in self._done and not self._skipped & {a, b}:
                tiles = self._grid.tiles
                self._futures[(a, b)] = self._client.submit(
                    _match_pair, self._scratch, tiles[a], tiles[b], self._min_overlap, pure=False
                )

    def plan(self, results: Sequence[TileResult]) -> StitchPlan:
        """Wait for the matches and join them into one plan; ``results`` one per tile, by index."""
        pairs = sorted(self._futures)
        matches = dict(zip(pairs, self._client.gather([self._futures[p] for p in pairs])))
        return build_lookup_tables(self._grid, [r.core_ids for r in results], matches)


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
