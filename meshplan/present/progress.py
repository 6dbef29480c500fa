"""Progress on stderr for a phase that can take more than a second (reading admin APIs, pre-flight, delivery): a
spinner with a count, drawn only on a terminal and gone when the phase ends. Not a terminal (CI, cron, a pipe):
nothing at all, so that logs hold only results."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console

from meshplan.present.text import printable
from meshplan.util.phases import Phase, Tick, quiet


def phases(console: Console) -> Phase:
    if not console.is_terminal:
        return quiet

    @contextmanager
    def phase(label: str, total: int) -> Iterator[Tick]:
        done = 0
        with console.status(printable(f"{label} (0/{total})")) as status:

            def tick() -> None:
                nonlocal done
                done += 1
                status.update(printable(f"{label} ({done}/{total})"))

            yield tick

    return phase
