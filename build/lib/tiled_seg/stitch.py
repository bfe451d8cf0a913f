"""Stitch tile-local labels into one global label image by maximum overlap.

Every tile is segmented on its halo box (core grown by the halo ``H``) and
labels it with local ids ``1..n`` (0 background). Stitching never looks at
1-2 px faces: for each pair of neighbouring tiles (diagonals included) it
compares their labels over the whole *shared region*, the intersection of the
two halo boxes (a band ``2H`` wide along a shared edge, a ``2H x 2H`` square
at a shared corner).

Matching rule
-------------
For local labels ``a`` (tile A) and ``b`` (tile B), with all areas counted in
px inside the shared region only::

    iou(a, b) = overlap(a, b) / (area(a) + area(b) - overlap(a, b))

``a`` and ``b`` are matched when each is the other's best partner (highest
IoU; ties to the smaller id) and ``iou > min_overlap`` (default 0.5).

Why IoU within the shared region, and not overlap / min(area): with
``H >= diameter`` a cell that has a pixel in either core lies wholly inside
both halo boxes, hence wholly inside the shared region, and both tiles see it
whole there: its IoU is 1 when the segmenters agree and stays high under the
small boundary disagreements of independent runs. A cell cut by the border of
the shared region is cut at the same place in both tiles' crops, so clipping
alone lowers neither view; only a segmenter that sees a cell partially at its
own halo edge labels it differently, and such a label has no core pixel in its
tile, so it never reaches the output whether matched or not. overlap/min(area)
would score a label that merges two cells, or a fragment of a split cell, as a
perfect match (1.0) for either part, which is what chains distinct cells;
IoU scores them <= 0.5 for equal parts. With ``min_overlap >= 0.5`` an IoU
match is one-to-one by construction (two labels cannot both cover more than
half of the union with a third), and the mutual-best rule keeps it one-to-one
for lower thresholds.

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

from tiled_seg.errors import ConfigError, TileLayoutError, TiledSegError
from tiled_seg.tiling import Tile, TileGrid

__all__ = [
    "TileMatches",
    "StitchPlan",
    "match_tiles",
    "core_label_ids",
    "build_lookup_tables",
    "apply_lookup",
    "stitch_in_memory",
]

_EMPTY_PAIRS = np.zeros((0, 2), dtype=np.int64)


@dataclass(frozen=True, eq=False)
class TileMatches:
    """Matched labels of two neighbouring tiles A and B.

    Attributes
    ----------
    pairs : numpy.ndarray
        ``(k, 2)`` int64 ``(local id in A, local id in B)``, sorted.
    iou : numpy.ndarray
        ``(k,)`` float64 IoU of each pair within the shared region.
    """

    pairs: np.ndarray
    iou: np.ndarray

    def __len__(self) -> int:
        return len(self.pairs)


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


def _check_labels(tile: Tile, labels: np.ndarray, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != tile.halo.shape or not np.issubdtype(labels.dtype, np.integer):
        raise TileLayoutError(
            f"{name} must be an integer array of tile {tile.index}'s halo box shape {tile.halo.shape}, "
            f"got {labels.dtype} {labels.shape}; pass the labels of the whole halo box."
        )
    return labels


def match_tiles(
    tile_a: Tile,
    labels_a: np.ndarray,
    tile_b: Tile,
    labels_b: np.ndarray,
    *,
    min_overlap: float = 0.5,
) -> TileMatches:
    """Match the labels of two tiles over their shared region.

    Parameters
    ----------
    tile_a, tile_b : Tile
        Two tiles of one grid.
    labels_a, labels_b : numpy.ndarray
        ``(h, w)`` integer local labels covering each tile's halo box, 0 for
        background.
    min_overlap : float
        IoU (within the shared region) a mutual best pair must exceed, in
        ``[0, 1)``. See the module docstring.

    Returns
    -------
    TileMatches
        Empty where the halo boxes do not intersect.
    """
    labels_a = _check_labels(tile_a, labels_a, "labels_a")
    labels_b = _check_labels(tile_b, labels_b, "labels_b")
    if not 0.0 <= min_overlap < 1.0:
        raise ConfigError(f"min_overlap must be in [0, 1), got {min_overlap!r}; the default 0.5 suits most data.")
    shared = tile_a.halo.intersect(tile_b.halo)
    if shared is None:
        return TileMatches(_EMPTY_PAIRS.copy(), np.zeros(0))
    crop_a = labels_a[shared.relative_to(tile_a.halo).slices].ravel()
    crop_b = labels_b[shared.relative_to(tile_b.halo).slices].ravel()
    ids_a, inv_a, area_a = np.unique(crop_a, return_inverse=True, return_counts=True)
    ids_b, inv_b, area_b = np.unique(crop_b, return_inverse=True, return_counts=True)
    both = (crop_a != 0) & (crop_b != 0)
    # Compact indices (< pixels in the region) keep the packed int64 code far from overflow.
    codes, overlap = np.unique(inv_a[both].astype(np.int64) * len(ids_b) + inv_b[both], return_counts=True)
    ia, ib = np.divmod(codes, len(ids_b))
    iou = overlap / (area_a[ia] + area_b[ib] - overlap)
    best_for_a = _first_of_groups(ia, iou, ib)
    best_for_b = _first_of_groups(ib, iou, ia)
    keep = best_for_a & best_for_b & (iou > min_overlap)
    pairs = np.stack([ids_a[ia[keep]], ids_b[ib[keep]]], axis=1).astype(np.int64)
    return TileMatches(pairs.reshape(-1, 2), iou[keep].astype(np.float64))


def _first_of_groups(group: np.ndarray, score: np.ndarray, tie: np.ndarray) -> np.ndarray:
    """Mask of the highest-score entry per group (ties to the smallest ``tie``)."""
    order = np.lexsort((tie, -score, group))
    first = np.ones(len(order), dtype=bool)
    first[1:] = group[order][1:] != group[order][:-1]
    mask = np.zeros(len(order), dtype=bool)
    mask[order[first]] = True
    return mask


def core_label_ids(tile: Tile, labels: np.ndarray) -> np.ndarray:
    """Sorted local ids (int64) with at least one pixel in the tile's core.

    ``labels`` covers the tile's halo box.
    """
    labels = _check_labels(tile, labels, "labels")
    ids = np.unique(labels[tile.core_in_halo.slices])
    return ids[ids != 0].astype(np.int64)


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
    u = np.concatenate([offsets[i] + matches[(i, j)].pairs[:, 0] for i, j in keys] + [_EMPTY_PAIRS[:, 0]])
    v = np.concatenate([offsets[j] + matches[(i, j)].pairs[:, 1] for i, j in keys] + [_EMPTY_PAIRS[:, 0]])
    w = np.concatenate([matches[k].iou for k in keys] + [np.zeros(0)])

    node_class, n_rejected = _join(u, v, w, tile_of_node, n_nodes, n_tiles)

    core_nodes = np.concatenate([offsets[t] + cores[t] for t in range(n_tiles)] + [_EMPTY_PAIRS[:, 0]])
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


def stitch_in_memory(
    grid: TileGrid, tile_labels: Sequence[np.ndarray], *, min_overlap: float = 0.5
) -> tuple[np.ndarray, StitchPlan]:
    """Stitch all tiles of a small slide held in memory.

    Parameters
    ----------
    grid : TileGrid
        The tile grid.
    tile_labels : sequence of numpy.ndarray
        Local labels of every tile's halo box, by tile index.
    min_overlap : float
        Passed to :func:`match_tiles`.

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
    tiles = grid.tiles
    matches = {
        (i, j): match_tiles(tiles[i], tile_labels[i], tiles[j], tile_labels[j], min_overlap=min_overlap)
        for i, j in grid.neighbour_pairs()
    }
    plan = build_lookup_tables(grid, [core_label_ids(t, lab) for t, lab in zip(tiles, tile_labels)], matches)
    out = np.zeros(grid.shape_yx, dtype=np.uint32)
    for tile, labels in zip(tiles, tile_labels):
        out[tile.core.slices] = apply_lookup(np.asarray(labels)[tile.core_in_halo.slices], plan.luts[tile.index])
    return out, plan
