"""Accuracy and speed of the watershed backend on real and synthetic data.

Run from the repository root::

    .venv/bin/python benchmarks/accuracy_watershed.py            # figures
    .venv/bin/python benchmarks/accuracy_watershed.py --sweep    # + option sweep on fov8

Prints object F1 at IoU 0.5 for

1. MIBI-TOF fov8 whole cells against Mesmer's labels (553 cells),
2. the StarDist/DSB2018 nuclei image against its hand masks (125 nuclei),
3. a synthetic slide from ``tiled_seg.synth`` (when that module exists),

and the backend's runtime per megapixel. Inputs are normalised as the
pipeline does (``tiled_seg.segment.normalize``): per channel
``clip((x - p1) / (p99.5 - p1), 0, 1)`` with whole-image percentiles, channels
averaged, thresholds = Otsu of the result.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import tifffile

from tiled_seg.config import load_config
from tiled_seg.quality.evaluate import match_labels
from tiled_seg.segment.backends.base import SlideContext
from tiled_seg.segment.backends.watershed import WatershedSegmenter
from tiled_seg.segment.normalize import build_inputs, compute_slide_stats

SYNTH_NUCLEAR = ["DNA1", "DNA2"]
SYNTH_MEMBRANE = ["NaKATPase", "CD44", "CD45"]
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

#: MIBI-TOF settings (~0.39 um/px) come from the shipped configs/mibi.yaml.
MIBI_CONFIG = load_config(Path(__file__).resolve().parents[1] / "configs" / "mibi.yaml")
MIBI_OPTIONS: dict[str, Any] = dict(MIBI_CONFIG.backend.options)
MIBI_PIXEL_SIZE_UM = 0.390625
MIBI_NUCLEAR = list(MIBI_CONFIG.panel.nuclear)
#: Mesmer's membrane input for this FOV is exactly the "Membrane (200)" page.
MIBI_MEMBRANE = list(MIBI_CONFIG.panel.membrane)

#: StarDist nuclei: pixel size unknown, nuclei ~15-25 px; we declare 1 um/px
#: and a 16 um nucleus diameter, i.e. sizes in px.
STARDIST_PIXEL_SIZE_UM = 1.0
STARDIST_OPTIONS: dict[str, Any] = {
    "nucleus_diameter_um": 16.0,
    "max_cell_diameter_um": 30.0,
    "smoothing_um": 1.0,
    "peak_separation": 0.5,
    "min_nucleus_area_um2": 30.0,
    "max_hole_area_um2": 50.0,
    "max_expansion_um": 0.0,
    "fallback_expansion_um": 0.0,
}


def prepare(
    image: np.ndarray, names: list[str], nuclear: list[str], membrane: list[str], pixel_size_um: float
) -> tuple[np.ndarray, np.ndarray | None, SlideContext]:
    """Inputs and context exactly as the pipeline builds them for a whole slide."""
    stats = compute_slide_stats(da.from_array(image, chunks=(1, 512, 512)), names, nuclear, membrane)
    nuc, mem = build_inputs(image, names, nuclear, membrane, stats.low, stats.high)
    return nuc, mem, SlideContext(pixel_size_um, stats.nuclear_threshold, stats.membrane_threshold)


def run(
    nuclear: np.ndarray, membrane: np.ndarray | None, context: SlideContext, options: dict[str, Any]
) -> tuple[Any, float]:
    segmenter = WatershedSegmenter(options)
    start = time.perf_counter()
    result = segmenter.segment(nuclear, membrane, context)
    return result, time.perf_counter() - start


def read_mibi() -> tuple[dict[str, np.ndarray], np.ndarray]:
    folder = DATA / "mibi_tnbc_fov8"
    with tifffile.TiffFile(folder / "fov8_mibitiff_22ch.tiff") as tif:
        channels = {page.tags["PageName"].value: page.asarray() for page in tif.pages}
    return channels, tifffile.imread(folder / "fov8_mesmer_labels.tif")


def fov8(sweep: bool) -> None:
    channels, reference = read_mibi()
    image, names = np.stack(list(channels.values())), list(channels)
    membranes = {
        "Membrane(200)": MIBI_MEMBRANE,
        "NaK+PanK+ECad+CD45+Membrane": [
            "NaK ATPase (175)", "PanKeratin (171)", "ECadherin (150)", "CD45 (169)",
            "Membrane (200)",
        ],
    }
    for label, markers in membranes.items():
        nuclear, membrane, context = prepare(image, names, MIBI_NUCLEAR, markers, MIBI_PIXEL_SIZE_UM)
        result, seconds = run(nuclear, membrane, context, MIBI_OPTIONS)
        m = match_labels(result.cells, reference)
        print(
            f"fov8 cells vs Mesmer, membrane={label}: F1={m.f1:.3f} P={m.precision:.3f} "
            f"R={m.recall:.3f} n_pred={m.n_pred} n_true={m.n_true} merges={m.merges} "
            f"splits={m.splits} mean IoU={m.mean_matched_iou:.3f} "
            f"({seconds / (nuclear.size / 1e6):.2f} s/MP)"
        )
    print(f"fov8 options: {MIBI_OPTIONS}")
    if not sweep:
        return
    nuclear, membrane, context = prepare(image, names, MIBI_NUCLEAR, MIBI_MEMBRANE, MIBI_PIXEL_SIZE_UM)
    grid = {
        "nucleus_diameter_um": [4.0, 5.0, 6.0],
        "local_contrast": [0.25, 0.3, 0.4],
        "threshold_scale": [0.2, 0.3, 0.45],
        "max_expansion_um": [1.0, 1.5, 2.0],
    }
    scores = []
    for values in itertools.product(*grid.values()):
        options = {**MIBI_OPTIONS, **dict(zip(grid, values))}
        options["fallback_expansion_um"] = min(
            options["fallback_expansion_um"], options["max_expansion_um"]
        )
        result, _ = run(nuclear, membrane, context, options)
        scores.append((match_labels(result.cells, reference).f1, dict(zip(grid, values))))
    for f1, values in sorted(scores, key=lambda item: -item[0])[:8]:
        print(f"  sweep F1={f1:.3f} {values}")


def stardist() -> None:
    folder = DATA / "nuclei_stardist"
    image = tifffile.imread(folder / "img2d.tif")[None]
    reference = tifffile.imread(folder / "mask2d.tif")
    nuclear, _, context = prepare(image, ["DNA"], ["DNA"], [], STARDIST_PIXEL_SIZE_UM)
    result, seconds = run(nuclear, None, context, STARDIST_OPTIONS)
    m = match_labels(result.nuclei, reference)
    print(
        f"stardist nuclei: F1={m.f1:.3f} P={m.precision:.3f} R={m.recall:.3f} "
        f"n_pred={m.n_pred} n_true={m.n_true} merges={m.merges} splits={m.splits} "
        f"({seconds / (image.size / 1e6):.2f} s/MP)"
    )
    print(f"stardist options (pixel_size_um={STARDIST_PIXEL_SIZE_UM}): {STARDIST_OPTIONS}")


def synthetic(size_px: int) -> None:
    try:
        from tiled_seg.synth import synth_arrays
    except ImportError:
        print("synthetic: tiled_seg.synth not available; skipped")
        return
    image, cells, nuclei, names = synth_arrays((size_px, size_px), n_channels=12, seed=0)
    image = image.compute()
    nuclear, membrane, context = prepare(image, names, SYNTH_NUCLEAR, SYNTH_MEMBRANE, 1.0)
    start = time.perf_counter()
    result = WatershedSegmenter().segment(nuclear, membrane, context)
    seconds = time.perf_counter() - start
    for name, pred, true in (("cells", result.cells, cells), ("nuclei", result.nuclei, nuclei)):
        m = match_labels(pred, true.compute())
        print(
            f"synthetic {size_px}x{size_px} {name} (default options): F1={m.f1:.3f} "
            f"P={m.precision:.3f} R={m.recall:.3f} n_pred={m.n_pred} n_true={m.n_true} "
            f"merges={m.merges} splits={m.splits} mean IoU={m.mean_matched_iou:.3f}"
        )
    print(f"synthetic runtime: {seconds / (nuclear.size / 1e6):.2f} s/MP")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="grid-search options on fov8")
    parser.add_argument("--synth-size", type=int, default=1536, help="synthetic side (px)")
    args = parser.parse_args()
    if (DATA / "mibi_tnbc_fov8").is_dir():
        fov8(args.sweep)
    else:
        print(f"fov8: {DATA / 'mibi_tnbc_fov8'} absent; skipped")
    if (DATA / "nuclei_stardist").is_dir():
        stardist()
    else:
        print(f"stardist: {DATA / 'nuclei_stardist'} absent; skipped")
    synthetic(args.synth_size)


if __name__ == "__main__":
    main()
