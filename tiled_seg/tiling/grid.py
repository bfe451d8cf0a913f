"""The tile grid: chunk-aligned cores, each grown by a halo.

A slide of shape ``(Y, X)`` is cut into tiles. A tile's *core* is the part of
the slide whose final labels it owns; cores are aligned to the zarr chunk so
that no two tasks ever write the same chunk, and together they cover the slide
exactly once. A tile's *halo box* is its core grown by ``halo_px`` on every
side and clipped to the slide; the segmenter sees the whole halo box, so every
cell with a pixel in the core is seen whole as long as the halo is at least the
largest cell diameter (px). Tiles at the bottom and right edges of the slide
have smaller cores.

The halo must not exceed the core size: then a cell no wider than the halo
touches the cores of at most 2 x 2 tiles, all of which are neighbours
(diagonals included) and are compared by stitching.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from numbers import Integral
from typing import Any

from tiled_seg.errors import TileLayoutError

__all__ = ["Box", "Tile", "TileGrid", "plan_tiles", "plan_blocks", "BLOCK_PX", "DEFAULT_CHUNK_PX"]

#: Default block side (px) of the non-model stages (measurement, expansion,
#: label writes): large enough that one task's read costs more than its
#: scheduling, small enough that a block of 40 channels fits a worker.
BLOCK_PX = 1024

#: Default zarr chunk side (px) of the images and labels tiled_seg writes;
#: chosen by ``benchmarks/bench_chunks.py`` (README, Performance): one channel
#: per chunk, 512 x 512 px, reads blocks and single-channel tiles fastest.
DEFAULT_CHUNK_PX = 512


@dataclass(frozen=True)
class Box:
    """A half-open rectangle ``[y0, y1) x [x0, x1)`` in px.

    Examples
    --------
    >>> Box(0, 10, 0, 10).intersect(Box(5, 20, 8, 9))
    Box(y0=5, y1=10, x0=8, x1=9)
    >>> Box(5, 10, 8, 9).relative_to(Box(5, 20, 0, 20))
    Box(y0=0, y1=5, x0=8, x1=9)
    """

    y0: int
    y1: int
    x0: int
    x1: int

    def __post_init__(self) -> None:
        if self.y1 < self.y0 or self.x1 < self.x0:
            raise TileLayoutError(
                f"Box y=[{self.y0}, {self.y1}) x=[{self.x0}, {self.x1}) has a negative size; "
                "give the start before the end on each axis."
            )

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` in px."""
        return (self.y1 - self.y0, self.x1 - self.x0)

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(slice(y0, y1), slice(x0, x1))``, to index a ``(Y, X)`` array."""
        return (slice(self.y0, self.y1), slice(self.x0, self.x1))

    def intersect(self, other: Box) -> Box | None:
        """The overlap of two boxes, or None where they share no pixel."""
        y0, y1 = max(self.y0, other.y0), min(self.y1, other.y1)
        x0, x1 = max(self.x0, other.x0), min(self.x1, other.x1)
        if y0 >= y1 or x0 >= x1:
            return None
        return Box(y0, y1, x0, x1)

    def grow(self, margin: int, shape_yx: tuple[int, int]) -> Box:
        """This box grown by ``margin`` px on every side, clipped to ``[0, shape_yx)``.

        >>> Box(0, 10, 5, 10).grow(2, (11, 11))
        Box(y0=0, y1=11, x0=3, x1=11)
        """
        return Box(
            max(self.y0 - margin, 0), min(self.y1 + margin, shape_yx[0]),
            max(self.x0 - margin, 0), min(self.x1 + margin, shape_yx[1]),
        )

    def relative_to(self, outer: Box) -> Box:
        """This box in the coordinates of ``outer``, which must contain it."""
        if not (
            outer.y0 <= self.y0 and self.y1 <= outer.y1 and outer.x0 <= self.x0 and self.x1 <= outer.x1
        ):
            raise TileLayoutError(f"{self} does not lie inside {outer}; intersect the boxes first.")
        return Box(self.y0 - outer.y0, self.y1 - outer.y0, self.x0 - outer.x0, self.x1 - outer.x0)


@dataclass(frozen=True)
class Tile:
    """One tile of a :class:`TileGrid`.

    Attributes
    ----------
    index : int
        Position in ``TileGrid.tiles`` (row-major over the grid).
    grid_yx : tuple of int
        ``(row, column)`` in the grid.
    core : Box
        Slide pixels whose final labels this tile owns (px).
    halo : Box
        The core grown by the halo and clipped to the slide (px): what the
        segmenter sees, and the box the tile's local labels cover.
    """

    index: int
    grid_yx: tuple[int, int]
    core: Box
    halo: Box

    @property
    def core_in_halo(self) -> Box:
        """The core in the coordinates of the halo box (to crop tile labels)."""
        return self.core.relative_to(self.halo)


@dataclass(frozen=True)
class TileGrid:
    """A slide cut into tiles.

    Attributes
    ----------
    shape_yx : tuple of int
        Slide shape ``(Y, X)`` in px.
    tile_px : tuple of int
        Core size per axis in px, after alignment to the chunk; edge tiles have
        smaller cores.
    halo_px : int
        Halo width in px on every side of a core.
    tiles : tuple of Tile
        Row-major; ``tiles[i].index == i``.
    """

    shape_yx: tuple[int, int]
    tile_px: tuple[int, int]
    halo_px: int
    tiles: tuple[Tile, ...]

    @property
    def grid_shape(self) -> tuple[int, int]:
        """Number of tile rows and columns."""
        return (math.ceil(self.shape_yx[0] / self.tile_px[0]), math.ceil(self.shape_yx[1] / self.tile_px[1]))

    @classmethod
    def regular(cls, shape_yx: tuple[int, int], tile_px: tuple[int, int], halo_px: int) -> TileGrid:
        """Cores of ``tile_px`` from the origin, row-major, each grown by ``halo_px``.

        No checks: :func:`plan_tiles` validates and aligns the sizes first.
        """
        height, width = shape_yx
        rows, cols = math.ceil(height / tile_px[0]), math.ceil(width / tile_px[1])
        tiles: list[Tile] = []
        for r in range(rows):
            for c in range(cols):
                y0, x0 = r * tile_px[0], c * tile_px[1]
                core = Box(y0, min(y0 + tile_px[0], height), x0, min(x0 + tile_px[1], width))
                tiles.append(Tile(len(tiles), (r, c), core, core.grow(halo_px, shape_yx)))
        return cls(shape_yx=(height, width), tile_px=tile_px, halo_px=halo_px, tiles=tuple(tiles))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the three numbers every tile follows from.

        >>> TileGrid.from_dict(plan_tiles((100, 150), 64, 8).to_dict()) == plan_tiles((100, 150), 64, 8)
        True
        """
        return {"shape_yx": list(self.shape_yx), "tile_px": list(self.tile_px), "halo_px": self.halo_px}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> TileGrid:
        """Inverse of :meth:`to_dict`."""
        shape = tuple(int(n) for n in record["shape_yx"])
        tile = tuple(int(n) for n in record["tile_px"])
        if len(shape) != 2 or len(tile) != 2:
            raise TileLayoutError(f"a tile grid record needs 2-D shape_yx and tile_px, got {record!r}.")
        return cls.regular((shape[0], shape[1]), (tile[0], tile[1]), int(record["halo_px"]))

    def seam_lines(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Internal seams along y and x (px): the first row and column of every core but the first.

        A seam at ``s`` lies between pixels ``s - 1`` and ``s``.

        >>> TileGrid.regular((600, 1100), (256, 512), 8).seam_lines()
        ((256, 512), (512, 1024))
        """
        rows = sorted({t.core.y0 for t in self.tiles} - {0})
        cols = sorted({t.core.x0 for t in self.tiles} - {0})
        return tuple(rows), tuple(cols)

    def neighbour_pairs(self) -> list[tuple[int, int]]:
        """All pairs ``(i, j)``, ``i < j``, of tiles whose cores touch.

        Includes diagonal neighbours (cores touching at a corner), sorted.
        """
        rows, cols = self.grid_shape
        pairs = []
        for r in range(rows):
            for c in range(cols):
                i = r * cols + c
                for dr, dc in ((0, 1), (1, -1), (1, 0), (1, 1)):
                    rr, cc = r + dr, c + dc
                    if 0 <= rr < rows and 0 <= cc < cols:
                        pairs.append((i, rr * cols + cc))
        return sorted(pairs)


def _positive_int(value: object, name: str, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise TileLayoutError(f"{name} must be a positive integer, got {value!r}; {fix}.")
    return int(value)


def plan_tiles(
    shape_yx: tuple[int, int],
    tile_px: int,
    halo_px: int,
    chunk_yx: tuple[int, int] | None = None,
) -> TileGrid:
    """Cut a slide into chunk-aligned tiles with halos.

    Parameters
    ----------
    shape_yx : tuple of int
        Slide shape ``(Y, X)`` in px.
    tile_px : int
        Requested core size in px. Where it is not a multiple of the chunk
        size on an axis it is raised to the next multiple on that axis, with a
        ``UserWarning``; ``TileGrid.tile_px`` records the size used.
    halo_px : int
        Halo in px, at least 1 and at least the largest cell diameter, so that
        every cell with a pixel in a core is seen whole by that tile.
    chunk_yx : tuple of int, optional
        Zarr chunk shape ``(cy, cx)`` in px of the label array written; default
        ``(tile_px, tile_px)``.

    Returns
    -------
    TileGrid

    Raises
    ------
    TileLayoutError
        Non-positive sizes, or a halo larger than the (aligned) core.

    Examples
    --------
    >>> grid = plan_tiles((100, 150), tile_px=64, halo_px=8, chunk_yx=(32, 32))
    >>> grid.grid_shape, grid.tiles[-1].core, grid.tiles[-1].halo
    ((2, 3), Box(y0=64, y1=100, x0=128, x1=150), Box(y0=56, y1=100, x0=120, x1=150))
    """
    if len(shape_yx) != 2:
        raise TileLayoutError(f"shape_yx must be (Y, X), got {shape_yx!r}; pass the 2-D slide shape in px.")
    height = _positive_int(shape_yx[0], "shape_yx[0]", "the slide must have at least one row")
    width = _positive_int(shape_yx[1], "shape_yx[1]", "the slide must have at least one column")
    tile = _positive_int(tile_px, "tile_px", "give the tile core size in px")
    halo = _positive_int(
        halo_px,
        "halo_px",
        "a halo of at least 1 px (and at least the largest cell diameter) is needed to stitch tiles",
    )
    if chunk_yx is None:
        chunk_yx = (tile, tile)
    if len(chunk_yx) != 2:
        raise TileLayoutError(f"chunk_yx must be (cy, cx), got {chunk_yx!r}; pass the 2-D chunk shape in px.")
    chunks = tuple(_positive_int(c, "chunk_yx", "give the zarr chunk shape in px") for c in chunk_yx)
    aligned = (-(-tile // chunks[0]) * chunks[0], -(-tile // chunks[1]) * chunks[1])
    if aligned != (tile, tile):
        warnings.warn(
            f"tile_px={tile} is not a multiple of the zarr chunk {chunks} px; using tile cores of "
            f"{aligned} px (next multiple) so that no two tasks write the same chunk.",
            UserWarning,
            stacklevel=2,
        )
    if halo > min(aligned):
        raise TileLayoutError(
            f"halo_px={halo} exceeds the tile core {aligned} px (tile_px={tile}); a cell as wide as the "
            "halo could then reach the core of a non-adjacent tile, which stitching never compares. "
            "Raise tile_px or lower halo_px."
        )
    return TileGrid.regular((height, width), aligned, halo)


def plan_blocks(
    shape_yx: tuple[int, int], chunk_yx: tuple[int, int], block_px: int = BLOCK_PX
) -> tuple[Box, ...]:
    """Row-major boxes covering ``shape_yx`` once, each whole storage chunks.

    The block side is ``block_px`` rounded down to a multiple of the chunk on
    each axis (at least one chunk), so a task that writes its block writes
    whole chunks that no other task touches.

    Parameters
    ----------
    shape_yx : tuple of int
        Array shape ``(Y, X)`` in px.
    chunk_yx : tuple of int
        Storage chunk ``(cy, cx)`` in px.
    block_px : int
        Wanted block side in px.

    >>> plan_blocks((5, 7), (2, 3), block_px=4)
    (Box(y0=0, y1=4, x0=0, x1=3), Box(y0=0, y1=4, x0=3, x1=6), Box(y0=0, y1=4, x0=6, x1=7), Box(y0=4, y1=5, x0=0, x1=3), Box(y0=4, y1=5, x0=3, x1=6), Box(y0=4, y1=5, x0=6, x1=7))
    """
    block = _positive_int(block_px, "block_px", "give the block side in px")
    steps = [max(block // _positive_int(c, "chunk_yx", "give the chunk shape in px"), 1) * c for c in chunk_yx]
    height, width = (int(n) for n in shape_yx)
    return tuple(
        Box(y0, min(y0 + steps[0], height), x0, min(x0 + steps[1], width))
        for y0 in range(0, height, steps[0])
        for x0 in range(0, width, steps[1])
    )
