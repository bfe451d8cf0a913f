"""The probabilities backend: synthetic probabilities and fov8 with the built-in classifier.

Run from the repository root::

    nice .venv/bin/python benchmarks/bench_probabilities.py [--workers 2]

Prints

1. the probabilities route on a synthetic slide (``tiled_seg.synth``, 1024 x
   1024 px at 1 um/px) whose nucleus / cytoplasm / background probabilities
   are its ground truth's masks blurred with a 1 px Gaussian: cell and
   nucleus F1 at IoU 0.5 against that ground truth;
2. MIBI-TOF fov8 with the built-in pixel classifier (``configs/mibi_pixels.yaml``):
   annotations made by :func:`fov8_annotations`, training time, whole-cell
   F1 against Mesmer's labels for 1, 4 and 16 tiles, and whether the
   labels of the tilings are identical up to renumbering.

Every run goes through ``tiled_seg.pipeline.run`` on a LocalCluster.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.morphology import disk

from tiled_seg.cluster import connect
from tiled_seg.config import load_config
from tiled_seg.io.convert import convert
from tiled_seg.io.ngff import open_slide, read_labels, write_image
from tiled_seg.pipeline import run
from tiled_seg.quality.evaluate import match_labels
from tiled_seg.segment.normalize import build_inputs, compute_slide_stats
from tiled_seg.segment.pixels import train_pixels
from tiled_seg.synth import synth_arrays

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "mibi_tnbc_fov8"
MIBI_PIXELS = ROOT / "configs" / "mibi_pixels.yaml"
MIBI_PIXEL_SIZE_UM = 0.390625
#: Annotated pixels per class and the seed that draws them.
PER_CLASS = 300
SEED = 0


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label images are identical up to renumbering."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    same_background = ((pairs[0] == 0) == (pairs[1] == 0)).all()
    return bool(same_background and pairs.shape[1] == np.unique(a).size == np.unique(b).size)


def synthetic(folder: Path, client) -> None:
    _, cells, nuclei, _ = synth_arrays((1024, 1024), seed=11)
    cells, nuclei = cells.compute(), nuclei.compute()
    nucleus = ndi.gaussian_filter((nuclei > 0).astype(np.float32), 1.0)
    background = ndi.gaussian_filter((cells == 0).astype(np.float32), 1.0)
    cytoplasm = np.clip(1 - nucleus - background, 0, 1)
    store = folder / "synthetic_probabilities.ome.zarr"
    write_image(store, np.stack([nucleus, cytoplasm, background]),
                ["nucleus", "cytoplasm", "background"], 1.0, overwrite=True)
    config = load_config(ROOT / "configs" / "probabilities.yaml").with_overrides(
        **{"measure": False, "tiling.tile_px": 512})
    started = time.perf_counter()
    result = run(store, config, client=client, overwrite=True)
    seconds = time.perf_counter() - started
    found = read_labels(store, "cells").compute()
    found_nuclei = read_labels(store, "nuclei").compute()
    c, n = match_labels(found, cells), match_labels(found_nuclei, nuclei)
    print(f"synthetic probabilities from ground truth (1024 x 1024 px, {result.n_tiles} tiles): "
          f"cells F1 {c.f1:.3f} ({c.n_pred} found, {c.n_true} true), nuclei F1 {n.f1:.3f}; "
          f"run {seconds:.1f} s")


def fov8_annotations(nuclear: np.ndarray, membrane: np.ndarray) -> np.ndarray:
    """Sparse annotations of fov8, made from thresholds of the normalised inputs.

    Both inputs are smoothed (Gaussian, 1 px) and thresholded at 0.3 x their
    Otsu threshold (the nuclear and membrane masks). Candidates: nucleus =
    the nuclear mask eroded by a disk of 2 px; cytoplasm = a ring 2-4 px
    outside the nuclear mask where the membrane mask holds; background =
    pixels further than 4 px from the membrane mask and from the smoothed
    nuclear input above 0.1 x its Otsu threshold (so dim nuclei are not
    called background). ``PER_CLASS`` pixels of each are drawn without
    replacement with ``numpy.random.default_rng(SEED)``; values 1, 2, 3,
    else 0.
    """
    ns, ms = ndi.gaussian_filter(nuclear, 1.0), ndi.gaussian_filter(membrane, 1.0)
    nuclear_otsu = threshold_otsu(ns)
    nuclear_mask = ns > 0.3 * nuclear_otsu
    membrane_mask = ms > 0.3 * threshold_otsu(ms)
    candidates = [
        ndi.binary_erosion(nuclear_mask, disk(2)),
        ndi.binary_dilation(nuclear_mask, disk(4)) & ~ndi.binary_dilation(nuclear_mask, disk(1))
        & membrane_mask,
        ~ndi.binary_dilation((ns > 0.1 * nuclear_otsu) | membrane_mask, disk(4)),
    ]
    rng = np.random.default_rng(SEED)
    annotations = np.zeros(nuclear.shape, np.uint8)
    for value, candidate in enumerate(candidates, start=1):
        annotations.flat[rng.choice(np.flatnonzero(candidate), PER_CLASS, replace=False)] = value
    return annotations


def fov8(folder: Path, client) -> None:
    if not (DATA / "fov8_mibitiff_22ch.tiff").exists():
        print(f"fov8 skipped: {DATA} is absent")
        return
    # 256 px chunks, so that 256 px tiles are possible.
    store = convert(DATA / "fov8_mibitiff_22ch.tiff", folder / "fov8.ome.zarr", overwrite=True,
                    pixel_size_um=MIBI_PIXEL_SIZE_UM, chunk_px=256)[0]
    config = load_config(MIBI_PIXELS)
    slide = open_slide(store)
    panel = config.panel
    channels = [*panel.nuclear, *panel.membrane]
    image = slide.read_region([slide.channel_index(c) for c in channels], slice(None), slice(None))
    stats = compute_slide_stats(slide.reader(), slide.channel_names, panel.nuclear, panel.membrane)
    nuclear, membrane = build_inputs(image, channels, panel.nuclear, panel.membrane,
                                     stats.low, stats.high)
    annotations = fov8_annotations(nuclear, membrane)
    tifffile.imwrite(folder / "fov8_annotations.tif", annotations)
    started = time.perf_counter()
    trained = train_pixels(store, folder / "fov8_annotations.tif", folder / "fov8_pixels.npz",
                           config=config)
    print(f"fov8 classifier: {trained.pixels} annotated px, {trained.n_features} features, "
          f"reach {trained.reach_px} px, trained in {time.perf_counter() - started:.1f} s")
    reference = tifffile.imread(DATA / "fov8_mesmer_labels.tif")
    labels = {}
    for tile_px in (1024, 512, 256):
        tiled = config.with_overrides(**{
            "measure": False, "tiling.tile_px": tile_px,
            "backend.options.classifier": str(trained.path),
        })
        output = folder / f"fov8_{tile_px}.zarr"
        started = time.perf_counter()
        result = run(store, tiled, output=output, client=client, overwrite=True)
        seconds = time.perf_counter() - started
        labels[tile_px] = read_labels(output, "cells").compute()
        score = match_labels(labels[tile_px], reference)
        print(f"fov8 probabilities+classifier, {result.n_tiles} tiles of {tile_px} px "
              f"(halo {result.halo_px} px): F1 vs Mesmer {score.f1:.3f} (P {score.precision:.3f}, "
              f"R {score.recall:.3f}, {score.n_pred} cells of {score.n_true}); run {seconds:.1f} s")
    print("fov8 labels identical up to renumbering: 1 vs 4 tiles "
          f"{same_partition(labels[1024], labels[512])}, 1 vs 16 tiles "
          f"{same_partition(labels[1024], labels[256])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch, connect(workers=args.workers) as client:
        synthetic(Path(scratch), client)
        fov8(Path(scratch), client)


if __name__ == "__main__":
    main()
