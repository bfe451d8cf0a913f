"""Per-backend throughput: tiles/s, megapixels/s, model time vs end-to-end time, GPU memory.

Usage::

    python benchmarks/bench_backends.py --backends watershed onnx --tile 512 --tiles 4
    python benchmarks/bench_backends.py --backends mesmer --option mesmer.model_path=/models/MultiplexSegmentation
    python benchmarks/bench_backends.py --backends cellpose --option cellpose.pretrained_model=cyto3 --tile 1024

Every backend is built once through ``get_segmenter`` (as a worker does), warmed
up on one tile (model load, JIT, CUDA context: not timed), then run on
``--tiles`` tiles of ``--tile`` x ``--tile`` px. Inputs are the real MIBI field
(``../shared/data/mibi_tnbc_fov8``) tiled and normalised slide-wide when
present, else a synthetic slide. "model s" is the time inside the network call
(onnx: ``probability``; mesmer: ``predict_maps``; cellpose: the whole
``CellposeModel.eval``, which includes its mask dynamics); "e2e s" is
``segment`` end to end. GPU memory is the peak PyTorch / TensorFlow allocation
when a GPU is present. Backends whose weights are missing are reported as
skipped with the reason.

``--accuracy`` adds the nuclear F1 at IoU 0.5 of the onnx backend on the
hand-annotated StarDist image (``../shared/data/nuclei_stardist``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from tiled_seg.errors import BackendError
from tiled_seg.segment.backends import SlideContext, get_segmenter

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MIBI = DATA / "mibi_tnbc_fov8" / "fov8_mesmer_input_2ch.tif"
ONNX_MODEL = DATA / "models" / "unet2d_nuclei_broad"


def _inputs(tile: int, count: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], float]:
    """``count`` (nuclear, membrane) tiles normalised slide-wide, and the pixel size (um)."""
    if MIBI.exists():
        import tifffile

        slide = tifffile.imread(MIBI).astype(np.float32)
        pixel_size_um = 400.0 / 1024
    else:
        rng = np.random.default_rng(0)
        slide = rng.gamma(1.0, 1.0, (2, 1024, 1024)).astype(np.float32)
        pixel_size_um = 1.0
    reps = -(-tile // slide.shape[1]), -(-tile // slide.shape[2])
    slide = np.tile(slide, (1, max(reps[0], 1), max(reps[1], 1)))
    channels = []
    for channel in slide:
        low, high = np.percentile(channel, [1, 99.5])
        channels.append(np.clip((channel - low) / max(high - low, 1e-6), 0, 1))
    rng = np.random.default_rng(1)
    tiles = []
    for _ in range(count):
        y = int(rng.integers(0, slide.shape[1] - tile + 1))
        x = int(rng.integers(0, slide.shape[2] - tile + 1))
        tiles.append((channels[0][y : y + tile, x : x + tile], channels[1][y : y + tile, x : x + tile]))
    return tiles, pixel_size_um


def _model_call(name: str, segmenter: Any) -> tuple[Any, str] | None:
    """The backend's network method to time separately, wrapped in place."""
    method = {"onnx": "probability", "mesmer": "predict_maps", "cellpose": "_eval"}.get(name)
    return (segmenter, method) if method and hasattr(segmenter, method) else None


def _gpu_reset() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    except ImportError:
        pass


def _gpu_peak_mib(name: str) -> float | None:
    if name == "cellpose":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    if name == "mesmer":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    return None


def bench(name: str, options: dict[str, Any], tile: int, count: int) -> dict[str, Any]:
    """Time one backend on ``count`` tiles; returns a row of the report."""
    tiles, pixel_size_um = _inputs(tile, count)
    context = SlideContext(pixel_size_um=pixel_size_um, nuclear_threshold=0.3, membrane_threshold=0.3)
    segmenter = get_segmenter(name, options)
    model_time = [0.0]
    wrapped = _model_call(name, segmenter)
    if wrapped:
        target, method = wrapped
        original = getattr(target, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                model_time[0] += time.perf_counter() - start

        setattr(target, method, timed)
    start = time.perf_counter()
    segmenter.segment(*tiles[0], context)  # load, JIT, CUDA context
    warmup = time.perf_counter() - start
    model_time[0] = 0.0
    _gpu_reset()
    cells = 0
    start = time.perf_counter()
    for nuclear, membrane in tiles:
        cells += int(segmenter.segment(nuclear, membrane, context).cells.max())
    total = time.perf_counter() - start
    return {
        "backend": name,
        "tiles": count,
        "tile_px": tile,
        "warmup_s": warmup,
        "e2e_s": total,
        "model_s": model_time[0] if wrapped else float("nan"),
        "tiles_per_s": count / total,
        "mpx_per_s": count * tile * tile / 1e6 / total,
        "cells_per_tile": cells / count,
        "gpu_peak_mib": _gpu_peak_mib(name),
    }


def onnx_f1() -> float:
    """Nuclear F1 (IoU 0.5) of the onnx backend on the StarDist image."""
    import tifffile

    from tiled_seg.quality.evaluate import match_labels

    image = tifffile.imread(DATA / "nuclei_stardist" / "img2d.tif").astype(np.float32)
    truth = tifffile.imread(DATA / "nuclei_stardist" / "mask2d.tif")
    low, high = np.percentile(image, [1, 99.5])
    nuclear = np.clip((image - low) / (high - low), 0, 1).astype(np.float32)
    segmenter = get_segmenter("onnx", {"model": str(ONNX_MODEL), "nucleus_diameter_um": 10.0})
    labels = segmenter.segment(nuclear, None, SlideContext(pixel_size_um=1.0)).cells
    return match_labels(labels, truth).f1


def _parse_options(pairs: list[str]) -> dict[str, dict[str, Any]]:
    import yaml

    options: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        backend, _, option = key.partition(".")
        options.setdefault(backend, {})[option] = yaml.safe_load(value)
    return options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["watershed", "onnx", "mesmer", "cellpose"])
    parser.add_argument("--tile", type=int, default=256, help="tile side (px)")
    parser.add_argument("--tiles", type=int, default=3, help="timed tiles per backend")
    parser.add_argument("--option", action="append", default=[], help="backend.option=value")
    parser.add_argument("--accuracy", action="store_true", help="also report the onnx nuclear F1")
    args = parser.parse_args()
    options = _parse_options(args.option)
    if ONNX_MODEL.exists():
        options.setdefault("onnx", {}).setdefault("model", str(ONNX_MODEL))
    header = f"{'backend':10} {'tile':>5} {'warmup s':>9} {'e2e s':>8} {'model s':>8} {'tiles/s':>8} {'Mpx/s':>7} {'cells':>6} {'GPU MiB':>8}"
    print(header)
    for name in args.backends:
        try:
            row = bench(name, options.get(name, {}), args.tile, args.tiles)
        except BackendError as error:
            print(f"{name:10} skipped: {error}")
            continue
        gpu = "-" if row["gpu_peak_mib"] is None else f"{row['gpu_peak_mib']:.0f}"
        print(
            f"{name:10} {row['tile_px']:5d} {row['warmup_s']:9.2f} {row['e2e_s']:8.2f} "
            f"{row['model_s']:8.2f} {row['tiles_per_s']:8.2f} {row['mpx_per_s']:7.3f} "
            f"{row['cells_per_tile']:6.0f} {gpu:>8}"
        )
    if args.accuracy and ONNX_MODEL.exists():
        print(f"onnx nuclear F1 @ IoU 0.5 on nuclei_stardist/img2d.tif: {onnx_f1():.3f}")


if __name__ == "__main__":
    main()
