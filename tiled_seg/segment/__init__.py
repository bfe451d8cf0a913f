"""The segment stage: slide-wide normalisation (``normalize``), the pure per-tile
functions (``tiles``), the backends behind one interface (``backends``) and nuclear
expansion to cells (``expand``).

The worker tasks that read tiles and write their labels to scratch are wiring and
live in :mod:`tiled_seg.pipeline`.
"""
