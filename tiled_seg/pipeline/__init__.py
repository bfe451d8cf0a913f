"""Wire the stages on dask: stats, plan, segment, stitch, write.

Tasks read the slide and read/write a scratch zarr directly; only small
records (label ids, matches, timings) cross the scheduler.
"""

from tiled_seg._manifest import TileResult
from tiled_seg.pipeline._run import RunResult, halo_px_for, run

# Outside __all__ but imported by the CLI, batch runs and tests.
from tiled_seg.pipeline._tiles import MAX_LABEL_ID, Progress, TileJob, segment_tile

__all__ = ["RunResult", "TileResult", "run", "segment_tile", "halo_px_for"]
