"""Compiled models pay nothing for dropout once a schedule has turned it off: side by side.

Two models, compiled with inductor: a 4-block MLP (256 wide, batch 512) and the small transformer
classifier of ``common.py``. Arms, forward + backward + AdamW step:

- (a) no dropout sites at all;
- (b) dropkit ``Dropout`` / ``DropPath`` sites driven by an early-linear schedule, timed after
  its cutoff (rate 0); the number of Dynamo compilations over the whole schedule is printed;
- (c) plain ``nn.Dropout`` sites (and the transformer's attention-dropout float) scheduled with
  ``compile_levels=4``, timed at level 0 after the cutoff.

Rounds alternate between the arms so drift in machine speed hits them alike; the medians and the
ratios b/a and c/a are printed (targets <= 1.03), then eager dropkit ``Dropout`` vs
``nn.Dropout`` at p = 0.1 (target <= 1.0).

    python benchmarks/compile_zero_rate.py [--rounds 7] [--steps 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch._dynamo
from torch import nn
from torch._dynamo.utils import counters

import dropkit
from common import TinyTransformerClassifier, time_calls

SCHEDULE_STEPS, CUTOFF = 40, 20  # early-linear: rates > 0 for 19 steps, 0 from step 19 on


def mlp(site: type[nn.Module] | None, p: float = 0.0, width: int = 256) -> nn.Module:
    layers: list[nn.Module] = [nn.Linear(64, width)]
    for _ in range(4):
        layers += [nn.Linear(width, width), nn.GELU()]
        if site is not None:
            layers.append(site(p))
    return nn.Sequential(*layers, nn.Linear(width, 10))


def transformer(site: str) -> nn.Module:
    """``none``: no sites; ``dropkit``: its nn.Dropout modules become dropkit.Dropout and the
    attention-dropout float is 0; ``torch``: as built (nn.Dropout plus the attention float)."""
    model = TinyTransformerClassifier(p=0.0)
    if site == "torch":
        return model
    for layer in model.encoder.layers:
        for name in ("dropout", "dropout1", "dropout2"):
            setattr(layer, name, dropkit.Dropout(0.0) if site == "dropkit" else nn.Identity())
    return model


def inputs(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    if kind == "mlp":
        return torch.randn(512, 64), torch.randint(0, 10, (512,))
    return torch.randn(128, 16, 64), torch.randint(0, 10, (128,))


def _schedulable(model: nn.Module, levels: int | None) -> nn.Module:
    """What the scheduler drives: every site with ``compile_levels``; else only the dropkit
    modules (arm b's transformer keeps an attention-dropout float at 0, which a per-step float
    schedule would recompile at every rate: that is arm c's case, not b's)."""
    if levels is not None:
        return model
    return nn.ModuleList(m for m in model.modules() if isinstance(m, dropkit.Dropout))


class Arm:
    """A compiled model, its optimizer and (optionally) a scheduler, stepped like training."""

    def __init__(self, model: nn.Module, kind: str, levels: int | None, scheduled: bool) -> None:
        torch.manual_seed(0)
        self.model = model.train()
        self.compiled = torch.compile(self.model)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.x, self.y = inputs(kind)
        self.sched = None
        if scheduled:
            early = dropkit.schedules.early(0.1, cutoff=CUTOFF, shape="linear")
            self.sched = dropkit.DropoutScheduler(
                _schedulable(self.model, levels), SCHEDULE_STEPS, dropout=early,
                compile_levels=levels,
            )  # fmt: skip

    def step(self) -> None:
        loss = nn.functional.cross_entropy(self.compiled(self.x), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def run_schedule(self) -> int:
        """Train through the whole schedule; the graphs Dynamo compiled on the way."""
        before = counters["stats"]["unique_graphs"]
        for _ in range(SCHEDULE_STEPS):
            self.step()
            if self.sched is not None:
                self.sched.step()
        return counters["stats"]["unique_graphs"] - before


def compare(kind: str, rounds: int, steps: int) -> None:
    build = {
        "a": (lambda: mlp(None)) if kind == "mlp" else (lambda: transformer("none")),
        "b": (lambda: mlp(dropkit.Dropout)) if kind == "mlp" else (lambda: transformer("dropkit")),
        "c": (lambda: mlp(nn.Dropout)) if kind == "mlp" else (lambda: transformer("torch")),
    }
    arms = {
        "a": Arm(build["a"](), kind, None, scheduled=False),
        "b": Arm(build["b"](), kind, None, scheduled=True),
        "c": Arm(build["c"](), kind, 4, scheduled=True),
    }
    graphs = {name: arm.run_schedule() for name, arm in arms.items()}  # compiles, then rate 0
    rates = {name: arm.sched.get_last_p() if arm.sched else {} for name, arm in arms.items()}
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(rounds):
        for name, arm in arms.items():
            times[name] += time_calls(arm.step, steps)
    ms = {name: 1000 * statistics.median(values) for name, values in times.items()}
    print(f"{kind}: ms/step (median)  a no sites {ms['a']:.2f} | b dropkit at 0 {ms['b']:.2f} | "
          f"c nn.Dropout level 0 {ms['c']:.2f}")  # fmt: skip
    ratios = f"b/a = {ms['b'] / ms['a']:.3f}  c/a = {ms['c'] / ms['a']:.3f}"
    print(f"{kind}: {ratios}  (targets <= 1.03)")
    print(f"{kind}: graphs compiled over the whole {SCHEDULE_STEPS}-step schedule: "
          f"a {graphs['a']}, b {graphs['b']} (target <= 2), c {graphs['c']}; final rates "
          f"b {rates['b']} c {rates['c']}")  # fmt: skip


def eager(rounds: int, steps: int) -> None:
    models = {"dropkit": mlp(dropkit.Dropout, 0.1), "nn": mlp(nn.Dropout, 0.1)}
    models["nn"].load_state_dict(models["dropkit"].state_dict())
    x, y = inputs("mlp")

    def stepper(model: nn.Module):
        def step() -> None:
            model.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()

        return step

    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            times[name] += time_calls(stepper(model.train()), steps)
    ms = {name: 1000 * statistics.median(values) for name, values in times.items()}
    print(f"eager mlp, p = 0.1, forward + backward: dropkit {ms['dropkit']:.2f} ms, nn.Dropout "
          f"{ms['nn']:.2f} ms, ratio {ms['dropkit'] / ms['nn']:.3f} (target <= 1.0)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, inductor")
    for kind in ("mlp", "transformer"):
        torch._dynamo.reset()
        compare(kind, args.rounds, args.steps)
    eager(args.rounds, args.steps)


if __name__ == "__main__":
    main()
