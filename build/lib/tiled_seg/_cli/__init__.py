"""The ``tiled-seg`` command: one verb per stage, each calling the library."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import click

from tiled_seg.errors import TiledSegError

__all__ = ["main", "catch_errors"]


def catch_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a library error into one clear line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except TiledSegError as error:
            click.echo(f"Error: {error}", err=True)
            sys.exit(2)

    return wrapper


@click.group()
@click.version_option(package_name="tiled-seg")
def main() -> None:
    """Seam-free single-cell segmentation of whole-slide multiplexed images."""


def _register() -> None:
    # Each verb lives in its own module, which adds itself to ``main``.
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


_register()
