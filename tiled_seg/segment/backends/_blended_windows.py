"""A network over an image in overlapping windows, blended as DeepCell blends them.

DeepCell's applications (``deepcell.applications.Application._tile_input`` /
``_untile_output`` on ``deepcell_toolbox.utils.tile_image`` /
``untile_image``, version 0.12) cut a large input into model-sized windows at
a stride of 3/4 of the window (rounded up to an even number of px), zero-pad
the image so the windows fit, and add the windows' outputs back weighted by
a squared-spline window over each overlap. An input smaller than the window
is reflect-padded to it instead, split as DeepCell splits it (the extra pixel
after). Written here from that behaviour; ``tests/test_mesmer.py`` checks it
against ``deepcell-toolbox`` pixel for pixel.

Plain numpy kernels; no model library is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy.signal import windows

__all__ = [
    "BlendLayout", "WindowPlan", "blend_windows", "cut_blended", "plan_windows", "predict_blended",
    "spline_weights",
]

#: A network on a batch of windows: ``(N, W, W, C)`` in, one or more ``(N, W, W, K)`` out.
Predictor = Callable[[np.ndarray], Sequence[np.ndarray]]

# DeepCell blends only when windows are at least this large and overlap no
# more than half (smaller ones are pasted raw, later over earlier).
_MIN_BLEND_PX = 32
_MIN_BLEND_STRIDE = 0.5


@dataclass(frozen=True)
class WindowPlan:
    """Where the windows of one axis lie in the padded image.

    Attributes
    ----------
    starts : tuple of int
        Window start per window (px, padded coordinates).
    overlaps : tuple of (int, int)
        Overlap (px) with the previous and the next window.
    pad : (int, int)
        Zero padding (px) before and after the image.
    """

    starts: tuple[int, ...]
    overlaps: tuple[tuple[int, int], ...]
    pad: tuple[int, int]


def plan_windows(length_px: int, window_px: int, stride_ratio: float = 0.75) -> WindowPlan:
    """DeepCell's windows along one axis of ``length_px >= window_px``.

    >>> plan_windows(400, 256)
    WindowPlan(starts=(0, 192), overlaps=((0, 64), (64, 0)), pad=(24, 24))
    """
    stride = min(int(np.ceil(stride_ratio * window_px / 2.0) * 2), window_px)
    count = max(int(np.ceil((length_px - window_px) / stride + 1)), 1)
    excess = window_px + stride * (count - 1) - length_px
    pad = (int(np.ceil(excess / 2)), int(np.floor(excess / 2)))
    padded = length_px + excess
    starts, overlaps = [], []
    for i in range(count):
        start = i * stride if i != count - 1 else padded - window_px
        if i == 0:
            overlap = (0, window_px - stride)
        elif i == count - 2:
            overlap = (window_px - stride, window_px - padded + start + window_px)
        elif i == count - 1:
            overlap = ((i - 1) * stride + window_px - start, 0)
        else:
            overlap = (window_px - stride, window_px - stride)
        starts.append(start)
        overlaps.append(overlap)
    return WindowPlan(tuple(starts), tuple(overlaps), pad)


def _spline(size: int, power: int) -> np.ndarray:
    """Symmetric squared-spline ramp of ``size`` samples, peak 1."""
    quarter = int(size / 4)
    triangle = windows.triang(size)
    outer = np.abs(2 * triangle) ** power / 2
    inner = 1 - np.abs(2 * (triangle - 1)) ** power / 2
    # Slices as DeepCell writes them: with quarter == 0, ``[0:-0]`` is empty
    # and ``[-0:]`` is everything, so such a tiny ramp is the outer part only.
    outer[quarter:-quarter] = 0
    inner[:quarter] = 0
    inner[-quarter:] = 0
    ramp = inner + outer
    return ramp / np.amax(ramp)


def spline_weights(window_px: int, overlap: tuple[int, int], power: int = 2) -> np.ndarray:
    """1-D blending weights of a window: spline ramps over each overlap, 1 elsewhere.

    >>> spline_weights(8, (0, 4)).round(3).tolist()
    [1.0, 1.0, 1.0, 1.0, 1.0, 0.742, 0.29, 0.032]
    """
    before, after = overlap
    weights = np.ones(window_px)
    if before > 0:
        weights[:before] = _spline(2 * before, power)[:before]
    if after > 0:
        weights[-after:] = _spline(2 * after, power)[after:]
    return weights


def _reflect_to(image: np.ndarray, window_px: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Reflect-pad axes shorter than the window up to it (extra px after)."""
    pads = []
    for length in image.shape[:2]:
        missing = max(window_px - length, 0)
        pads.append((missing // 2, missing - missing // 2))
    return np.pad(image, pads + [(0, 0)], "reflect"), pads


@dataclass(frozen=True)
class BlendLayout:
    """Where :func:`cut_blended` took its windows, for :func:`blend_windows`.

    Attributes
    ----------
    shape_yx : (int, int)
        The image's shape (px).
    reflect : ((int, int), (int, int))
        Reflect padding (px) of axes shorter than the window.
    plan_y, plan_x : WindowPlan
        The windows along each axis of the reflect-padded image.
    window_px : int
        Window side (px).
    blend : bool
        Whether overlaps are blended (else later windows are pasted over earlier).
    dtype : numpy dtype
        The input's dtype, in which DeepCell stores each window's output.
    """

    shape_yx: tuple[int, int]
    reflect: tuple[tuple[int, int], tuple[int, int]]
    plan_y: WindowPlan
    plan_x: WindowPlan
    window_px: int
    blend: bool
    dtype: np.dtype

    @property
    def boxes(self) -> list[tuple[int, int, tuple[int, int], tuple[int, int]]]:
        """``(y, x, overlap_y, overlap_x)`` of every window, in cutting order."""
        return [
            (y, x, oy, ox)
            for y, oy in zip(self.plan_y.starts, self.plan_y.overlaps)
            for x, ox in zip(self.plan_x.starts, self.plan_x.overlaps)
        ]


def cut_blended(
    image: np.ndarray, window_px: int, stride_ratio: float = 0.75
) -> tuple[np.ndarray, BlendLayout]:
    """Cut ``image`` into DeepCell's windows.

    Parameters
    ----------
    image : ndarray, shape (Y, X, C)
        Model input (already preprocessed).
    window_px : int
        Side of the model's input window (px).
    stride_ratio : float
        Window stride as a fraction of ``window_px``.

    Returns
    -------
    windows : ndarray, shape (N, window_px, window_px, C)
    layout : BlendLayout

    Notes
    -----
    An image with an axis shorter than the window is reflect-padded on
    that axis and, where it still exceeds the window on the other axis,
    windowed there; DeepCell pads both axes then (and so cannot run a
    fixed-size model on such an image).
    """
    shape_yx = (int(image.shape[0]), int(image.shape[1]))
    padded, reflect = _reflect_to(image, window_px)
    plan_y = plan_windows(padded.shape[0], window_px, stride_ratio)
    plan_x = plan_windows(padded.shape[1], window_px, stride_ratio)
    padded = np.pad(padded, (plan_y.pad, plan_x.pad, (0, 0)), "constant")
    full_h, full_w = padded.shape[:2]
    blend = _MIN_BLEND_PX <= window_px < full_h and _MIN_BLEND_PX <= window_px < full_w
    blend = blend and stride_ratio >= _MIN_BLEND_STRIDE
    layout = BlendLayout(
        shape_yx, (reflect[0], reflect[1]), plan_y, plan_x, window_px, blend, image.dtype
    )
    windows = np.stack([padded[y : y + window_px, x : x + window_px] for y, x, _, _ in layout.boxes])
    return windows, layout


def blend_windows(outputs: Sequence[np.ndarray], layout: BlendLayout) -> list[np.ndarray]:
    """The windows' outputs put back together as DeepCell does.

    Parameters
    ----------
    outputs : sequence of ndarray, each shape (N, window_px, window_px, K_i)
        The network's outputs for the windows of :func:`cut_blended`, in order.
    layout : BlendLayout

    Returns
    -------
    list of ndarray, each shape (Y, X, K_i), dtype of the input
        Where windows overlap, the sum of their outputs weighted by
        :func:`spline_weights` (which sum to 1); outputs of windows under
        32 px or with a stride under half the window are pasted instead.
    """
    window_px, dtype = layout.window_px, layout.dtype
    (top, bottom), (left, right) = layout.plan_y.pad, layout.plan_x.pad
    full_h = layout.plan_y.starts[-1] + window_px
    full_w = layout.plan_x.starts[-1] + window_px
    sums = [np.zeros((full_h, full_w, o.shape[-1]), np.float64) for o in outputs]
    for index, (y, x, oy, ox) in enumerate(layout.boxes):
        for total, output in zip(sums, outputs):
            # DeepCell stores each window's outputs in the input's dtype first.
            window = np.asarray(output[index]).astype(dtype)
            if layout.blend:
                weights = np.outer(spline_weights(window_px, oy), spline_weights(window_px, ox))
                total[y : y + window_px, x : x + window_px] += window * weights[..., None]
            else:
                total[y : y + window_px, x : x + window_px] = window
    (ry, _), (rx, _) = layout.reflect
    height, width = layout.shape_yx
    return [
        s.astype(dtype)[top : full_h - bottom, left : full_w - right][ry : ry + height, rx : rx + width]
        for s in sums
    ]


def predict_blended(
    image: np.ndarray,
    predict: Predictor,
    window_px: int,
    batch_size: int = 4,
    stride_ratio: float = 0.75,
) -> list[np.ndarray]:
    """Run ``predict`` over ``image`` in DeepCell's blended windows.

    Parameters
    ----------
    image : ndarray, shape (Y, X, C)
        Model input (already preprocessed).
    predict : callable
        Maps a batch ``(N, window_px, window_px, C)`` to a sequence of
        outputs, each ``(N, window_px, window_px, K_i)``.
    window_px : int
        Side of the model's input window (px).
    batch_size : int
        Windows per call of ``predict``.
    stride_ratio : float
        Window stride as a fraction of ``window_px``.

    Returns
    -------
    list of ndarray, each shape (Y, X, K_i), dtype of ``image``
        See :func:`blend_windows`.
    """
    windows, layout = cut_blended(image, window_px, stride_ratio)
    batches = [
        [np.asarray(r) for r in predict(windows[i : i + batch_size])]
        for i in range(0, len(windows), batch_size)
    ]
    outputs = [np.concatenate(parts) for parts in zip(*batches)]
    return blend_windows(outputs, layout)
