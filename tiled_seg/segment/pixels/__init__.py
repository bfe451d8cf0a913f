"""A built-in pixel classifier: ilastik's features and a random forest stored as arrays."""

from tiled_seg.segment.pixels._features import (
    FEATURE_NAMES,
    ILASTIK_SIGMAS,
    difference_of_gaussians,
    feature_names,
    feature_reach_px,
    feature_stack,
    gaussian_smoothing,
    gradient_magnitude,
    hessian_eigenvalues,
    laplacian_of_gaussian,
    structure_tensor_eigenvalues,
)
from tiled_seg.segment.pixels._forest import PixelClassifier, load_classifier, predict_pixels, save_classifier
from tiled_seg.segment.pixels._train import (
    CLASSES,
    TrainResult,
    annotated_features,
    check_annotations,
    fit_classifier,
    train_classifier,
    train_pixels,
)

__all__ = [
    "CLASSES",
    "FEATURE_NAMES",
    "ILASTIK_SIGMAS",
    "PixelClassifier",
    "TrainResult",
    "annotated_features",
    "check_annotations",
    "difference_of_gaussians",
    "feature_names",
    "feature_reach_px",
    "feature_stack",
    "fit_classifier",
    "gaussian_smoothing",
    "gradient_magnitude",
    "hessian_eigenvalues",
    "laplacian_of_gaussian",
    "load_classifier",
    "predict_pixels",
    "save_classifier",
    "structure_tensor_eigenvalues",
    "train_classifier",
    "train_pixels",
]
