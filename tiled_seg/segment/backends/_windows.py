"""Model windows cut out of a tile and put back (crop-margin tiling).

A backend's ``prepare`` stage cuts its model input into fixed-size
overlapping windows (:func:`cut_windows`); the windows of several tiles can
then be batched together on the accelerator, and the ``postprocess`` stage
assembles the network outputs with :func:`assemble_windows`, keeping for
every pixel the prediction of the window whose centre is nearest: no
blending, deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["WindowLayout", "window_starts", "cut_windows", "assemble_windows"]


def window_starts(length_px: int, window_px: int, margin_px: int) -> list[int]:
    """Start offsets (px) of windows covering ``length_px`` with ``2 * margin_px`` overlap.

    The last window is aligned to the end, so all windows lie inside the
    array when ``length_px >= window_px``; a shorter axis gets one window
    (the caller pads).

    >>> window_starts(10, 4, 1)
    [0, 2, 4, 6]
    >>> window_starts(3, 4, 1)
    [0]
    """
    stride = max(window_px - 2 * margin_px, 1)
    if length_px <= window_px:
        return [0]
    starts = list(range(0, length_px - window_px, stride))
    starts.append(length_px - window_px)
    return starts


def _kept_ranges(starts: list[int], window_px: int, length_px: int) -> list[tuple[int, int]]:
    """Per window, the output range it owns: cut at the middle of each overlap."""
    cuts = [0]
    for previous, start in zip(starts[:-1], starts[1:]):
        cuts.append((start + previous + window_px) // 2)
    cuts.append(length_px)
    return list(zip(cuts[:-1], cuts[1:]))


@dataclass(frozen=True)
class WindowLayout:
    """Where each window of one image came from.

    Attributes
    ----------
    shape_yx : tuple of int
        Image shape before padding (px).
    padded_yx : tuple of int
        Shape after zero-padding axes shorter than a window (px).
    window_px : int
        Window side (px).
    boxes : tuple of (y, x, (y0, y1), (x0, x1))
        Per window: its start and the output range it owns (px, padded image).
    """

    shape_yx: tuple[int, int]
    padded_yx: tuple[int, int]
    window_px: int
    boxes: tuple[tuple[int, int, tuple[int, int], tuple[int, int]], ...]


def cut_windows(image: np.ndarray, window_px: int, margin_px: int) -> tuple[np.ndarray, WindowLayout]:
    """Cut ``(Y, X, C)`` ``image`` into overlapping ``(N, window_px, window_px, C)`` windows.

    Windows overlap by ``2 * margin_px``; axes shorter than a window are
    zero-padded at the end.

    Examples
    --------
    >>> windows, layout = cut_windows(np.zeros((10, 3, 1), np.float32), 4, 1)
    >>> windows.shape, layout.padded_yx
    ((4, 4, 4, 1), (10, 4))
    """
    height, width = image.shape[:2]
    pad_y, pad_x = max(window_px - height, 0), max(window_px - width, 0)
    if pad_y or pad_x:
        image = np.pad(image, ((0, pad_y), (0, pad_x), (0, 0)))
    full_h, full_w = image.shape[:2]
    ys, xs = window_starts(full_h, window_px, margin_px), window_starts(full_w, window_px, margin_px)
    ranges_y, ranges_x = _kept_ranges(ys, window_px, full_h), _kept_ranges(xs, window_px, full_w)
    boxes = tuple((y, x, ry, rx) for y, ry in zip(ys, ranges_y) for x, rx in zip(xs, ranges_x))
    windows = np.stack([image[y : y + window_px, x : x + window_px] for y, x, _, _ in boxes])
    return windows, WindowLayout((height, width), (full_h, full_w), window_px, boxes)


def assemble_windows(outputs: np.ndarray, layout: WindowLayout) -> np.ndarray:
    """One ``(Y, X, K)`` image from per-window outputs ``(N, window_px, window_px, K)``.

    Every pixel comes from the window whose centre is nearest along each axis.
    """
    full_h, full_w = layout.padded_yx
    out = np.zeros((full_h, full_w, outputs.shape[-1]), np.float32)
    for index, (y, x, (y0, y1), (x0, x1)) in enumerate(layout.boxes):
        out[y0:y1, x0:x1] = outputs[index, y0 - y : y1 - y, x0 - x : x1 - x]
    height, width = layout.shape_yx
    return out[:height, :width]
