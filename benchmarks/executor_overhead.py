"""The SLURM executor against the local one on the quick demo, side by side in one run.

Runs ``dropkit demo --quick`` into two fresh folders, once on the local executor (two worker
processes) and once through submitit on the SLURM cluster of this machine (``make slurm-up``;
two CPUs, so two jobs at a time), and prints both wall times, their ratio, and whether every
``result.json`` holds the same metrics. Without a cluster it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from dropkit.cli import main as dropkit


def _cluster() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        answer = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, timeout=15)
    except subprocess.TimeoutExpired:
        return False
    return answer.returncode == 0 and bool(answer.stdout.strip())


def _metrics(out: Path) -> dict[str, dict]:
    return {
        str(p.relative_to(out)): json.loads(p.read_text())["metrics"]
        for p in sorted(out.glob("runs/*/*/result.json"))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, help="seeds per variant (default: the config's)")
    args = parser.parse_args()
    if not _cluster():
        print("executor_overhead: no SLURM cluster answers here (make slurm-up); skipped")
        return
    seeds = [] if args.seeds is None else ["--seeds", str(args.seeds)]
    walls = {}
    with tempfile.TemporaryDirectory() as tmp:
        for executor in ("local", "slurm"):
            started = time.perf_counter()
            out = Path(tmp) / executor
            code = dropkit(["demo", "--quick", *seeds, "--out", str(out), "--executor", executor])
            if code != 0:
                raise SystemExit(f"dropkit demo --executor {executor} failed ({code})")
            walls[executor] = time.perf_counter() - started
        same = _metrics(Path(tmp) / "local") == _metrics(Path(tmp) / "slurm")
    print(f"quick demo, local executor (2 workers): {walls['local']:.1f} s")
    print(f"quick demo, slurm executor (submitit):  {walls['slurm']:.1f} s")
    print(f"slurm / local: {walls['slurm'] / walls['local']:.2f}x; identical results: {same}")


if __name__ == "__main__":
    main()
