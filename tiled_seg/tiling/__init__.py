"""Tiling: the grid (``grid``), matching neighbouring tiles (``match``), joining matches
into global ids (``join``), the one stitch used by in-memory and distributed runs
(``stitch``) and tiles without tissue (``tissue``).

The grid's names are re-exported here; they import nothing heavy, so the checks a
run makes before it starts can plan tiles without loading dask.
"""

from tiled_seg.tiling.grid import BLOCK_PX, DEFAULT_CHUNK_PX, Box, Tile, TileGrid, plan_blocks, plan_tiles

__all__ = ["Box", "Tile", "TileGrid", "plan_tiles", "plan_blocks", "BLOCK_PX", "DEFAULT_CHUNK_PX"]
