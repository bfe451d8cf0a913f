"""Single-cell measurement: per-cell intensities, morphology and neighbours (stage 8)."""

from tiled_seg.measure._distributed import (
    aggregate_cells,
    border_edges_dask,
    morphology_dask,
    touching_dask,
)
from tiled_seg.measure._intensity import block_partials, combine_partials
from tiled_seg.measure._morphology import MORPHOLOGY_COLUMNS, morphology_table
from tiled_seg.measure._neighbours import border_pairs, centroid_pairs, touching_pairs
from tiled_seg.measure._store import (
    NEIGHBOURS,
    OUTPUTS,
    MeasureResult,
    measure_arrays,
    measure_store,
    neighbour_edges,
)
from tiled_seg.measure._table import cell_table, link_nuclei, to_anndata

__all__ = [
    "MeasureResult",
    "measure_store",
    "measure_arrays",
    "neighbour_edges",
    "OUTPUTS",
    "NEIGHBOURS",
    "aggregate_cells",
    "morphology_dask",
    "touching_dask",
    "border_edges_dask",
    "block_partials",
    "combine_partials",
    "morphology_table",
    "MORPHOLOGY_COLUMNS",
    "touching_pairs",
    "centroid_pairs",
    "border_pairs",
    "cell_table",
    "link_nuclei",
    "to_anndata",
]
