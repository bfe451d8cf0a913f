"""Tests of maximum-overlap stitching: tiled result equals whole-array result up to relabelling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from tiled_seg.errors import TiledSegError, TileLayoutError
from tiled_seg.quality.evaluate import match_labels
from tiled_seg.tiling import plan_tiles
from tiled_seg.tiling.join import apply_lookup, build_lookup_tables
from tiled_seg.tiling.match import TileMatches, core_label_ids, match_tiles
from tiled_seg.tiling.stitch import InMemoryLabels, PairMatcher, stitch_in_memory, stitched_array

RADIUS_PX = 6
DIAMETER_PX = 2 * RADIUS_PX + 1
SHAPE = (200, 260)
CROSS = ndi.generate_binary_structure(2, 1)
FLIP_FRACTION = 0.3
MIN_AREA_PX = 15

# (tile_px, halo_px, chunk_yx): a few cells per tile, about one cell per tile
# (the halo equals the core), halo == largest cell diameter, and edge tiles
# smaller than the core (200 and 260 are not multiples of these sizes).
LAYOUTS = [(64, DIAMETER_PX, (32, 32)), (40, DIAMETER_PX, (20, 20)), (24, DIAMETER_PX, (8, 8)), (16, 16, (16, 16))]


def _ground_truth(seed: int = 0) -> np.ndarray:
    """Touching convex cells (Voronoi regions cut to disks) with an empty corner."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros(SHAPE, dtype=bool)
    seeds[rng.integers(0, SHAPE[0], 450), rng.integers(0, SHAPE[1], 450)] = True
    distance, (iy, ix) = ndi.distance_transform_edt(~seeds, return_indices=True)
    ids = np.zeros(SHAPE, dtype=np.int64)
    ids[seeds] = np.arange(1, seeds.sum() + 1)
    labels = ids[iy, ix]
    labels[distance > RADIUS_PX] = 0
    labels[:70, :75] = 0  # several empty tiles for the smaller layouts
    area = np.bincount(labels.ravel())
    labels[area[labels] < MIN_AREA_PX] = 0  # slivers no segmenter would report
    return np.unique(labels, return_inverse=True)[1].reshape(SHAPE)


