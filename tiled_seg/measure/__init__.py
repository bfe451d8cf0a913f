"""Single-cell measurement: per-cell intensities, morphology and neighbours (stage 8).

Kernels on numpy blocks (``_intensity``, ``_morphology``, ``_neighbours``,
``_blocks``), one dask layer that maps block tasks over a slide and merges
their partials (``_distributed``), and the store layer (``_store``).
"""

from tiled_seg.measure._blocks import (
    BlockMeasurements,
    MeasureJob,
    combine_measurements,
    measure_block,
    measure_block_task,
    warm_block_task,
)
from tiled_seg.measure._distributed import hull_features, measure_blocks
from tiled_seg.measure._intensity import block_partials, combine_partials
from tiled_seg.measure._morphology import (
    HULL_COLUMNS,
    MORPHOLOGIES,
    hull_table,
    moment_features,
    perimeter_partials,
)
from tiled_seg.measure._neighbours import border_pairs, centroid_pairs, touching_pairs
from tiled_seg.measure._store import (
    NEIGHBOURS,
    OUTPUTS,
    MeasureResult,
    edge_table,
    measure_arrays,
    measure_store,
)
from tiled_seg.measure._table import cell_table, nucleus_per_cell, to_anndata

__all__ = [
    "MeasureResult",
    "measure_store",
    "measure_arrays",
    "edge_table",
    "OUTPUTS",
    "NEIGHBOURS",
    "MORPHOLOGIES",
    "MeasureJob",
    "BlockMeasurements",
    "measure_block",
    "measure_block_task",
    "warm_block_task",
    "combine_measurements",
    "measure_blocks",
    "hull_features",
    "block_partials",
    "combine_partials",
    "perimeter_partials",
    "moment_features",
    "hull_table",
    "HULL_COLUMNS",
    "touching_pairs",
    "centroid_pairs",
    "border_pairs",
    "cell_table",
    "nucleus_per_cell",
    "to_anndata",
]
