"""The ``tiled-seg`` command: one verb per stage, each calling the library.

Verb modules import the library inside their functions, so ``--help`` and
argument errors answer without loading dask, zarr or the backends.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable, Sequence

import click

from tiled_seg.errors import TiledSegError, command_line

__all__ = ["main", "catch_errors"]

#: Exit code of a run stopped by Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130


def _os_error_line(error: OSError) -> str:
    """An operating-system error as one line naming the path and what to do."""
    where = f" {error.filename}" if error.filename else ""
    return (
        f"cannot access{where} ({error.strerror or error}); check that the path exists and "
        "that its disk is writable, or write somewhere else."
    )


def catch_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a library or OS error into one clear line on stderr and exit code 2.

    Ctrl-C exits with 130 and says how to continue; with ``--verbose`` the
    traceback of an unexpected OS error is shown as well.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except TiledSegError as error:
            click.echo(f"Error: {error}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            context = click.get_current_context(silent=True)
            hint = ("rerun with --resume to continue where it stopped"
                    if context is not None and context.info_name == "run"
                    else "run the command again (add --overwrite if it says so)")
            click.echo(f"interrupted; {hint}.", err=True)
            sys.exit(INTERRUPTED)
        except BrokenPipeError:
            # The reader of our output went away (`| head`): nothing to report.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except OSError as error:
            if _verbose():
                raise
            click.echo(f"Error: {_os_error_line(error)}", err=True)
            sys.exit(2)

    return wrapper


def _verbose() -> bool:
    context = click.get_current_context(silent=True)
    return bool(context and context.find_root().meta.get("verbose"))


class _Group(click.Group):
    """The command group; a wrong flag or value is one line naming the fix, exit 2."""

    def main(
        self, args: Sequence[str] | None = None, prog_name: str | None = None,
        complete_var: str | None = None, standalone_mode: bool = True, **extra: Any,
    ) -> Any:
        standalone = standalone_mode
        try:
            return super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as error:
            if not standalone:
                raise
            click.echo(error.format_message(), err=True)
            sys.exit(error.exit_code)
        except click.UsageError as error:
            if not standalone:
                raise
            where = error.ctx.command_path if error.ctx is not None else "tiled-seg"
            message = error.format_message().rstrip(".")
            click.echo(f"Error: {message}. See `{where} --help`.", err=True)
            sys.exit(error.exit_code)
        except click.ClickException as error:
            if not standalone:
                raise
            error.show()
            sys.exit(error.exit_code)
        except click.Abort:
            if not standalone:
                raise
            click.echo("interrupted.", err=True)
            sys.exit(INTERRUPTED)


@click.group(cls=_Group)
@click.version_option(package_name="tiled-seg")
@click.option("--verbose", "-v", is_flag=True,
              help="Show dask's and zarr's log messages and warnings (hidden by default).")
@click.pass_context
def main(context: click.Context, verbose: bool) -> None:
    """Seam-free single-cell segmentation of whole-slide multiplexed images."""
    from tiled_seg._cli._quiet import quiet

    context.with_resource(command_line())
    context.meta["verbose"] = verbose
    if not verbose:
        quiet()


def _register() -> None:
    # Each verb lives in its own module, which adds itself to ``main``.
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


_register()
