"""Memory and time of R-Drop's loss on a large vocabulary: full logits vs the chunked linear loss.

For tokens per pass N, hidden size H and vocabulary V (float32 unless --dtype), each case runs the
loss forward + backward (gradients for both hidden states and the projection) as
  (a) naive: ``logits_i = hidden_i @ W.T`` for both passes, then ``dropkit.rdrop_loss``;
  (b) chunked: ``dropkit.rdrop_linear_loss`` (gradients formed in the forward, chunk by chunk);
and reports, for (b), what recomputing the chunk logits in the backward would cost instead:
(b) plus a loss-only forward, which is the extra work that strategy does.
Each (case, arm) runs in a fresh process; its memory is the peak it adds beyond its inputs
(CPU: the rise of the peak resident set, CUDA: of ``max_memory_allocated``). Targets at
V = 128 000: memory of (b) <= 1/8 of (a), time of (b) <= 1.2 x (a).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

import dropkit

# the naive arm holds about this many logits-sized (N x V) float32 buffers at its peak (measured
# here: 5649 MiB at N = 1024, V = 128 000); a case that would not fit is skipped, not swapped
NAIVE_BUFFERS = 12


def _inputs(n: int, h: int, v: int, dtype: torch.dtype, device: str) -> tuple:
    gen = torch.Generator().manual_seed(0)
    hidden1 = torch.randn(n, h, generator=gen).to(device, dtype).requires_grad_()
    hidden2 = hidden1.detach() + 0.1 * torch.randn(n, h, generator=gen).to(device, dtype)
    weight = (torch.randn(v, h, generator=gen) / h**0.5).to(device, dtype).requires_grad_()
    target = torch.randint(0, v, (n,), generator=gen).to(device)
    return hidden1, hidden2.requires_grad_(), weight, target


def _run(arm: str, hidden1, hidden2, weight, target) -> None:
    if arm == "naive":
        loss = dropkit.rdrop_loss(hidden1 @ weight.T, hidden2 @ weight.T, target, alpha=1.0)
        torch.autograd.grad(loss, (hidden1, hidden2, weight))
    elif arm == "chunked":
        loss = dropkit.rdrop_linear_loss(hidden1, hidden2, weight, target, alpha=1.0)
        torch.autograd.grad(loss, (hidden1, hidden2, weight))
    else:  # the forward a recompute-in-backward strategy adds
        with torch.no_grad():
            dropkit.rdrop_linear_loss(hidden1, hidden2, weight, target, alpha=1.0)


def _peak_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def child(arm: str, n: int, h: int, v: int, dtype: str, device: str, repeats: int) -> None:
    inputs = _inputs(n, h, v, getattr(torch, dtype), device)
    _run(arm, *_inputs(8, h, 64, getattr(torch, dtype), device))  # warm-up, off the record
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    before = _peak_bytes(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _run(arm, *inputs)
        sync()
        times.append(time.perf_counter() - start)
    print(json.dumps({"added_bytes": _peak_bytes(device) - before, "seconds": min(times)}))


def _available_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    with open("/proc/meminfo") as meminfo:
        fields = dict(line.split(":", 1) for line in meminfo)
    return int(fields["MemAvailable"].split()[0]) * 1024


def measure(arm: str, n: int, h: int, v: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", arm, str(n), str(h), str(v)]
    cmd += ["--dtype", args.dtype, "--device", args.device, "--repeats", str(args.repeats)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--vocab", type=int, nargs="+", default=[32_000, 128_000])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per case (min kept)")
    parser.add_argument("--child", nargs=4, metavar=("ARM", "N", "H", "V"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        arm, n, h, v = args.child
        child(arm, int(n), int(h), int(v), args.dtype, args.device, args.repeats)
        return

    print(f"R-Drop loss forward + backward, H={args.hidden}, {args.dtype}, {args.device}")
    print(
        f"{'N':>6} {'V':>8} {'chunk':>6} | {'naive MiB':>10} {'chunked MiB':>12} {'mem ratio':>9}"
        f" | {'naive s':>8} {'chunked s':>9} {'time ratio':>10} | {'recompute s':>11}"
    )
    for v in args.vocab:
        for n in args.tokens:
            chunk = dropkit.rdrop_linear.default_chunk_size(n, v, args.hidden)
            mib = 2**20
            naive_needs = NAIVE_BUFFERS * n * v * 4
            res = {arm: measure(arm, n, args.hidden, v, args) for arm in ("chunked", "loss_only")}
            chunked, recompute = res["chunked"], res["chunked"]["seconds"]
            recompute += res["loss_only"]["seconds"]
            if naive_needs > 0.8 * _available_bytes(args.device):
                print(
                    f"{n:>6} {v:>8} {chunk:>6} | {'skipped':>10} "
                    f"{chunked['added_bytes'] / mib:>12.0f} {'':>9} | {'':>8} "
                    f"{chunked['seconds']:>9.2f} {'':>10} | {recompute:>11.2f}   naive would "
                    f"need ~{naive_needs / 2**30:.0f} GiB, "
                    f"{_available_bytes(args.device) / 2**30:.0f} GiB available",
                    flush=True,
                )
                continue
            naive = measure("naive", n, args.hidden, v, args)
            print(
                f"{n:>6} {v:>8} {chunk:>6} | {naive['added_bytes'] / mib:>10.0f} "
                f"{chunked['added_bytes'] / mib:>12.0f} "
                f"{chunked['added_bytes'] / naive['added_bytes']:>9.3f} | "
                f"{naive['seconds']:>8.2f} {chunked['seconds']:>9.2f} "
                f"{chunked['seconds'] / naive['seconds']:>10.2f} | {recompute:>11.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
