"""StarDist backend through StarDist's real predict path, with a model built here.

The model (``tiled_seg.synth.make_stardist_model``) has random U-Net weights
and output heads fitted by least squares to a synthetic slide's nuclei, so
its objects are nuclei-sized and at nuclei.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from distributed import Client

from tiled_seg._cli.run import _model_option
from tiled_seg.cluster import accelerator_cluster
from tiled_seg.config import RunConfig
from tiled_seg.errors import BackendError
from tiled_seg.io import read_labels
from tiled_seg.pipeline import check_run, run
from tiled_seg.quality.evaluate import match_labels
from tiled_seg.segment.backends import SlideContext, get_segmenter_class
from tiled_seg.segment.backends.base import predict_tiles
from tiled_seg.segment.backends.stardist import StardistSegmenter, find_model, grow_cells
from tiled_seg.synth import make_slide, make_stardist_model, synth_arrays

PIXEL_SIZE_UM = 0.5
CONTEXT = SlideContext(PIXEL_SIZE_UM)


def _normalised_dna(size: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    image, _, nuclei, _ = synth_arrays(size, n_channels=3, seed=seed, pixel_size_um=PIXEL_SIZE_UM)
    dna = np.asarray(image[0], np.float32)
    low, high = np.percentile(dna, (1, 99.5))
    return np.clip((dna - low) / (high - low), 0, 1).astype(np.float32), np.asarray(nuclei)


@pytest.fixture(scope="module")
def tile() -> tuple[np.ndarray, np.ndarray]:
    """A normalised nuclear tile of another slide than the fit's, and its true nuclei."""
    return _normalised_dna((200, 232), seed=5)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    pytest.importorskip("stardist")
    image, nuclei = _normalised_dna((256, 256), seed=2)
    return str(make_stardist_model(tmp_path_factory.mktemp("stardist") / "random16", image, nuclei))


def test_missing_model_names_the_expected_files(tmp_path) -> None:
    with pytest.raises(BackendError, match="needs a StarDist2D model folder"):
        find_model(None)
    with pytest.raises(BackendError, match="does not exist"):
        find_model(str(tmp_path / "nowhere"))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(BackendError, match=r"lacks weights \(\*\.h5\).*config\.json and weights"):
        StardistSegmenter({"model": str(tmp_path)}).check_model()


def test_model_folder_from_the_environment(tmp_path, monkeypatch) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "weights_best.h5").write_bytes(b"")
    monkeypatch.setenv("TILED_SEG_STARDIST_MODEL", str(tmp_path))
    assert find_model(None) == tmp_path
    with pytest.raises(BackendError, match="does not exist"):
        find_model(str(tmp_path / "elsewhere"))  # the option wins over the variable


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="n_tiles must be two integers >= 1"):
        StardistSegmenter({"model": "m", "n_tiles": [0, 2]})
    with pytest.raises(ValueError, match="prob_thresh"):
        StardistSegmenter({"model": "m", "prob_thresh": 1.5})
    assert not StardistSegmenter({"model": "m", "n_tiles": [2, 2]}).staged()
    assert StardistSegmenter({"model": "m", "n_tiles": [1, 1]}).staged()


def test_model_flag_and_registry() -> None:
    assert get_segmenter_class("stardist") is StardistSegmenter
    assert _model_option("stardist") == "model"


def test_grow_cells_keeps_nuclei_and_ids() -> None:
    nuclei = np.zeros((9, 9), np.int32)
    nuclei[2, 2], nuclei[6, 6] = 1, 2
    cells = grow_cells(nuclei, 2.0)
    assert cells.dtype == np.int32 and set(np.unique(cells)) == {0, 1, 2}
    assert cells[2, 4] == 1 and cells[6, 4] == 2 and cells[0, 8] == 0
    assert np.array_equal(grow_cells(nuclei, 0.0), nuclei)


@pytest.mark.model
def test_labels_shapes_ids_and_nuclei_inside_cells(model_dir, tile) -> None:
    nuclear, truth = tile
    result = StardistSegmenter({"model": model_dir, "expansion_um": 2.0}).segment(nuclear, None, CONTEXT)
    nuclei, cells = result.nuclei, result.cells
    assert nuclei.shape == cells.shape == nuclear.shape
    assert nuclei.dtype == cells.dtype == np.int32
    n = int(nuclei.max())
    assert n >= 8
    assert np.array_equal(np.unique(nuclei), np.arange(n + 1))
    assert np.array_equal(np.unique(cells), np.arange(n + 1))
    inside = nuclei > 0
    assert np.array_equal(cells[inside], nuclei[inside])  # nucleus k lies in cell k
    assert (cells > 0).sum() > inside.sum()  # cells grew
    assert match_labels(nuclei, truth).f1 > 0.6  # the fitted heads find real nuclei


