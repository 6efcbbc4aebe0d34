"""Two processes, gloo, CPU: DDP training with a DropoutScheduler and R-Drop.

Each rank writes what it saw to a file; the assertions run here, in the pytest process.
"""

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import dropkit
from dropkit import DropoutScheduler, schedules

WORLD, STEPS, BATCH = 2, 8, 4
DROPOUT = schedules.early(0.4, cutoff=6, shape="linear")
# the deepest block's branch is dropped for every sample in the second half (rate 1 x depth 1)
DROP_PATH = schedules.late(1.0, cutoff=0.5)


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc, self.drop_path = nn.Linear(dim, dim), dropkit.DropPath(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(torch.relu(self.fc(x)))


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Linear(6, 16), nn.Dropout(0.0), Block(16), Block(16), nn.Dropout(0.0), nn.Linear(16, 3)
    )


def _rates(model: nn.Module) -> list[float]:
    return [site.p for site in dropkit.find_sites(model) if site.controllable]


def _train(rank: int, rendezvous: str, out_dir: str) -> None:
    # loopback, so gloo connects even where the hostname does not resolve
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)  # two processes on a small shared CPU
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)
        model = _model()
        ddp = DistributedDataParallel(model)  # find_unused_parameters not needed: see README
        torch.manual_seed(1000 + rank)  # each rank draws its own data and dropout masks
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        sched = DropoutScheduler(ddp, STEPS, dropout=DROPOUT, drop_path=DROP_PATH)
        seen_inputs: list[torch.Tensor] = []
        model.register_forward_pre_hook(lambda module, args: seen_inputs.append(args[0].clone()))
        record = {"rates": [], "batches": [], "inputs": [], "kl": []}
        for _ in range(STEPS):
            x, y = torch.randn(BATCH, 6), torch.randint(0, 3, (BATCH,))
            record["rates"].append(_rates(model))
            logits1, logits2 = dropkit.rdrop_forward(ddp, x)
            loss = dropkit.rdrop_loss(logits1, logits2, y, alpha=1.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            record["batches"].append(x)
            record["inputs"].append(seen_inputs.pop())
            record["kl"].append(dropkit.symmetric_kl(logits1, logits2).item())
        record["params"] = {name: p.detach().clone() for name, p in model.named_parameters()}
        torch.save(record, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()  # both ranks done before gloo is torn down
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_share_rates_keep_pairs_local_and_end_identical(tmp_path: Path) -> None:
    rendezvous = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_train, args=(rendezvous, str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]

    # every rank applied the same rates at every step, and they are the schedule's
    reference = _model()
    expected_sched = DropoutScheduler(reference, STEPS, dropout=DROPOUT, drop_path=DROP_PATH)
    expected = []
    for _ in range(STEPS):
        expected.append(_rates(reference))
        expected_sched.step()
    assert ranks[0]["rates"] == ranks[1]["rates"] == expected
    assert expected[0] != expected[-1] and 1.0 in expected[-1]  # the schedule moved, to rate 1

    for rank in ranks:  # R-Drop pairs: each rank's forward saw its own batch twice, [x; x]
        for x, seen in zip(rank["batches"], rank["inputs"]):
            assert seen.shape[0] == 2 * BATCH
            assert torch.equal(seen[:BATCH], x) and torch.equal(seen[BATCH:], x)
    assert not torch.equal(ranks[0]["batches"][0], ranks[1]["batches"][0])  # data is per rank
    for rank in ranks:  # the passes differ exactly when some rate is strictly between 0 and 1
        for rates, kl in zip(expected, rank["kl"]):
            random = any(0.0 < rate < 1.0 for rate in rates)
            assert kl > 0 if random else kl == 0.0

    torch.manual_seed(0)
    initial = dict(_model().named_parameters())
    for name, value in ranks[0]["params"].items():
        assert torch.equal(value, ranks[1]["params"][name]), name
        assert not torch.equal(value, initial[name]), name  # it trained
