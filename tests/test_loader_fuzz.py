"""Loader fuzzing in the suite: thousands of odd YAML texts and odd desired directories through `meshplan validate`,
each exiting 0 or 1 with a file and line in every error, no traceback, in bounded time and memory (loader_fuzz.py).

Derandomized and without an example database, so that every run, here and in CI, tries the same inputs; longer and
random runs: tests/fuzz/fuzz_loader.py.
"""

from __future__ import annotations

import functools
import itertools

from hypothesis import HealthCheck, given, settings

from tests.loader_fuzz import (
    Entry,
    check_directory,
    check_text,
    directories,
    max_rss_bytes,
    yaml_texts,
)

SUITE = settings(max_examples=2500, derandomize=True, database=None, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TRACE_EVERY = 8  # one example in eight has its memory traced (tracing slows a run down several times)

_runs = itertools.count()


@functools.cache
def _rss_before() -> int:
    """The process's peak resident size when fuzzing starts (a high-water mark: earlier tests' peaks are in it)."""
    return max_rss_bytes()


def _trace() -> bool:
    return next(_runs) % TRACE_EVERY == 0


@SUITE
@given(text=yaml_texts)
def test_odd_yaml_texts(text: str) -> None:
    check_text(text, trace=_trace(), rss_before=_rss_before())


@settings(SUITE, max_examples=1000)
@given(entries=directories())
def test_odd_directories(entries: list[Entry]) -> None:
    check_directory(entries, trace=_trace(), rss_before=_rss_before())
