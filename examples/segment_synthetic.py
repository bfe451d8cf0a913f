"""Segment a synthetic slide through the Python API and score it.

Run: python examples/segment_synthetic.py [OUT_DIR]
"""

import sys
from pathlib import Path

import tiled_seg
from tiled_seg.cluster import connect
from tiled_seg.config import load_config
from tiled_seg.quality.evaluate import match_labels
from tiled_seg.pipeline import run
from tiled_seg.synth import make_slide


def main(out_dir: Path) -> None:
    out_dir.mkdir(exist_ok=True)
    slide = make_slide(out_dir / "slide.ome.zarr", size=(1024, 1024), seed=1, overwrite=True)
    config = load_config(Path(__file__).parents[1] / "configs" / "default.yaml")
    with connect(workers=2) as client:
        result = run(slide.path, config.with_overrides(**{"tiling.tile_px": 512}),
                     client=client, overwrite=True)

    cells = tiled_seg.read_labels(result.store, "cells").compute()
    truth = tiled_seg.read_labels(result.store, "gt_cells").compute()
    score = match_labels(cells, truth)
    print(f"{result.n_cells} cells in {result.n_tiles} tiles; F1 at IoU 0.5: {score.f1:.3f}")
    print(f"labels: {result.labels['cells']}  (view: python -m pip install \"napari[all]\" "
          f"napari-ome-zarr, then napari --plugin napari-ome-zarr {result.store})")
    print(f"cell table: {result.tables.get('parquet')}")


# Dask starts worker processes that import this file: run only as a script.
if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "example_output"))
