"""The ``qc`` section of real run summaries: the demo slide, fov8, REDSEA on spillover.

Run from the repository root::

    .venv/bin/python benchmarks/qc_runs.py [--work /tmp/tiled_seg_qc]

1. The demo's synthetic slide (``make demo``: 2048 px, seed 0, 512 px tiles,
   ``configs/default.yaml``): the run's ``qc`` section, and the true rate:
   the ground-truth cells (``labels/gt_cells``) measured the same way and
   thresholded with the run's thresholds.
2. MIBI-TOF fov8 with ``configs/mibi.yaml`` (needs ``../shared/data``), as
   one 1024 px tile and as 16 tiles of 256 px.
3. A synthetic 768 px slide with lateral spillover 0.3 run with
   ``redsea: true``: the rate before and after REDSEA, same thresholds.

Each case writes ``<work>/<case>.json`` (the run summary) and prints the
``tiled-seg`` command behind it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tiled_seg.cluster import connect
from tiled_seg.config import load_config
from tiled_seg.io.convert import convert
from tiled_seg.io.tables import read_parquet
from tiled_seg.measure import measure_store
from tiled_seg.pipeline import run
from tiled_seg.quality.coexpression import coexpression
from tiled_seg.synth import make_slide

ROOT = Path(__file__).resolve().parents[1]
FOV8 = ROOT.parent / "shared" / "data" / "mibi_tnbc_fov8" / "fov8_mibitiff_22ch.tiff"


def _report(name: str, summary: dict, work: Path, command: str) -> None:
    (work / f"{name}.json").write_text(json.dumps(summary, indent=2))
    qc = summary["qc"]
    co, seams = qc["coexpression"], qc["seams"]
    print(f"\n== {name}: {summary['n_cells']} cells, {summary['n_tiles']} tiles")
    print(f"  rate {co['rate']:.4f}  per pair {json.dumps(co['pair_rates'])}")
    print(f"  near seams {seams['near_rate']} ({seams['n_near']} cells), "
          f"interiors {seams['interior_rate']} ({seams['n_interior']} cells)")
    tiles = [t["rate"] for t in qc["per_tile"] if t["rate"] is not None]
    print(f"  per tile: {len(tiles)} tiles with cells, rates {min(tiles):.4f}..{max(tiles):.4f}")
    print(f"  seam edges {json.dumps(qc['seam_edges'])}")
    print(f"  slide {json.dumps(qc['slide'])}")
    if "redsea" in qc:
        print(f"  REDSEA: {qc['redsea']['rate_before']:.4f} -> {qc['redsea']['rate_after']:.4f}")
    print(f"  $ {command}")


def demo(work: Path, client) -> None:
    slide = make_slide(work / "demo.ome.zarr", size=(2048, 2048), seed=0, overwrite=True)
    config = load_config(ROOT / "configs" / "default.yaml").with_overrides(**{"tiling.tile_px": 512})
    result = run(slide.path, config, client=client, overwrite=True)
    summary = result.to_summary()
    measure_store(slide.path, labels="gt_cells", nuclei=None, table_name="gt", overwrite=True,
                  outputs=("parquet",))
    truth = read_parquet(Path(slide.path) / "tables" / "gt.parquet")
    pairs = [tuple(p) for p in summary["qc"]["pairs"]]
    same = coexpression(truth, pairs, thresholds=summary["qc"]["coexpression"]["thresholds"])
    own = coexpression(truth, pairs)
    summary["ground_truth"] = {"rate_run_thresholds": same.rate, "rate_own_thresholds": own.rate,
                               "n_cells": same.n_cells}
    _report("demo", summary, work, f"tiled-seg synth {slide.path} --size 2048 2048 --seed 0 && "
            f"tiled-seg run {slide.path} --tile-size 512 --summary demo.json")
    print(f"  ground truth ({same.n_cells} cells): rate {same.rate:.4f} with the run's thresholds, "
          f"{own.rate:.4f} with its own")


def fov8(work: Path, client) -> None:
    if not FOV8.is_file():
        print(f"\n== fov8: skipped, {FOV8} is absent")
        return
    store = work / "fov8.ome.zarr"
    if not store.exists():
        convert(FOV8, store, pixel_size_um=0.390625)
    for tile_px in (1024, 256):
        config = load_config(ROOT / "configs" / "mibi.yaml").with_overrides(**{"tiling.tile_px": tile_px})
        result = run(store, config, client=client, overwrite=True)
        _report(f"fov8_tile{tile_px}", result.to_summary(), work,
                f"tiled-seg run {store} --config configs/mibi.yaml --tile-size {tile_px} --overwrite "
                f"--summary fov8_tile{tile_px}.json --report")


def spillover(work: Path, client) -> None:
    slide = make_slide(work / "spill.ome.zarr", size=(768, 768), seed=1, spillover=0.3, overwrite=True)
    config = load_config(ROOT / "configs" / "default.yaml").with_overrides(
        **{"tiling.tile_px": 256, "redsea": True, "redsea_boundary_um": 2.0})
    result = run(slide.path, config, client=client, overwrite=True)
    _report("spillover_redsea", result.to_summary(), work,
            f"tiled-seg synth {slide.path} --size 768 768 --seed 1 (spillover 0.3) && tiled-seg run "
            f"{slide.path} --tile-size 256 --config redsea.yaml  # redsea: true")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/tiled_seg_qc"))
    parser.add_argument("--cases", nargs="+", default=["demo", "fov8", "spillover"])
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    with connect(workers=2) as client:
        for case in args.cases:
            globals()[case](args.work, client)


if __name__ == "__main__":
    main()
