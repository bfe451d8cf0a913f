"""Object-level comparison of a predicted label image with a reference.

Matching follows the Mesmer paper (Greenwald et al. 2022), which follows
Caicedo et al. (2019): predicted and true objects are paired one-to-one by
intersection over union (IoU) with a linear assignment, a pair counts only at
IoU >= ``iou_threshold``, and the objects left over are classified as missed,
extra, merged, split or other.

The IoU table is built from a sparse contingency of ``(true, pred)`` label
pairs, never a dense ``n_true x n_pred`` matrix. Contingencies of disjoint
blocks add up (``a + b``), so a whole slide can be evaluated chunk by chunk
and matched once with :func:`match_from_contingency`; :func:`contingency_dask`
does that over dask arrays (one task per block, only the sparse tables cross
the scheduler, merged in a tree) and :func:`evaluate_paths` over label images
on disk (NGFF label paths are read lazily, chunk by chunk).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment

from tiled_seg.blocks import compute_blocks, tree_reduce
from tiled_seg.errors import AxesError, ConfigError, InputNotFoundError
from tiled_seg.tiling import BLOCK_PX

__all__ = [
    "Contingency",
    "MatchResult",
    "contingency",
    "contingency_dask",
    "evaluate_paths",
    "match_from_contingency",
    "open_label_image",
    "match_labels",
    "read_label_image",
]

#: IoU above which two leftover objects count as substantially overlapping
#: when classifying merges and splits (the 0.1 of DeepCell's object metrics).
ERROR_IOU = 0.1

_ID_LIMIT = 2**32

@dataclass(frozen=True)
class Contingency:
    """Pixel counts of every ``(true id, pred id)`` pair, background (0) included.

    Attributes
    ----------
    true_ids, pred_ids : ndarray of int64, shape (K,)
        Label pairs that co-occur at least once, sorted, unique.
    counts : ndarray of int64, shape (K,)
        Number of pixels (px) of each pair.
    """

    true_ids: np.ndarray
    pred_ids: np.ndarray
    counts: np.ndarray

    def __add__(self, other: Contingency) -> Contingency:
        return _aggregate(
            np.concatenate([self.true_ids, other.true_ids]),
            np.concatenate([self.pred_ids, other.pred_ids]),
            np.concatenate([self.counts, other.counts]),
        )


@dataclass(frozen=True)
class MatchResult:
    """Object-level agreement of a prediction with a reference.

    Attributes
    ----------
    n_true, n_pred : int
        Number of objects in the reference and in the prediction.
    tp : int
        One-to-one matches with IoU >= the threshold.
    fp, fn : int
        ``n_pred - tp`` and ``n_true - tp``.
    precision, recall, f1 : float
        ``tp / n_pred``, ``tp / n_true`` and their harmonic mean (1.0 when
        both images are empty, 0.0 when only one is).
    jaccard : float
        Object-level Jaccard index ``tp / (tp + fp + fn)`` (Caicedo et al.).
    mean_matched_iou : float
        Mean IoU of the matched pairs (0.0 without matches).
    missed : int
        Unmatched true objects that no more than one leftover prediction
        overlaps at IoU >= ``ERROR_IOU`` (false negatives proper).
    extra : int
        Unmatched predicted objects that overlap at most one leftover true
        object at IoU >= ``ERROR_IOU`` (false positives proper). A leftover
        one-to-one pair counts once in ``missed`` and once in ``extra``.
    merges : int
        Events where one predicted object substantially overlaps two or
        more unmatched true objects.
    splits : int
        Events where one true object is substantially overlapped by two
        or more unmatched predicted objects.
    other : int
        Leftover groups that are several-to-several (DeepCell's
        "catastrophes").
    iou_threshold : float
        The IoU a pair needed to match.
    """

    n_true: int
    n_pred: int
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    jaccard: float
    mean_matched_iou: float
    missed: int
    extra: int
    merges: int
    splits: int
    other: int
    iou_threshold: float

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` of all fields (JSON-serialisable)."""
        return asdict(self)


