"""What only a GPU can show, in a few minutes: run it on a machine with one (or two) CUDA GPUs.

Checks, each printed as a row with what it measured:

- ``schedule_bf16``: a `DropoutScheduler` on a CUDA model under bf16 autocast: the share of
  zeros at an early schedule's start is its rate, survivors are scaled by 1/(1-p), the output
  stays bf16, and after the cutoff the site passes its input through unchanged.
- ``rdrop_bf16``: ``rdrop_loss`` on logits made under bf16 autocast against the same loss on
  float32 logits (relative difference), and its backward.
- ``rdrop_linear``: the chunked ``rdrop_linear_loss`` against the naive full-logits loss at a
  large vocabulary: the loss and gradients agree, with peak memory and time of each.
- ``restore``: a checkpoint saved from the GPU comes back on a CPU trial's device and on a GPU
  trial's, the RNG state staying on the CPU.
- ``trial_on_gpu``: a training-function trial run by ``run_experiment`` trains on ``cuda:0``.
- ``workers_one_gpu_each`` (two GPUs): ``--workers 2`` gives each worker a GPU of its own.
- ``data_parallel_2gpu`` (two GPUs): a trial of two ranks (NCCL) ends with the loss of the
  one-process trial on the same global batch.

Without CUDA it prints why it skips and exits 0; a failed check exits 1.

    python benchmarks/gpu_check.py [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import dropkit
from dropkit import schedules

# a training function: a small MLP trained on its share of each global batch (DDP when the
# trial has several ranks); it reports where it ran
TRIAL_MODULE = """
import os

import torch
import torch.nn.functional as F
from torch import nn

import dropkit


def train(trial):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 32, generator=g).to(trial.device)
    y = (x[:, :4].sum(1) > 0).long()
    torch.manual_seed(trial.seed)
    model = nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Dropout(0.0), nn.Linear(256, 2))
    model = model.to(trial.device)
    sched = dropkit.DropoutScheduler(model, 50, dropout=trial.dropout)
    if trial.world_size > 1:
        model = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    share = 256 // trial.world_size
    mine = slice(trial.rank * share, (trial.rank + 1) * share)
    for step in range(50):
        loss = F.cross_entropy(model(x[mine]), y[mine])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        full = F.cross_entropy(model(x), y).item()
    return {"train_loss": full, "on_gpu": float(trial.device.type == "cuda"),
            "gpu": float(os.environ.get("CUDA_VISIBLE_DEVICES", "-1").split(",")[0])}
"""

Check = Callable[[], tuple[bool, str]]


def schedule_bf16() -> tuple[bool, str]:
    model = nn.Sequential(nn.Identity(), nn.Dropout(0.0)).cuda()
    sched = dropkit.DropoutScheduler(model, 100, dropout=schedules.early(p=0.3, cutoff=0.5))
    x = torch.ones(1000, 1000, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x.to(torch.bfloat16))
    zeros = (out == 0).float().mean().item()
    kept = out[out != 0].float()
    scale_ok = torch.allclose(kept, torch.full_like(kept, 1 / 0.7), rtol=1e-2)
    for _ in range(60):
        sched.step()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        after = model(x.to(torch.bfloat16))
    ok = abs(zeros - 0.3) < 0.01 and scale_ok and out.dtype == torch.bfloat16
    ok = ok and bool(torch.equal(after, x.to(torch.bfloat16)))
    return ok, f"zeros {zeros:.4f} at p=0.3, survivors x{kept.mean().item():.4f}, {out.dtype}"


def rdrop_bf16() -> tuple[bool, str]:
    torch.manual_seed(0)
    head = nn.Linear(256, 1000).cuda()
    h1, h2 = torch.randn(2, 512, 256, device="cuda").unbind(0)
    target = torch.randint(0, 1000, (512,), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        l1, l2 = head(h1), head(h2)
        loss = dropkit.rdrop_loss(l1, l2, target, alpha=1.0)
    reference = dropkit.rdrop_loss(l1.float(), l2.float(), target, alpha=1.0)
    loss.backward()
    rel = abs(loss.item() - reference.item()) / abs(reference.item())
    ok = bool(torch.isfinite(loss)) and rel < 1e-2 and head.weight.grad is not None
    return (
        ok,
        f"logits {l1.dtype}, loss {loss.item():.5f} vs fp32 {reference.item():.5f} ({rel:.1e})",
    )


def _peak(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """fn()'s result, the peak memory it added (GiB) and its seconds."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, (torch.cuda.max_memory_allocated() - base) / 2**30, time.perf_counter() - start


