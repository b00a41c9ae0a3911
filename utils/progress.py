"""Rich progress bars and console output shared by all steps."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(highlight=False, soft_wrap=True)
if not console.is_terminal:  # log files and CI: wide enough for a bar with its fields
    console.width = 140


class Bar:
    """Handle of one progress bar: ``advance(n)`` and ``update(**fields)``."""

    def __init__(self, progress: Progress, task_id: int) -> None:
        self._progress, self._task = progress, task_id

    def advance(self, amount: float = 1) -> None:
        self._progress.advance(self._task, amount)

    def update(self, **fields: object) -> None:
        self._progress.update(self._task, **fields)


@contextmanager
def progress_bar(description: str, total: float | None, unit: str = "it",
                 extra: str = "", disable: bool = False, **fields: object) -> Iterator[Bar]:
    """A rich progress bar with counts, rate, elapsed and remaining time.

    ``extra`` is a rich format string over the task ``fields``, e.g.
    ``extra="loss {task.fields[loss]:.3f}", loss=0.0``.
    """
    columns = [
        TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
        MofNCompleteColumn(), TextColumn(f"{unit}"), TimeElapsedColumn(), TextColumn("<"),
        TimeRemainingColumn(),
    ]
    if extra:
        columns.append(TextColumn(extra))
    with Progress(*columns, console=console, transient=False, disable=disable) as progress:
        yield Bar(progress, progress.add_task(description, total=total, **fields))