def _aggregate(true_ids: np.ndarray, pred_ids: np.ndarray, counts: np.ndarray) -> Contingency:
    packed = (true_ids.astype(np.uint64) << np.uint64(32)) | pred_ids.astype(np.uint64)
    keys, inverse = np.unique(packed, return_inverse=True)
    summed = np.bincount(inverse.ravel(), weights=counts, minlength=keys.size).astype(np.int64)
    return Contingency(
        true_ids=(keys >> np.uint64(32)).astype(np.int64),
        pred_ids=(keys & np.uint64(_ID_LIMIT - 1)).astype(np.int64),
        counts=summed,
    )


def _check_labels(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.integer):
        raise AxesError(
            f"{name} has dtype {array.dtype}; label images must be integer. "
            "Label a mask first (skimage.measure.label)."
        )
    if array.size and (array.min() < 0 or array.max() >= _ID_LIMIT):
        raise AxesError(f"{name} has ids outside [0, 2**32); relabel it consecutively.")
    return array


def contingency(pred: np.ndarray, true: np.ndarray) -> Contingency:
    """Sparse pixel counts of the label pairs of two aligned label blocks.

    Parameters
    ----------
    pred, true : ndarray of int, same shape
        Predicted and reference labels of the same block (0 = background),
        with ids in [0, 2**32).

    Returns
    -------
    Contingency
        Counts per co-occurring ``(true, pred)`` pair; contingencies of
        disjoint blocks of one image add up to that of the whole image.

    Examples
    --------
    >>> c = contingency(np.array([[1, 1, 0]]), np.array([[1, 0, 0]]))
    >>> c.true_ids.tolist(), c.pred_ids.tolist(), c.counts.tolist()
    ([0, 0, 1], [0, 1, 1], [1, 1, 1])
    """
    pred = _check_labels(pred, "pred")
    true = _check_labels(true, "true")
    if pred.shape != true.shape:
        raise AxesError(
            f"pred has shape {pred.shape} but true has {true.shape}; compare label "
            "images of the same field at the same resolution."
        )
    return _aggregate(true.ravel(), pred.ravel(), np.ones(pred.size, dtype=np.int64))


