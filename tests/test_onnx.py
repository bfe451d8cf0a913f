"""ONNX (bioimage.io) backend with the real UNet 2D Nuclei Broad model."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DATA, requires_data

from tiled_seg.errors import BackendError
from tiled_seg.segment.backends import SlideContext
from tiled_seg.segment.backends import onnx as onnx_backend
from tiled_seg.segment.backends._windows import assemble_windows, cut_windows

MODEL = DATA / "models" / "unet2d_nuclei_broad"
requires_model = requires_data("models/unet2d_nuclei_broad/bioimageio.yaml")


@requires_model
def test_description_is_read() -> None:
    d = onnx_backend.read_description(MODEL)
    assert d.input_axes == "bcyx" and d.window_px == 512 and d.halo_px == 32
    assert d.input_channels == 1 and d.weights.name == "weights.onnx"
    assert [op for op, _ in d.postprocessing][0] == "sigmoid"


@requires_model
def test_model_reproduces_its_test_tensors() -> None:
    seg = onnx_backend.OnnxSegmenter(dict(model=str(MODEL), normalization="model"))
    session, d = seg.model
    raw = np.load(MODEL / "test_input.npy")
    expected = np.load(MODEL / "test_output.npy")
    window = onnx_backend._preprocess(np.moveaxis(raw[0], 0, -1), d, seg.options)
    logits = session.run(None, {session.get_inputs()[0].name: np.moveaxis(window, -1, 0)[None]})[0]
    np.testing.assert_allclose(onnx_backend._postprocess(logits, d), expected, atol=1e-5)


@requires_data("nuclei_stardist/mask2d.tif")
@requires_model
def test_nuclear_f1_on_hand_drawn_masks() -> None:
    import tifffile

    from tiled_seg.quality.evaluate import match_labels

    image = tifffile.imread(DATA / "nuclei_stardist" / "img2d.tif").astype(np.float32)
    truth = tifffile.imread(DATA / "nuclei_stardist" / "mask2d.tif")
    low, high = np.percentile(image, [1, 99.5])  # the pipeline's slide-wide defaults
    nuclear = np.clip((image - low) / (high - low), 0, 1).astype(np.float32)
    seg = onnx_backend.OnnxSegmenter(dict(model=str(MODEL), nucleus_diameter_um=10.0))
    result = seg.segment(nuclear, None, SlideContext(pixel_size_um=1.0))
    assert result.nuclei is result.cells
    # 0.76 is this model with a plain probability > 0.5 watershed.
    assert match_labels(result.cells, truth).f1 > 0.78


@pytest.mark.slow
@requires_model
def test_tile_larger_and_smaller_than_the_window() -> None:
    seg = onnx_backend.OnnxSegmenter(dict(model=str(MODEL)))
    context = SlideContext(pixel_size_um=1.0)
    big = np.zeros((600, 530), np.float32)
    big[100:120, 500:520] = 1.0
    probability = seg.probability(big, context)
    assert probability.shape == big.shape
    assert probability[110, 510] > 0.5 > probability[300, 300]
    small = seg.segment(big[90:130, 490:530], None, context)
    assert small.cells.shape == (40, 40) and small.cells.max() == 1


@requires_model
def test_model_pixel_size_rescales_and_restores_shape() -> None:
    seg = onnx_backend.OnnxSegmenter(dict(model=str(MODEL), model_pixel_size_um=0.5))
    nuclear = np.zeros((101, 77), np.float32)
    assert seg.probability(nuclear, SlideContext(pixel_size_um=0.8)).shape == (101, 77)


def test_windows_reassemble_exactly() -> None:
    image = np.random.default_rng(0).random((300, 170, 1), dtype=np.float32)
    windows, layout = cut_windows(image, 128, 16)
    assert windows.shape[1:3] == (128, 128)
    np.testing.assert_array_equal(assemble_windows(windows * 2, layout), image * 2)
    np.testing.assert_array_equal(assemble_windows(windows[..., :1] + 1, layout), image + 1)


def test_format_04_description(tmp_path) -> None:
    (tmp_path / "rdf.yaml").write_text(
        "format_version: 0.4.10\ntype: model\n"
        "weights: {onnx: {source: w.onnx}}\n"
        "inputs: [{name: raw, axes: bcyx, shape: {min: [1, 1, 64, 64], step: [0, 0, 16, 16]},\n"
        "  preprocessing: [{name: zero_mean_unit_variance, kwargs: {mode: per_sample, axes: xy}}]}]\n"
        "outputs: [{name: p, axes: bcyx, halo: [0, 0, 8, 8], postprocessing: [{name: sigmoid}]}]\n"
    )
    d = onnx_backend.read_description(tmp_path)
    assert (d.window_px, d.window_min_px, d.window_step_px, d.halo_px) == (None, 64, 16, 8)
    assert onnx_backend._resolve_window(d, 100) == 96
    assert d.preprocessing[0][0] == "zero_mean_unit_variance"


def test_missing_model_is_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(onnx_backend.ENV_MODEL, raising=False)
    seg = onnx_backend.OnnxSegmenter()
    with pytest.raises(BackendError, match="TILED_SEG_ONNX_MODEL"):
        seg.segment(np.zeros((8, 8), np.float32), None, SlideContext(pixel_size_um=1.0))
    with pytest.raises(BackendError, match="does not exist"):
        onnx_backend.read_description(tmp_path / "bioimageio.yaml")
