"""Accuracy of whole pipeline runs on real data, plus co-expression and REDSEA figures.

Run from the repository root::

    .venv/bin/python benchmarks/accuracy_report.py [--work /tmp/tiled_seg_accuracy]

Each case converts the input with ``tiled_seg.io.convert.convert``, runs
``tiled_seg.pipeline.run`` (tiles, stitching, measurement) and scores the
stitched labels with ``tiled_seg.quality.evaluate.evaluate_paths`` (what
``tiled-seg evaluate PRED GT --json`` prints):

1. MIBI-TOF fov8 whole cells (``configs/mibi.yaml``; once as configured, one
   1024 px tile, and once cut into 256 px tiles) against Mesmer's labels;
   the impossible co-expression rate of our cells and of Mesmer's cells,
   before and after REDSEA compensation, and a QC report;
2. StarDist/DSB2018 nuclei against the hand masks, watershed backend with
   the settings of ``benchmarks/accuracy_watershed.py`` and the ``onnx``
   backend with the real bioimage.io U-Net, both on 256 px tiles;
3. a synthetic slide with injected lateral spillover (ground-truth labels):
   co-expression and type-marker means before and after REDSEA.

Every case prints the shell commands that reproduce it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client

from tiled_seg.config import RunConfig, load_config
from tiled_seg.io.convert import convert
from tiled_seg.io.tables import read_parquet
from tiled_seg.measure.redsea import REDSEA_SUFFIX, compensate_store, redsea_arrays
from tiled_seg.pipeline import run
from tiled_seg.quality.coexpression import coexpression, marker_thresholds
from tiled_seg.quality.evaluate import evaluate_paths

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "benchmarks"))
from accuracy_watershed import STARDIST_OPTIONS  # noqa: E402

MIBI_PIXEL_SIZE_UM = 0.390625
MIBI_PAIRS = [("CD3", "CD20"), ("CD3", "PanKeratin"), ("CD45", "PanKeratin"), ("CD20", "PanKeratin")]
MIBI_REDSEA_CHANNELS = ["CD3 (159)", "CD20 (164)", "CD45 (169)", "PanKeratin (171)"]
ONNX_MODEL = DATA / "models" / "unet2d_nuclei_broad" / "bioimageio.yaml"
KEYS = ("f1", "precision", "recall", "jaccard", "n_true", "n_pred", "tp", "merges", "splits",
        "mean_matched_iou")


def _score(name: str, pred: str, truth: Path) -> dict[str, Any]:
    result = evaluate_paths(pred, truth).to_dict()
    shown = " ".join(f"{k}={result[k]:.3f}" if isinstance(result[k], float) else f"{k}={result[k]}"
                     for k in KEYS)
    print(f"{name}: {shown}")
    print(f"  $ tiled-seg evaluate {pred} {truth} --json")
    return result


def _run(store: Path, config: RunConfig, client: Client) -> float:
    start = time.perf_counter()
    run(store, config, client=client, overwrite=True)
    return time.perf_counter() - start


def fov8(work: Path, client: Client) -> None:
    folder = DATA / "mibi_tnbc_fov8"
    store = work / "fov8.ome.zarr"
    config = load_config(ROOT / "configs" / "mibi.yaml")
    for tile_px in (1024, 256):
        seconds = _run(store, config.with_overrides(**{"tiling.tile_px": tile_px}), client)
        _score(f"fov8 cells vs Mesmer, tile_px={tile_px} ({seconds:.1f} s)", f"{store}/labels/cells",
               folder / "fov8_mesmer_labels.tif")
        print(f"  $ tiled-seg run {store} --config configs/mibi.yaml --tile-px {tile_px} --overwrite")
    # The Mesmer reference measured the same way, for its co-expression rate.
    import tifffile

    from tiled_seg.io import write_labels
    from tiled_seg.measure import measure_store

    write_labels(store, "mesmer", tifffile.imread(folder / "fov8_mesmer_labels.tif").astype(np.uint32),
                 MIBI_PIXEL_SIZE_UM, overwrite=True)
    measure_store(store, labels="mesmer", nuclei=None, table_name="mesmer", overwrite=True,
                  outputs=("parquet",))
    for table in ("cells", "mesmer"):
        compensate_store(store, table=table, labels=table, channels=MIBI_REDSEA_CHANNELS)
        cells = read_parquet(store / "tables" / f"{table}.parquet")
        # Otsu (the default) and the 95th percentile: on this tumour field the
        # immune markers sit near background, so the rate depends on the rule.
        for method in ("otsu", "percentile"):
            before = coexpression(cells, MIBI_PAIRS, method=method, percentile=95.0)
            after = coexpression(
                cells, MIBI_PAIRS, {f"{m}{REDSEA_SUFFIX}": t for m, t in before.thresholds.items()},
                suffix=REDSEA_SUFFIX,
            )
            print(f"fov8 {table} ({method}): n={before.n_cells} impossible co-expression "
                  f"{before.rate:.4f} -> {after.rate:.4f} after REDSEA; per pair "
                  + json.dumps({k.replace(' ', ''): round(v, 4) for k, v in before.pair_rates.items()}))
    from tiled_seg.report import write_report

    report = write_report(store, work / "fov8.report" / "index.html", pairs=MIBI_PAIRS, overwrite=True)
    print(f"fov8 report: {report.html}")
    print(f"  $ tiled-seg report {store} --output {report.html} --overwrite")


def stardist(work: Path, client: Client) -> None:
    folder = DATA / "nuclei_stardist"
    store = work / "stardist.ome.zarr"
    base = RunConfig().with_overrides(**{
        "panel.nuclear": ["DNA"], "compartment": "nuclear", "measure": False, "tiling.tile_px": 256,
    })
    cases: dict[str, dict[str, Any]] = {"watershed": dict(STARDIST_OPTIONS)}
    if ONNX_MODEL.exists():
        cases["onnx"] = {"model": str(ONNX_MODEL), "nucleus_diameter_um": 10.0}
    for backend, options in cases.items():
        config = base.with_overrides(**{"backend.name": backend, "backend.options": options})
        seconds = _run(store, config, client)
        _score(f"stardist nuclei, {backend}, 256 px tiles ({seconds:.1f} s)", f"{store}/labels/nuclei",
               folder / "mask2d.tif")
        sets = " ".join(f"--set backend.options.{k}={v}" for k, v in options.items() if k != "model")
        model = f" --model {options['model']}" if "model" in options else ""
        print(f"  $ tiled-seg run {store} --backend {backend}{model} {sets} --compartment nuclear "
              "--nuclear DNA --tile-px 256 --set measure=false --overwrite")


def _spillover_figure(path: Path, clean, table, thresholds: dict[str, float]) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4.2))
    axes = fig.subplots(1, 3, sharex=True, sharey=True)
    panels = ((clean, "", "clean (no spillover)"), (table, "", "spillover 0.3"),
              (table, REDSEA_SUFFIX, "spillover 0.3 + REDSEA"))
    for ax, (frame, suffix, title) in zip(axes, panels):
        x, y = frame[f"CD3{suffix}"], frame[f"CD20{suffix}"]
        both = (x > thresholds["CD3"]) & (y > thresholds["CD20"])
        ax.scatter(np.log1p(x), np.log1p(y), s=4, c=np.where(both, "red", "tab:blue"))
        ax.axvline(np.log1p(thresholds["CD3"]), color="k", ls="--", lw=0.8)
        ax.axhline(np.log1p(thresholds["CD20"]), color="k", ls="--", lw=0.8)
        ax.set_title(f"{title}: {int(both.sum())} CD3+CD20+ cells")
        ax.set_xlabel("log(1 + CD3 cell mean)")
    axes[0].set_ylabel("log(1 + CD20 cell mean)")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    print(f"  figure: {path}")


def synthetic_spillover(work: Path, size_px: int = 768) -> None:
    from tiled_seg.synth import synth_arrays

    clean, cells, _, names = synth_arrays((size_px, size_px), n_channels=12, seed=3)
    spilled, _, _, _ = synth_arrays((size_px, size_px), n_channels=12, seed=3, spillover=0.3)
    labels = cells.compute()
    clean_table = redsea_arrays(labels, clean.compute(), names)
    markers = ["CD3", "CD20", "CD68", "PanKeratin", "CD45"]
    thresholds = marker_thresholds(clean_table, markers)
    for reinforce in (True, False):
        table = redsea_arrays(labels, spilled.compute(), names, reinforce=reinforce)
        rates = [coexpression(t, thresholds=thresholds, suffix=s).rate
                 for t, s in ((clean_table, ""), (table, ""), (table, REDSEA_SUFFIX))]
        print(f"synthetic {size_px} px, spillover 0.3, reinforce={reinforce}: impossible co-expression "
              f"clean {rates[0]:.4f}, spilled {rates[1]:.4f}, REDSEA {rates[2]:.4f}")
        if reinforce:
            _spillover_figure(work / "redsea_synthetic.png", clean_table, table, thresholds)
        for marker in ("CD3", "CD20", "PanKeratin"):
            own = (clean_table[marker] > thresholds[marker]).to_numpy()
            values = [clean_table[marker], table[marker], table[f"{marker}{REDSEA_SUFFIX}"]]
            print(f"  {marker}: own-type mean clean/spilled/REDSEA "
                  + "/".join(f"{v[own].mean():.2f}" for v in values)
                  + "; other cells " + "/".join(f"{v[~own].mean():.3f}" for v in values))


def convert_inputs(work: Path) -> dict[str, bool]:
    """Convert the real inputs (before a distributed client exists: the TIFF reader is not picklable)."""
    done = {}
    mibi = DATA / "mibi_tnbc_fov8" / "fov8_mibitiff_22ch.tiff"
    done["fov8"] = mibi.exists()
    if done["fov8"]:
        convert(mibi, work / "fov8.ome.zarr", pixel_size_um=MIBI_PIXEL_SIZE_UM, overwrite=True)
        print(f"  $ tiled-seg convert {mibi} {work / 'fov8.ome.zarr'} --pixel-size-um {MIBI_PIXEL_SIZE_UM}")
    nuclei = DATA / "nuclei_stardist" / "img2d.tif"
    done["stardist"] = nuclei.exists()
    if done["stardist"]:
        convert(nuclei, work / "stardist.ome.zarr", pixel_size_um=1.0, channel_names="DNA", overwrite=True)
        print(f"  $ tiled-seg convert {nuclei} {work / 'stardist.ome.zarr'} --pixel-size-um 1 "
              "--channel-names DNA")
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/tiled_seg_accuracy", help="folder for the stores")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    present = convert_inputs(work)
    with Client(processes=False, n_workers=1, threads_per_worker=2) as client:
        if present["fov8"]:
            fov8(work, client)
        else:
            print(f"fov8: {DATA / 'mibi_tnbc_fov8'} absent; skipped")
        if present["stardist"]:
            stardist(work, client)
        else:
            print(f"stardist: {DATA / 'nuclei_stardist'} absent; skipped")
    synthetic_spillover(work)


if __name__ == "__main__":
    main()
