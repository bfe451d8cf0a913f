"""Training the pixel classifier from sparse annotations (needs scikit-learn).

Annotations are a label image the size of the slide, 0 where unannotated and
1 nucleus, 2 cytoplasm, 3 background (as painted in napari's labels layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from tiled_seg.config import RunConfig
from tiled_seg.errors import ConfigError, DependencyError, PixelSizeError
from tiled_seg.segment.pixels._features import ILASTIK_SIGMAS, feature_names, feature_reach_px, feature_stack
from tiled_seg.segment.pixels._forest import PixelClassifier, forest_arrays, save_classifier

__all__ = [
    "CLASSES",
    "TrainResult",
    "check_annotations",
    "annotated_features",
    "fit_classifier",
    "train_classifier",
    "train_pixels",
]

#: Class names by annotation value (value ``k`` is ``CLASSES[k - 1]``).
CLASSES: tuple[str, ...] = ("nucleus", "cytoplasm", "background")


def check_annotations(annotations: np.ndarray, shape_yx: tuple[int, ...], where: str) -> np.ndarray:
    """Validate an annotation image against the image shape; returns the pixels per class.

    Raises
    ------
    ConfigError
        Wrong shape, values other than 0-3, or a class without pixels.
    """
    if annotations.shape != tuple(shape_yx):
        raise ConfigError(
            f"annotations {where} have shape {annotations.shape}, the image {tuple(shape_yx)}; "
            "paint them on the same (Y, X) grid as the slide (e.g. a napari labels layer of it)."
        )
    if not np.issubdtype(annotations.dtype, np.integer):
        raise ConfigError(f"annotations {where} must be integer labels; got {annotations.dtype}.")
    counts = np.bincount(np.clip(annotations.ravel(), 0, len(CLASSES) + 1), minlength=len(CLASSES) + 2)
    if int(annotations.min(initial=0)) < 0 or counts[len(CLASSES) + 1]:
        raise ConfigError(
            f"annotations {where} hold values outside 0-{len(CLASSES)}; use 0 unannotated, "
            + ", ".join(f"{k} {name}" for k, name in enumerate(CLASSES, 1)) + "."
        )
    missing = [f"{k} ({name})" for k, name in enumerate(CLASSES, 1) if counts[k] == 0]
    if missing:
        raise ConfigError(
            f"annotations {where} have no pixels of class {', '.join(missing)}; paint a few "
            "hundred pixels of every class."
        )
    return counts[1 : len(CLASSES) + 1]


def annotated_features(
    images: Sequence[np.ndarray], annotations: np.ndarray, sigmas: Sequence[float],
    where: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows ``(N, F)`` and classes ``(N,)`` of the annotated pixels.

    ``where`` (boolean, shape of the images) restricts the pixels taken, e.g.
    to a tile's core when ``images`` include its halo.
    """
    picked = annotations > 0
    if where is not None:
        picked &= where
    if not picked.any():
        n_features = len(feature_names(sigmas, [str(i) for i in range(len(images))]))
        return np.zeros((0, n_features), np.float32), np.zeros(0, np.int64)
    features = feature_stack(images, sigmas)
    return features[picked], annotations[picked].astype(np.int64)


def fit_classifier(
    features: np.ndarray, classes: np.ndarray, *, sigmas: Sequence[float], inputs: Sequence[str],
    pixel_size_um: float, n_estimators: int = 100, random_state: int = 0,
) -> PixelClassifier:
    """Fit a random forest (scikit-learn, fixed ``random_state``) to annotated feature rows.

    Parameters
    ----------
    features : ndarray, shape (N, F)
    classes : ndarray of int, shape (N,)
        Annotation values 1..3, each present.
    sigmas, inputs, pixel_size_um
        Recorded in the classifier (feature scales in px, input names, um/px).
    n_estimators : int
        Trees (ilastik uses 100).
    random_state : int
        Same data and seed, same forest.
    """
    try:
        from sklearn.ensemble import RandomForestClassifier
    except ImportError as error:
        raise DependencyError(
            "training a pixel classifier needs scikit-learn; install it with "
            "`pip install 'tiled-seg[pixels]'`."
        ) from error
    forest = RandomForestClassifier(n_estimators=n_estimators, random_state=random_state, n_jobs=1)
    forest.fit(features, classes)
    return PixelClassifier(
        sigmas=tuple(float(s) for s in sigmas),
        inputs=tuple(inputs),
        classes=tuple(CLASSES[int(k) - 1] for k in forest.classes_),
        pixel_size_um=float(pixel_size_um),
        **forest_arrays([tree.tree_ for tree in forest.estimators_]),
    )


