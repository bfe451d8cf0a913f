"""Configs and data files cannot run code or write outside the output store."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import zarr
from click.testing import CliRunner

from tiled_seg._cli import main
from tiled_seg.config import REDACTED, OutputConfig, RunConfig, load_config, redact_secrets
from tiled_seg.errors import BackendError, ConfigError
from tiled_seg.pipeline import run
from tiled_seg.segment.backends import get_segmenter_class
from tiled_seg.synth import make_slide

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


SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


def test_default_config_has_nothing_to_redact():
    record = RunConfig().model_dump(mode="json")
    assert redact_secrets(record) == record


@pytest.mark.parametrize("record,hidden", [
    ({"kubernetes": {"env": {"AWS_SECRET_ACCESS_KEY": SECRET}}}, SECRET),
    ({"env": ["TOKEN=abc123secretvalue"]}, "abc123secretvalue"),
    ({"options": {"api_key": "short"}}, "short"),
    ({"options": {"password": "hunter2"}}, "hunter2"),
    ({"model": "s3://user:hunter2@minio:9000/models/m.onnx"}, "hunter2"),
    ({"note": "AKIAIOSFODNN7EXAMPLE"}, "AKIAIOSFODNN7EXAMPLE"),
    ({"token": "ghp_" + "a1" * 18}, "ghp_"),
])
def test_secrets_are_redacted(record, hidden):
    assert hidden not in json.dumps(redact_secrets(record))
    assert REDACTED in json.dumps(redact_secrets(record))


@pytest.mark.slow
def test_run_records_no_secret(tmp_path, client):
    """No file of the output store (attributes, uns['config'], Parquet metadata) holds a secret."""
    slide = make_slide(tmp_path / "slide.ome.zarr", size=(128, 128), seed=3, chunk_px=64)
    config = RunConfig().with_overrides(**{
        "tiling.tile_px": 64,
        "cluster.kubernetes.env": {"AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE"},
    })
    result = run(slide.path, config, output=tmp_path / "out.zarr", client=client)
    assert result.tables, "the run wrote no tables"
    written = [p for p in (tmp_path / "out.zarr").rglob("*") if p.is_file() and not p.is_symlink()]
    leaks = [str(p) for p in written if SECRET.encode() in p.read_bytes()
             or b"AKIAIOSFODNN7EXAMPLE" in p.read_bytes()]
    assert len(written) > 10 and leaks == []
    recorded = zarr.open_group(str(tmp_path / "out.zarr")).attrs["tiled_seg"]["config"]
    assert recorded["cluster"]["kubernetes"]["env"] == {
        "AWS_SECRET_ACCESS_KEY": REDACTED, "AWS_ACCESS_KEY_ID": REDACTED}
