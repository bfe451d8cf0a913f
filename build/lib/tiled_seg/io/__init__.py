"""Reading and writing OME-NGFF images, labels and tables, and conversion."""

from tiled_seg.io.ngff import (
    Slide,
    list_labels,
    open_slide,
    read_labels,
    write_image,
    write_labels,
)

__all__ = ["Slide", "list_labels", "open_slide", "read_labels", "write_image", "write_labels"]
