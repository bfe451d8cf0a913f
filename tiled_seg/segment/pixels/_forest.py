"""A random forest pixel classifier stored as arrays, and its numpy predict.

Models are data: the forest is saved as the node arrays of its trees in an
``.npz`` with a JSON header, and read back array by array with
``allow_pickle=False``, so loading a model never runs code from the file.
Prediction walks the trees in numpy and needs no scikit-learn.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tiled_seg.errors import BackendError, InputNotFoundError
from tiled_seg.segment.pixels._features import feature_reach_px, feature_stack

__all__ = ["PixelClassifier", "load_classifier", "save_classifier", "predict_pixels"]

#: Written into every saved model; a reader refuses other formats.
FORMAT = "tiled-seg-pixel-forest/1"
_NODE_ARRAYS = ("feature", "threshold", "left", "right")
#: Rows per block of :meth:`PixelClassifier.predict_proba`.
_BLOCK_ROWS = 32768


@dataclass(frozen=True, eq=False)
class PixelClassifier:
    """A trained pixel classifier: features, forest and what it was trained on.

    Attributes
    ----------
    sigmas : tuple of float
        Feature scales (px).
    inputs : tuple of str
        Input images the features are computed on, in order (``nuclear``, ``membrane``).
    classes : tuple of str
        Class names, in the order of the probability channels.
    pixel_size_um : float
        Pixel size (um) of the training image; features are in px, so the
        classifier only applies at this pixel size.
    feature, threshold, left, right : ndarray, shape (nodes,)
        All trees' nodes, concatenated; ``left`` and ``right`` index into
        the same arrays, -1 at leaves.
    value : ndarray of float32, shape (nodes, classes)
        Class probabilities at each node (used at leaves).
    roots : ndarray of int, shape (trees,)
        Index of every tree's root node.
    """

    sigmas: tuple[float, ...]
    inputs: tuple[str, ...]
    classes: tuple[str, ...]
    pixel_size_um: float
    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    roots: np.ndarray

    @property
    def reach_px(self) -> int:
        """Halo (px) the features need around a tile."""
        return feature_reach_px(self.sigmas)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, classes)`` of feature rows ``(N, F)``: the mean over trees.

        Each tree sends a row left where ``feature <= threshold``, as
        scikit-learn does (float32 features against float64 thresholds).
        """
        features = np.asarray(features, dtype=np.float32)
        total = np.zeros((features.shape[0], self.value.shape[1]), dtype=np.float64)
        # Blocks of rows that stay in cache make the walk about twice as fast.
        for start in range(0, features.shape[0], _BLOCK_ROWS):
            block = features[start : start + _BLOCK_ROWS]
            for root in self.roots:
                total[start : start + len(block)] += self.value[self._leaves(block, int(root))]
        return (total / len(self.roots)).astype(np.float32)

    def _leaves(self, features: np.ndarray, root: int) -> np.ndarray:
        """Leaf node of every row in the tree at ``root``."""
        rows = np.arange(features.shape[0])
        node = np.full(rows.size, root, dtype=np.int64)
        leaf = np.empty(rows.size, dtype=np.int64)
        while rows.size:
            done = self.left[node] < 0
            leaf[rows[done]] = node[done]
            rows, node = rows[~done], node[~done]
            go_left = features[rows, self.feature[node]] <= self.threshold[node]
            node = np.where(go_left, self.left[node], self.right[node])
        return leaf


def forest_arrays(trees: Sequence[Any]) -> dict[str, np.ndarray]:
    """Node arrays of fitted scikit-learn trees (``estimator.tree_``), concatenated.

    Child indices are shifted to the concatenated arrays; leaf probabilities
    are normalised per node, as ``predict_proba`` does.
    """
    parts: dict[str, list[np.ndarray]] = {name: [] for name in (*_NODE_ARRAYS, "value")}
    roots = []
    offset = 0
    for tree in trees:
        roots.append(offset)
        left = tree.children_left.astype(np.int64)
        right = tree.children_right.astype(np.int64)
        parts["feature"].append(np.maximum(tree.feature, 0).astype(np.int64))
        parts["threshold"].append(tree.threshold.astype(np.float64))
        parts["left"].append(np.where(left >= 0, left + offset, -1))
        parts["right"].append(np.where(right >= 0, right + offset, -1))
        value = tree.value[:, 0, :].astype(np.float64)
        parts["value"].append(value / np.maximum(value.sum(axis=1, keepdims=True), 1e-300))
        offset += tree.node_count
    arrays = {name: np.concatenate(chunks) for name, chunks in parts.items()}
    arrays["value"] = arrays["value"].astype(np.float32)
    arrays["roots"] = np.asarray(roots, dtype=np.int64)
    return arrays


def save_classifier(classifier: PixelClassifier, path: str | Path) -> Path:
    """Write ``classifier`` as an ``.npz`` of plain arrays plus a JSON header.

    Returns the path written (``.npz`` is appended when missing).
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    header = {
        "format": FORMAT,
        "sigmas": list(classifier.sigmas),
        "inputs": list(classifier.inputs),
        "classes": list(classifier.classes),
        "pixel_size_um": classifier.pixel_size_um,
    }
    arrays = {name: getattr(classifier, name) for name in (*_NODE_ARRAYS, "value", "roots")}
    encoded = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez_compressed(path, header=encoded, **arrays)
    return path


def load_classifier(path: str | Path) -> PixelClassifier:
    """Read a classifier written by :func:`save_classifier` (plain arrays; never unpickles).

    Raises
    ------
    InputNotFoundError
        ``path`` does not exist.
    BackendError
        The file is not a tiled-seg pixel classifier.
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(
            f"pixel classifier {path} does not exist; train one with "
            "`tiled-seg train-pixels SLIDE --annotations LABELS --output MODEL.npz`."
        )
    try:
        with zipfile.ZipFile(path) as archive:
            # Plain arrays only: read_array refuses object arrays, which would unpickle.
            data = {name: np.lib.format.read_array(archive.open(f"{name}.npy"), allow_pickle=False)
                    for name in ("header", *_NODE_ARRAYS, "value", "roots")}
        header = json.loads(bytes(data.pop("header")).decode())
        arrays = data
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise BackendError(
            f"{path} is not a tiled-seg pixel classifier ({error}); train one with "
            "`tiled-seg train-pixels`."
        ) from error
    if header.get("format") != FORMAT:
        raise BackendError(
            f"{path} has format {header.get('format')!r}, not {FORMAT!r}; train it again "
            "with this version's `tiled-seg train-pixels`."
        )
    return PixelClassifier(
        sigmas=tuple(float(s) for s in header["sigmas"]),
        inputs=tuple(header["inputs"]),
        classes=tuple(header["classes"]),
        pixel_size_um=float(header["pixel_size_um"]),
        **arrays,
    )


def predict_pixels(classifier: PixelClassifier, images: Sequence[np.ndarray]) -> np.ndarray:
    """Class probability maps of one image (a tile and its halo).

    Parameters
    ----------
    classifier : PixelClassifier
    images : sequence of ndarray, each shape (Y, X)
        The classifier's inputs, in the order of ``classifier.inputs``.

    Returns
    -------
    ndarray of float32, shape (classes, Y, X)
        Probabilities summing to 1 per pixel. Exact (equal to the whole
        slide's) where the image extends ``classifier.reach_px`` beyond.
    """
    features = feature_stack(images, classifier.sigmas)
    shape = features.shape[:2]
    probabilities = classifier.predict_proba(features.reshape(-1, features.shape[-1]))
    return np.moveaxis(probabilities.reshape(*shape, -1), -1, 0)
