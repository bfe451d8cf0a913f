"""Tests of object-level evaluation and the ``evaluate`` CLI verb."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from tiled_seg._cli import main
from tiled_seg.errors import AxesError, ConfigError
from tiled_seg.quality.evaluate import contingency, match_from_contingency, match_labels


def _box(labels: np.ndarray, k: int, y: int, x: int, h: int, w: int) -> None:
    labels[y : y + h, x : x + w] = k


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """Reference and prediction with one of each outcome, by construction.

    true: 1 matched, 2+3 merged by one prediction, 4 split in two, 5 missed,
    6+7 vs two predictions straddling both; pred adds one extra object.
    """
    true = np.zeros((40, 60), np.int32)
    pred = np.zeros((40, 60), np.int32)
    _box(true, 1, 0, 0, 6, 6)
    _box(pred, 10, 0, 0, 6, 5)  # IoU 5/6: match
    _box(true, 2, 10, 0, 6, 4)
    _box(true, 3, 10, 4, 6, 4)
    _box(pred, 11, 9, 0, 7, 9)  # covers 2 and 3 (IoU 24/63 each): merge
    _box(true, 4, 20, 0, 6, 9)
    _box(pred, 12, 20, 0, 6, 3)
    _box(pred, 13, 20, 3, 6, 3)
    _box(pred, 17, 20, 6, 6, 3)  # 4 cut in thirds (IoU 1/3 each): split
    _box(true, 5, 30, 0, 6, 6)  # nothing predicted: missed
    _box(pred, 14, 30, 20, 6, 6)  # nothing true: extra
    _box(true, 6, 0, 30, 6, 6)
    _box(true, 7, 0, 36, 6, 6)
    _box(pred, 15, 0, 33, 3, 6)
    _box(pred, 16, 3, 33, 3, 6)  # each pred straddles 6 and 7: other
    return pred, true


def test_match_counts_each_outcome() -> None:
    pred, true = _scene()
    r = match_labels(pred, true)
    assert (r.n_true, r.n_pred, r.tp, r.fp, r.fn) == (7, 8, 1, 7, 6)
    assert (r.missed, r.extra, r.merges, r.splits, r.other) == (1, 1, 1, 1, 1)
    assert r.precision == pytest.approx(1 / 8) and r.recall == pytest.approx(1 / 7)
    assert r.jaccard == pytest.approx(1 / 14)
    assert r.mean_matched_iou == pytest.approx(5 / 6)
    d = r.to_dict()
    for key in ("f1", "precision", "recall", "jaccard", "n_true", "n_pred", "tp", "fp", "fn",
                "merges", "splits", "other"):
        assert key in d
    json.dumps(d)


def test_threshold_changes_matches() -> None:
    true = np.zeros((10, 10), np.int32)
    pred = np.zeros((10, 10), np.int32)
    true[:, :4] = 1
    pred[:, :6] = 1  # IoU 4/6
    assert match_labels(pred, true, 0.5).tp == 1
    assert match_labels(pred, true, 0.7).tp == 0
    with pytest.raises(ConfigError):
        match_labels(pred, true, 0.0)


def test_low_threshold_uses_one_to_one_assignment() -> None:
    # One true object overlapped by two predictions at IoU 0.4 and 0.3:
    # only one may match, and the better one is chosen.
    true = np.zeros((1, 20), np.int32)
    pred = np.zeros((1, 20), np.int32)
    true[0, :10] = 1
    pred[0, :4] = 2
    pred[0, 4:7] = 3
    r = match_labels(pred, true, 0.25)
    assert (r.tp, r.fp, r.fn) == (1, 1, 0)
    assert r.mean_matched_iou == pytest.approx(0.4)


def test_identical_and_empty() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 30, (50, 50)).astype(np.uint16)
    relabelled = np.where(labels > 0, labels.astype(np.int64) + 1000, 0)
    r = match_labels(relabelled, labels)
    assert r.f1 == 1.0 and r.tp == np.unique(labels[labels > 0]).size
    empty = np.zeros_like(labels)
    assert match_labels(empty, labels).f1 == 0.0
    assert match_labels(empty, empty).f1 == 1.0


def test_contingency_sums_over_blocks() -> None:
    pred, true = _scene()
    whole = contingency(pred, true)
    total = None
    for ys in (slice(0, 13), slice(13, 40)):
        for xs in (slice(0, 7), slice(7, 31), slice(31, 60)):
            part = contingency(pred[ys, xs], true[ys, xs])
            total = part if total is None else total + part
    assert total is not None
    for field in ("true_ids", "pred_ids", "counts"):
        np.testing.assert_array_equal(getattr(total, field), getattr(whole, field))
    assert match_from_contingency(total) == match_labels(pred, true)


def test_input_validation() -> None:
    with pytest.raises(AxesError, match="shape"):
        contingency(np.zeros((3, 3), int), np.zeros((3, 4), int))
    with pytest.raises(AxesError, match="integer"):
        contingency(np.zeros((3, 3)), np.zeros((3, 3), int))
    with pytest.raises(AxesError, match="2\\*\\*32"):
        contingency(-np.ones((3, 3), int), np.zeros((3, 3), int))


def test_cli_on_tiffs(tmp_path) -> None:
    pred, true = _scene()
    tifffile.imwrite(tmp_path / "pred.tif", pred)
    tifffile.imwrite(tmp_path / "gt.tif", true)
    runner = CliRunner()
    out = runner.invoke(main, ["evaluate", str(tmp_path / "pred.tif"), str(tmp_path / "gt.tif"),
                               "--json", "--iou", "0.5"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output) == match_labels(pred, true).to_dict()
    text = runner.invoke(main, ["evaluate", str(tmp_path / "pred.tif"), str(tmp_path / "gt.tif")])
    assert text.exit_code == 0 and "merges" in text.output
    missing = runner.invoke(main, ["evaluate", str(tmp_path / "nope.tif"), str(tmp_path / "gt.tif")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_cli_on_ngff_labels(tmp_path) -> None:
    from tiled_seg.io import write_image, write_labels

    pred, true = _scene()
    store = tmp_path / "slide.ome.zarr"
    write_image(str(store), np.zeros((1, *true.shape), np.uint16), ["DNA"], pixel_size_um=1.0)
    write_labels(str(store), "cells", pred, pixel_size_um=1.0)
    tifffile.imwrite(tmp_path / "gt.tif", true)
    out = CliRunner().invoke(main, ["evaluate", f"{store}/labels/cells", str(tmp_path / "gt.tif"),
                                    "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["merges"] == 1


@pytest.mark.parametrize("chunks", [(7, 11), (40, 60), (13, 25)])
def test_chunked_evaluation_equals_whole(chunks) -> None:
    import dask.array as da

    from tiled_seg.quality.evaluate import contingency_dask

    pred, true = _scene()
    # Chunks smaller than the objects: every object spans several blocks.
    table = contingency_dask(da.from_array(pred, chunks=(9, 9)), da.from_array(true, chunks=chunks))
    whole = contingency(pred, true)
    for field in ("true_ids", "pred_ids", "counts"):
        np.testing.assert_array_equal(getattr(table, field), getattr(whole, field))
    assert match_from_contingency(table) == match_labels(pred, true)


def test_evaluate_paths_on_chunked_ngff(tmp_path) -> None:
    from tiled_seg.io import write_image, write_labels
    from tiled_seg.quality.evaluate import evaluate_paths, open_label_image

    rng = np.random.default_rng(3)
    true = np.kron(rng.integers(0, 50, (12, 12)), np.ones((6, 6), np.int64)).astype(np.uint32)
    pred = np.roll(true, 3, axis=1)
    store = tmp_path / "s.ome.zarr"
    write_image(str(store), np.zeros((1, *true.shape), np.uint16), ["DNA"], 1.0, chunk_px=16)
    write_labels(str(store), "cells", pred, 1.0, chunk_px=16)
    write_labels(str(store), "gt", true, 1.0, chunk_px=16)
    # Blocks of whole zarr chunks: 16 px blocks cut every 6 px object grid.
    lazy = open_label_image(f"{store}/labels/cells", chunk_px=16)
    assert lazy.chunksize == (16, 16)
    assert open_label_image(f"{store}/labels/cells").chunksize == true.shape
    from tiled_seg.quality.evaluate import contingency_dask, match_from_contingency

    blocked = contingency_dask(lazy, open_label_image(f"{store}/labels/gt", chunk_px=16))
    assert match_from_contingency(blocked, 0.5) == match_labels(pred, true)
    result = evaluate_paths(f"{store}/labels/cells", f"{store}/labels/gt/", 0.5)
    assert result == match_labels(pred, true)
    assert result.n_true > 30 and result.fn > 0
