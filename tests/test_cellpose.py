"""Cellpose backend on CPU with a randomly initialised Cellpose 3 network (no download)."""

from __future__ import annotations

import numpy as np
import pytest

from tiled_seg.errors import BackendError
from tiled_seg.segment.backends import SlideContext
from tiled_seg.segment.backends import cellpose as cp_backend

pytest.importorskip("cellpose")
torch = pytest.importorskip("torch")
if cp_backend.cellpose_major_version() != 3:
    pytest.skip("these tests build a Cellpose 3 network", allow_module_level=True)

CONTEXT = SlideContext(pixel_size_um=1.0)


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    from cellpose.resnet_torch import CPnet

    torch.manual_seed(0)
    net = CPnet([2, 32, 64, 128, 256], 3, sz=3, mkldnn=False, max_pool=True, diam_mean=30.0)
    with torch.no_grad():
        net.output[2].bias[2] = 3.0  # positive cell probability so masks can form
    path = tmp_path_factory.mktemp("cellpose") / "random_cp3.pth"
    net.save_model(str(path))
    return str(path)


def _blobs() -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:64, :64]
    nuclear = np.zeros((64, 64), np.float32)
    membrane = np.zeros((64, 64), np.float32)
    for cy, cx in [(16, 16), (16, 46), (46, 30)]:
        nuclear += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 40.0).astype(np.float32)
        membrane += np.exp(-((np.hypot(yy - cy, xx - cx) - 9) ** 2) / 4.0).astype(np.float32)
    return np.clip(nuclear, 0, 1), np.clip(membrane, 0, 1)


def _consecutive(labels: np.ndarray) -> bool:
    ids = np.unique(labels)
    return bool(np.array_equal(ids[ids > 0], np.arange(1, ids[ids > 0].size + 1)))


@pytest.mark.slow
def test_segment_both_through_cellpose_eval(random_weights: str) -> None:
    seg = cp_backend.CellposeSegmenter(
        dict(pretrained_model=random_weights, nuclear_model=random_weights, gpu=False,
             flow_threshold=0.0, cell_diameter_um=30.0, nucleus_diameter_um=30.0)
    )
    nuclear, membrane = _blobs()
    result = seg.segment(nuclear, membrane, CONTEXT)
    assert result.cells.shape == nuclear.shape and result.cells.dtype == np.int32
    assert result.nuclei is not None and result.nuclei.dtype == np.int32
    assert result.cells.max() > 0  # the biased random network does find objects
    assert _consecutive(result.cells)
    inside = result.nuclei > 0
    assert np.array_equal(result.nuclei[inside], result.cells[inside])


@pytest.mark.slow
def test_nuclear_compartment_and_missing_membrane(random_weights: str) -> None:
    seg = cp_backend.CellposeSegmenter(
        dict(nuclear_model=random_weights, compartment="nuclear", gpu=False, nucleus_diameter_um=30.0)
    )
    nuclear, _ = _blobs()
    result = seg.segment(nuclear, None, CONTEXT)
    assert result.cells is result.nuclei
    assert result.cells.shape == nuclear.shape and _consecutive(result.cells)


@pytest.mark.slow
def test_models_load_once(random_weights: str) -> None:
    seg = cp_backend.CellposeSegmenter(dict(pretrained_model=random_weights, compartment="whole-cell", gpu=False,
             cell_diameter_um=30.0))
    before = cp_backend.CellposeSegmenter.model_loads()
    nuclear, membrane = _blobs()
    for _ in range(2):
        seg.segment(nuclear[:48, :48], membrane[:48, :48], CONTEXT)
    assert cp_backend.CellposeSegmenter.model_loads() - before == 1


def test_missing_weights_name_the_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path))
    seg = cp_backend.CellposeSegmenter(dict(pretrained_model="cyto3", compartment="whole-cell"))
    with pytest.raises(BackendError, match="cannot download"):
        seg.segment(np.zeros((8, 8), np.float32), None, CONTEXT)
    assert not any(tmp_path.iterdir())  # nothing was fetched or created


def test_gpu_true_without_cuda_is_an_error(random_weights: str) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    seg = cp_backend.CellposeSegmenter(dict(pretrained_model=random_weights, gpu=True))
    with pytest.raises(BackendError, match="no CUDA"):
        seg.model


@pytest.mark.slow
def test_backend_equals_cellpose_model_eval_on_the_same_tile(random_weights: str) -> None:
    from cellpose import models

    options = dict(pretrained_model=random_weights, gpu=False, compartment="whole-cell",
                   flow_threshold=0.0, cell_diameter_um=30.0)
    nuclear, membrane = _blobs()
    result = cp_backend.CellposeSegmenter(options).segment(nuclear, membrane, CONTEXT)
    model = models.CellposeModel(gpu=False, mkldnn=False, pretrained_model=random_weights)
    o = cp_backend.CellposeOptions(**options)
    masks = model.eval(
        np.stack([membrane, nuclear], axis=-1), channels=[1, 2], channel_axis=-1,
        diameter=30.0 / CONTEXT.pixel_size_um, normalize={"normalize": False},
        batch_size=o.batch_size, flow_threshold=0.0, cellprob_threshold=o.cellprob_threshold,
        min_size=o.min_size_px,
    )[0]
    assert masks.max() > 0
    # Equal up to Cellpose's own ids (the backend renumbers them consecutively).
    assert np.array_equal(result.cells > 0, masks > 0)
    assert len(np.unique(result.cells)) == len(np.unique(masks))
    pairs = np.unique(np.stack([result.cells.ravel(), masks.ravel()]), axis=1)
    assert pairs.shape[1] == len(np.unique(masks))
