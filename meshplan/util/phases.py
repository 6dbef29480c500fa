"""How a long stage reports how far it got, without knowing who listens: a *phase* is entered with a label and a
count of items, and gives back a `tick` to call once per item done. The command line passes one that draws on a
terminal (meshplan/present/progress.py); everything else gets `quiet`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

Tick = Callable[[], None]
Phase = Callable[[str, int], AbstractContextManager[Tick]]


@contextmanager
def quiet(label: str, total: int) -> Iterator[Tick]:
    yield lambda: None
