"""Backends in stages (prepare / predict / postprocess), the staged pipeline, empty tiles skipped."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from conftest import DATA, requires_data
from distributed import Client

from tiled_seg.cluster import accelerator_cluster
from tiled_seg.config import RunConfig
from tiled_seg.errors import BackendError
from tiled_seg.io import read_labels
from tiled_seg.pipeline import run
from tiled_seg.segment.backends import Segmentation, Segmenter, SlideContext, get_segmenter_class
from tiled_seg.segment.backends.base import PreparedTile, predict_tiles
from tiled_seg.synth import make_slide

ONNX_MODEL = DATA / "models" / "unet2d_nuclei_broad"


class OneCall(Segmenter):
    """A third-party backend written against the one-call interface only."""

    name = "onecall"

    def segment(self, nuclear, membrane, context):
        return Segmentation(cells=(nuclear > 0.5).astype(np.int32))


class Doubler(Segmenter):
    """A staged backend whose "network" doubles its windows and records each batch size."""

    name = "doubler"
    batches: list[int] = []

    @property
    def predict_batch_size(self) -> int:
        return 3

    def prepare(self, nuclear, membrane, context):
        return PreparedTile({"net": nuclear.reshape(-1, 2)}, {"shape": nuclear.shape})

    def predict(self, network, batch):
        Doubler.batches.append(len(batch))
        return (batch * 2, batch.sum(axis=1))

    def postprocess(self, prepared, outputs, context):
        return Segmentation(cells=outputs["net"][0].reshape(prepared.state["shape"]).astype(np.int32))


def test_one_call_backend_has_no_predict_stage_and_still_segments() -> None:
    seg = OneCall()
    nuclear = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
    assert not seg.staged()
    prepared = seg.prepare(nuclear, None, SlideContext(1.0))
    assert prepared.windows == {}
    labels = seg.postprocess(prepared, {}, SlideContext(1.0)).cells
    assert labels.tolist() == [[0, 1], [1, 0]]
    assert not get_segmenter_class("watershed")().staged()


def test_backend_without_segment_or_stages_is_refused() -> None:
    class Nothing(Segmenter):
        name = "nothing"

    with pytest.raises(BackendError, match="implement segment, or the three stages"):
        Nothing()


def test_predict_batches_across_tiles_and_splits_back() -> None:
    seg = Doubler()
    assert seg.staged()
    tiles = [seg.prepare(np.full((2, 2), float(i + 1), np.float32), None, SlideContext(1.0)) for i in range(3)]
    Doubler.batches.clear()
    outputs = predict_tiles(seg, tiles)
    assert Doubler.batches == [3, 3]  # six windows of three tiles in two full batches
    for i, out in enumerate(outputs):
        assert np.array_equal(out["net"][0], np.full((2, 2), 2.0 * (i + 1)))
        assert np.array_equal(out["net"][1], np.full(2, 2.0 * (i + 1)))
    single = seg.segment(np.arange(4, dtype=np.float32).reshape(2, 2), None, SlideContext(1.0))
    assert single.cells.tolist() == [[0, 2], [4, 6]]


@pytest.fixture(scope="module")
def accelerator_client():
    """One worker with the GPU resource (predict) and one CPU worker, in this process.

    In-process workers see this test's monkeypatches, so a backend can be
    forced onto its one-call path for comparison.
    """
    with accelerator_cluster(1, processes=False) as cluster, Client(cluster, set_as_default=False) as client:
        yield client


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory):
    return make_slide(tmp_path_factory.mktemp("stages") / "slide.ome.zarr", size=(192, 256), seed=3, chunk_px=64)


def _labels(store: str, name: str) -> np.ndarray:
    return np.asarray(read_labels(store, name).compute())


def _staged_and_one_call(client, slide, tmp_path, monkeypatch, name, options) -> tuple[dict, dict]:
    """Labels of a staged run (two tiles per predict batch) and of the one-call path."""
    config = RunConfig(measure=False, backend={"name": name, "options": options}).with_overrides(
        **{"tiling.tile_px": 128, "tiling.halo_um": 20, "cluster.tiles_per_predict": 2,
           "cluster.in_flight_tiles": 3}
    )
    staged = run(slide.path, config, output=tmp_path / "staged.zarr", client=client)
    cls = get_segmenter_class(name)
    assert cls(options).staged()
    monkeypatch.setattr(cls, "staged", lambda self: False)
    one_call = run(slide.path, config, output=tmp_path / "one.zarr", client=client)
    out = []
    for result in (staged, one_call):
        out.append({kind: _labels(result.store, kind) for kind in result.labels})
    return out[0], out[1]


def _assert_same(staged: dict, one_call: dict, at_least: int) -> None:
    assert staged.keys() == one_call.keys()
    for kind in staged:
        assert np.array_equal(staged[kind], one_call[kind]), kind
    assert int(staged["cells"].max()) >= at_least


@pytest.mark.slow
@requires_data("models/unet2d_nuclei_broad/bioimageio.yaml")
def test_onnx_staged_equals_one_call(accelerator_client, slide, tmp_path, monkeypatch) -> None:
    from tiled_seg.segment.backends import onnx

    before = onnx.OnnxSegmenter.model_loads()
    options = {"model": str(ONNX_MODEL), "window_px": 64}
    staged, one_call = _staged_and_one_call(accelerator_client, slide, tmp_path, monkeypatch, "onnx", options)
    _assert_same(staged, one_call, at_least=20)
    # One process holds both workers and the registry's one instance: one session in all.
    assert onnx.OnnxSegmenter.model_loads() - before <= 1


@pytest.mark.slow
def test_cellpose3_stages_equal_cellpose_eval_with_nuclei(cellpose_weights) -> None:
    from tiled_seg.segment.backends import cellpose

    seg = cellpose.CellposeSegmenter(
        {"pretrained_model": cellpose_weights, "nuclear_model": cellpose_weights, "gpu": False,
         "flow_threshold": 0.0, "cell_diameter_um": 40.0, "nucleus_diameter_um": 20.0})
    nuclear, membrane = np.random.default_rng(0).random((2, 120, 100), dtype=np.float32)
    staged = seg.segment(nuclear, membrane, SlideContext(1.0))
    own = seg.segment_one_call(nuclear, membrane, SlideContext(1.0))
    assert staged.cells.max() >= 5 and staged.nuclei is not None and staged.nuclei.max() >= 5
    assert np.array_equal(staged.cells, own.cells) and np.array_equal(staged.nuclei, own.nuclei)


@pytest.mark.slow
def test_cellpose3_staged_equals_one_call(accelerator_client, tmp_path, monkeypatch, cellpose_weights) -> None:
    from tiled_seg.segment.backends import cellpose

    small = make_slide(tmp_path / "small.ome.zarr", size=(128, 256), seed=3, chunk_px=64)
    before = cellpose.CellposeSegmenter.model_loads()
    options = {"pretrained_model": cellpose_weights, "compartment": "whole-cell", "gpu": False,
               "flow_threshold": 0.0, "cell_diameter_um": 40.0}
    staged, one_call = _staged_and_one_call(accelerator_client, small, tmp_path, monkeypatch, "cellpose", options)
    _assert_same(staged, one_call, at_least=2)
    assert cellpose.CellposeSegmenter.model_loads() - before <= 1


@pytest.mark.slow
def test_mesmer_staged_equals_one_call(accelerator_client, slide, tmp_path, monkeypatch, map_model) -> None:
    from tiled_seg.segment.backends import mesmer

    before = mesmer.MesmerSegmenter.model_loads()
    options = {"model_path": str(map_model), "use_deepcell_package": False, "window_px": 64}
    staged, one_call = _staged_and_one_call(accelerator_client, slide, tmp_path, monkeypatch, "mesmer", options)
    _assert_same(staged, one_call, at_least=1)
    assert mesmer.MesmerSegmenter.model_loads() - before <= 1


@pytest.fixture(scope="module")
def cellpose_weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A Cellpose 3 network with random weights, biased so that masks form."""
    pytest.importorskip("cellpose")
    torch = pytest.importorskip("torch")
    from cellpose.resnet_torch import CPnet

    from tiled_seg.segment.backends.cellpose import cellpose_major_version

    if cellpose_major_version() != 3:
        pytest.skip("this test builds a Cellpose 3 network")
    torch.manual_seed(0)
    net = CPnet([2, 32, 64, 128, 256], 3, sz=3, mkldnn=False, max_pool=True, diam_mean=30.0)
    with torch.no_grad():
        net.output[2].bias[2] = 3.0
    path = tmp_path_factory.mktemp("cellpose") / "random_cp3.pth"
    net.save_model(str(path))
    return str(path)


