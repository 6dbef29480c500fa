"""A long loader fuzz run: the suite's property (tests/loader_fuzz.py) over many more random examples.

    .venv/bin/python tests/fuzz/fuzz_loader.py                      # 50,000 texts and 20,000 directories
    .venv/bin/python tests/fuzz/fuzz_loader.py --texts 1000000 --directories 0 --seed 7

Random unless --seed is given, without the example database; the process's address space is capped (--memory-mb)
so that a runaway allocation fails an example instead of the machine. Every 8th example has its memory traced. It
prints the first failing example (Hypothesis shrinks it) and exits 1, or prints what it saw and exits 0.
"""

from __future__ import annotations

import argparse
import collections
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402

from tests.loader_fuzz import (  # noqa: E402
    Entry,
    Outcome,
    check_directory,
    check_text,
    directories,
    max_rss_bytes,
    yaml_texts,
)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=50_000)
    parser.add_argument("--directories", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--memory-mb", type=int, default=2048)
    args = parser.parse_args(argv)
    limit = args.memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    rss_before = max_rss_bytes()
    seen: collections.Counter[str] = collections.Counter()
    slowest = [0.0]
    runs = [0]

    def record(outcome: Outcome) -> None:
        seen[f"exit {outcome.exit_code}"] += 1
        slowest[0] = max(slowest[0], outcome.seconds)

    def trace() -> bool:
        runs[0] += 1
        return runs[0] % 8 == 0

    def run(count: int) -> settings:
        return settings(max_examples=count, database=None, deadline=None, derandomize=False,
                        suppress_health_check=list(HealthCheck))

    @run(args.texts)
    @given(text=yaml_texts)
    def texts(text: str) -> None:
        record(check_text(text, trace=trace(), rss_before=rss_before))

    @run(args.directories)
    @given(entries=directories())
    def trees(entries: list[Entry]) -> None:
        record(check_directory(entries, trace=trace(), rss_before=rss_before))

    started = time.monotonic()
    for name, test, count in (("texts", texts, args.texts), ("directories", trees, args.directories)):
        if count <= 0:
            continue
        if args.seed is not None:
            test = seed(args.seed)(test)
        try:
            test()
        except Exception as e:  # the failing example, already printed by Hypothesis
            print(f"{name}: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
    print(f"{sum(seen.values())} examples in {time.monotonic() - started:.0f} s: {dict(seen)}; "
          f"slowest validate {slowest[0] * 1000:.0f} ms; peak RSS {max_rss_bytes() / 2**20:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
