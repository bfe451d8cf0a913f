"""The one stitch: match neighbouring tiles as they finish, join, serve global labels lazily.

Every run stitches through :class:`PairMatcher` and :func:`stitched_array`,
whether its tile labels sit in a scratch store read by workers or in memory
(:func:`stitch_in_memory`, for small slides and tests). Tile labels come from
a *label source*: a picklable callable that returns a tile's labels over its
halo box. With a distributed client the matches run on the workers, which
read the labels themselves, so only the small matches come back; the stitched
image is a dask array with one block per tile core, each block task carrying
only its own tile's lookup table, so no task ever holds the whole plan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np

from tiled_seg.errors import TileLayoutError
from tiled_seg.tiling.grid import Tile, TileGrid
from tiled_seg.tiling.join import StitchPlan, apply_lookup, build_lookup_tables
from tiled_seg.tiling.match import TileMatches, core_label_ids, match_tiles

__all__ = ["TileLabels", "InMemoryLabels", "PairMatcher", "stitched_array", "stitch_in_memory"]

#: Priority of pair matches over tile tasks (dask runs higher first).
MATCH_PRIORITY = 10

#: A label source: ``labels_of(tile)`` is the tile's local labels over its halo box.
TileLabels = Callable[[Tile], np.ndarray]


@dataclass(frozen=True, eq=False)
class InMemoryLabels:
    """Label source over arrays held in memory, one per tile by index."""

    arrays: tuple[np.ndarray, ...]

    def __call__(self, tile: Tile) -> np.ndarray:
        return self.arrays[tile.index]


def _match_pair(labels_of: TileLabels, tile_a: Tile, tile_b: Tile, min_overlap: float) -> TileMatches:
    return match_tiles(tile_a, labels_of(tile_a), tile_b, labels_of(tile_b), min_overlap=min_overlap)


class PairMatcher:
    """Match each neighbouring tile pair as soon as both its tiles are done.

    Feed it every finished tile with :meth:`add`; :meth:`plan` then waits
    only for the matches still running.

    Parameters
    ----------
    client : distributed.Client or None
        Where the pair matches run; None matches in this process at once.
    labels_of : TileLabels
        The label source (picklable when ``client`` is given).
    grid : TileGrid
        The run's tiles.
    min_overlap : float
        IoU a mutual best pair must exceed to be joined, in ``[0, 1)``
        (see :func:`tiled_seg.tiling.match.match_tiles`).
    skipped : sequence of int
        Tiles without tissue and without labels: their pairs match nothing.
    """

    def __init__(
        self, client: Any, labels_of: TileLabels, grid: TileGrid, min_overlap: float,
        skipped: Sequence[int] = (),
    ) -> None:
        self._client, self._labels_of, self._grid = client, labels_of, grid
        self._min_overlap = min_overlap
        self._skipped = set(skipped)
        self._pairs: dict[int, list[tuple[int, int]]] = {tile.index: [] for tile in grid.tiles}
        for a, b in grid.neighbour_pairs():
            self._pairs[a].append((a, b))
            self._pairs[b].append((a, b))
        self._done: set[int] = set()
        self._matches: dict[tuple[int, int], Any] = {}

    def add(self, index: int) -> None:
        """Note that tile ``index`` is done; start the matches of its pairs whose other tile is."""
        self._done.add(index)
        tiles = self._grid.tiles
        for a, b in self._pairs[index]:
            if a in self._done and b in self._done and not self._skipped & {a, b}:
                args = (self._labels_of, tiles[a], tiles[b], self._min_overlap)
                if self._client is None:
                    self._matches[(a, b)] = _match_pair(*args)
                else:
                    # Ahead of the queued tiles: else every match waits for the last tile.
                    self._matches[(a, b)] = self._client.submit(_match_pair, *args, pure=False,
                                                                priority=MATCH_PRIORITY)

    def plan(self, core_ids: Sequence[np.ndarray]) -> StitchPlan:
        """Wait for the matches and join them; ``core_ids`` by tile index (:func:`core_label_ids`)."""
        pairs = sorted(self._matches)
        found = [self._matches[p] for p in pairs]
        if self._client is not None:
            found = self._client.gather(found)
        return build_lookup_tables(self._grid, core_ids, dict(zip(pairs, found)))


def _core_block(labels_of: TileLabels, tile: Tile, lut: np.ndarray) -> np.ndarray:
    return apply_lookup(labels_of(tile)[tile.core_in_halo.slices], lut)


def stitched_array(labels_of: TileLabels, grid: TileGrid, plan: StitchPlan) -> da.Array:
    """Global labels as a dask array, one block per tile core.

    Each block task carries only its own tile's lookup table.
    """
    rows: list[list[da.Array]] = []
    for tile in grid.tiles:
        block = da.from_delayed(
            dask.delayed(_core_block)(labels_of, tile, plan.luts[tile.index]),
            shape=tile.core.shape,
            dtype=np.uint32,
        )
        if tile.grid_yx[1] == 0:
            rows.append([])
        rows[-1].append(block)
    return da.block(rows)


def stitch_in_memory(
    grid: TileGrid, tile_labels: Sequence[np.ndarray], *, min_overlap: float = 0.5
) -> tuple[np.ndarray, StitchPlan]:
    """Stitch all tiles of a small slide held in memory, through the run's stitch.

    Parameters
    ----------
    grid : TileGrid
        The tile grid.
    tile_labels : sequence of numpy.ndarray
        Local labels of every tile's halo box, by tile index.
    min_overlap : float
        Passed to :func:`tiled_seg.tiling.match.match_tiles`.

    Returns
    -------
    labels : numpy.ndarray
        ``(Y, X)`` uint32 global labels, ids ``1..N``.
    plan : StitchPlan
    """
    if len(tile_labels) != len(grid.tiles):
        raise TileLayoutError(
            f"got labels for {len(tile_labels)} tiles but the grid has {len(grid.tiles)}; give one array per tile."
        )
    labels_of = InMemoryLabels(tuple(np.asarray(labels) for labels in tile_labels))
    matcher = PairMatcher(None, labels_of, grid, min_overlap)
    core_ids = []
    for tile in grid.tiles:
        core_ids.append(core_label_ids(tile, labels_of(tile)))
        matcher.add(tile.index)
    plan = matcher.plan(core_ids)
    return stitched_array(labels_of, grid, plan).compute(scheduler="synchronous"), plan