def _blank_right_half(path: str) -> None:
    """Zero the right half of every pyramid level of the slide's image."""
    group = zarr.open_group(path, mode="r+")
    for dataset in group.attrs.asdict().get("ome", group.attrs.asdict())["multiscales"][0]["datasets"]:
        array = group[dataset["path"]]
        array[..., array.shape[-1] // 2 :] = 0


@pytest.mark.slow
def test_blank_half_is_skipped_with_identical_labels(client, tmp_path) -> None:
    slide = make_slide(tmp_path / "half.ome.zarr", size=(256, 512), seed=5, chunk_px=64)
    _blank_right_half(slide.path)
    config = RunConfig(measure=False).with_overrides(**{"tiling.tile_px": 128})
    skipping = run(slide.path, config, output=tmp_path / "skip.zarr", client=client)
    everything = run(slide.path, config.with_overrides(**{"tiling.skip_empty": False}),
                     output=tmp_path / "all.zarr", client=client)
    # 2 x 4 tiles; the two right columns are blank and beyond the halo of the tissue.
    assert skipping.n_tiles == 8 and skipping.skipped_tiles == 2
    assert skipping.to_summary()["skipped_tiles"] == 2 and everything.skipped_tiles == 0
    for kind in ("cells", "nuclei"):
        assert np.array_equal(_labels(skipping.store, kind), _labels(everything.store, kind)), kind
    assert skipping.n_cells == everything.n_cells > 20


@pytest.mark.parametrize("shape", [(300, 260), (50, 90)])
def test_windows_cut_and_assembled_equal_a_pixelwise_network(shape) -> None:
    """Windows cut and assembled give a pixelwise network's output on the whole image."""
    from tiled_seg.segment.backends._windows import assemble_windows, cut_windows

    image = np.random.default_rng(0).random((*shape, 2), dtype=np.float32)
    position = np.arange(image.size // 2, dtype=np.float32).reshape(shape)[..., None]
    marked = np.concatenate([image, position], axis=-1)

    def predict(batch):
        return [batch[..., :1] * 2 + batch[..., 2:], batch[..., 1:2] + 1]

    windows, layout = cut_windows(marked, 64, 8)
    # A pixelwise network: every window agrees, so the assembly equals the network on the whole image.
    for out, want in zip(predict(windows), predict(marked[None])):
        assert np.array_equal(assemble_windows(out, layout), want[0])


class FailingNetwork(Segmenter):
    """A staged backend whose network fails."""

    name = "failing"

    def prepare(self, nuclear, membrane, context):
        return PreparedTile({"net": nuclear[None]}, {})

    def predict(self, network, batch):
        raise RuntimeError("network exploded")

    def postprocess(self, prepared, outputs, context):
        raise AssertionError("postprocess must not run without network outputs")


@pytest.mark.slow
def test_pipeline_runs_a_one_call_backend_and_fails_loudly_in_predict(
    accelerator_client, slide, tmp_path, monkeypatch
) -> None:
    from tiled_seg.segment.backends import registry

    monkeypatch.setitem(registry._BUILTIN, "onecall", "test_stages:OneCall")
    monkeypatch.setitem(registry._BUILTIN, "failing", "test_stages:FailingNetwork")
    config = RunConfig(measure=False, compartment="whole-cell",
                       backend={"name": "onecall"}).with_overrides(**{"tiling.tile_px": 128})
    result = run(slide.path, config, output=tmp_path / "one.zarr", client=accelerator_client)
    assert result.n_cells > 0
    failing = config.model_copy(update={"backend": config.backend.model_copy(update={"name": "failing"})})
    with pytest.raises(RuntimeError, match="network exploded"):
        run(slide.path, failing, output=tmp_path / "failing.zarr", client=accelerator_client)


def test_measurement_warmup_starts_once_a_worker_has_no_tile_left() -> None:
    from types import SimpleNamespace

    from tiled_seg.pipeline._run import _MeasurementWarmup

    class RecordingClient:
        def __init__(self) -> None:
            self.submitted: list[tuple[str, int]] = []

        def scheduler_info(self):
            return {"workers": {"tcp://a": {}, "tcp://b": {}, "tcp://c": {}}}

        def submit(self, function, *args, pure=True, workers=(), allow_other_workers=True, priority=0):
            assert not allow_other_workers and priority < 0
            self.submitted.append((workers[0], function.__name__))
            return object()

    inputs = SimpleNamespace(slide=SimpleNamespace(data=np.zeros(1, np.uint16)))
    client = RecordingClient()
    warmup = _MeasurementWarmup(client, inputs, n_tiles=5, enabled=True)
    for _ in range(2):
        warmup.tile_done()
    assert client.submitted == []  # 3 tiles left for 3 workers
    warmup.tile_done()
    assert sorted(client.submitted) == [(w, "warm_block_task") for w in ("tcp://a", "tcp://b", "tcp://c")]
    warmup.tile_done()
    warmup.start()
    assert len(client.submitted) == 3
    disabled = _MeasurementWarmup(client, inputs, n_tiles=1, enabled=False)
    disabled.tile_done()
    disabled.start()
    assert len(client.submitted) == 3
