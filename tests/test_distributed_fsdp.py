"""Two processes, gloo, CPU: FSDP2 (``fully_shard``) training of a tiny Llama with R-Drop's
chunked linear loss and a stepping DropoutScheduler (its attention dropout), against a
single-process run: with the output layer in the root's group, and sharded on its own inside a
module that computes the loss in its forward (the wrapping the R-Drop guide documents).

Every rank seeds its dropout masks per (step, rank); the single-process reference replays each
rank's micro-batch with the same seed and averages the two losses, which is the loss of the
concatenated batch (both ranks score the same number of tokens). Each rank writes what it saw to
a file; the assertions run here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import dropkit
from dropkit import DropoutScheduler, schedules

transformers = pytest.importorskip("transformers")
fsdp = pytest.importorskip("torch.distributed.fsdp")
if not hasattr(fsdp, "fully_shard"):  # FSDP2 is public from torch 2.6
    pytest.skip("this torch has no torch.distributed.fsdp.fully_shard", allow_module_level=True)

WORLD, STEPS, BATCH, SEQ, VOCAB, DIM = 2, 4, 2, 6, 50, 16
DROPOUT = schedules.early(0.3, cutoff=3, shape="linear")  # 0.3, 0.15, 0, 0


class RDropHead(nn.Module):
    """The output layer with R-Drop's chunked loss in its forward, so that ``fully_shard`` may
    shard it on its own: FSDP2 gathers the weight for this forward."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, hidden1: torch.Tensor, hidden2: torch.Tensor, target: torch.Tensor):
        return dropkit.rdrop_linear_loss(
            hidden1, hidden2, self.linear.weight, target, alpha=1.0, chunk_size=3
        )


class CausalLMWithRDrop(nn.Module):
    """The README's pattern: R-Drop's chunked loss inside a sharded module's forward."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.decoder = lm.model
        self.head = RDropHead(lm.lm_head)  # the output layer's only place in the module tree

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # both passes in one forward, so pairs stay local; position t predicts token t + 1
        hidden = self.decoder(input_ids=torch.cat((ids, ids))).last_hidden_state[:, :-1]
        hidden1, hidden2 = hidden.chunk(2)
        return self.head(hidden1, hidden2, ids[:, 1:])


def _model() -> CausalLMWithRDrop:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=DIM,
        intermediate_size=2 * DIM,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=SEQ,
        attn_implementation="eager",
    )
    return CausalLMWithRDrop(transformers.LlamaForCausalLM(config).train())


def _data(rank: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(rank)
    return [torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen) for _ in range(STEPS)]


def _rates(model: nn.Module) -> list[float]:
    return [site.p for site in dropkit.find_sites(model) if site.controllable]


def _train(rank: int, rendezvous: str, out_dir: str, head: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback: no hostname resolution
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=WORLD)
    try:
        model = _model()
        for layer in model.decoder.layers:
            fsdp.fully_shard(layer)
        if head == "own":
            fsdp.fully_shard(model.head)
        fsdp.fully_shard(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        sched = DropoutScheduler(model, STEPS, dropout=DROPOUT)
        record = {"rates": [], "losses": [], "refused": ""}
        if head == "own":  # outside the head's forward its weight is a shard: refused, not wrong
            hidden = torch.zeros(1, DIM)
            try:
                dropkit.rdrop_linear_loss(
                    hidden, hidden, model.head.linear.weight, _data(0)[0][0, :1]
                )
            except TypeError as err:
                record["refused"] = str(err)
        for step, ids in enumerate(_data(rank)):
            record["rates"].append(_rates(model))
            torch.manual_seed(100 * step + rank)
            loss = model(ids)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            record["losses"].append(loss.item())
        record["params"] = {
            name: p.full_tensor().detach().clone() for name, p in model.named_parameters()
        }
        torch.save(record, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _single_process() -> dict[str, object]:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = DropoutScheduler(model, STEPS, dropout=DROPOUT)
    shards = [_data(rank) for rank in range(WORLD)]
    record = {"rates": [], "losses": []}
    for step in range(STEPS):
        record["rates"].append(_rates(model))
        losses = []
        for rank in range(WORLD):
            torch.manual_seed(100 * step + rank)
            losses.append(model(shards[rank][step]))
        opt.zero_grad()
        torch.stack(losses).mean().backward()  # equal token counts: the concatenated batch's
        opt.step()
        sched.step()
        record["losses"].append([loss.item() for loss in losses])
    record["params"] = {name: p.detach().clone() for name, p in model.named_parameters()}
    return record


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:FSDP2-wrapped module")
@pytest.mark.parametrize("head", ["root", "own"])
def test_fsdp2_matches_a_single_process_run(tmp_path: Path, head: str) -> None:
    rendezvous = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_train, args=(rendezvous, str(tmp_path), head), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    reference = _single_process()
    for record in ranks:
        if head == "own":
            assert "weight is a DTensor" in record["refused"], record["refused"]
            assert "forward" in record["refused"]
        else:
            assert record["refused"] == ""

    expected_rates = [[DROPOUT(step, STEPS)] * 2 for step in range(STEPS)]  # two layers
    assert ranks[0]["rates"] == ranks[1]["rates"] == reference["rates"] == expected_rates
    for rank, record in enumerate(ranks):
        expected = [losses[rank] for losses in reference["losses"]]
        assert record["losses"] == pytest.approx(expected, rel=1e-5)
    initial = dict(_model().named_parameters())
    for name, value in reference["params"].items():
        assert not torch.equal(value, initial[name]), name  # it trained
        for record in ranks:
            torch.testing.assert_close(record["params"][name], value, rtol=1e-5, atol=1e-6)
