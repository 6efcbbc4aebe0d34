"""The own-model guide's data-parallel training function (docs/guides/own-model.md, section 5):
mytrain.py's model and data, one trial trained by ``trial.world_size`` ranks with
DistributedDataParallel, each rank on its share of every global batch of 64. dropkit has set up
the process group before the call; with one rank this is plain training."""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import dropkit


def train(trial):
    steps = trial.params.get("steps", 200)
    g = torch.Generator().manual_seed(0)  # the data: the same for every trial and rank
    x = torch.randn(512, 16, generator=g).to(trial.device)
    y = (x[:, :4].sum(1) > 0).long()
    share = 64 // trial.world_size  # this rank's share of each global batch

    def held_out(model, start, stop):  # loss on x[start:stop], dropout off
        model.eval()
        with torch.no_grad():
            loss = F.cross_entropy(model(x[start:stop]), y[start:stop]).item()
        model.train()
        return loss

    torch.manual_seed(trial.seed)  # the same seed on every rank: the same initial model
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Dropout(0.0), nn.Linear(64, 2))
    model = model.to(trial.device)
    sched = dropkit.DropoutScheduler(model, steps, dropout=trial.dropout, drop_path=trial.drop_path)
    # then a stream of its own per rank, so the ranks draw different dropout masks
    torch.manual_seed(trial.seed + 7919 * trial.rank)
    ddp = DistributedDataParallel(model) if trial.world_size > 1 else model
    opt = torch.optim.AdamW(ddp.parameters(), lr=3e-3)
    start, state = 0, trial.restore()  # every rank restores what rank 0 saved
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        torch.set_rng_state(state["rng"][trial.rank])  # each rank's own stream
        start = state["step"]
    for step in range(start, trial.budget_steps(steps)):
        batch = torch.arange(step * 64, (step + 1) * 64) % 320  # train on the first 320
        mine = batch[trial.rank * share : (trial.rank + 1) * share]
        loss = F.cross_entropy(ddp(x[mine]), y[mine])
        opt.zero_grad()
        loss.backward()  # DDP averages the gradients over the ranks
        opt.step()
        sched.step()
        if (step + 1) % 5 == 0:
            rngs = [torch.get_rng_state()]
            if trial.world_size > 1:  # every rank's stream, for an exact resume
                rngs = [None] * trial.world_size
                dist.all_gather_object(rngs, torch.get_rng_state())
            # rank 0's log and checkpoint are the trial's (the other ranks' do nothing)
            trial.log(step + 1, train_loss=loss.item(), val_loss=held_out(model, 320, 384))
            trial.checkpoint(
                {
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "sched": sched.state_dict(),
                    "rng": rngs,
                    "step": step + 1,
                }
            )
    model.eval()
    with torch.no_grad():
        test_logits = model(x[384:])  # the test split: claims only
    return {  # every rank computes them; rank 0's are the trial's
        "train_loss": held_out(model, 0, 320),
        "val_loss": held_out(model, 320, 384),
        "test_loss": F.cross_entropy(test_logits, y[384:]).item(),
        "test_acc": (test_logits.argmax(1) == y[384:]).float().mean().item(),
    }