def _areas(ids: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    objects, inverse = np.unique(ids, return_inverse=True)
    return objects, np.bincount(inverse, weights=counts).astype(np.int64)


def _one_to_one(
    t_idx: np.ndarray, p_idx: np.ndarray, iou: np.ndarray, n_t: int, n_p: int
) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-total-IoU one-to-one matching of the candidate pairs.

    Solved per connected component of the candidate graph, so the dense
    assignment matrices stay as small as the ambiguous groups.
    """
    if t_idx.size == 0:
        return t_idx, p_idx
    graph = sparse.coo_matrix((np.ones(t_idx.size), (t_idx, n_t + p_idx)), shape=(n_t + n_p,) * 2)
    _, component = sparse.csgraph.connected_components(graph, directed=False)
    comp = component[t_idx]
    pair_count = np.bincount(comp)
    single = pair_count[comp] == 1
    rows, cols = [t_idx[single]], [p_idx[single]]
    for c in np.unique(comp[~single]):
        sel = comp == c
        ts, t_local = np.unique(t_idx[sel], return_inverse=True)
        ps, p_local = np.unique(p_idx[sel], return_inverse=True)
        table = np.zeros((ts.size, ps.size))
        table[t_local, p_local] = iou[sel]
        r, k = linear_sum_assignment(table, maximize=True)
        keep = table[r, k] > 0
        rows.append(ts[r[keep]])
        cols.append(ps[k[keep]])
    return np.concatenate(rows), np.concatenate(cols)


def _classify_leftovers(
    t_idx: np.ndarray, p_idx: np.ndarray, t_left: np.ndarray, p_left: np.ndarray
) -> dict[str, int]:
    """Missed / extra / merge / split / other groups among unmatched objects."""
    n_t, n_p = t_left.size, p_left.size
    if n_t + n_p == 0:
        return {"missed": 0, "extra": 0, "merges": 0, "splits": 0, "other": 0}
    keep = t_left[t_idx] & p_left[p_idx]
    graph = sparse.coo_matrix(
        (np.ones(int(keep.sum())), (t_idx[keep], n_t + p_idx[keep])), shape=(n_t + n_p,) * 2
    )
    _, component = sparse.csgraph.connected_components(graph, directed=False)
    n_comp = int(component.max()) + 1 if component.size else 0
    trues = np.bincount(component[:n_t][t_left], minlength=n_comp)
    preds = np.bincount(component[n_t:][p_left], minlength=n_comp)
    # A one-to-one pair below the match threshold is a mislocated object:
    # the true one is missed and the predicted one is extra.
    low_pair = (trues == 1) & (preds == 1)
    return {
        "missed": int(np.sum((trues == 1) & (preds == 0)) + low_pair.sum()),
        "extra": int(np.sum((trues == 0) & (preds == 1)) + low_pair.sum()),
        "merges": int(np.sum((trues >= 2) & (preds == 1))),
        "splits": int(np.sum((trues == 1) & (preds >= 2))),
        "other": int(np.sum((trues >= 2) & (preds >= 2))),
    }


def _ratio(num: float, den: float, empty: float) -> float:
    return num / den if den else empty


def match_from_contingency(table: Contingency, iou_threshold: float = 0.5) -> MatchResult:
    """Match objects given the contingency of a whole image.

    Parameters
    ----------
    table : Contingency
        Pair counts of the whole image (sum of the blocks' contingencies).
    iou_threshold : float
        IoU a one-to-one pair needs to count as a true positive, in (0, 1].

    Returns
    -------
    MatchResult
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ConfigError(f"iou_threshold={iou_threshold} is outside (0, 1]; use e.g. 0.5.")
    t_objects, t_area = _areas(table.true_ids, table.counts)
    p_objects, p_area = _areas(table.pred_ids, table.counts)
    t_area, p_area = t_area[t_objects > 0], p_area[p_objects > 0]
    t_objects, p_objects = t_objects[t_objects > 0], p_objects[p_objects > 0]
    n_t, n_p = t_objects.size, p_objects.size

    both = (table.true_ids > 0) & (table.pred_ids > 0)
    t_idx = np.searchsorted(t_objects, table.true_ids[both])
    p_idx = np.searchsorted(p_objects, table.pred_ids[both])
    inter = table.counts[both]
    iou = inter / (t_area[t_idx] + p_area[p_idx] - inter)

    candidate = iou >= iou_threshold
    rows, cols = _one_to_one(t_idx[candidate], p_idx[candidate], iou[candidate], n_t, n_p)
    pair_iou = dict(zip(zip(t_idx[candidate].tolist(), p_idx[candidate].tolist()), iou[candidate]))
    matched_iou = np.array([pair_iou[pair] for pair in zip(rows.tolist(), cols.tolist())])

    t_left = np.ones(n_t, dtype=bool)
    p_left = np.ones(n_p, dtype=bool)
    t_left[rows] = False
    p_left[cols] = False
    substantial = iou >= ERROR_IOU
    errors = _classify_leftovers(t_idx[substantial], p_idx[substantial], t_left, p_left)

    tp = int(rows.size)
    precision = _ratio(tp, n_p, 1.0 if n_t == 0 else 0.0)
    recall = _ratio(tp, n_t, 1.0 if n_p == 0 else 0.0)
    f1 = _ratio(2 * precision * recall, precision + recall, 0.0)
    return MatchResult(
        n_true=int(n_t),
        n_pred=int(n_p),
        tp=tp,
        fp=int(n_p - tp),
        fn=int(n_t - tp),
        precision=float(precision),
        recall=float(recall),
        f1=float(f1),
        jaccard=float(_ratio(tp, n_t + n_p - tp, 1.0)),
        mean_matched_iou=float(matched_iou.mean()) if tp else 0.0,
        iou_threshold=float(iou_threshold),
        **errors,
    )


def match_labels(pred: np.ndarray, true: np.ndarray, iou_threshold: float = 0.5) -> MatchResult:
    """Compare a predicted label image with a reference label image.

    Parameters
    ----------
    pred, true : ndarray of int, shape (Y, X)
        Predicted and reference labels of the same field, 0 = background.
    iou_threshold : float
        IoU a one-to-one pair needs to count as a true positive.

    Returns
    -------
    MatchResult

    Examples
    --------
    >>> true = np.array([[1, 1, 0, 2, 2]])
    >>> pred = np.array([[5, 5, 0, 0, 7]])
    >>> r = match_labels(pred, true)
    >>> r.tp, r.fp, r.fn, r.f1
    (2, 0, 0, 1.0)
    """
    return match_from_contingency(contingency(pred, true), iou_threshold)


def _sum_tables(tables: list[Contingency]) -> Contingency:
    return _aggregate(
        np.concatenate([t.true_ids for t in tables]),
        np.concatenate([t.pred_ids for t in tables]),
        np.concatenate([t.counts for t in tables]),
    )


def contingency_dask(pred: da.Array | np.ndarray, true: da.Array | np.ndarray) -> Contingency:
    """Contingency of two label images, computed block by block on dask.

    ``pred`` is rechunked to the chunks of ``true``; one task per block reads
    both blocks and returns their sparse :class:`Contingency`, and the tables
    merge in a fixed tree (:func:`tiled_seg.blocks.tree_reduce`). Label blocks never cross the
    scheduler when the arrays come from zarr; with :func:`open_label_image`
    each block is one direct zarr read.

    Parameters
    ----------
    pred, true : dask array or ndarray of int, shape (Y, X)
        Predicted and reference labels of the same field.

    Returns
    -------
    Contingency
        Equal to ``contingency(pred, true)`` of the whole images.
    """
    pred_blocks, true_blocks = da.asarray(pred), da.asarray(true)
    if pred_blocks.shape != true_blocks.shape:
        raise AxesError(
            f"pred has shape {pred_blocks.shape} but true has {true_blocks.shape}; compare label "
            "images of the same field at the same resolution."
        )
    pred_blocks = pred_blocks.rechunk(true_blocks.chunks)
    kernel = dask.delayed(contingency, pure=True)
    leaves = [
        kernel(p, t)
        for p, t in zip(pred_blocks.to_delayed().ravel(), true_blocks.to_delayed().ravel())
    ]
    return compute_blocks(leaves, tree_reduce(leaves, _sum_tables), "evaluate")


def open_label_image(path: str | Path, chunk_px: int = BLOCK_PX) -> da.Array:
    """A 2D label image as a lazy dask array.

    Parameters
    ----------
    path : str or Path
        ``store.ome.zarr/labels/<name>`` (level 0, read lazily, one task per
        block of about ``chunk_px`` whole zarr chunks) or a ``.tif``/``.tiff``
        file (read once, then chunked).
    chunk_px : int
        Block side (px) of the dask array.

    Returns
    -------
    dask array of int, shape (Y, X)
    """
    from tiled_seg.io.ngff import read_labels

    text = str(path).rstrip("/")
    store, sep, name = text.rpartition("/labels/")
    if sep:
        array = read_labels(store, name, level=0, block_px=chunk_px)
    else:
        array = da.from_array(read_label_image(text), chunks=chunk_px)
    if array.ndim != 2:
        raise AxesError(f"{text} holds shape {array.shape}; a 2D (Y, X) label image is needed.")
    return array


def evaluate_paths(
    pred: str | Path, true: str | Path, iou_threshold: float = 0.5
) -> MatchResult:
    """Match two label images on disk, chunk by chunk (see :func:`contingency_dask`).

    Parameters
    ----------
    pred, true : str or Path
        TIFF files or NGFF label paths ``store.ome.zarr/labels/<name>``.
    iou_threshold : float
        IoU a one-to-one pair needs to count as a true positive.

    Returns
    -------
    MatchResult
    """
    table = contingency_dask(open_label_image(pred), open_label_image(true))
    return match_from_contingency(table, iou_threshold)


def read_label_image(path: str | Path) -> np.ndarray:
    """Read a 2D label image from a TIFF file or an NGFF label path.

    Parameters
    ----------
    path : str or Path
        A ``.tif``/``.tiff`` file, or ``store.ome.zarr/labels/<name>``
        (full resolution, level 0, is read).

    Returns
    -------
    ndarray of int, shape (Y, X)
    """
    from tiled_seg.io.ngff import read_labels

    text = str(path).rstrip("/")
    store, sep, name = text.rpartition("/labels/")
    if sep:
        array = np.asarray(read_labels(store, name, level=0))
    else:
        if not Path(text).is_file():
            raise InputNotFoundError(
                f"{text} does not exist; give a TIFF file or store.ome.zarr/labels/<name>."
            )
        import tifffile

        array = tifffile.imread(text)
    array = np.squeeze(array)
    if array.ndim != 2:
        raise AxesError(f"{text} holds shape {array.shape}; a 2D (Y, X) label image is needed.")
    return array
