"""Is the accelerator kept busy? Occupancy and throughput of the segment stage.

Usage::

    # CPU: one worker holds the GPU resource and runs a real network
    python benchmarks/bench_accelerator.py --simulate --backend onnx --size 1024 --tile-px 256 --json
    python benchmarks/bench_accelerator.py --simulate --backend cellpose --size 512 --tile-px 256
    # a real NVIDIA GPU (dask-cuda workers, several threads each)
    python benchmarks/bench_accelerator.py --cuda --backend cellpose --size 4096 --tile-px 1024 --json
    # empty tissue: the right half of the slide is blank, skip_empty on and off
    python benchmarks/bench_accelerator.py --simulate --backend onnx --blank-half

A synthetic slide is written (not timed) and segmented by
``tiled_seg.pipeline.run`` with ``measure: false``. The model is loaded on
every worker before the clock starts. Reported:

- ``occupancy``: time the accelerator worker(s) spent in predict tasks
  (from the task stream), divided by the segment stage's wall time;
- ``end_to_end_over_model_only``: end-to-end throughput (segmented Mpx per
  second of the segment stage) divided by model-only throughput (the same
  Mpx over the time the same predict batches take run back to back on the
  same worker, their inputs prepared beforehand);
- tiles/s, Mpx/s, the worker layout and, on a GPU, the peak GPU memory.

``--simulate`` uses :func:`tiled_seg.cluster.accelerator_cluster`: one
single-threaded worker process with the ``GPU`` resource runs predict (the
network restricted to one thread) and ``--cpu-workers`` processes run every
other task. ``--cuda`` uses ``--cluster local-cuda``'s layout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zarr
from distributed import Client, get_task_stream

from tiled_seg.cluster import GPU, accelerator_cluster, connect
from tiled_seg.config import RunConfig
from tiled_seg.pipeline import run
from tiled_seg.pipeline._checks import open_inputs, plan_run
from tiled_seg.pipeline._run import _slide_stats, _tile_job
from tiled_seg.pipeline._segment import predict_batch, prepare_tile
from tiled_seg.segment.backends import get_segmenter
from tiled_seg.synth import make_slide

ROOT = Path(__file__).resolve().parents[1]
ONNX_MODEL = ROOT.parent / "shared" / "data" / "models" / "unet2d_nuclei_broad"


def _random_cellpose(folder: Path) -> str:
    """A Cellpose 3 network with random weights (no download), biased so masks form."""
    import torch
    from cellpose.resnet_torch import CPnet

    torch.manual_seed(0)
    net = CPnet([2, 32, 64, 128, 256], 3, sz=3, mkldnn=False, max_pool=True, diam_mean=30.0)
    with torch.no_grad():
        net.output[2].bias[2] = 3.0
    path = folder / "random_cp3.pth"
    net.save_model(str(path))
    return str(path)


def _backend(name: str, folder: Path, simulate: bool) -> dict[str, Any]:
    if name == "onnx":
        options: dict[str, Any] = {"model": str(ONNX_MODEL), "window_px": 256, "batch_size": 1}
        if simulate:
            options["intra_op_threads"] = 1
        return {"name": "onnx", "options": options}
    weights = _random_cellpose(folder)
    return {"name": "cellpose", "options": {
        "pretrained_model": weights, "nuclear_model": weights, "compartment": "whole-cell",
        "gpu": not simulate and "auto", "flow_threshold": 0.0, "cell_diameter_um": 40.0}}


def _limit_threads(threads: int) -> None:
    """On a worker: torch's intra-op threads (the simulated accelerator is one core)."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(threads)


def _load_model(name: str, options: dict[str, Any]) -> int:
    """On an accelerator worker: build the model before the clock starts."""
    get_segmenter(name, options).model
    return os.getpid()


def _model_only(job: Any, *groups: Any) -> float:
    """On the accelerator worker: the predict batches back to back, seconds in the network."""
    seconds = 0.0
    for group in groups:
        started = time.perf_counter()
        predict_batch(job, *group)
        seconds += time.perf_counter() - started
    return seconds


def _gpu_peak_bytes() -> int | None:
    """Peak GPU memory of this worker: torch's allocator peak, else NVML's used memory now."""
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return int(torch.cuda.max_memory_allocated())
    except ImportError:
        pass
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    except Exception:  # no NVML: nothing to report
        return None


