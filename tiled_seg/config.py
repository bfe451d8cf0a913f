"""Typed run configuration, loaded from YAML.

Every section forbids unknown keys, so a typo is an error that names the key
instead of a silently ignored setting. Sizes are in micrometres (``_um``) or
pixels (``_px``) as their names say.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tiled_seg.errors import ConfigError

__all__ = [
    "PanelConfig",
    "BackendConfig",
    "NormalizationConfig",
    "TilingConfig",
    "OutputConfig",
    "SlurmConfig",
    "KubernetesConfig",
    "ClusterConfig",
    "QCConfig",
    "RunConfig",
    "load_config",
    "parse_setting",
    "validation_problems",
    "REDACTED",
    "redact_secrets",
]


#: Mutually exclusive markers of the synthetic panel (``tiled_seg.synth``):
#: the default pairs of the impossible co-expression check. Kept here, not in
#: ``coexpression``, so loading a configuration does not import pandas.
DEFAULT_EXCLUSIVE_PAIRS: tuple[tuple[str, str], ...] = (
    ("CD3", "CD20"),
    ("CD3", "PanKeratin"),
    ("CD20", "PanKeratin"),
    ("CD68", "PanKeratin"),
    ("CD45", "PanKeratin"),
)



#: Default name of the cell table: SpatialData names elements uniquely across
#: images, labels and tables, so it must differ from the label name ``cells``.
DEFAULT_TABLE = "cell_table"

class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


#: A plain name: letters, digits, ``_``, ``-`` and ``.``, not starting with a dot.
#: Names from configs become store paths and registry keys, so nothing that
#: could leave the output store (``/``, ``..``) or name a Python object.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _plain_name(value: str, what: str) -> str:
    if not _PLAIN_NAME.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} must be a plain name (letters, digits, '_', '-', '.'; "
            "no '/', no leading '.')"
        )
    return value


class PanelConfig(_Section):
    """Which channels make the nuclear and the membrane input.

    Each input is the mean of its channels after slide-wide normalisation.
    """

    nuclear: tuple[str, ...] = ("DNA1",)
    membrane: tuple[str, ...] = ("NaKATPase", "CD44", "CD45")

    @field_validator("nuclear")
    @classmethod
    def _needs_nuclear(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("panel.nuclear must name at least one channel (e.g. DNA1)")
        return value


class BackendConfig(_Section):
    """Segmentation backend and its options (validated by the backend)."""

    name: str = "watershed"
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _registered_name(cls, value: str) -> str:
        # Backends come from the registry by name, never from a module path.
        if ":" in value or not _PLAIN_NAME.fullmatch(value) or "." in value:
            raise ValueError(
                f"backend {value!r} must be the name of a registered backend (e.g. watershed), "
                "not a module or object path"
            )
        return value


class NormalizationConfig(_Section):
    """Slide-wide per-channel intensity normalisation."""

    low_percentile: float = Field(1.0, ge=0, lt=100)
    high_percentile: float = Field(99.5, gt=0, le=100)
    #: Pyramid level used for statistics; "auto" takes the coarsest level that
    #: still has ``min_stats_pixels`` pixels.
    level: int | Literal["auto"] = "auto"
    min_stats_pixels: int = Field(1_000_000, gt=0)


class TilingConfig(_Section):
    """Tile core size (px) and halo (um, or "auto" from the largest cell)."""

    tile_px: int = Field(1024, gt=0)
    halo_um: float | Literal["auto"] = "auto"
    #: Stitching joins two tiles' labels when they are each other's best match
    #: and their IoU inside the shared region exceeds this, in [0, 1) (the
    #: range ``tiling.match.match_tiles`` takes); see ``tiling/match.py``.
    min_overlap: float = Field(0.5, ge=0, lt=1)
    #: Skip tiles without tissue (a mask from a coarse pyramid level): no
    #: segmentation, no labels; the run summary counts them as skipped_tiles.
    skip_empty: bool = True
    #: A coarse pixel is tissue where the nuclear or membrane input exceeds
    #: this fraction of its slide-wide Otsu threshold.
    tissue_fraction: float = Field(0.25, gt=0, le=1)

    @field_validator("halo_um", mode="before")
    @classmethod
    def _positive_or_auto(cls, value: Any) -> float | str:
        if value == "auto":
            return value
        try:
            halo = float(value)
        except (TypeError, ValueError):
            halo = math.nan
        if not halo > 0 or not math.isfinite(halo):
            raise ValueError(f"must be a positive number of um or 'auto', not {value!r}")
        return halo


class OutputConfig(_Section):
    """Names of what a run writes into the output store."""

    cells: str = "cells"
    nuclei: str = "nuclei"
    table: str = DEFAULT_TABLE

    @field_validator("cells", "nuclei", "table")
    @classmethod
    def _inside_store(cls, value: str) -> str:
        return _plain_name(value, "output name")


class SlurmConfig(_Section):
    """SLURM jobs of dask workers (dask-jobqueue ``SLURMCluster``).

    Each job starts ``processes`` worker processes sharing ``cores`` and
    ``memory``; with ``gpus_per_job`` > 0 it asks for ``--gres=gpu:N``, starts
    one worker per GPU and gives each the resource ``GPU=1``.
    """

    queue: str | None = None
    account: str | None = None
    walltime: str = "01:00:00"
    cores: int = Field(4, gt=0)
    processes: int = Field(1, gt=0)
    memory: str = "16GB"
    gpus_per_job: int = Field(0, ge=0)
    job_extra_directives: tuple[str, ...] = ()
    #: Shell lines run in the job before the worker starts (modules, venv).
    job_script_prologue: tuple[str, ...] = ()
    #: Scale between minimum_jobs and maximum_jobs with the work; false: ``jobs``.
    adaptive: bool = True
    minimum_jobs: int = Field(0, ge=0)
    maximum_jobs: int = Field(4, gt=0)
    jobs: int = Field(1, gt=0)


class KubernetesConfig(_Section):
    """A ``DaskCluster`` of the dask-kubernetes operator.

    ``gpus_per_worker`` > 0 adds an ``nvidia.com/gpu`` limit to every worker
    pod and gives each worker the resource ``GPU=1`` per GPU.
    """

    image: str = "ghcr.io/tiled-seg/tiled-seg:0.1.0"
    namespace: str | None = None
    n_workers: int = Field(2, ge=0)
    cpu: str = "2"
    memory: str = "8Gi"
    gpus_per_worker: int = Field(0, ge=0)
    #: Environment of scheduler and workers (e.g. AWS_ENDPOINT_URL for the data).
    env: dict[str, str] = Field(default_factory=dict)
    adaptive: bool = False
    minimum_workers: int = Field(0, ge=0)
    maximum_workers: int = Field(8, gt=0)


class ClusterConfig(_Section):
    """Where the tasks of a run execute (``--cluster`` overrides ``kind``).

    ``local``: worker processes on this machine; ``local-cuda``: one worker
    per GPU (dask-cuda); ``slurm`` and ``kubernetes``: the sections below;
    ``address``: a running scheduler at ``address``.
    """

    kind: Literal["local", "local-cuda", "slurm", "kubernetes", "address"] = "local"
    address: str | None = None
    #: Local worker processes; null: one per core (local) or per GPU (local-cuda).
    workers: int | None = Field(None, gt=0)
    threads_per_worker: int = Field(1, gt=0)
    #: Threads per local-cuda worker: one runs the GPU's predict tasks, the
    #: others prepare and postprocess tiles; null: this machine's cores per GPU.
    gpu_worker_threads: int | None = Field(None, gt=0)
    memory_limit: str = "auto"
    #: Prepared tiles whose model windows one predict task runs together.
    tiles_per_predict: int = Field(1, gt=0)
    #: Most tiles in flight (prepared, predicted or postprocessing) per GPU,
    #: which bounds the memory held for them; null: the cluster's threads + 2.
    in_flight_tiles: int | None = Field(None, gt=0)
    slurm: SlurmConfig = SlurmConfig()
    kubernetes: KubernetesConfig = KubernetesConfig()

    @model_validator(mode="after")
    def _address_given(self) -> "ClusterConfig":
        if self.kind == "address" and not self.address:
            raise ValueError("cluster.kind address needs cluster.address (e.g. tcp://host:8786)")
        return self


def _pair(value: Any) -> Any:
    """``"A/B"`` to ``("A", "B")``; other forms are left to the type check."""
    if isinstance(value, str):
        parts = tuple(p.strip() for p in value.split("/"))
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"exclusive pair {value!r} must be two markers, as A/B or [A, B]")
        return parts
    return value


class QCConfig(_Section):
    """Quality control at the end of every measured run (the summary's ``qc``)."""

    enabled: bool = True
    #: Mutually exclusive markers (``A/B`` or ``[A, B]``, channel names or
    #: MIBItiff base names such as ``CD3`` for ``CD3 (159)``); pairs whose
    #: markers the slide lacks are skipped and listed as such.
    exclusive_pairs: tuple[tuple[str, str], ...] = DEFAULT_EXCLUSIVE_PAIRS
    #: Positivity threshold per marker from the cell means: Otsu of log1p,
    #: or a percentile.
    threshold: Literal["otsu", "percentile"] = "otsu"
    percentile: float = Field(90.0, ge=0, le=100)
    #: Side (um) of the square bins of the density summary.
    density_bin_um: float = Field(100.0, gt=0)

    @field_validator("exclusive_pairs", mode="before")
    @classmethod
    def _parse_pairs(cls, value: Any) -> Any:
        return [_pair(v) for v in value] if isinstance(value, (list, tuple)) else value


class RunConfig(_Section):
    """Everything a run needs besides the slide."""

    panel: PanelConfig = PanelConfig()
    pixel_size_um: float | None = Field(None, gt=0)
    backend: BackendConfig = BackendConfig()
    normalization: NormalizationConfig = NormalizationConfig()
    tiling: TilingConfig = TilingConfig()
    compartment: Literal["whole-cell", "nuclear", "both"] = "both"
    outputs: OutputConfig = OutputConfig()
    #: Grow cells from the stitched nuclei by this radius (um), for
    #: nuclear-only backends; needs ``compartment: nuclear``.
    expand_nuclei_um: float | None = Field(None, gt=0)
    measure: bool = True
    #: Shape columns of the tables: "default" (area, perimeter, moment
    #: features; vectorised) or "full" (adds solidity, asymmetry,
    #: concavities and fill from per-cell convex hulls; slower).
    morphology: Literal["default", "full"] = "default"
    #: Neighbour graph in the tables besides touching cells: cells whose
    #: centroids ("centroids") or closest pixels ("borders", steinbock's
    #: border distance) are within ``neighbour_distance_um``.
    neighbours: Literal["centroids", "borders"] = "centroids"
    #: Largest distance (um) of that neighbour graph.
    neighbour_distance_um: float = Field(20.0, gt=0)
    #: Quality control after measuring (co-expression, seams, sizes, density).
    qc: QCConfig = QCConfig()
    #: REDSEA spillover compensation (boundary mode) after measuring:
    #: ``<channel>_redsea`` columns and a ``redsea`` layer in the tables.
    redsea: bool = False
    #: Width (um) of the cell boundary band REDSEA reads.
    redsea_boundary_um: float = Field(2.0, gt=0)
    #: Where tasks run; does not change the results.
    cluster: ClusterConfig = ClusterConfig()

    @model_validator(mode="after")
    def _expansion_needs_nuclei(self) -> "RunConfig":
        if self.expand_nuclei_um is not None and self.compartment != "nuclear":
            raise ValueError(
                "expand_nuclei_um grows cells from nuclei; set compartment: nuclear "
                "(the backend then segments nuclei only)"
            )
        return self

    def with_overrides(self, **changes: Any) -> "RunConfig":
        """A copy with dotted keys replaced, e.g. ``{"tiling.tile_px": 512}``.

        None values are skipped. A key may reach into ``backend.options``
        (``backend.options.threshold``); the result is validated like a YAML
        file, so an unknown section or a wrong type is a :class:`ConfigError`.
        """
        data = self.model_dump()
        for dotted, value in changes.items():
            if value is None:
                continue
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                child = node.get(key) if isinstance(node, dict) else None
                if not isinstance(child, dict):
                    raise ConfigError(
                        f"unknown setting {dotted!r}: {key!r} is not a section. "
                        "See configs/default.yaml for every key."
                    )
                node = child
            node[leaf] = value
        return _validate(data, "overrides")

    def with_backend(self, name: str | None) -> tuple["RunConfig", dict[str, Any]]:
        """A copy that runs backend ``name``, and the options it dropped.

        Options belong to one backend: switching to another one drops the
        configured options (they would fail or, worse, mean something else),
        so the caller can say so. The same name, or None, changes nothing.
        """
        if name is None or name == self.backend.name:
            return self, {}
        data = self.model_dump()
        data["backend"] = {"name": name, "options": {}}
        return _validate(data, "overrides"), dict(self.backend.options)


def validation_problems(error: ValidationError, prefix: str = "") -> str:
    """A pydantic error as one line: each bad key with what is wrong with it."""
    problems = []
    for item in error.errors():
        where = prefix + ".".join(str(p) for p in item["loc"])
        if item["type"] == "extra_forbidden":
            problems.append(f"unknown key {where!r}")
        else:
            problems.append(f"{where}: {item['msg'].removeprefix('Value error, ')}")
    return "; ".join(problems)


def _validate(data: Any, source: str) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(
            f"invalid configuration in {source}: " + validation_problems(error)
            + ". See configs/default.yaml for every key."
        ) from None


def parse_setting(text: str) -> tuple[str, Any]:
    """``key=value`` from the command line as a dotted key and a YAML-typed value.

    >>> parse_setting("tiling.tile_px=512")
    ('tiling.tile_px', 512)
    >>> parse_setting("panel.membrane=[CD44, CD45]")
    ('panel.membrane', ['CD44', 'CD45'])
    """
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(
            f"--set takes KEY=VALUE with a dotted key (e.g. tiling.tile_px=512); got {text!r}."
        )
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def load_config(path: str | Path | None) -> RunConfig:
    """Load a :class:`RunConfig` from YAML; None gives the defaults.

    The file is parsed with ``yaml.safe_load``: no Python objects are built
    from it.
    """
    if path is None:
        return RunConfig()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"configuration file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, not {type(data).__name__}.")
    return _validate(data, str(path))


