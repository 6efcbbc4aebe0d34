"""What a per-seed mask stream costs: one population training step with keyed masks against the
same step drawing from one shared generator, side by side in one run.

The keyed sites (``dropkit.experiments.builtin.streams``) hash (seed, site, step, element) into
each mask so that a seed's masks do not depend on the seeds beside it; the shared path is the one
they replaced (``vmap(..., randomness="different")`` over the global generator). The model is the
demo's underfitting ResMLP (width 32, depth 4), 8 members, batch 128, one thread; dropout 0.1 on
every site, or drop path 0.5, or neither. Prints ms per step and the ratio.
"""

from __future__ import annotations

import statistics

import torch
from torch.func import functional_call, stack_module_state, vmap

from common import time_calls
from dropkit import DropoutScheduler
from dropkit.experiments.builtin.models import build_model
from dropkit.experiments.builtin.streams import keyed_sites, set_keyed, step_keys
from dropkit.experiments.builtin.train import objective

MEMBERS, BATCH, FEATURES = 8, 128, 40


def _step(keyed: bool, dropout: float, drop_path: float):
    torch.manual_seed(0)
    members = [build_model("resmlp", in_features=FEATURES, n_classes=10, width=32, depth=4)
               for _ in range(MEMBERS)]  # fmt: skip
    params, buffers = stack_module_state(members)
    base = members[0].train()
    sites = keyed_sites(base) if keyed else []
    DropoutScheduler(base, 10, dropout=dropout, drop_path=drop_path)
    optimizer = torch.optim.AdamW(params.values(), lr=1e-3)
    x, y = torch.randn(BATCH, FEATURES), torch.randint(0, 10, (BATCH,))
    seeds, step = list(range(MEMBERS)), [0]

    def member(p, b, inputs, target):
        return objective(functional_call(base, (p, b), (inputs,)), target, 0.0)

    batched = vmap(member, in_dims=(0, 0, None, None), randomness="different")

    def run() -> None:
        inputs = dict(buffers)
        if keyed:
            keys = step_keys(seeds, len(sites), step[0])
            inputs.update({f"{n}.key": keys[:, j] for j, n in enumerate(sites)})
            set_keyed(base, True)
        losses, _ = batched(params, inputs, x, y)
        set_keyed(base, False)
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        optimizer.step()
        step[0] += 1

    return run


def main() -> None:
    torch.set_num_threads(1)
    print("| sites | shared generator ms/step | keyed ms/step | keyed / shared |")
    print("|---|---:|---:|---:|")
    for label, dropout, drop_path in (("dropout 0.1", 0.1, 0.0), ("drop path 0.5", 0.0, 0.5),
                                      ("rate 0", 0.0, 0.0)):  # fmt: skip
        times = {}
        for _ in range(3):  # alternate the arms, so drift hits both alike
            for keyed in (False, True):
                run = _step(keyed, dropout, drop_path)
                times.setdefault(keyed, []).extend(time_calls(run, 60)[10:])
        shared, keyed = (statistics.median(times[k]) * 1e3 for k in (False, True))
        print(f"| {label} | {shared:.2f} | {keyed:.2f} | {keyed / shared:.2f} |")


if __name__ == "__main__":
    main()
