"""StarDist's ``predict_instances_big`` against tiled_seg's tiles, same model and block size.

Usage::

    python benchmarks/bench_stardist.py --size 2048 --block 512 --overlap 64 --context 64
    python benchmarks/bench_stardist.py --model /models/2D_versatile_fluo

Image: the real StarDist test image ``../shared/data/nuclei_stardist/img2d.tif``
(512 x 512 px, 125 hand-drawn nuclei) tiled to ``--size`` (mirrored copies, so
nuclei continue across the copies' borders), its hand-drawn masks tiled the
same way; without the data folder a synthetic DNA channel
(``tiled_seg.synth``, 0.5 um/px) and its true nuclei. The image is written as
an OME-Zarr slide (``--pixel-size-um``, nominal for img2d).

Model: ``--model`` (a StarDist2D folder), else one built with
``tiled_seg.synth.make_stardist_model``: random U-Net weights, output heads
fitted by least squares to the first 512 px of the image and its masks.

Three routes, each in its own process, after loading the model and a warm-up
call (not timed); wall time and peak resident memory (sampled every 0.1 s;
also above the process's memory after warm-up) are of the route alone:

* ``whole``: ``predict_instances`` on the whole image (the reference);
* ``big``: ``predict_instances_big(block_size, min_overlap, context)``
  (StarDist's block-ownership tiling);
* ``tiled_seg``: ``tiled_seg.pipeline.run`` with the ``stardist`` backend,
  ``tile_px = --block`` and a halo of ``--context`` px, on an in-process
  cluster with one accelerator worker (the network) and one CPU worker.

Both tiled routes see the same input: the slide-wide 1st / 99.8th
percentiles that tiled_seg computes (read from its run record) normalise the
image for ``whole`` and ``big`` too. Printed: objects, F1 at IoU 0.5 between
``big`` and ``tiled_seg`` and of each against ``whole`` and the masks,
pixels that are foreground in one of two label images only, reference nuclei
cut into two or more pieces (``tiled_seg.quality.qc.cut_objects``
against ``whole``) and how many of those lie on a block / tile edge, wall
time and peak memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).parent))
from bench_pipeline import PeakMemory, print_row, slide_folder  # noqa: E402

from tiled_seg.io.ngff import write_image  # noqa: E402
from tiled_seg.quality.evaluate import match_labels  # noqa: E402
from tiled_seg.quality.qc import cut_objects  # noqa: E402
from tiled_seg.segment.normalize import normalize_channel  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nuclei_stardist"
CHANNEL = "DNA"
LOW_PERCENTILE, HIGH_PERCENTILE = 1.0, 99.8


def mirrored_tiling(image: np.ndarray, size: int, labels: bool = False) -> np.ndarray:
    """``image`` repeated to ``size`` x ``size`` with every other copy mirrored.

    Label copies get their own ids (offset per copy).
    """
    h, w = image.shape
    rows = []
    offset = 0
    for i in range(-(-size // h)):
        row = []
        for j in range(-(-size // w)):
            copy = image[:: -1 if i % 2 else 1, :: -1 if j % 2 else 1]
            if labels:
                copy = np.where(copy > 0, copy.astype(np.int64) + offset, 0)
                offset += int(image.max())
            row.append(copy)
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)[:size, :size]


def bench_image(size: int, pixel_size_um: float) -> tuple[np.ndarray, np.ndarray, str]:
    """(raw uint16 image, reference nuclei, description)."""
    if (DATA / "img2d.tif").is_file():
        import tifffile

        image = tifffile.imread(DATA / "img2d.tif")
        masks = tifffile.imread(DATA / "mask2d.tif")
        return (mirrored_tiling(image, size), mirrored_tiling(masks, size, labels=True),
                f"img2d.tif mirrored to {size} px")
    from tiled_seg.synth import synth_arrays

    image, _, nuclei, _ = synth_arrays((size, size), n_channels=3, seed=1, pixel_size_um=pixel_size_um)
    return np.asarray(image[0]), np.asarray(nuclei), f"synthetic DNA1, {size} px"


def route_main(args: argparse.Namespace) -> None:
    """One route in this process; writes ``<route>.npy`` and ``<route>.json`` to the folder."""
    folder = Path(args.folder)
    setup = json.loads((folder / "setup.json").read_text())
    options = {"model": setup["model"], "expansion_um": 0.0}
    from tiled_seg.segment.backends import SlideContext, get_segmenter

    segmenter = get_segmenter("stardist", options)
    model = segmenter.model
    warm = np.zeros((256, 256), np.float32)
    segmenter.segment(warm, None, SlideContext(args.pixel_size_um))
    if args.route == "tiled_seg":
        labels, figures = _run_tiled_seg(args, folder, options)
    else:
        image = np.load(folder / "image.npy")
        stats = json.loads((folder / "stats.json").read_text())
        x = normalize_channel(image, stats["low"], stats["high"])
        thresholds = dict(prob_thresh=model.thresholds.prob, nms_thresh=model.thresholds.nms)
        baseline = psutil.Process().memory_info().rss
        with PeakMemory() as memory:
            started = time.perf_counter()
            if args.route == "whole":
                labels, _ = model.predict_instances(x, show_tile_progress=False, **thresholds)
            else:
                labels, _ = model.predict_instances_big(
                    x, axes="YX", block_size=args.block, min_overlap=args.overlap,
                    context=args.context, show_progress=False, **thresholds,
                )
            wall = time.perf_counter() - started
        figures = {"wall_s": wall, "peak_gib": memory.peak_total / 2**30,
                   "above_warm_gib": (memory.peak_total - baseline) / 2**30}
        if args.route == "big":
            figures["blocks"], figures["edges"] = _big_blocks(args, x.shape, model)
    np.save(folder / f"{args.route}.npy", np.asarray(labels))
    (folder / f"{args.route}.json").write_text(json.dumps(figures))


def _run_tiled_seg(args: argparse.Namespace, folder: Path, options: dict) -> tuple[np.ndarray, dict]:
    import zarr
    from distributed import Client

    from tiled_seg.cluster import accelerator_cluster
    from tiled_seg.config import RunConfig
    from tiled_seg.io import read_labels
    from tiled_seg.pipeline import run

    config = RunConfig(measure=False, compartment="nuclear", backend={"name": "stardist", "options": options})
    config = config.with_overrides(**{
        "panel.nuclear": [CHANNEL], "panel.membrane": [],
        "normalization.low_percentile": LOW_PERCENTILE, "normalization.high_percentile": HIGH_PERCENTILE,
        "tiling.tile_px": args.block, "tiling.halo_um": args.context * args.pixel_size_um,
        "tiling.skip_empty": False, "qc.enabled": False,
    })
    with accelerator_cluster(1, processes=False) as cluster, Client(cluster, set_as_default=False) as client:
        baseline = psutil.Process().memory_info().rss
        with PeakMemory() as memory:
            started = time.perf_counter()
            result = run(folder / "slide.ome.zarr", config, output=folder / "out.ome.zarr",
                         client=client, overwrite=True)
            wall = time.perf_counter() - started
    stats = zarr.open_group(str(folder / "out.ome.zarr"), mode="r").attrs["tiled_seg"]["stats"]
    (folder / "stats.json").write_text(json.dumps(
        {"low": stats["low"][CHANNEL], "high": stats["high"][CHANNEL]}
    ))
    labels = np.asarray(read_labels(result.store, "nuclei").compute())
    return labels, {"wall_s": wall, "peak_gib": memory.peak_total / 2**30,
                    "above_warm_gib": (memory.peak_total - baseline) / 2**30,
                    "blocks": result.n_tiles, "halo_px": result.halo_px}


def _big_blocks(args: argparse.Namespace, shape: tuple[int, ...], model) -> tuple[int, list[list[int]]]:
    """Number of ``predict_instances_big`` blocks and, per axis, their edges (px)."""
    from stardist.big import BlockND

    grid = model._axes_div_by("YX")
    blocks = BlockND.cover(shape, "YX", args.block, args.overlap, args.context, grid)
    edges = [sorted({e for b in blocks for e in (b.blocks[a].start, b.blocks[a].end)} - {0, shape[a]})
             for a in range(2)]
    return len(blocks), edges


def cut_at_edges(reference: np.ndarray, candidate: np.ndarray, edges: list[list[int]]) -> tuple[int, int]:
    """Reference nuclei cut in ``candidate``: in all, and those crossing one of ``edges`` (px, per axis)."""
    from scipy import ndimage as ndi

    cut = cut_objects(reference, candidate)
    boxes = ndi.find_objects(reference)
    on_edge = 0
    for label in cut:
        box = boxes[label - 1]
        if any(s.start <= e < s.stop for s, axis in zip(box, edges) for e in axis):
            on_edge += 1
    return len(cut), on_edge


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--block", type=int, default=512, help="block_size of predict_instances_big = tile_px (px)")
    parser.add_argument("--overlap", type=int, default=64, help="min_overlap of predict_instances_big (px)")
    parser.add_argument("--context", type=int, default=64, help="context of predict_instances_big = halo (px)")
    parser.add_argument("--pixel-size-um", type=float, default=0.5)
    parser.add_argument("--model", type=Path, help="A StarDist2D model folder (default: build one).")
    parser.add_argument("--keep", type=Path, help="Keep the slide, model and labels in this folder.")
    parser.add_argument("--route", choices=["whole", "big", "tiled_seg"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.route:
        route_main(args)
        return
    with slide_folder(args.keep) as folder:
        image, truth, described = bench_image(args.size, args.pixel_size_um)
        model = args.model
        if model is None:
            from tiled_seg.synth import make_stardist_model

            fit = slice(0, 512)
            low, high = np.percentile(image, (LOW_PERCENTILE, HIGH_PERCENTILE))
            model = make_stardist_model(folder / "random16", normalize_channel(image[fit, fit], low, high),
                                        truth[fit, fit])
        write_image(folder / "slide.ome.zarr", image[None], [CHANNEL], args.pixel_size_um,
                    chunk_px=min(256, args.block), overwrite=True)
        np.save(folder / "image.npy", image)
        (folder / "setup.json").write_text(json.dumps({"model": str(model)}))
        common = [f"--{k}={v}" for k, v in (("block", args.block), ("overlap", args.overlap),
                                             ("context", args.context), ("pixel-size-um", args.pixel_size_um))]
        # tiled_seg first: it computes the slide-wide statistics the other two use.
        for route in ("tiled_seg", "whole", "big"):
            subprocess.run([sys.executable, __file__, f"--route={route}", f"--folder={folder}", *common],
                           check=True)
        labels = {r: np.load(folder / f"{r}.npy") for r in ("whole", "big", "tiled_seg")}
        figures = {r: json.loads((folder / f"{r}.json").read_text()) for r in labels}
        print(f"image: {described}; model: {model}; block {args.block} px, min_overlap "
              f"{args.overlap} px, context / halo {args.context} px", flush=True)
        edges = {"big": figures["big"]["edges"],
                 "tiled_seg": [list(range(args.block, args.size, args.block))] * 2,
                 "whole": [[], []]}
        for route in ("whole", "big", "tiled_seg"):
            cut, on_edge = cut_at_edges(labels["whole"], labels[route], edges[route])
            print_row({
                "route": route,
                "blocks": figures[route].get("blocks", 1),
                "nuclei": int(len(np.unique(labels[route])) - 1),
                "f1_vs_whole": match_labels(labels[route], labels["whole"]).f1,
                "f1_vs_masks": match_labels(labels[route], truth).f1,
                "fg_px_differ_vs_whole": int(((labels[route] > 0) != (labels["whole"] > 0)).sum()),
                "cut": cut,
                "cut_on_edges": on_edge,
                "wall_s": figures[route]["wall_s"],
                "peak_gib": figures[route]["peak_gib"],
                "above_warm_gib": figures[route]["above_warm_gib"],
            })
        big, ours = labels["big"], labels["tiled_seg"]
        print_row({"f1_big_vs_tiled_seg": match_labels(big, ours).f1,
                   "foreground_px_differ": int(((big > 0) != (ours > 0)).sum())})


if __name__ == "__main__":
    main()