# Recording a configuration ------------------------------------------------
# Outputs (store attributes, ``uns['config']``, Parquet metadata) are shared
# with whoever gets the data, so a recorded configuration must not carry the
# credentials a cluster was given: environment values, keys, tokens, passwords.

#: What a redacted value is replaced with.
REDACTED = "<redacted>"

#: Keys whose values are environments (every value may be a credential).
_ENVIRONMENT_KEYS = re.compile(r"^(env|environment|env_vars|job_env)$", re.IGNORECASE)

#: Keys naming a secret.
_SECRET_KEYS = re.compile(
    r"secret|token|passw|credential|private|api_?key|access_?key|(^|[_-])key$|auth|session",
    re.IGNORECASE,
)

#: Values that look like secrets whatever their key.
_SECRET_VALUES = re.compile(
    r"(AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key id
    r"|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_\w{20,}"  # GitHub tokens
    r"|xox[abprs]-[\w-]{10,}"  # Slack tokens
    r"|eyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]+"  # JSON web tokens
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|^(?=[A-Za-z0-9+=_-]*\d)(?=[A-Za-z0-9+=_-]*[A-Za-z])[A-Za-z0-9+=_-]{32,}$"  # long random
)

#: The password of a URL's user information (``scheme://user:password@host``).
_URL_PASSWORD = re.compile(r"(\w+://[^/\s:@]+):[^/\s@]+@")


