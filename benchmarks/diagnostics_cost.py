"""Cost of GDV over K mini-batch gradients, vmap path vs loop path, against K plain steps.

Arms, on the same small transformer classifier (dim 64, depth 4, dropout 0.1, train mode) and
the same K mini-batches:

- floor: K plain forward + ``loss.backward()`` passes (what K training steps' gradients cost);
- loop:  ``gradient_direction_variance(mini_batch_gradients(..., method="loop"))``;
- vmap:  the same with ``method="vmap"`` (``torch.func``, chunks of ``--chunk-size``);
- naive: the textbook way, for memory only: store all K gradients, float64 cosine matrix.

Time: arms run in interleaved rounds (the order rotates each round), so drift in machine speed
hits every arm alike; the ratio is median(arm) / median(floor), target <= 1.15.

Memory: each arm runs once in a fresh subprocess after one warm-up training step; we report the
peak resident memory above the resident memory just before the arm (Linux ``VmHWM`` after
resetting it through ``/proc/self/clear_refs``, minus ``VmRSS``). glibc is told to serve every
allocation of 64 KiB or more with mmap (``MALLOC_MMAP_THRESHOLD_``), so freed tensors leave the
resident set at once and the peak is that of the arm's live tensors. Measured for K and K/4:
an O(|θ|) method does not grow with K.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from common import TinyTransformerClassifier, time_calls
from dropkit import diagnostics as dd

ARMS = ("floor", "loop", "vmap", "naive")
TIMED_ARMS = ("floor", "loop", "vmap")


def build(args: argparse.Namespace, k: int):
    torch.manual_seed(0)
    model = TinyTransformerClassifier(dim=args.dim, depth=args.depth, p=args.p).train()
    batches = [
        (torch.randn(args.batch, args.seq, args.dim), torch.randint(0, 10, (args.batch,)))
        for _ in range(k)
    ]
    return model, batches


def arm_function(name: str, model, batches, chunk_size: int):
    def floor() -> None:
        for x, y in batches:
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()

    def streamed(method: str):
        return lambda: dd.gradient_direction_variance(
            dd.mini_batch_gradients(model, batches, method=method, chunk_size=chunk_size)
        )

    def naive() -> float:
        params = [p for p in model.parameters() if p.requires_grad]
        stored = []
        for x, y in batches:
            grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
            stored.append(torch.cat([g.reshape(-1) for g in grads]))
        unit = F.normalize(torch.stack(stored).double(), dim=1)
        cosines = unit @ unit.T
        k = len(stored)
        upper = cosines[torch.triu_indices(k, k, offset=1).unbind()]
        return float((0.5 * (1 - upper)).mean())

    return {"floor": floor, "loop": streamed("loop"), "vmap": streamed("vmap"), "naive": naive}[
        name
    ]


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE).group(1))


def measure_memory_here(args: argparse.Namespace) -> None:
    """Subprocess side: one warm-up step, reset the peak, run the arm once, print JSON."""
    model, batches = build(args, args.k)
    x, y = batches[0]
    F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    run = arm_function(args.memory_arm, model, batches, args.chunk_size)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current VmRSS
    before = _status_kib("VmRSS")
    run()
    print(json.dumps({"peak_kib": _status_kib("VmHWM") - before}))


def measure_memory(args: argparse.Namespace, arm: str, k: int) -> float | None:
    """Peak extra resident MiB of one arm, from a fresh subprocess (None if not measurable)."""
    command = [sys.executable, __file__, "--memory-arm", arm, "--k", str(k)]
    for flag in ("batch", "seq", "dim", "depth", "p", "chunk_size"):
        command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        print(f"  memory of {arm} not measured: {done.stderr.strip().splitlines()[-1]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_kib"] / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=32, help="mini-batch gradients in G")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--p", type=float, default=0.1, help="dropout rate of the model")
    parser.add_argument("--chunk-size", type=int, default=8, help="mini-batches per vmap call")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--memory-arm", choices=ARMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_arm:
        measure_memory_here(args)
        return

    model, batches = build(args, args.k)
    n_params = sum(p.numel() for p in model.parameters())
    arms = {name: arm_function(name, model, batches, args.chunk_size) for name in TIMED_ARMS}
    for run in arms.values():
        run()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in arms}
    for round_index in range(args.rounds):
        shift = round_index % len(TIMED_ARMS)
        for name in TIMED_ARMS[shift:] + TIMED_ARMS[:shift]:
            times[name] += time_calls(arms[name], 1)
    median = {name: statistics.median(values) for name, values in times.items()}

    theta_mib = n_params * 4 / 2**20
    small_k = max(args.k // 4, 2)
    memory = {
        (arm, k): measure_memory(args, arm, k)
        for arm, k in itertools.product(ARMS, (small_k, args.k))
    }

    print(
        f"model: transformer dim {args.dim} depth {args.depth}, dropout {args.p}, "
        f"|θ| = {n_params} ({theta_mib:.2f} MiB in float32); batch {args.batch}x{args.seq}; "
        f"K = {args.k}; vmap chunk {args.chunk_size}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"time: {args.rounds} interleaved rounds, median per arm")
    header = f"{'arm':<6} {'median s':>9} {'/ floor':>8} {'peak MiB K=' + str(small_k):>16} "
    header += f"{'peak MiB K=' + str(args.k):>16} {'above floor, in |θ|':>20}"
    print(header)
    floor_peak = memory[("floor", args.k)]
    for arm in ARMS:
        timed = arm in median
        seconds = f"{median[arm]:9.3f}" if timed else f"{'-':>9}"
        ratio = f"{median[arm] / median['floor']:8.3f}" if timed else f"{'-':>8}"
        small, large = memory[(arm, small_k)], memory[(arm, args.k)]
        cells = [f"{m:16.1f}" if m is not None else f"{'n/a':>16}" for m in (small, large)]
        measured = large is not None and floor_peak is not None
        extra = f"{(large - floor_peak) / theta_mib:20.1f}" if measured else f"{'n/a':>20}"
        print(f"{arm:<6} {seconds} {ratio} {cells[0]} {cells[1]} {extra}")
    print("target: loop and vmap <= 1.15 x floor; peak memory flat in K (O(|θ|))")


if __name__ == "__main__":
    main()