def _blank_right_half(path: str) -> None:
    group = zarr.open_group(path, mode="r+")
    attrs = group.attrs.asdict()
    for dataset in attrs.get("ome", attrs)["multiscales"][0]["datasets"]:
        array = group[dataset["path"]]
        array[..., array.shape[-1] // 2 :] = 0


def _accelerators(client: Client) -> list[str]:
    workers = client.scheduler_info()["workers"]
    return [addr for addr, info in workers.items() if (info.get("resources") or {}).get(GPU, 0) >= 1]


def measure(client: Client, slide: str, config: RunConfig, out: Path, gpu: bool) -> dict[str, Any]:
    """One run's segment-stage figures on ``client``; ``gpu``: also the peak GPU memory."""
    backend = config.backend
    accelerators = _accelerators(client)
    if not gpu:
        client.run(_limit_threads, 1)
    client.run(_load_model, backend.name, dict(backend.options), workers=accelerators or None)
    with get_task_stream(client) as stream:
        result = run(slide, config, output=out, client=client, overwrite=True)
    wall = result.timings["segment"]
    predict_s = sum(
        end - start
        for task in stream.data if str(task["key"]).startswith("predict_batch") and task["worker"] in accelerators
        for part in task["startstops"] if part["action"] == "compute"
        for start, end in [(part["start"], part["stop"])]
    )
    inputs = open_inputs(slide, config)
    plan = plan_run(inputs, config)
    stats = _slide_stats(inputs, plan.stats_level, config, None)
    job = _tile_job(inputs, config, stats, str(out) + ".unused-scratch")
    skipped = set()
    if config.tiling.skip_empty:
        from tiled_seg.pipeline._run import _empty_tiles

        skipped = set(_empty_tiles(inputs, plan, stats, config))
    tiles = [t for t in plan.grid.tiles if t.index not in skipped]
    group = config.cluster.tiles_per_predict
    cpu = [w for w in client.scheduler_info()["workers"] if w not in accelerators] or None
    prepared = [client.submit(prepare_tile, job, t, pure=False, workers=cpu) for t in tiles]
    groups = [prepared[i : i + group] for i in range(0, len(prepared), group)]
    model_only = client.submit(_model_only, job, *groups, pure=False,
                               workers=accelerators[:1] or None).result()
    mpx = sum(t.core.shape[0] * t.core.shape[1] for t in tiles) / 1e6
    figures: dict[str, Any] = {
        "tiles": len(plan.grid.tiles),
        "segmented_tiles": len(tiles),
        "skipped_tiles": result.skipped_tiles,
        "segment_wall_s": round(wall, 3),
        "predict_s": round(predict_s, 3),
        "model_only_s": round(model_only, 3),
        # > 1 where the network ran slower in the run than alone (CPU stages sharing its cores).
        "predict_slowdown": round(predict_s / model_only, 3),
        "occupancy": round(predict_s / wall / max(len(accelerators), 1), 3),
        "end_to_end_over_model_only": round(model_only / wall, 3),
        "tiles_per_s": round(len(tiles) / wall, 3),
        "mpx_per_s": round(mpx / wall, 3),
        "model_only_mpx_per_s": round(mpx / model_only, 3),
        "n_cells": result.n_cells,
    }
    if gpu:
        peaks = [p for p in client.run(_gpu_peak_bytes, workers=accelerators or None).values() if p]
        if peaks:
            figures["gpu_memory_peak_mib"] = round(max(peaks) / 2**20, 1)
    return figures


def _layout(client: Client) -> str:
    workers = client.scheduler_info()["workers"].values()
    parts = [f"{info.get('name')}: {info['nthreads']} thread(s)"
             + (f", GPU={info['resources'][GPU]:g}" if (info.get("resources") or {}).get(GPU) else "")
             for info in workers]
    return "; ".join(sorted(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--simulate", action="store_true", help="CPU workers, one holding the GPU resource")
    mode.add_argument("--cuda", action="store_true", help="local-cuda workers on real GPUs")
    parser.add_argument("--backend", choices=["onnx", "cellpose"], default="onnx")
    parser.add_argument("--size", type=int, default=1024, help="slide side (px)")
    parser.add_argument("--tile-px", type=int, default=256)
    parser.add_argument("--cpu-workers", type=int, default=1, help="--simulate: CPU worker processes")
    parser.add_argument("--tiles-per-predict", type=int, default=1)
    parser.add_argument("--blank-half", action="store_true",
                        help="blank the right half; run with skip_empty on and off")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_acc_") as tmp:
        folder = Path(tmp)
        slide = make_slide(folder / "slide.ome.zarr", size=(args.size, args.size), seed=1, chunk_px=128).path
        if args.blank_half:
            _blank_right_half(slide)
        config = RunConfig(measure=False, backend=_backend(args.backend, folder, args.simulate)).with_overrides(
            **{"tiling.tile_px": args.tile_px, "cluster.tiles_per_predict": args.tiles_per_predict}
        )
        if args.simulate:
            cluster = accelerator_cluster(args.cpu_workers)
            client_cm: Any = Client(cluster, set_as_default=False)
        else:
            cluster = None
            client_cm = connect(config=config.cluster.model_copy(update={"kind": "local-cuda"}))
        with client_cm as client:
            report: dict[str, Any] = {
                "backend": args.backend, "mode": "simulate" if args.simulate else "cuda",
                "size_px": args.size, "tile_px": args.tile_px, "layout": _layout(client),
            }
            report.update(measure(client, slide, config, folder / "out.zarr", args.cuda))
            if args.blank_half:
                report["no_skip"] = measure(client, slide, config.with_overrides(**{"tiling.skip_empty": False}),
                                            folder / "out_all.zarr", args.cuda)
        if cluster is not None:
            cluster.close()
    if args.json:
        print(json.dumps(report))
        return
    for key, value in report.items():
        print(f"{key:28s} {value}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
