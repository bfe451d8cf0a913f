"""Paths and URLs alike: local folders and object stores through fsspec.

A store may be a local path or a URL (``s3://bucket/slide.ome.zarr``,
``gs://...``, ``https://...`` read-only). zarr 3 opens such URLs itself;
these helpers cover what ``pathlib``/``shutil`` did for local paths.
Credentials and endpoints come from the environment as each filesystem
reads them (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL`` for s3fs; ``GOOGLE_APPLICATION_CREDENTIALS`` for
gcsfs), and further options from fsspec's own ``FSSPEC_<PROTOCOL>_<KEY>``
variables (``FSSPEC_S3_ANON=true``), which zarr's stores and these helpers
both apply. Workers that share the environment therefore need nothing
extra, and no options travel with the tasks.
"""

from __future__ import annotations

from pathlib import Path

import fsspec

__all__ = [
    "is_url",
    "filesystem",
    "exists",
    "remove_tree",
    "join",
    "same_location",
]


def is_url(path: str | Path) -> bool:
    """True for a URL with a scheme other than ``file``.

    >>> is_url("s3://bucket/slide.ome.zarr"), is_url("/data/slide.ome.zarr")
    (True, False)
    """
    text = str(path)
    return "://" in text and not text.startswith("file://")


def filesystem(path: str | Path) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of ``path`` and the path inside it."""
    return fsspec.core.url_to_fs(str(path))


def exists(path: str | Path) -> bool:
    """Whether a file, folder or object prefix exists at ``path``."""
    if not is_url(path):
        return Path(path).exists()
    fs, inner = filesystem(path)
    fs.invalidate_cache(inner)
    return bool(fs.exists(inner))


def remove_tree(path: str | Path) -> None:
    """Delete ``path`` and everything below it; nothing when it is absent."""
    fs, inner = filesystem(path)
    fs.invalidate_cache(inner)
    if fs.exists(inner):
        fs.rm(inner, recursive=True)
        fs.invalidate_cache(inner)


def join(base: str | Path, *parts: str) -> str:
    """``base/part/...`` for a path or a URL (``pathlib`` would fold ``s3://``).

    >>> join("s3://bucket/slide.ome.zarr/", "tables", "cells.parquet")
    's3://bucket/slide.ome.zarr/tables/cells.parquet'
    """
    return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])


def same_location(a: str | Path, b: str | Path) -> bool:
    """Whether two paths or URLs name the same store."""
    if is_url(a) or is_url(b):
        return str(a).rstrip("/") == str(b).rstrip("/")
    return Path(a).resolve() == Path(b).resolve()
