"""Option types shared by the verbs: values checked by click, so a bad one is one line, exit 2."""

from __future__ import annotations

import math
from typing import Any

import click

__all__ = ["HaloUm", "split_names"]


class HaloUm(click.ParamType):
    """A positive halo in um, or ``auto``."""

    name = "UM|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value == "auto" or isinstance(value, float):
            return value
        try:
            halo = float(value)
        except ValueError:
            halo = math.nan
        if not (math.isfinite(halo) and halo > 0):
            self.fail(f"{value!r} is not a positive number of um or 'auto' (e.g. 30).", param, ctx)
        return halo


def split_names(text: str | None) -> tuple[str, ...] | None:
    """Comma-separated names as a tuple; None when not given, () for an empty string.

    >>> split_names("DNA1, DNA2"), split_names(""), split_names(None)
    (('DNA1', 'DNA2'), (), None)
    """
    if text is None:
        return None
    return tuple(name.strip() for name in text.split(",") if name.strip())
