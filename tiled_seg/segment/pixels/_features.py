"""ilastik's standard pixel features as plain functions on a 2-D image.

Every feature is a Gaussian-derivative filter (``scipy.ndimage``, truncated
at 4 sigma), so its value at a pixel depends only on the pixels within
:func:`feature_reach_px` of it: features of a tile read with that halo equal
the features of the whole slide there, bit for bit.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "ILASTIK_SIGMAS",
    "FEATURE_NAMES",
    "gaussian_smoothing",
    "laplacian_of_gaussian",
    "gradient_magnitude",
    "difference_of_gaussians",
    "structure_tensor_eigenvalues",
    "hessian_eigenvalues",
    "feature_names",
    "feature_stack",
    "feature_reach_px",
]

#: ilastik's default scales (px).
ILASTIK_SIGMAS: tuple[float, ...] = (0.3, 0.7, 1.0, 1.6, 3.5, 5.0, 10.0)
#: Features per scale; below :data:`_MIN_DERIVATIVE_SIGMA` only smoothing,
#: as ilastik offers at its smallest scale.
FEATURE_NAMES: tuple[str, ...] = (
    "gaussian", "log", "gradient", "dog", "st_max", "st_min", "hessian_max", "hessian_min",
)
_MIN_DERIVATIVE_SIGMA = 0.7
#: Gaussian truncation (sigmas), scipy's default, written out because the halo depends on it.
_TRUNCATE = 4.0
#: ilastik's DoG subtracts the smoothing at this fraction of sigma.
_DOG_RATIO = 0.66
_MODE = "nearest"


def _radius_px(sigma: float) -> int:
    """Kernel radius (px) scipy uses for ``sigma`` at :data:`_TRUNCATE`."""
    return int(_TRUNCATE * float(sigma) + 0.5)


def gaussian_smoothing(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing with ``sigma`` (px).

    >>> gaussian_smoothing(np.ones((5, 5), np.float32), 1.0).round(3).max()
    np.float32(1.0)
    """
    return ndi.gaussian_filter(image, sigma, mode=_MODE, truncate=_TRUNCATE)


def laplacian_of_gaussian(image: np.ndarray, sigma: float) -> np.ndarray:
    """Laplacian of the Gaussian-smoothed image, ``sigma`` in px (intensity / px^2)."""
    return ndi.gaussian_laplace(image, sigma, mode=_MODE, truncate=_TRUNCATE)


def gradient_magnitude(image: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of the Gaussian gradient, ``sigma`` in px (intensity / px)."""
    return ndi.gaussian_gradient_magnitude(image, sigma, mode=_MODE, truncate=_TRUNCATE)


def difference_of_gaussians(image: np.ndarray, sigma: float) -> np.ndarray:
    """Smoothing at ``sigma`` minus smoothing at 0.66 ``sigma`` (px), as ilastik."""
    return gaussian_smoothing(image, sigma) - gaussian_smoothing(image, _DOG_RATIO * sigma)


def _eigenvalues(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (larger, smaller) of the symmetric 2x2 matrices ``[[a, b], [b, c]]``."""
    mean = (a + c) / 2
    spread = np.sqrt(((a - c) / 2) ** 2 + b**2)
    return mean + spread, mean - spread


def structure_tensor_eigenvalues(image: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (larger, smaller) of the structure tensor.

    Gradients at inner scale ``sigma / 2``, their products smoothed at outer
    scale ``sigma`` (px), as ilastik's default.
    """
    inner = sigma / 2
    gy = ndi.gaussian_filter(image, inner, order=(1, 0), mode=_MODE, truncate=_TRUNCATE)
    gx = ndi.gaussian_filter(image, inner, order=(0, 1), mode=_MODE, truncate=_TRUNCATE)
    return _eigenvalues(
        gaussian_smoothing(gy * gy, sigma), gaussian_smoothing(gy * gx, sigma),
        gaussian_smoothing(gx * gx, sigma),
    )


def hessian_eigenvalues(image: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (larger, smaller) of the Hessian of Gaussian at ``sigma`` (px)."""
    hyy = ndi.gaussian_filter(image, sigma, order=(2, 0), mode=_MODE, truncate=_TRUNCATE)
    hxy = ndi.gaussian_filter(image, sigma, order=(1, 1), mode=_MODE, truncate=_TRUNCATE)
    hxx = ndi.gaussian_filter(image, sigma, order=(0, 2), mode=_MODE, truncate=_TRUNCATE)
    return _eigenvalues(hyy, hxy, hxx)


def _names_at(sigma: float) -> tuple[str, ...]:
    return FEATURE_NAMES if sigma >= _MIN_DERIVATIVE_SIGMA else FEATURE_NAMES[:1]


def feature_names(sigmas: Sequence[float], channels: Sequence[str]) -> list[str]:
    """Names of the columns of :func:`feature_stack`, e.g. ``nuclear:gaussian:1.6``.

    >>> feature_names([0.3, 1.0], ["nuclear"])[:3]
    ['nuclear:gaussian:0.3', 'nuclear:gaussian:1', 'nuclear:log:1']
    """
    return [
        f"{channel}:{name}:{sigma:g}"
        for channel in channels
        for sigma in sigmas
        for name in _names_at(sigma)
    ]


def feature_stack(images: Sequence[np.ndarray], sigmas: Sequence[float]) -> np.ndarray:
    """Every feature of every image at every scale, one column per feature.

    Parameters
    ----------
    images : sequence of ndarray, each shape (Y, X)
        The input channels (e.g. the normalised nuclear and membrane inputs).
    sigmas : sequence of float
        Scales (px); at scales below 0.7 px only Gaussian smoothing.

    Returns
    -------
    ndarray of float32, shape (Y, X, F)
        Columns in the order of :func:`feature_names`.

    Examples
    --------
    >>> feature_stack([np.zeros((4, 6), np.float32)], [0.3, 1.0]).shape
    (4, 6, 9)
    """
    columns: list[np.ndarray] = []
    for image in images:
        image = np.asarray(image, dtype=np.float32)
        for sigma in sigmas:
            columns.append(gaussian_smoothing(image, sigma))
            if sigma < _MIN_DERIVATIVE_SIGMA:
                continue
            columns += [
                laplacian_of_gaussian(image, sigma),
                gradient_magnitude(image, sigma),
                difference_of_gaussians(image, sigma),
                *structure_tensor_eigenvalues(image, sigma),
                *hessian_eigenvalues(image, sigma),
            ]
    return np.stack(columns, axis=-1).astype(np.float32, copy=False)


def feature_reach_px(sigmas: Sequence[float]) -> int:
    """Furthest a feature at ``sigmas`` (px) reads from its pixel (px).

    The structure tensor reads furthest: its inner and its outer Gaussian.

    >>> feature_reach_px([0.3, 1.0, 10.0])
    60
    """
    reach = 0
    for sigma in sigmas:
        reach = max(reach, _radius_px(sigma))
        if sigma >= _MIN_DERIVATIVE_SIGMA:
            reach = max(reach, _radius_px(sigma) + _radius_px(sigma / 2))
    return reach
