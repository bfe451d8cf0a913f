"""Join matched tile labels into objects with consecutive global ids.

Joining
-------
Matched pairs are joined with union-find over nodes ``(tile index, local id)``
(int64 offsets per tile, no packing of ids into digits). Matches of different
pairs could still chain two distinct labels of one tile into one class through
other tiles; candidate unions are therefore taken in a fixed order of
decreasing IoU (ties by tile and local ids), and a union is skipped when the
two classes already hold labels of a common tile. Components without such a
conflict (nearly all) are joined vectorised; only conflicting components go
through the ordered loop, which gives the same result as running it on all.

Global ids
----------
Only classes with at least one pixel in some tile's core get an id, so ids are
consecutive ``1..N``. Ids follow the smallest ``(tile index, local id)`` with
core pixels in each class, so the result does not depend on the order tiles
were processed in. The output is a small lookup table per tile
(``lut[local id] = global id``, ``lut[0] = 0``), applied chunk by chunk to the
tile's core; no global table is shipped anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from tiled_seg.errors import TiledSegError, TileLayoutError
from tiled_seg.tiling.grid import TileGrid
from tiled_seg.tiling.match import TileMatches

__all__ = ["StitchPlan", "build_lookup_tables", "apply_lookup"]

_NO_NODES = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class StitchPlan:
    """Per-tile lookup tables from local to global ids.

    Attributes
    ----------
    n_objects : int
        Number of global objects; ids are ``1..n_objects``.
    luts : tuple of numpy.ndarray
        ``luts[i][local id]`` is the global id (uint32) of tile ``i``'s label,
        0 for background and for labels without core pixels.
    n_matches : int
        Matched pairs received over all tile pairs.
    n_rejected_chain_unions : int
        Matches not applied because they would have put two labels of one
        tile into one object.
    """

    n_objects: int
    luts: tuple[np.ndarray, ...] = field(repr=False)
    n_matches: int
    n_rejected_chain_unions: int

    def stats(self) -> dict[str, int]:
        """The small figures worth recording with a run."""
        return {
            "n_objects": self.n_objects,
            "n_matches": self.n_matches,
            "n_rejected_chain_unions": self.n_rejected_chain_unions,
        }


def build_lookup_tables(
    grid: TileGrid,
    core_ids: Sequence[np.ndarray],
    matches: Mapping[tuple[int, int], TileMatches],
    *,
    max_local_ids: Sequence[int] | None = None,
) -> StitchPlan:
    """Join matched labels into objects and give each a global id.

    Parameters
    ----------
    grid : TileGrid
        The grid the tiles come from.
    core_ids : sequence of numpy.ndarray
        For each tile (by index), its local ids with core pixels
        (:func:`core_label_ids`).
    matches : mapping
        ``(i, j) -> TileMatches`` of ``match_tiles(tiles[i], ..., tiles[j], ...)``,
        ``i < j``; pairs left out count as matching nothing.
    max_local_ids : sequence of int, optional
        For each tile, the largest local id any array mapped with its table
        may hold (for example nucleus labels linked to the cells by id); the
        tables are made long enough to cover it, extra ids mapping to 0.
        By default they cover the ids in ``core_ids`` and ``matches``.

    Returns
    -------
    StitchPlan
        Identical for identical inputs, whatever the order of ``matches``.
    """
    n_tiles = len(grid.tiles)
    if len(core_ids) != n_tiles:
        raise TileLayoutError(
            f"core_ids has {len(core_ids)} entries but the grid has {n_tiles} tiles; give one array per tile."
        )
    cores = [np.unique(np.asarray(ids, dtype=np.int64)) for ids in core_ids]
    keys = sorted(matches)
    for i, j in keys:
        if not 0 <= i < j < n_tiles:
            raise TileLayoutError(f"match key {(i, j)} is not a pair of tile indices i < j < {n_tiles}.")
    max_id = np.array([ids[-1] if len(ids) else 0 for ids in cores], dtype=np.int64)
    if max_local_ids is not None:
        if len(max_local_ids) != n_tiles:
            raise TileLayoutError(
                f"max_local_ids has {len(max_local_ids)} entries but the grid has {n_tiles} tiles; "
                "give one per tile."
            )
        max_id = np.maximum(max_id, np.asarray(max_local_ids, dtype=np.int64))
    for i, j in keys:
        pairs = matches[(i, j)].pairs
        if len(pairs):
            max_id[i] = max(max_id[i], pairs[:, 0].max())
            max_id[j] = max(max_id[j], pairs[:, 1].max())
    offsets = np.concatenate([[0], np.cumsum(max_id + 1)]).astype(np.int64)
    n_nodes = int(offsets[-1])
    tile_of_node = np.repeat(np.arange(n_tiles, dtype=np.int64), max_id + 1)
    u = np.concatenate([offsets[i] + matches[(i, j)].pairs[:, 0] for i, j in keys] + [_NO_NODES])
    v = np.concatenate([offsets[j] + matches[(i, j)].pairs[:, 1] for i, j in keys] + [_NO_NODES])
    w = np.concatenate([matches[k].iou for k in keys] + [np.zeros(0)])

    node_class, n_rejected = _join(u, v, w, tile_of_node, n_nodes, n_tiles)

    core_nodes = np.concatenate([offsets[t] + cores[t] for t in range(n_tiles)] + [_NO_NODES])
    classes, first = np.unique(node_class[core_nodes], return_index=True)
    n_objects = len(classes)
    if n_objects >= 2**32:
        raise TiledSegError(f"{n_objects} objects do not fit uint32 labels; segment the slide in parts.")
    global_of_class = np.zeros(int(node_class.max(initial=0)) + 1, dtype=np.uint32)
    global_of_class[classes[np.argsort(first)]] = np.arange(1, n_objects + 1, dtype=np.uint32)
    node_global = global_of_class[node_class]
    luts = tuple(node_global[offsets[t] : offsets[t + 1]].copy() for t in range(n_tiles))
    return StitchPlan(n_objects=n_objects, luts=luts, n_matches=len(u), n_rejected_chain_unions=n_rejected)


def _join(
    u: np.ndarray, v: np.ndarray, w: np.ndarray, tile_of_node: np.ndarray, n_nodes: int, n_tiles: int
) -> tuple[np.ndarray, int]:
    """Class of every node after the guarded unions, and the unions skipped."""
    graph = sparse.coo_matrix((np.ones(len(u), dtype=np.int8), (u, v)), shape=(n_nodes, n_nodes))
    n_comp, comp = connected_components(graph, directed=False)
    comp = comp.astype(np.int64)
    touched = np.unique(np.concatenate([u, v]))
    comp_tile, counts = np.unique(comp[touched] * n_tiles + tile_of_node[touched], return_counts=True)
    conflicted = np.unique(comp_tile[counts > 1] // n_tiles)
    if len(conflicted) == 0:
        return comp, 0
    in_conflict = np.isin(comp[u], conflicted)
    cu, cv, cw = u[in_conflict], v[in_conflict], w[in_conflict]
    order = np.lexsort((cv, cu, -cw))
    parent: dict[int, int] = {}
    tiles_of_root: dict[int, set[int]] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    n_rejected = 0
    for k in order:
        a, b = find(int(cu[k])), find(int(cv[k]))
        if a == b:
            continue
        tiles_a = tiles_of_root.setdefault(a, {int(tile_of_node[a])})
        tiles_b = tiles_of_root.setdefault(b, {int(tile_of_node[b])})
        if tiles_a & tiles_b:
            n_rejected += 1
            continue
        if a > b:
            a, b, tiles_a, tiles_b = b, a, tiles_b, tiles_a
        parent[b] = a
        tiles_a |= tiles_of_root.pop(b)
    nodes = np.fromiter(parent, dtype=np.int64, count=len(parent))
    roots = np.fromiter((find(int(x)) for x in nodes), dtype=np.int64, count=len(nodes))
    # Nodes of conflicted components get new classes after the n_comp component classes.
    node_class = comp.copy()
    node_class[nodes] = n_comp + roots
    return node_class, n_rejected


def apply_lookup(core_labels: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Map a block of one tile's local labels to global ids.

    Parameters
    ----------
    core_labels : numpy.ndarray
        Local labels (non-negative integers) of any block of the tile's core.
    lut : numpy.ndarray
        The tile's lookup table from :class:`StitchPlan`.

    Returns
    -------
    numpy.ndarray
        uint32 global labels, same shape.

    Examples
    --------
    >>> apply_lookup(np.array([[0, 2], [1, 2]]), np.array([0, 7, 3], dtype=np.uint32))
    array([[0, 3],
           [7, 3]], dtype=uint32)
    """
    return lut[core_labels]
