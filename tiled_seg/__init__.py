"""tiled_seg: seam-free single-cell segmentation of whole-slide multiplexed images."""

# Set before the imports: the writers below record it in what they write.
__version__ = "0.1.0"

from tiled_seg.errors import TiledSegError  # noqa: E402
from tiled_seg.io import open_slide, read_labels, write_image, write_labels  # noqa: E402

__all__ = ["TiledSegError", "open_slide", "read_labels", "write_image", "write_labels"]