def _redact_value(value: str) -> str:
    if _SECRET_VALUES.search(value):
        return REDACTED
    return _URL_PASSWORD.sub(rf"\1:{REDACTED}@", value)


def redact_secrets(record: Any, *, key: str = "") -> Any:
    """A copy of ``record`` (nested dicts, lists, scalars) with its secrets replaced.

    Every value under an environment key (``env``) is replaced, so are the
    values of keys that name a secret (``*_key``, ``token``, ``password``,
    ...) and strings that look like one (AWS key ids, GitHub and Slack
    tokens, JSON web tokens, private keys, long random strings); a URL keeps
    its user name but loses its password. Keys and structure are kept, so
    the record still shows what was configured.

    Parameters
    ----------
    record : dict, list or scalar
        A JSON-like configuration.
    key : str
        The key ``record`` was found under (for recursion).

    Returns
    -------
    Any
        The redacted copy; ``record`` is not modified.

    Examples
    --------
    >>> redact_secrets({"env": {"AWS_SECRET_ACCESS_KEY": "abc"}, "workers": 2})
    {'env': {'AWS_SECRET_ACCESS_KEY': '<redacted>'}, 'workers': 2}
    >>> redact_secrets({"store": "s3://me:hunter2@host/bucket"})
    {'store': 's3://me:<redacted>@host/bucket'}
    """
    if isinstance(record, dict):
        if _ENVIRONMENT_KEYS.match(key):
            return {k: REDACTED for k in record}
        return {k: redact_secrets(v, key=str(k)) for k, v in record.items()}
    if isinstance(record, (list, tuple)):
        if _ENVIRONMENT_KEYS.match(key):
            return [_redact_assignment(v) for v in record]
        return [redact_secrets(v, key=key) for v in record]
    if isinstance(record, str):
        if _SECRET_KEYS.search(key) and record:
            return REDACTED
        return _redact_value(record)
    return record


def _redact_assignment(item: Any) -> Any:
    """``NAME=value`` keeps its name; anything else in an environment list goes."""
    if isinstance(item, str) and "=" in item:
        return f"{item.split('=', 1)[0]}={REDACTED}"
    if isinstance(item, dict) and "name" in item:
        return {**item, **{k: REDACTED for k in item if k != "name"}}
    return REDACTED
