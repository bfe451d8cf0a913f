"""The probabilities backend: CellProfiler-style objects from slide or classifier probabilities."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage as ndi

from tiled_seg.config import RunConfig
from tiled_seg.errors import BackendError, ConfigError
from tiled_seg.io.ngff import read_labels, write_image
from tiled_seg.pipeline import configured_backend, halo_px_for, run
from tiled_seg.quality.evaluate import match_labels
from tiled_seg.segment.backends import SlideContext
from tiled_seg.segment.backends.probabilities import (
    ProbabilitiesOptions,
    ProbabilitiesSegmenter,
    identify_primary,
    identify_secondary,
)
from tiled_seg.segment.pixels import load_classifier, train_pixels
from tiled_seg.synth import make_slide, synth_arrays

SIZE = 256
CHUNK = 64
#: Small feature scales keep the classifier tests fast; the halo follows them.
SIGMAS = (0.7, 1.6, 3.5)


def _discs(centres, radius, shape=(48, 64)):
    yy, xx = np.indices(shape)
    image = np.zeros(shape, np.float32)
    for cy, cx in centres:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = 1.0
    return image


def test_touching_nuclei_are_split_by_shape_and_kept_whole_without_declumping():
    touching = _discs([(24, 22), (24, 38)], 8.5)
    split = identify_primary(touching, ProbabilitiesOptions(typical_diameter_um=(4, 25)), SlideContext(1.0))
    merged = identify_primary(touching, ProbabilitiesOptions(typical_diameter_um=(4, 25), declump="none"),
                              SlideContext(1.0))
    assert np.unique(split[split > 0]).size == 2
    assert split[24, 22] != split[24, 38]
    assert np.unique(merged[merged > 0]).size == 1


def test_objects_outside_the_typical_diameter_are_discarded():
    image = _discs([(10, 10)], 2) + _discs([(30, 40)], 8)
    labels = identify_primary(image, ProbabilitiesOptions(typical_diameter_um=(8, 20)), SlideContext(1.0))
    assert labels[10, 10] == 0 and labels[30, 40] > 0
    # Sizes are in um: at 0.5 um/px the small disc is 2 um across and the large one 8 um.
    labels = identify_primary(image, ProbabilitiesOptions(typical_diameter_um=(6, 20)), SlideContext(0.5))
    assert labels[10, 10] == 0 and labels[30, 40] > 0


def test_secondary_objects_propagate_over_the_cytoplasm_and_stop_at_background():
    nuclei = np.zeros((48, 64), np.int32)
    nuclei[20:28, 16:24], nuclei[20:28, 36:44] = 1, 2
    foreground = _discs([(24, 20), (24, 40)], 11) > 0
    nucleus = (nuclei > 0).astype(np.float32)
    cytoplasm = (foreground & (nuclei == 0)).astype(np.float32)
    cells = identify_secondary(nuclei, nucleus, cytoplasm, ProbabilitiesOptions(), SlideContext(1.0))
    assert set(np.unique(cells)) == {0, 1, 2}
    assert np.array_equal(cells > 0, foreground)
    # The two cells meet half-way between their nuclei (the Voronoi split of lambda > 0).
    assert cells[24, 28] == 1 and cells[24, 32] == 2


def test_without_a_cytoplasm_probability_the_cells_are_the_nuclei():
    nucleus = _discs([(24, 20), (24, 44)], 6)
    result = ProbabilitiesSegmenter().segment(nucleus, None, SlideContext(1.0))
    assert result.cells.max() == 2
    assert np.array_equal(result.cells, result.nuclei)


def test_options_are_validated_with_their_names():
    config = RunConfig().with_overrides(**{
        "backend.name": "probabilities", "backend.options": {"typical_diameter_um": [5, 40]},
    })
    with pytest.raises(ConfigError, match="max_cell_diameter_um"):
        configured_backend(config)
    config = config.with_overrides(**{"backend.options": {"classifier": "/nowhere/model.npz"}})
    with pytest.raises(BackendError, match="train-pixels"):
        configured_backend(config).check_model()


def _probability_slide(path):
    """A slide of nucleus, cytoplasm and background probabilities blurred from a synthetic truth."""
    _, cells, nuclei, _ = synth_arrays((SIZE, SIZE), seed=5, chunk_px=CHUNK)
    cells, nuclei = cells.compute(), nuclei.compute()
    nucleus = ndi.gaussian_filter((nuclei > 0).astype(np.float32), 1.0)
    background = ndi.gaussian_filter((cells == 0).astype(np.float32), 1.0)
    cytoplasm = np.clip(1 - nucleus - background, 0, 1)
    write_image(path, np.stack([nucleus, cytoplasm, background]), ["nucleus", "cytoplasm", "background"],
                1.0, chunk_px=CHUNK)
    return cells, nuclei


@pytest.mark.slow
def test_probabilities_from_ground_truth_give_its_cells(tmp_path, client):
    cells, nuclei = _probability_slide(tmp_path / "probabilities.ome.zarr")
    config = RunConfig.model_validate({
        "measure": False,
        "panel": {"nuclear": ["nucleus"], "membrane": ["cytoplasm"]},
        "normalization": {"fixed_range": {"nucleus": [0, 1], "cytoplasm": [0, 1]}},
        "backend": {"name": "probabilities"},
        "tiling": {"tile_px": 128},
    })
    result = run(tmp_path / "probabilities.ome.zarr", config, client=client)
    assert result.n_tiles == 4
    found = read_labels(tmp_path / "probabilities.ome.zarr", "cells").compute()
    found_nuclei = read_labels(tmp_path / "probabilities.ome.zarr", "nuclei").compute()
    cell_score, nucleus_score = match_labels(found, cells), match_labels(found_nuclei, nuclei)
    print(f"cells F1 {cell_score.f1:.3f} of {cell_score.n_true}, nuclei F1 {nucleus_score.f1:.3f}")
    assert cell_score.n_true > 100
    assert cell_score.f1 >= 0.95 and nucleus_score.f1 >= 0.95


@pytest.mark.slow
def test_probabilities_from_a_second_store_segment_the_slide_and_measure_its_markers(tmp_path, client):
    slide = make_slide(tmp_path / "slide.ome.zarr", size=(SIZE, SIZE), seed=5, chunk_px=CHUNK)
    cells, _ = _probability_slide(tmp_path / "probabilities.ome.zarr")
    assert np.array_equal(cells, read_labels(slide.path, "gt_cells").compute())
    config = RunConfig.model_validate({
        "panel": {"nuclear": ["nucleus"], "membrane": ["cytoplasm"],
                  "store": str(tmp_path / "probabilities.ome.zarr")},
        "normalization": {"fixed_range": {"nucleus": [0, 1], "cytoplasm": [0, 1]}},
        "backend": {"name": "probabilities"},
        "tiling": {"tile_px": 128},
        "qc": {"enabled": False},
    })
    result = run(slide.path, config, output=tmp_path / "out.zarr", client=client)
    score = match_labels(read_labels(tmp_path / "out.zarr", "cells").compute(), cells)
    assert score.f1 >= 0.95
    table = pd.read_parquet(result.tables["parquet"])
    assert len(table) == result.n_cells and {"DNA1", "CD45"} <= set(table.columns)
    assert "nucleus" not in table.columns
    other = make_slide(tmp_path / "other.ome.zarr", size=(SIZE, SIZE + CHUNK), seed=5, chunk_px=CHUNK)
    with pytest.raises(ConfigError, match="panel.store .* 256 x 256 px, the slide .* 256 x 320 px"):
        run(other.path, config, output=tmp_path / "other_out.zarr", client=client)


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether ``a`` and ``b`` are the same labels up to renumbering."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return ((pairs[0] == 0) == (pairs[1] == 0)).all() and pairs.shape[1] == np.unique(a).size == np.unique(b).size


@pytest.fixture(scope="module")
def classified(tmp_path_factory):
    """A synthetic slide and a classifier trained on 5 % of its truth's pixels."""
    folder = tmp_path_factory.mktemp("classifier")
    slide = make_slide(folder / "slide.ome.zarr", size=(SIZE, SIZE), seed=3, chunk_px=CHUNK)
    nuclei = read_labels(slide.path, "gt_nuclei").compute()
    cells = read_labels(slide.path, "gt_cells").compute()
    truth = np.where(nuclei > 0, 1, np.where(cells > 0, 2, 3)).astype(np.uint8)
    annotations = np.where(np.random.default_rng(0).random(truth.shape) < 0.05, truth, 0)
    tifffile.imwrite(folder / "annotations.tif", annotations)
    model = train_pixels(slide.path, folder / "annotations.tif", folder / "model.npz",
                         sigmas=SIGMAS, n_estimators=10).path
    return slide, model


