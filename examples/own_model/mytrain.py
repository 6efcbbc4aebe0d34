"""The own-model guide's training function (docs/guides/own-model.md): a small MLP on a
synthetic task, in a hand-written loop that honours the whole Trial contract: the variant's
schedules, its seed, ``trial.budget`` for advise probes, curves in ``trial.log``, a checkpoint
with the RNG state, and a validation split for advise apart from the test split."""

import torch
import torch.nn.functional as F
from torch import nn

import dropkit


def train(trial):
    steps = trial.params.get("steps", 200)
    g = torch.Generator().manual_seed(0)  # the data: the same for every trial
    x = torch.randn(512, 16, generator=g)
    y = (x[:, :4].sum(1) > 0).long()

    def held_out(model, start, stop):  # loss on x[start:stop], dropout off
        model.eval()
        with torch.no_grad():
            loss = F.cross_entropy(model(x[start:stop]), y[start:stop]).item()
        model.train()
        return loss

    torch.manual_seed(trial.seed)  # the model and its dropout masks
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Dropout(0.0), nn.Linear(64, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = dropkit.DropoutScheduler(model, steps, dropout=trial.dropout, drop_path=trial.drop_path)
    start, state = 0, trial.restore()
    if state is not None:  # requeued or resumed: go on from there
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        torch.set_rng_state(state["rng"])
        start = state["step"]
    for step in range(start, trial.budget_steps(steps)):
        batch = torch.arange(step * 64, (step + 1) * 64) % 320  # train on the first 320
        loss = F.cross_entropy(model(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 5 == 0:
            trial.log(step + 1, train_loss=loss.item(), val_loss=held_out(model, 320, 384))
            trial.checkpoint(
                {
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "sched": sched.state_dict(),
                    "rng": torch.get_rng_state(),
                    "step": step + 1,
                }
            )
    model.eval()
    with torch.no_grad():
        test_logits = model(x[384:])  # the test split: claims only
    return {
        "train_loss": held_out(model, 0, 320),
        "val_loss": held_out(model, 320, 384),
        "test_loss": F.cross_entropy(test_logits, y[384:]).item(),
        "test_acc": (test_logits.argmax(1) == y[384:]).float().mean().item(),
    }
