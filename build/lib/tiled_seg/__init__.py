"""tiled_seg: seam-free single-cell segmentation of whole-slide multiplexed images."""

from tiled_seg.errors import TiledSegError
from tiled_seg.io import open_slide, read_labels, write_image, write_labels

__all__ = ["TiledSegError", "open_slide", "read_labels", "write_image", "write_labels"]
__version__ = "0.1.0"
