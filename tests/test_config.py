from pathlib import Path

import numpy as np
import pytest

from tiled_seg.config import RunConfig, load_config
from tiled_seg.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    config = load_config(path)
    assert config.panel.nuclear
    assert config.tiling.tile_px > 0


def test_default_yaml_matches_code_defaults():
    assert load_config(CONFIGS / "default.yaml") == RunConfig()


def test_unknown_keys_are_listed(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("tiling:\n  tile_pixels: 512\npanell: {}\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "tiling.tile_pixels" in str(error.value)
    assert "panell" in str(error.value)


def test_wrong_type_is_an_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("tiling:\n  tile_px: many\n")
    with pytest.raises(ConfigError, match="tiling.tile_px"):
        load_config(path)


def test_yaml_is_parsed_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("panel: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_overrides_are_validated():
    config = RunConfig().with_overrides(**{"tiling.tile_px": 256, "backend.name": None})
    assert config.tiling.tile_px == 256
    assert config.backend.name == "watershed"
    with pytest.raises(ConfigError, match="tile_px"):
        RunConfig().with_overrides(**{"tiling.tile_px": -3})


@pytest.mark.parametrize("value", [1.0, -0.1, 1.5])
def test_min_overlap_outside_what_stitching_takes_is_refused_by_the_config(value):
    """The config takes exactly the IoU range match_tiles takes, [0, 1): nothing fails in a worker."""
    from tiled_seg.tiling import plan_tiles
    from tiled_seg.tiling.match import match_tiles

    with pytest.raises(ConfigError, match="min_overlap"):
        RunConfig().with_overrides(**{"tiling.min_overlap": value})
    grid = plan_tiles((20, 40), 20, 4)
    labels = [np.ones(t.halo.shape, np.int32) for t in grid.tiles]
    with pytest.raises(ConfigError, match="min_overlap"):
        match_tiles(grid.tiles[0], labels[0], grid.tiles[1], labels[1], min_overlap=value)
    for accepted in (0.0, 0.99):
        overlap = RunConfig().with_overrides(**{"tiling.min_overlap": accepted}).tiling.min_overlap
        match_tiles(grid.tiles[0], labels[0], grid.tiles[1], labels[1], min_overlap=overlap)


def test_empty_nuclear_panel_is_refused():
    with pytest.raises(ConfigError, match="nuclear"):
        RunConfig().with_overrides(**{"panel.nuclear": []})
