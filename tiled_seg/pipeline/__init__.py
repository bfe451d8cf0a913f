"""Wire the stages on dask: stats, plan, segment, stitch, write.

Tasks read the slide and read/write a scratch zarr directly; only small
records (label ids, matches, timings) cross the scheduler. The checks a run
makes before any work (:func:`check_run`) import neither dask's cluster nor
the measurement stack; the rest loads on first use.
"""

from __future__ import annotations

from typing import Any

from tiled_seg.pipeline._checks import check_run, configured_backend, halo_px_for

__all__ = [
    "RunResult", "TileResult", "run", "check_run", "configured_backend", "segment_tile",
    "halo_px_for",
]

#: Names loaded from their module on first use (PEP 562); outside __all__ but
#: imported by the CLI, batch runs and tests: MAX_LABEL_ID, Progress, TileJob.
_LAZY = {
    "RunResult": "tiled_seg.pipeline._run",
    "run": "tiled_seg.pipeline._run",
    "TileResult": "tiled_seg.pipeline.state",
    "MAX_LABEL_ID": "tiled_seg.segment.tiles",
    "Progress": "tiled_seg.pipeline._segment",
    "TileJob": "tiled_seg.pipeline._segment",
    "segment_tile": "tiled_seg.pipeline._segment",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tiled_seg.pipeline' has no attribute {name!r}")
