"""Rich progress bars fed by the pipeline's ``progress(stage, done, total)``: one per stage."""

from __future__ import annotations

import contextlib
from typing import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from tiled_seg.pipeline import Progress as ProgressCallback


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "blocks")
        return Text(f"-- {unit}/s" if speed is None else f"{speed:.2f} {unit}/s")


@contextlib.contextmanager
def tile_progress(console: Console | None = None) -> Iterator[ProgressCallback]:
    """Yield a callback that draws, per stage, items done of total, rate and ETA.

    The segment stage counts tiles; the other stages count blocks.
    """
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
    )
    tasks: dict[str, TaskID] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            unit = "tiles" if stage == "segment" else "blocks"
            tasks[stage] = bar.add_task(f"{stage} {unit}", total=total, unit=unit)
        bar.update(tasks[stage], completed=done)

    with bar:
        yield update