def train_classifier(
    images: Sequence[np.ndarray], annotations: np.ndarray, *, pixel_size_um: float,
    sigmas: Sequence[float] = ILASTIK_SIGMAS, inputs: Sequence[str] = ("nuclear", "membrane"),
    n_estimators: int = 100, random_state: int = 0,
) -> PixelClassifier:
    """Train a pixel classifier on whole images in memory.

    Parameters
    ----------
    images : sequence of ndarray, each shape (Y, X)
        Inputs as the backend will see them (slide-wide normalised 0-1).
    annotations : ndarray of int, shape (Y, X)
        0 unannotated, 1 nucleus, 2 cytoplasm, 3 background.
    pixel_size_um : float
        Pixel size (um) of the images.
    sigmas : sequence of float
        Feature scales (px).

    Returns
    -------
    PixelClassifier
    """
    check_annotations(annotations, images[0].shape, "given")
    features, classes = annotated_features(images, annotations, sigmas)
    return fit_classifier(features, classes, sigmas=sigmas, inputs=inputs[: len(images)],
                          pixel_size_um=pixel_size_um, n_estimators=n_estimators,
                          random_state=random_state)


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_pixels` wrote."""

    path: Path
    #: Annotated pixels per class name.
    pixels: dict[str, int]
    n_features: int
    reach_px: int


def train_pixels(
    slide_path: str | Path, annotations_path: str | Path, output: str | Path, *,
    config: RunConfig | None = None, sigmas: Sequence[float] = ILASTIK_SIGMAS,
    n_estimators: int = 100, random_state: int = 0,
) -> TrainResult:
    """Train on a slide's normalised panel inputs and save the classifier.

    The inputs are the run's: the panel's nuclear and membrane channels,
    normalised with the slide-wide statistics of ``config``. Features are
    computed tile by tile (the configured tile size, with a halo of the
    features' reach), so only tiles holding annotations are read.

    Parameters
    ----------
    slide_path : str or Path
        OME-Zarr slide.
    annotations_path : str or Path
        Label image (TIFF, or ``store.ome.zarr/labels/<name>``) on the slide's grid.
    output : str or Path
        The ``.npz`` to write.
    config : RunConfig, optional
        Panel, normalisation, pixel size and tile size (default: the defaults).

    Returns
    -------
    TrainResult
    """
    from tiled_seg.io.ngff import open_slide
    from tiled_seg.quality.evaluate import read_label_image
    from tiled_seg.segment.normalize import build_inputs, choose_stats_level, compute_slide_stats
    from tiled_seg.tiling import plan_tiles

    config = config or RunConfig()
    if config.panel.store is not None:
        raise ConfigError(
            f"train-pixels reads the panel channels from SLIDE, not panel.store "
            f"({config.panel.store}); give the store that holds them as SLIDE."
        )
    slide = open_slide(slide_path, config.pixel_size_um)
    if slide.pixel_size_um is None:
        raise PixelSizeError(
            f"{slide.path} does not state its pixel size; give it with --pixel-size-um."
        )
    panel = config.panel
    membrane = () if config.compartment == "nuclear" else panel.membrane
    channels = tuple(dict.fromkeys([*panel.nuclear, *membrane]))
    index = [slide.channel_index(name) for name in channels]
    annotations = read_label_image(annotations_path)
    counts = check_annotations(annotations, slide.shape_yx, str(annotations_path))
    normalization = config.normalization
    level = (choose_stats_level([lv.shape for lv in slide.levels], normalization.min_stats_pixels)
             if normalization.level == "auto" else int(normalization.level))
    stats = compute_slide_stats(
        slide.reader(level=level), slide.channel_names, panel.nuclear, membrane,
        low_percentile=normalization.low_percentile, high_percentile=normalization.high_percentile,
        level_index=level, fixed_range=normalization.fixed_range,
    )
    reach = feature_reach_px(sigmas)
    tile_px = max(config.tiling.tile_px, reach)
    grid = plan_tiles(slide.shape_yx, tile_px, reach, slide.chunk_yx)
    rows: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for tile in grid.tiles:
        box = annotations[tile.halo.slices]
        core = np.zeros(box.shape, dtype=bool)
        core[tile.core_in_halo.slices] = True
        if not (box[core] > 0).any():
            continue
        block = slide.read_region(index, *tile.halo.slices)
        nuclear, membrane_image = build_inputs(block, channels, panel.nuclear, membrane,
                                               stats.low, stats.high)
        images = [nuclear] if membrane_image is None else [nuclear, membrane_image]
        features, classes = annotated_features(images, box, sigmas, where=core)
        rows.append(features)
        labels.append(classes)
    inputs = ("nuclear",) if not membrane else ("nuclear", "membrane")
    classifier = fit_classifier(
        np.concatenate(rows), np.concatenate(labels), sigmas=sigmas, inputs=inputs,
        pixel_size_um=slide.pixel_size_um, n_estimators=n_estimators, random_state=random_state,
    )
    path = save_classifier(classifier, output)
    return TrainResult(path, {name: int(n) for name, n in zip(CLASSES, counts)},
                       int(np.concatenate(rows).shape[1]), classifier.reach_px)
