"""Synthetic IMC-like slides with ground-truth cells and nuclei.

The slide is generated chunk by chunk, so any size fits in bounded memory and
every pixel has the same value whatever chunk computes it.

How it works
------------
Cell centres come from a grid of generation cells (``GRID_UM`` on a side),
each holding at most one candidate centre. Every random number is a
counter-based hash of ``(seed, stream, row, column)``, so any generation cell
can be regenerated anywhere, cheaply and vectorised. A candidate exists with a
probability given by a smooth low-frequency density field (dense tissue versus
empty stroma); candidates are thinned by a hard core (Matérn type II: a
candidate dies when one with a lower mark lies closer than the sum of their
hard-core radii), so nuclei do not pile up. Cell ids are consecutive from 1 in
raster order of generation cells: a small table of prefix counts (one entry
per generation row and ``_K`` columns) is computed once from hashes alone.

A pixel belongs to its nearest centre (a Voronoi tessellation, so cells touch
in dense regions) if it lies within that cell's own irregular radius; the
pixel holding a centre always belongs to its cell, so every cell has pixels.
The nucleus is an ellipse around the centre, clipped to its cell.

Intensities are expected ion counts per pixel: nuclear markers (DNA with
chromatin texture), membrane markers on a ring a few px thick along the cell
boundary with uneven brightness, cytoplasmic and extracellular markers; an
optional lateral spillover mixes each boundary pixel with its neighbour
cell's signal; a Gaussian point-spread blur; then background, Poisson count
noise and hot pixels. Values are stored as uint16 counts.
"""

from tiled_seg.synth._panel import CELL_TYPES, channel_names_for
from tiled_seg.synth._slide import SynthInfo, make_slide, synth_arrays
from tiled_seg.synth._stardist_model import make_stardist_model

__all__ = [
    "CELL_TYPES",
    "SynthInfo",
    "channel_names_for",
    "make_slide",
    "make_stardist_model",
    "synth_arrays",
]