def _random_relabel(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Local ids 1..n in a random order, as an independent segmenter would give."""
    ids, inverse = np.unique(labels, return_inverse=True)
    new = np.zeros(len(ids), dtype=np.int32)
    fg = ids != 0
    new[fg] = rng.permutation(int(fg.sum())) + 1
    return new[inverse].reshape(labels.shape)


def _halo_only_cells(tile, labels: np.ndarray, min_px: int = 20) -> np.ndarray:
    ids, counts = np.unique(labels, return_counts=True)
    big = ids[(ids != 0) & (counts >= min_px)]
    return np.setdiff1d(big, labels[tile.core_in_halo.slices])


def _perturb(tile, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Disagreements of an independent segmenter on the tile's halo box.

    A fraction of the pixels on label boundaries (cores included) take the
    value of a random 4-neighbour; and one halo-only cell is split in two, or
    merged with a touching halo-only cell.
    """
    h, w = labels.shape
    iy, ix = np.indices((h, w))
    step = np.array([(-1, 0), (1, 0), (0, -1), (0, 1)])[rng.integers(0, 4, (h, w))]
    ny, nx = np.clip(iy + step[..., 0], 0, h - 1), np.clip(ix + step[..., 1], 0, w - 1)
    picked = labels[ny, nx]
    flip = (picked != labels) & (rng.random((h, w)) < FLIP_FRACTION)
    flip &= ~flip[ny, nx]  # the neighbour keeps its value, so a flipped pixel stays attached to it
    labels = np.where(flip, picked, labels)
    n = int(labels.max())
    candidates = _halo_only_cells(tile, labels)
    if len(candidates) == 0:
        return labels
    cell = rng.choice(candidates)
    if tile.index % 2 == 0:
        cx = np.nonzero(labels == cell)[1].mean()
        labels[(labels == cell) & (np.arange(labels.shape[1])[None, :] < cx)] = n + 1
    else:
        touching = np.unique(labels[ndi.binary_dilation(labels == cell, CROSS)])
        touching = np.intersect1d(touching, candidates[candidates != cell])
        if len(touching):
            labels[labels == touching[0]] = cell
    return labels


def _tile_labels(grid, truth: np.ndarray, rng: np.random.Generator, perturb: bool) -> list[np.ndarray]:
    out = []
    for tile in grid.tiles:
        labels = truth[tile.halo.slices]
        if perturb:
            labels = _perturb(tile, labels, rng)
        out.append(_random_relabel(labels, rng))
    return out


def _pair_counts(truth: np.ndarray, pred: np.ndarray):
    """Overlap (px) of every (truth id, predicted id) pair, both nonzero."""
    fg = (truth != 0) & (pred != 0)
    stride = np.int64(pred.max()) + 1
    codes, overlap = np.unique(truth[fg].astype(np.int64) * stride + pred[fg], return_counts=True)
    return codes // stride, codes % stride, overlap


def _cut_and_merged(truth: np.ndarray, pred: np.ndarray) -> tuple[int, int]:
    """Truth cells cut and predicted cells merging, at a 20% share.

    A truth cell is cut when two predicted cells each cover >= 20% of it; a
    predicted cell merges when it covers >= 20% of two truth cells each.
    """
    t, p, overlap = _pair_counts(truth, pred)
    big_t = overlap >= 0.2 * np.bincount(truth.ravel())[t]
    big_p = overlap >= 0.2 * np.bincount(pred.ravel())[p]
    return int((np.bincount(t[big_t]) > 1).sum()), int((np.bincount(p[big_p]) > 1).sum())


def _assert_same_up_to_relabelling(truth: np.ndarray, pred: np.ndarray) -> None:
    np.testing.assert_array_equal(truth != 0, pred != 0)
    t, p, _ = _pair_counts(truth, pred)
    assert len(np.unique(t)) == len(t) == len(np.unique(truth)) - 1
    assert len(np.unique(p)) == len(p) == len(np.unique(pred)) - 1


def _assert_ids_consecutive_and_connected(pred: np.ndarray, min_fraction: float = 1.0) -> None:
    """Ids are 1..N and each lies in one place.

    ``min_fraction`` is the share of an id's pixels its largest 8-connected
    part must hold: 1.0 for exact inputs; below 1 where tiles disagree by a
    pixel at a core seam, while two distinct cells joined under one id would
    leave about half of it elsewhere.
    """
    ids = np.unique(pred)
    np.testing.assert_array_equal(ids, np.arange(len(ids)))
    for index, box in enumerate(ndi.find_objects(pred)):
        parts, n_parts = ndi.label(pred[box] == index + 1, structure=np.ones((3, 3)))
        sizes = np.bincount(parts.ravel())[1:]
        assert sizes.max() >= min_fraction * sizes.sum(), f"id {index + 1} lies in {n_parts} separate places"


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    labels = _ground_truth()
    extents = [max(b[0].stop - b[0].start, b[1].stop - b[1].start) for b in ndi.find_objects(labels)]
    assert max(extents) <= DIAMETER_PX
    _assert_ids_consecutive_and_connected(labels)
    return labels


@pytest.mark.slow
@pytest.mark.parametrize(("tile_px", "halo_px", "chunk"), LAYOUTS)
def test_tiled_equals_whole_up_to_relabelling(truth, tile_px, halo_px, chunk):
    grid = plan_tiles(SHAPE, tile_px, halo_px, chunk)
    assert SHAPE[0] % grid.tile_px[0] or SHAPE[1] % grid.tile_px[1]  # edge tiles are smaller
    tiles = _tile_labels(grid, truth, np.random.default_rng(tile_px), perturb=False)
    assert any(not t.any() for t in tiles) or tile_px > 40  # empty tiles where tiles are small
    stitched, plan = stitch_in_memory(grid, tiles)
    _assert_same_up_to_relabelling(truth, stitched)
    _assert_ids_consecutive_and_connected(stitched)
    assert plan.n_objects == truth.max()
    assert plan.n_rejected_chain_unions == 0


@pytest.mark.parametrize(("tile_px", "halo_px", "chunk"), LAYOUTS)
def test_tiled_survives_segmenter_disagreement_in_the_halo(truth, tile_px, halo_px, chunk):
    grid = plan_tiles(SHAPE, tile_px, halo_px, chunk)
    tiles = _tile_labels(grid, truth, np.random.default_rng(100 + tile_px), perturb=True)
    stitched, plan = stitch_in_memory(grid, tiles)
    f1 = match_labels(stitched, truth, iou_threshold=0.5).f1
    cut, merged = _cut_and_merged(truth, stitched)
    print(f"tile {grid.tile_px} halo {halo_px}: F1@0.5={f1:.4f} cut={cut} merged={merged} "
          f"objects={plan.n_objects}/{truth.max()} rejected={plan.n_rejected_chain_unions}")
    assert cut == 0
    assert merged == 0
    assert f1 >= 0.995
    _assert_ids_consecutive_and_connected(stitched, min_fraction=0.9)


def test_same_luts_whatever_the_order_tiles_finish_in(truth):
    grid = plan_tiles(SHAPE, 40, DIAMETER_PX, (20, 20))
    tiles = _tile_labels(grid, truth, np.random.default_rng(7), perturb=True)
    _, reference = stitch_in_memory(grid, tiles)
    labels_of = InMemoryLabels(tuple(tiles))
    core_ids = [core_label_ids(tile, tiles[tile.index]) for tile in grid.tiles]
    rng = np.random.default_rng(8)
    for _ in range(3):
        matcher = PairMatcher(None, labels_of, grid, 0.5)
        for i in rng.permutation(len(grid.tiles)):
            matcher.add(int(i))
        plan = matcher.plan(core_ids)
        assert plan.n_objects == reference.n_objects
        for lut, ref in zip(plan.luts, reference.luts):
            np.testing.assert_array_equal(lut, ref)


@pytest.mark.cluster
def test_distributed_stitch_equals_in_memory_stitch(truth):
    """The run's path (matches on workers, lazy stitched array) gives the in-memory result."""
    from distributed import Client

    grid = plan_tiles(SHAPE, 64, DIAMETER_PX, (32, 32))
    tiles = _tile_labels(grid, truth, np.random.default_rng(11), perturb=True)
    expected, reference = stitch_in_memory(grid, tiles)
    labels_of = InMemoryLabels(tuple(tiles))
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        matcher = PairMatcher(client, labels_of, grid, 0.5)
        for tile in reversed(grid.tiles):
            matcher.add(tile.index)
        plan = matcher.plan([core_label_ids(t, tiles[t.index]) for t in grid.tiles])
        stitched = stitched_array(labels_of, grid, plan).compute()
    assert plan.stats() == reference.stats()
    np.testing.assert_array_equal(stitched, expected)


def test_all_empty_slide_and_slide_smaller_than_a_tile():
    grid = plan_tiles((50, 70), 32, 8)
    stitched, plan = stitch_in_memory(grid, [np.zeros(t.halo.shape, dtype=np.int32) for t in grid.tiles])
    assert plan.n_objects == 0 and not stitched.any()

    small = _ground_truth()[80:110, 100:140]
    grid = plan_tiles(small.shape, 64, 10)
    local = _random_relabel(small, np.random.default_rng(3))
    stitched, plan = stitch_in_memory(grid, [local])
    _assert_same_up_to_relabelling(small, stitched)
    assert plan.n_objects == len(np.unique(small)) - 1


def test_chain_through_other_tiles_never_joins_two_labels_of_one_tile():
    # 2x2 grid; labels 1 and 2 of tile 0 are distinct cells. Tile 1 and tile 3
    # wrongly match 1 -> b -> d, and d also matches 2 in tile 0.
    grid = plan_tiles((40, 40), 20, 5)
    matches = {
        (0, 1): TileMatches(np.array([[1, 1]]), np.array([0.9])),
        (1, 3): TileMatches(np.array([[1, 1]]), np.array([0.8])),
        (0, 3): TileMatches(np.array([[2, 1]]), np.array([0.6])),
    }
    core_ids = [np.array([1, 2]), np.array([1]), np.array([], dtype=np.int64), np.array([1])]
    nodes = {(0, 1): 0, (0, 2): 1, (1, 1): 2, (3, 1): 3}
    edges = [(nodes[(i, a)], nodes[(j, b)]) for (i, j), m in matches.items() for a, b in m.pairs]
    graph = sparse.coo_matrix((np.ones(len(edges)), tuple(zip(*edges))), shape=(4, 4))
    assert connected_components(graph, directed=False)[0] == 1  # naive union joins both cells of tile 0
    plan = build_lookup_tables(grid, core_ids, matches)
    assert plan.luts[0][1] != plan.luts[0][2]
    assert plan.luts[0][1] == plan.luts[1][1] == plan.luts[3][1]  # the weakest union is the one skipped
    assert plan.n_rejected_chain_unions == 1
    assert plan.n_matches == 3
    assert plan.n_objects == 2
    np.testing.assert_array_equal(np.unique(np.concatenate(plan.luts)), [0, 1, 2])
    assert plan.stats() == {"n_objects": 2, "n_matches": 3, "n_rejected_chain_unions": 1}


def test_luts_cover_max_local_ids_for_linked_nuclei():
    grid = plan_tiles((40, 40), 20, 5)
    core_ids = [np.array([1, 2]), np.array([1]), np.array([], dtype=np.int64), np.array([], dtype=np.int64)]
    plan = build_lookup_tables(grid, core_ids, {}, max_local_ids=[2, 9, 0, 4])
    assert [len(lut) for lut in plan.luts] == [3, 10, 1, 5]
    np.testing.assert_array_equal(plan.luts[1], [0, 3] + [0] * 8)
    np.testing.assert_array_equal(plan.luts[0], [0, 1, 2])


def test_match_tiles_uses_iou_over_the_shared_band_and_mutual_best():
    grid = plan_tiles((20, 40), 20, 6)
    a_tile, b_tile = grid.tiles
    truth = np.zeros((20, 40), dtype=np.int32)
    truth[4:10, 16:24] = 1  # crosses the core boundary at x = 20
    truth[12:18, 14:19] = 2
    truth[12:18, 19:26] = 3
    a = truth[a_tile.halo.slices].copy()
    b = truth[b_tile.halo.slices].copy() * 10
    b[b == 30] = 20  # tile B merges cells 2 and 3: IoU of the merge with 3 is 42/72
    matches = match_tiles(a_tile, a, b_tile, b)
    np.testing.assert_array_equal(matches.pairs, [[1, 10], [3, 20]])
    np.testing.assert_allclose(matches.iou, [1.0, 42 / 72])
    strict = match_tiles(a_tile, a, b_tile, b, min_overlap=0.6)
    np.testing.assert_array_equal(strict.pairs, [[1, 10]])
    loose = match_tiles(a_tile, a, b_tile, b, min_overlap=0.0)
    np.testing.assert_array_equal(loose.pairs, [[1, 10], [3, 20]])  # 2 is not 20's best: one-to-one


def test_match_tiles_of_far_apart_tiles_is_empty_and_shapes_are_checked():
    grid = plan_tiles((10, 100), 20, 4)
    first, last = grid.tiles[0], grid.tiles[-1]
    empty = match_tiles(first, np.ones(first.halo.shape, int), last, np.ones(last.halo.shape, int))
    assert empty.pairs.shape == (0, 2) and len(empty) == 0
    with pytest.raises(TileLayoutError, match="halo box shape"):
        match_tiles(first, np.ones((3, 3), int), last, np.ones(last.halo.shape, int))
    with pytest.raises(TiledSegError, match="min_overlap"):
        match_tiles(first, np.ones(first.halo.shape, int), last, np.ones(last.halo.shape, int), min_overlap=1.0)


def test_core_label_ids_and_apply_lookup():
    grid = plan_tiles((30, 30), 10, 3)
    tile = grid.tiles[4]  # centre tile: core [10, 20), halo [7, 23)
    labels = np.zeros(tile.halo.shape, dtype=np.int32)
    labels[0:3, 0:3] = 5  # halo only
    labels[2:5, 2:5] = 3  # reaches the core at (3, 3)
    labels[8, 8] = 9
    np.testing.assert_array_equal(core_label_ids(tile, labels), [3, 9])
    lut = np.array([0, 0, 0, 4, 0, 0, 0, 0, 0, 1], dtype=np.uint32)
    out = apply_lookup(labels[tile.core_in_halo.slices], lut)
    assert out.dtype == np.uint32
    assert out[5, 5] == 1 and out[0, 0] == 4 and out.sum() == 4 * 4 + 1


def test_build_lookup_tables_validates_its_inputs():
    grid = plan_tiles((40, 40), 20, 5)
    with pytest.raises(TileLayoutError, match="one array per tile"):
        build_lookup_tables(grid, [np.array([1])], {})
    with pytest.raises(TileLayoutError, match="not a pair of tile indices"):
        build_lookup_tables(grid, [np.array([1])] * 4, {(2, 1): TileMatches(np.zeros((0, 2), np.int64), np.zeros(0))})


def test_pair_matches_are_submitted_ahead_of_queued_tiles(truth):
    """Matches carry a priority above the tile tasks (0), so they do not all wait for the last tile."""
    from tiled_seg.tiling.stitch import MATCH_PRIORITY

    class RecordingClient:
        def __init__(self) -> None:
            self.priorities: list[int] = []

        def submit(self, function, *args, pure=True, priority=0):
            self.priorities.append(priority)
            return function(*args)

        def gather(self, futures):
            return futures

    grid = plan_tiles(SHAPE, 64, DIAMETER_PX, (32, 32))
    tiles = _tile_labels(grid, truth, np.random.default_rng(11), perturb=True)
    client = RecordingClient()
    matcher = PairMatcher(client, InMemoryLabels(tuple(tiles)), grid, 0.5)
    for tile in grid.tiles:
        matcher.add(tile.index)
    assert MATCH_PRIORITY > 0
    assert client.priorities and set(client.priorities) == {MATCH_PRIORITY}
