"""Shared test helpers: the real-data folder and a marker that skips without it."""

from __future__ import annotations

from pathlib import Path

import pytest

#: Real data kept outside the repository (see ../shared/data/README.md).
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def requires_data(subpath: str) -> pytest.MarkDecorator:
    """Skip a test, with a clear reason, when ``DATA / subpath`` is absent.

    Use as ``@requires_data("mibi_tnbc_fov8/fov8_mibitiff_22ch.tiff")``; the
    test then reads the file as ``DATA / subpath``.
    """
    path = DATA / subpath
    return pytest.mark.skipif(
        not path.exists(),
        reason=f"real data {path} is absent (a fresh clone lacks ../shared/data; CI has it)",
    )
