"""Segmentation backends behind one small interface."""

from tiled_seg.segment.backends.base import (
    BackendOptions,
    NetworkOutputs,
    PreparedTile,
    Segmentation,
    Segmenter,
    SlideContext,
    predict_tiles,
)
from tiled_seg.segment.backends.registry import available_backends, get_segmenter, get_segmenter_class

__all__ = [
    "BackendOptions",
    "NetworkOutputs",
    "PreparedTile",
    "Segmentation",
    "Segmenter",
    "SlideContext",
    "available_backends",
    "get_segmenter",
    "get_segmenter_class",
    "predict_tiles",
]
