"""Segmentation backends behind one small interface."""

from tiled_seg.segmenters.base import BackendOptions, Segmentation, Segmenter, SlideContext
from tiled_seg.segmenters.registry import available_backends, get_segmenter, get_segmenter_class

__all__ = [
    "BackendOptions",
    "Segmentation",
    "Segmenter",
    "SlideContext",
    "available_backends",
    "get_segmenter",
    "get_segmenter_class",
]