@pytest.mark.model
def test_stages_equal_predict_instances(model_dir, tile) -> None:
    nuclear, _ = tile
    seg = StardistSegmenter({"model": model_dir, "prob_thresh": 0.45, "nms_thresh": 0.35})
    model = seg.model
    # Odd sizes exercise the padding to the network's div_by and its crop.
    tiles = [nuclear, nuclear[:101, :150], nuclear[50:, 7:]]
    prepared = [seg.prepare(t, None, CONTEXT) for t in tiles]
    assert [list(p.windows) for p in prepared] == [["200x232"], ["104x152"], ["152x232"]]
    for t, p, outputs in zip(tiles, prepared, predict_tiles(seg, prepared)):
        staged = seg.postprocess(p, outputs, CONTEXT).nuclei
        reference, _ = model.predict_instances(t, prob_thresh=0.45, nms_thresh=0.35, show_tile_progress=False)
        assert staged.max() > 0
        ids = np.unique(reference)
        lookup = np.zeros(ids.max() + 1, np.int32)
        lookup[ids] = np.arange(ids.size)
        assert np.array_equal(staged, lookup[reference])


@pytest.mark.model
def test_thresholds_json_is_used(model_dir, tile) -> None:
    nuclear, _ = tile
    saved = json.loads((find_model(model_dir) / "thresholds.json").read_text())
    default = StardistSegmenter({"model": model_dir}).segment(nuclear, None, CONTEXT).nuclei
    given = StardistSegmenter({"model": model_dir, "prob_thresh": saved["prob"], "nms_thresh": saved["nms"]})
    assert np.array_equal(default, given.segment(nuclear, None, CONTEXT).nuclei)
    stricter = StardistSegmenter({"model": model_dir, "prob_thresh": 0.8})
    assert stricter.segment(nuclear, None, CONTEXT).nuclei.max() < default.max()


@pytest.mark.model
def test_n_tiles_runs_predict_instances_in_one_call(model_dir, tile) -> None:
    nuclear, _ = tile
    whole = StardistSegmenter({"model": model_dir}).segment(nuclear, None, CONTEXT)
    tiled = StardistSegmenter({"model": model_dir, "n_tiles": [2, 2]}).segment(nuclear, None, CONTEXT)
    assert tiled.nuclei.shape == nuclear.shape
    # StarDist's tiles overlap by the network's receptive field, so nuclei agree.
    assert match_labels(tiled.nuclei, whole.nuclei).f1 > 0.95


@pytest.fixture(scope="module")
def accelerator_client():
    """One GPU-resource worker and one CPU worker in this process (one model load)."""
    with accelerator_cluster(1, processes=False) as cluster, Client(cluster, set_as_default=False) as client:
        yield client


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.cluster
def test_pipeline_tiled_equals_one_tile_and_one_call(model_dir, accelerator_client, tmp_path, monkeypatch) -> None:
    slide = make_slide(tmp_path / "slide.ome.zarr", size=(256, 256), seed=5,
                       pixel_size_um=PIXEL_SIZE_UM, chunk_px=64)
    backend = {"name": "stardist", "options": {"model": model_dir, "expansion_um": 2.0}}

    def labels(tile_px: int, name: str) -> dict[str, np.ndarray]:
        config = RunConfig(measure=False, backend=backend).with_overrides(
            # 48 px: beyond the network's receptive field (46 px) and a multiple
            # of its div_by (8), so tiles at the slide's edge are padded as the whole slide.
            **{"tiling.tile_px": tile_px, "tiling.halo_um": 24, "tiling.skip_empty": False,
               "cluster.tiles_per_predict": 2}
        )
        check_run(slide.path, config, output=tmp_path / f"{name}.zarr")
        result = run(slide.path, config, output=tmp_path / f"{name}.zarr", client=accelerator_client)
        return {kind: np.asarray(read_labels(result.store, kind).compute()) for kind in ("cells", "nuclei")}

    loads = StardistSegmenter.model_loads()
    tiled, whole = labels(128, "tiled"), labels(256, "whole")
    assert StardistSegmenter.model_loads() - loads <= 1
    assert int(whole["nuclei"].max()) >= 20
    for kind in ("cells", "nuclei"):
        # The same partition: every (tiled, whole) id pair occurs once.
        pairs = np.unique(np.stack([tiled[kind].ravel(), whole[kind].ravel()]), axis=1)
        assert pairs.shape[1] == int(whole[kind].max()) + 1 == int(tiled[kind].max()) + 1, kind
    inside = tiled["nuclei"] > 0
    assert np.array_equal(tiled["cells"][inside], tiled["nuclei"][inside])
    monkeypatch.setattr(StardistSegmenter, "staged", lambda self: False)
    one_call = labels(128, "one_call")
    for kind in ("cells", "nuclei"):
        assert np.array_equal(one_call[kind], tiled[kind]), kind


def test_missing_model_is_found_before_a_run(small_slide, tmp_path) -> None:
    slide = small_slide
    config = RunConfig(backend={"name": "stardist", "options": {"model": str(tmp_path / "none")}})
    with pytest.raises(BackendError, match="StarDist model folder .* does not exist"):
        check_run(slide.path, config, output=tmp_path / "out.zarr")
