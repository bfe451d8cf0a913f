"""Configs and data files cannot run code or write outside the output store."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from click.testing import CliRunner

from tiled_seg._cli import main
from tiled_seg.config import OutputConfig, RunConfig, load_config
from tiled_seg.errors import BackendError, ConfigError
from tiled_seg.segmenters import get_segmenter_class

PACKAGE = Path(__file__).resolve().parents[1] / "tiled_seg"


def test_python_tags_in_yaml_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    config = tmp_path / "evil.yaml"
    config.write_text(f"measure: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(config)
    assert not marker.exists()


def _calls(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                names.add(func.id)
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                names.add(f"{func.value.id}.{func.attr}")
    return names


def test_package_never_unpickles_or_evaluates():
    forbidden = {
        "eval", "exec", "compile", "__import__",
        "pickle.load", "pickle.loads", "cloudpickle.load", "cloudpickle.loads",
        "yaml.load", "yaml.unsafe_load", "yaml.full_load", "marshal.loads", "np.load",
    }
    found = {}
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    for path in files:
        bad = _calls(ast.parse(path.read_text(), str(path))) & forbidden
        if bad:
            found[str(path.relative_to(PACKAGE))] = sorted(bad)
    assert found == {}


@pytest.mark.parametrize("name", ["os.system", "tiled_seg.evil:X", "../watershed", "builtins:eval"])
def test_backends_are_registry_names_only(tmp_path, name):
    config = tmp_path / "c.yaml"
    config.write_text(f"backend:\n  name: '{name}'\n")
    result = CliRunner().invoke(main, ["run", str(tmp_path / "absent.zarr"), "--config", str(config)])
    assert result.exit_code == 2
    assert "registered backend" in result.output
    result = CliRunner().invoke(main, ["run", str(tmp_path / "absent.zarr"), "--backend", name])
    assert result.exit_code == 2 and "registered backend" in result.output
    with pytest.raises(BackendError, match="unknown backend"):
        get_segmenter_class(name)


@pytest.mark.parametrize("value", ["../cells", "a/b", "/tmp/x", "..", ".hidden", "", "c\\d"])
@pytest.mark.parametrize("key", ["cells", "nuclei", "table"])
def test_output_names_stay_inside_the_store(key, value):
    with pytest.raises(ConfigError, match="plain name"):
        RunConfig().with_overrides(**{f"outputs.{key}": value})
    assert OutputConfig(**{key: "cells_v2.1"})