def rdrop_linear() -> tuple[bool, str]:
    n, h, v = 4096, 1024, 128_000
    gen = torch.Generator(device="cuda").manual_seed(0)
    hidden1 = torch.randn(n, h, device="cuda", generator=gen).requires_grad_()
    hidden2 = hidden1.detach() + 0.1 * torch.randn(n, h, device="cuda", generator=gen)
    hidden2.requires_grad_()
    weight = (torch.randn(v, h, device="cuda", generator=gen) / h**0.5).requires_grad_()
    target = torch.randint(0, v, (n,), device="cuda", generator=gen)

    def run(chunked: bool) -> tuple[float, list[torch.Tensor]]:
        for t in (hidden1, hidden2, weight):
            t.grad = None
        if chunked:
            loss = dropkit.rdrop_linear_loss(hidden1, hidden2, weight, target, alpha=1.0)
        else:
            loss = dropkit.rdrop_loss(hidden1 @ weight.T, hidden2 @ weight.T, target, alpha=1.0)
        loss.backward()
        return loss.item(), [t.grad.clone() for t in (hidden1, hidden2, weight)]

    run(False), run(True)  # warm up the kernels
    (naive, naive_grads), naive_gib, naive_s = _peak(lambda: run(False))
    (chunked, chunked_grads), chunked_gib, chunked_s = _peak(lambda: run(True))
    grads_close = all(
        torch.allclose(a, b, rtol=1e-3, atol=1e-6) for a, b in zip(naive_grads, chunked_grads)
    )
    ok = abs(naive - chunked) / abs(naive) < 1e-5 and grads_close
    return ok, (
        f"N={n} H={h} V={v}: loss {chunked:.6f} vs {naive:.6f}; peak {chunked_gib:.2f} vs "
        f"{naive_gib:.2f} GiB ({chunked_gib / naive_gib:.2f}x), {chunked_s * 1e3:.0f} vs "
        f"{naive_s * 1e3:.0f} ms ({chunked_s / naive_s:.2f}x)"
    )


def restore() -> tuple[bool, str]:
    from dropkit.experiments import Trial

    with tempfile.TemporaryDirectory() as folder:
        fields = {"setting": "s", "variant": "v", "seed": 0, "dropout": schedules.standard(0.0),
                  "drop_path": None, "rdrop_alpha": 0.0, "double_batch": False, "params": {},
                  "budget": 1.0, "dir": Path(folder)}  # fmt: skip
        gpu = Trial(**fields, device=torch.device("cuda", 0))
        gpu.checkpoint({"w": torch.ones(3, device="cuda"), "rng": torch.get_rng_state()})
        on_cpu = Trial(**fields).restore()
        on_gpu = gpu.restore()
        torch.set_rng_state(on_gpu["rng"])
        ok = on_cpu["w"].device.type == "cpu" and on_gpu["w"].device.type == "cuda"
        ok = ok and on_gpu["rng"].device.type == "cpu"
        return ok, f"cpu trial: {on_cpu['w'].device}, gpu trial: {on_gpu['w'].device}, rng cpu"


def _run_trials(folder: Path, out: str, **how: Any) -> list[dict[str, Any]]:
    from dropkit.experiments.config.parse import parse_config
    from dropkit.experiments.runner import run_experiment

    raw = {"name": "gpu", "seeds": 2, "settings": {"mine": {
        "function": "gpu_trial:train", "variants": {"none": {}}}}}  # fmt: skip
    config = parse_config(raw, root=folder)
    run_experiment(config, folder / out, progress=False, **how)
    return [
        json.loads(p.read_text()) for p in sorted((folder / out).glob("runs/*/*/*/outcome.json"))
    ]


def trial_on_gpu(folder: Path) -> tuple[bool, str]:
    outcomes = _run_trials(folder, "one", workers=1)
    devices = {o["where"]["device"] for o in outcomes}
    ok = all(o["error"] is None and o["metrics"]["on_gpu"] == 1.0 for o in outcomes)
    return ok, f"devices {sorted(devices)}"


def workers_one_gpu_each(folder: Path) -> tuple[bool, str]:
    outcomes = _run_trials(folder, "workers", workers=2)
    gpus = sorted({o["metrics"]["gpu"] for o in outcomes if o["metrics"]})
    ok = all(o["error"] is None for o in outcomes) and len(gpus) == 2
    return ok, f"the two seeds' workers saw GPUs {gpus}"


def data_parallel_2gpu(folder: Path) -> tuple[bool, str]:
    one = _run_trials(folder, "ranks1", ranks=1)
    two = _run_trials(folder, "ranks2", ranks=2)
    diffs = [abs(a["metrics"]["train_loss"] - b["metrics"]["train_loss"]) for a, b in zip(one, two)]
    ok = len(diffs) == 2 and max(diffs) < 1e-5 and all(o["where"]["world_size"] == 2 for o in two)
    return ok, f"|2 ranks - 1 process| train loss {max(diffs):.1e} (NCCL)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: skipped: no CUDA device here (torch.cuda.is_available() is False)")
        return 0
    gpus = torch.cuda.device_count()
    print(f"{gpus} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "gpu_trial.py").write_text(TRIAL_MODULE)
        checks: dict[str, Callable[[], tuple[bool, str]]] = {
            "schedule_bf16": schedule_bf16,
            "rdrop_bf16": rdrop_bf16,
            "rdrop_linear": rdrop_linear,
            "restore": restore,
            "trial_on_gpu": lambda: trial_on_gpu(folder),
        }
        if gpus >= 2:
            checks["workers_one_gpu_each"] = lambda: workers_one_gpu_each(folder)
            checks["data_parallel_2gpu"] = lambda: data_parallel_2gpu(folder)
        else:
            print("workers_one_gpu_each, data_parallel_2gpu: skipped (one GPU visible)")
        print("| check | result | measured |\n|---|---|---|")
        for name, check in checks.items():
            try:
                ok, detail = check()
            except Exception as err:  # a check that crashes is a failed check, with why
                ok, detail = False, f"{type(err).__name__}: {err}"
            rows.append({"check": name, "ok": ok, "measured": detail})
            print(f"| {name} | {'pass' if ok else 'FAIL'} | {detail} |", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
