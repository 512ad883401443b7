"""Run every benchmark script in this folder, one after another.

Usage: python benchmarks/run_all.py [--quick] [NAME ...]
Each script prints its measured lines and writes bench-out/<name>.json.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    args = sys.argv[1:]
    quick = [a for a in args if a == "--quick"]
    names = [a for a in args if not a.startswith("--")]
    here = Path(__file__).parent
    scripts = sorted(here.glob("bench_*.py"))
    if names:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in names]
    failed = []
    for script in scripts:
        print(f"\n=== {script.stem}", flush=True)
        started = time.perf_counter()
        code = subprocess.call([sys.executable, str(script), *quick])
        print(f"=== {script.stem}: exit {code} in {time.perf_counter() - started:.0f}s", flush=True)
        if code != 0:
            failed.append(script.stem)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