def _classifier_config(model, tile_px: int) -> RunConfig:
    return RunConfig.model_validate({
        "measure": False,
        "backend": {"name": "probabilities", "options": {"classifier": str(model)}},
        "tiling": {"tile_px": tile_px},
    })


@pytest.mark.model
@pytest.mark.slow
def test_auto_halo_adds_the_features_reach(classified):
    _, model = classified
    reach = load_classifier(model).reach_px
    assert reach == 21
    assert halo_px_for(_classifier_config(model, 64), 1.0) == 25 + reach
    assert halo_px_for(_classifier_config(model, 64), 0.5) == 50 + reach


@pytest.mark.model
@pytest.mark.slow
def test_pixel_classifier_one_tile_equals_many_tiles(tmp_path, classified, client):
    slide, model = classified
    one = tmp_path / "one.zarr"
    many = tmp_path / "many.zarr"
    assert run(slide.path, _classifier_config(model, SIZE), output=one, client=client).n_tiles == 1
    assert run(slide.path, _classifier_config(model, 64), output=many, client=client).n_tiles == 16
    whole, tiled = read_labels(one, "cells").compute(), read_labels(many, "cells").compute()
    truth = read_labels(slide.path, "gt_cells").compute()
    score = match_labels(whole, truth)
    print(f"classifier cells F1 vs truth {score.f1:.3f} ({score.n_pred} cells)")
    assert score.n_pred > 50 and score.f1 >= 0.8
    assert _same_partition(whole, tiled)
    assert _same_partition(read_labels(one, "nuclei").compute(), read_labels(many, "nuclei").compute())


@pytest.mark.model
@pytest.mark.slow
def test_classifier_refuses_another_pixel_size(classified):
    slide, model = classified
    segmenter = ProbabilitiesSegmenter({"classifier": str(model)})
    image = np.zeros((32, 32), np.float32)
    with pytest.raises(BackendError, match="trained at 1.0 um/px.*0.5 um/px"):
        segmenter.segment(image, image, SlideContext(0.5))
    with pytest.raises(BackendError, match="no membrane input"):
        segmenter.segment(image, None, SlideContext(1.0))
