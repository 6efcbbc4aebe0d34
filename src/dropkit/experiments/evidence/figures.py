"""Figures in the papers' style: loss curves with the cutoff, dynamics panels and their paired
differences, accuracy bars.

matplotlib is imported inside each function with the non-interactive Agg backend, so importing
this module costs nothing and never opens a window.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dropkit._optional import import_optional

__all__ = [
    "accuracy_bars",
    "dynamics_panels",
    "loss_curves",
    "paired_difference_panels",
    "sweep_panels",
]


def _pyplot() -> Any:
    import_optional("matplotlib", "plot", "for figures").use("Agg")
    return import_optional("matplotlib.pyplot", "plot", "for figures")


def _band(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and a mean +- one standard error band over the seed axis (axis 0), over the finite
    values only: a diverged seed drops out, a point no seed has is left as a gap (NaN)."""
    values = np.where(np.isfinite(values), values, np.nan)
    count = np.sum(np.isfinite(values), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(values, axis=0) / np.where(count > 0, count, np.nan)
        if len(values) < 2:
            return mean, mean, mean
        centred = np.where(np.isfinite(values), values - mean, 0.0)
        sd = np.sqrt(np.sum(centred**2, axis=0) / np.where(count > 1, count - 1, np.nan))
        sem = np.where(count > 1, sd / np.sqrt(np.maximum(count, 1)), 0.0)
    return mean, mean - sem, mean + sem


def loss_curves(
    curves: Mapping[str, tuple[Sequence[int], np.ndarray]],
    path: Path,
    title: str,
    cutoff_step: int | None = None,
    ylabel: str = "training loss (mean ± s.e. over seeds)",
    xlabel: str = "optimizer step",
) -> Path:
    """A logged value per variant, training loss unless ``ylabel`` says otherwise:
    ``curves[variant] = (steps, values[seed, step])``; a log axis where every value drawn is
    positive (a loss), a linear one otherwise."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for variant, (steps, losses) in curves.items():
        mean, low, high = _band(np.asarray(losses, dtype=np.float64))
        (line,) = ax.plot(steps, mean, label=variant, linewidth=1.4)
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    if cutoff_step is not None:
        ax.axvline(cutoff_step, color="0.3", linestyle="--", linewidth=1)
        ax.annotate("cutoff", (cutoff_step, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(3, -12), textcoords="offset points", fontsize=8)  # fmt: skip
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    drawn = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for _, v in curves.values()])
    finite = drawn[np.isfinite(drawn)]
    if finite.size and np.all(finite > 0):  # a log axis needs positive values
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _panel_grid(names: Sequence[str]):
    plt = _pyplot()
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    return plt, fig, axes


def _finish(plt, fig, axes, path: Path, title: str) -> Path:
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def dynamics_panels(
    series: Mapping[str, Mapping[str, tuple[Sequence[int], np.ndarray]]],
    path: Path,
    title: str,
    window_end: float | None = None,
    titles: Mapping[str, str] | None = None,
) -> Path:
    """One panel per instrument: ``series[instrument][variant] = (steps, values[seed, step])``.

    Steps are on a linear axis, as the paper's curves; the claims' window (up to
    ``window_end``) is shaded.
    """
    names = list(series)
    plt, fig, axes = _panel_grid(names)
    for ax, name in zip(axes.flat, names):
        for variant, (steps, values) in series[name].items():
            mean, low, high = _band(np.asarray(values, dtype=np.float64))
            (line,) = ax.plot(steps, mean, label=variant, linewidth=1.4, marker=".")
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        if window_end is not None:
            ax.axvspan(0, window_end, color="0.9", zorder=0)
        ax.set_xlabel("optimizer step")
        ax.set_title((titles or {}).get(name, name), fontsize=10)
    return _finish(plt, fig, axes, path, title)


def paired_difference_panels(
    curves: Mapping[str, Mapping[str, Sequence[float] | int | str | None]],
    path: Path,
    title: str,
    window_end: float | None = None,
    titles: Mapping[str, str] | None = None,
) -> Path:
    """One panel per instrument: paired mean difference per checkpoint with its 95% interval.

    ``curves[instrument]`` holds ``steps``, ``mean``, ``ci_low``, ``ci_high`` and
    ``crossover_step`` (marked with a dotted line when the sign flips); zero is drawn solid.
    """
    names = list(curves)
    plt, fig, axes = _panel_grid(names)
    for ax, name in zip(axes.flat, names):
        curve = curves[name]
        steps = np.asarray(curve["steps"])
        ax.axhline(0.0, color="0.2", linewidth=0.8)
        (line,) = ax.plot(steps, curve["mean"], marker=".", linewidth=1.4, label="mean difference")
        ax.fill_between(steps, curve["ci_low"], curve["ci_high"], color=line.get_color(),
                        alpha=0.25, linewidth=0, label="95% CI")  # fmt: skip
        if window_end is not None:
            ax.axvspan(0, window_end, color="0.9", zorder=0)
        if curve["crossover_step"] is not None:
            ax.axvline(curve["crossover_step"], color="C3", linestyle=":", linewidth=1.2,
                       label=f"crossover ({curve['crossover_step']})")  # fmt: skip
            ax.legend(fontsize=7)
        ax.set_xlabel("optimizer step")
        ax.set_title((titles or {}).get(name, name), fontsize=10)
    return _finish(plt, fig, axes, path, title)


def accuracy_bars(accuracies: Mapping[str, Sequence[float]], path: Path, title: str) -> Path:
    """Test accuracy per variant: mean over seeds with a 95% t-interval and the seeds as dots."""
    from dropkit.experiments.base.stats import t_quantile

    plt = _pyplot()
    variants = list(accuracies)
    fig, ax = plt.subplots(figsize=(1.2 * len(variants) + 2, 3.6))
    for i, variant in enumerate(variants):
        values = np.asarray(accuracies[variant], dtype=np.float64) * 100
        values = values[np.isfinite(values)]  # a diverged seed has no accuracy
        if len(values) == 0:
            continue
        half = 0.0
        if len(values) > 1:
            half = t_quantile(0.95, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
        ax.bar(i, values.mean(), yerr=half, capsize=4, color=f"C{i}", alpha=0.75)
        ax.plot(np.full(len(values), i), values, "k.", markersize=4)
    ax.set_xticks(range(len(variants)), variants, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy % (mean, 95% CI)")
    all_values = np.concatenate([np.asarray(v, dtype=np.float64) for v in accuracies.values()])
    all_values = all_values[np.isfinite(all_values)]
    if len(all_values):
        ax.set_ylim(max(0.0, all_values.min() * 100 - 3), min(100.0, all_values.max() * 100 + 2))
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def sweep_panels(
    sweeps: Mapping[str, Sequence[Mapping[str, Any]]],
    path: Path,
    title: str,
    ylabel: str,
    scale: float = 1.0,
    target: float | None = None,
) -> Path:
    """One panel per swept axis, as the paper's sensitivity panels: the paired effect against the
    swept value with its 95% interval, zero drawn solid and the paper's effect dashed.

    ``sweeps[axis]`` lists points with ``value``, ``effect``, ``ci_low``, ``ci_high`` and
    ``verdict`` (``effect`` None: not measured or not applicable, left out); a confirmed point is
    filled, any other hollow. An axis spanning a factor of 10 or more is drawn logarithmic.
    """
    names = list(sweeps)
    plt, fig, axes = _panel_grid(names)
    for ax, axis in zip(axes.flat, names):
        points = [p for p in sweeps[axis] if p["effect"] is not None]
        ax.axhline(0.0, color="0.2", linewidth=0.8)
        if target is not None:
            ax.axhline(target * scale, color="C2", linestyle="--", linewidth=1,
                       label="the paper's effect")  # fmt: skip
        for point in points:
            effect = point["effect"] * scale
            error = [[effect - point["ci_low"] * scale], [point["ci_high"] * scale - effect]]
            confirmed = point["verdict"] == "confirmed"
            ax.errorbar(point["value"], effect, yerr=error, fmt="o", color="C0", capsize=4,
                        markerfacecolor="C0" if confirmed else "white")  # fmt: skip
        values = [p["value"] for p in sweeps[axis]]
        if min(values) > 0 and max(values) >= 10 * min(values):
            ax.set_xscale("log")
        ax.set_xticks(values, [f"{v:.2g}" for v in values], fontsize=8, rotation=30)
        ax.minorticks_off()
        ax.set_xlabel(axis)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(f"{axis} sweep", fontsize=10)
    return _finish(plt, fig, axes, path, title)
