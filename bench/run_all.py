"""Run every ``bench/bench_*.py`` in turn (``make bench``).

    .venv/bin/python bench/run_all.py [--only projection index] [--list]

Each benchmark runs as its own process with this Python, its default
arguments, and its output passed through; each writes its JSON under
``bench/results/``. The exit status is the number of benchmarks that failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def benches() -> list[Path]:
    return sorted(HERE.glob("bench_*.py"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=None, help="names without 'bench_' and '.py', e.g. projection")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    a = ap.parse_args(argv)
    found = benches()
    if a.list:
        print("\n".join(p.stem[len("bench_"):] for p in found))
        return 0
    if a.only is not None:
        names = {p.stem[len("bench_"):]: p for p in found}
        unknown = sorted(set(a.only) - set(names))
        if unknown:
            print(f"run_all: unknown benchmark: expected some of {sorted(names)}, got {unknown}", file=sys.stderr)
            return 2
        found = [names[n] for n in a.only]
    failed = []
    for path in found:
        print(f"== {path.name}", flush=True)
        t = time.perf_counter()
        rc = subprocess.call([sys.executable, str(path)], cwd=str(HERE.parent))
        print(f"== {path.name}: exit {rc} in {time.perf_counter() - t:.0f} s", flush=True)
        if rc != 0:
            failed.append(path.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return len(failed)


if __name__ == "__main__":
    sys.exit(main())
