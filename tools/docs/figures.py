"""Draw the documentation's figures (``make figures``): never hand-edited images.

``schedules``: the four schedules of ``dropkit.schedules`` over one run, and the per-block rate
profile stochastic depth gets, drawn from the library itself. ``demo RUN_DIR``: copies the
figures of a finished ``dropkit demo`` run folder that the demo guide embeds; ``demo-full
RUN_DIR`` those of a ``dropkit demo --full`` run folder.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from dropkit import schedules

FIGURES = Path(__file__).resolve().parents[2] / "docs" / "figures"
EMBEDDED = {
    "demo": (
        "underfit_train_loss.png",
        "underfit_test_acc.png",
        "underfit_dynamics.png",
        "underfit_dynamics_difference.png",
        "overfit_test_acc.png",
    ),
    "demo-full": ("underfit_vit_sweep.png",),
}
"""Per built-in demo config, the figures of its run that the demo guide embeds (a setting's
name, then the figure's), copied into ``docs/figures/<config>``."""
COMMANDS = {"demo": "dropkit demo", "demo-full": "dropkit demo --full"}


def draw_schedules(path: Path, total_steps: int = 600) -> Path:
    """Rate against step for standard, early (linear and constant) and late schedules at
    p = 0.1, cutoff 1/6 (the paper's 50 of 300 epochs; dotted), and the linear depth profile."""
    steps = range(total_steps)
    shown = {
        "standard(0.1)": schedules.standard(0.1),
        'early(0.1, 1/6, "linear")': schedules.early(0.1, 1 / 6, shape="linear"),
        'early(0.1, 1/6, "constant")': schedules.early(0.1, 1 / 6, shape="constant"),
        "late(0.1, 1/6)": schedules.late(0.1, 1 / 6),
    }
    # two rows at the column's width, so the labels stay legible where the guide shows it
    fig, grid = plt.subplots(2, 3, figsize=(9, 5.4))
    axes = grid.ravel()
    for ax, (name, schedule) in zip(axes, shown.items()):
        ax.plot(list(steps), [schedule(step, total_steps) for step in steps], linewidth=2)
        ax.axvline(total_steps / 6, color="grey", linestyle=":", linewidth=1)
        ax.set(title=name, xlabel="optimizer step", ylabel="rate", ylim=(-0.005, 0.11))
    blocks = 12
    profile = schedules.depth_profile(blocks, "linear")
    axes[4].bar(range(blocks), [0.1 * r for r in profile], color="tab:purple")
    axes[4].set(title="depth_profile(12), rate 0.1", xlabel="block", ylabel="rate",
                xticks=range(0, blocks, 2))  # fmt: skip
    axes[5].axis("off")
    for ax in axes[:5]:
        ax.title.set_fontsize(11)
        ax.tick_params(labelsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def copy_demo(config: str, run_dir: Path) -> list[Path]:
    """Copy the embedded figures of a finished run folder of the demo ``config`` (a key of
    ``EMBEDDED``) into ``docs/figures/<config>``."""
    out = FIGURES / config
    out.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in EMBEDDED[config]:
        source = run_dir / "figures" / name
        if not source.is_file():
            raise SystemExit(f"{source} is missing: run `{COMMANDS[config]} --out {run_dir}` first")
        copied.append(Path(shutil.copyfile(source, out / name)))
    return copied


if __name__ == "__main__":
    what = sys.argv[1:] or ["schedules"]
    if what[0] == "schedules":
        print(draw_schedules(FIGURES / "schedules.png"))
    elif what[0] in EMBEDDED and len(what) == 2:
        print(*copy_demo(what[0], Path(what[1])), sep="\n")
    else:
        raise SystemExit(
            "usage: figures.py schedules | figures.py demo RUN_DIR | figures.py demo-full RUN_DIR"
        )
