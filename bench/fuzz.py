"""The fuzz test at full size: ≥ 10,000 hostile records through the review join, the thermal step and the lineage
sink (``tests/test_fuzz.py``), with the counts written to ``bench/results/fuzz.json``: ``records``,
``dead_lettered``, ``decoded_valid`` (hostile bytes that still make a valid record, e.g. a flipped pixel), by kind,
``crashes``, ``stalls`` and the slowest decode in ms. Usage: ``python bench/fuzz.py [--examples 45]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=45, help="hypothesis examples per test")
    args = parser.parse_args()
    out = ROOT / "bench" / "results" / "fuzz.json"
    env = {**os.environ, "FUZZ_EXAMPLES": str(args.examples), "FUZZ_OUT": str(out)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:logging", "tests/test_fuzz.py"], cwd=ROOT,
                          env=env)
    if done.returncode != 0:  # a failed property is a crash or a stall of some step: the counts say so
        result = json.loads(out.read_text()) if out.exists() else {}
        out.write_text(json.dumps({**result, "crashes": 1}, indent=1))
        sys.exit(done.returncode)
    result = json.loads(out.read_text())
    print(f"{result['records']:,} hostile records: {result['dead_lettered']:,} dead-lettered, {result['decoded_valid']:,} "
          f"decoded as valid records, 0 crashes, 0 stalls, slowest decode {result['slowest_decode_ms']} ms → "
          f"{out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
