"""Build ``report.md`` / ``report.json`` and the figures from a run folder's finished results.

Reads only what the runner wrote (``runs/<setting>/<variant>/result.json`` and the dynamics
results), so ``dropkit report DIR`` rebuilds the same report at any time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dropkit.experiments import figures
from dropkit.experiments.claims import ClaimResult, evaluate_claim
from dropkit.experiments.config import ExperimentConfig, SettingSpec, parse_config
from dropkit.experiments.io import read_json, write_atomic

__all__ = ["build_report", "load_results", "summary_table"]

METRIC_LABELS = {
    "train_loss": "final training loss (full train set, dropout off)",
    "test_acc": "test accuracy",
    "test_loss": "test loss",
    "inconsistency_kl": "KL(MC-dropout average || deterministic) on test data",
}


INSTRUMENT_TITLES = {
    "grad_norm": "gradient norm",
    "distance": "distance from initialization",
    "gdv": "gradient direction variance",
    "gde": "gradient direction error",
    "bias_sq": "bias² (unit gradients)",
    "variance": "variance (unit gradients)",
}


def load_results(run_dir: Path, config: ExperimentConfig) -> dict[str, dict[str, dict]]:
    """``results[setting][variant]`` for every finished run (missing runs are left out)."""
    results: dict[str, dict[str, dict]] = {}
    for setting in config.settings:
        found = {}
        for name in [v.name for v in setting.variants]:
            path = run_dir / "runs" / setting.name / name / "result.json"
            if path.exists():
                found[name] = read_json(path)
        results[setting.name] = found
    return results


def _per_seed(result: Mapping[str, Any], metric: str) -> dict[int, float]:
    values = result["metrics"].get(metric)
    if values is None:
        return {}
    return {int(s): float(v) for s, v in zip(result["seeds"], values)}


def _dynamics_per_seed(
    results: Mapping[str, dict], instrument: str, early_phase: float
) -> dict[str, dict[int, float]]:
    """Per variant and seed: mean of an instrument over the early-phase checkpoints after 0."""
    out: dict[str, dict[int, float]] = {}
    for variant, result in results.items():
        dynamics = result.get("dynamics")
        if not dynamics or instrument not in dynamics["values"]:
            continue
        steps = np.asarray(dynamics["steps"])
        early = (steps > 0) & (steps <= early_phase * result["total_steps"])
        values = np.asarray(dynamics["values"][instrument], dtype=np.float64)  # [seed, checkpoint]
        out[variant] = {
            int(s): float(values[i, early].mean()) for i, s in enumerate(result["seeds"])
        }
    return out


def evaluate_claims(
    config: ExperimentConfig, results: Mapping[str, Mapping[str, dict]]
) -> list[ClaimResult]:
    evaluated = []
    for claim in config.claims:
        setting_results = results.get(claim.setting, {})
        if claim.metric.startswith("dynamics:"):
            setting = next(s for s in config.settings if s.name == claim.setting)
            instrument = claim.metric.split(":", 1)[1]
            values = _dynamics_per_seed(setting_results, instrument, setting.dynamics.early_phase)
        else:
            values = {name: _per_seed(r, claim.metric) for name, r in setting_results.items()}
        evaluated.append(evaluate_claim(claim, values))
    return evaluated


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}g}"


def _verdict(result: ClaimResult) -> str:
    if result.confirmed is None:
        return "not measured"
    return "**confirmed**" if result.confirmed else f"not confirmed ({result.verdict})"


# metric, scale, decimals: fixed decimals, so a KL of 1e-19 (float noise at p = 0) reads 0.0000
_TABLE_COLUMNS = (
    ("train_loss", 1, 4),
    ("test_acc", 100, 2),
    ("test_loss", 1, 4),
    ("inconsistency_kl", 1, 4),
)


def summary_table(config: ExperimentConfig, results: Mapping[str, Mapping[str, dict]]) -> str:
    """Per setting and variant: mean ± sd over seeds of the final metrics (Markdown)."""
    lines = []
    for setting in config.settings:
        found = results.get(setting.name, {})
        steps = sorted({r["total_steps"] for r in found.values()})
        lines += [
            f"**{setting.name}** — data `{setting.data}`, model `{setting.model['kind']}`, "
            f"{setting.train.epochs} epochs = {'/'.join(map(str, steps)) or '?'} steps",
            "",
            "| variant | seeds | final train loss | test acc. % | test loss | inconsistency KL |",
            "|---|---|---|---|---|---|",
        ]
        for variant in setting.variants:
            result = found.get(variant.name)
            if result is None:
                lines.append(f"| {variant.name} | 0 | not run | | | |")
                continue
            cells = []
            for metric, scale, digits in _TABLE_COLUMNS:
                values = np.asarray(result["metrics"].get(metric, []), dtype=np.float64) * scale
                if len(values) == 0:
                    cells.append("–")
                else:
                    sd = values.std(ddof=1) if len(values) > 1 else 0.0
                    cells.append(f"{values.mean():.{digits}f} ± {sd:.{digits}f}")
            lines.append(f"| {variant.name} | {len(result['seeds'])} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _figures(
    run_dir: Path, config: ExperimentConfig, results: Mapping[str, Mapping[str, dict]]
) -> dict[str, list[str]]:
    made: dict[str, list[str]] = {}
    fig_dir = run_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    for setting in config.settings:
        found = results.get(setting.name, {})
        if not found:
            continue
        names = []
        curves = {
            name: (r["curve"]["steps"], np.asarray(r["curve"]["train_loss"]))
            for name, r in found.items()
        }
        cutoffs = {r["cutoff_step"] for r in found.values() if r.get("cutoff_step")}
        path = figures.loss_curves(
            curves,
            fig_dir / f"{setting.name}_train_loss.png",
            f"{setting.name}: training loss",
            cutoff_step=min(cutoffs) if cutoffs else None,
        )
        names.append(path.name)
        accuracies = {name: r["metrics"]["test_acc"] for name, r in found.items()}
        path = figures.accuracy_bars(
            accuracies, fig_dir / f"{setting.name}_test_acc.png", f"{setting.name}: test accuracy"
        )
        names.append(path.name)
        measured = {name: r["dynamics"] for name, r in found.items() if r.get("dynamics")}
        if measured:
            instruments = list(next(iter(measured.values()))["values"])
            series = {
                instrument: {
                    variant: (d["steps"], np.asarray(d["values"][instrument]))
                    for variant, d in measured.items()
                }
                for instrument in instruments
            }
            early_end = setting.dynamics.early_phase * next(iter(found.values()))["total_steps"]
            path = figures.dynamics_panels(
                series,
                fig_dir / f"{setting.name}_dynamics.png",
                f"{setting.name}: training dynamics (mean ± s.e. over seeds)",
                early_phase_end=early_end,
                titles=INSTRUMENT_TITLES,
            )
            names.append(path.name)
        made[setting.name] = names
    return made


def _setting_section(setting: SettingSpec, figure_names: list[str]) -> list[str]:
    lines = [f"### {setting.name}", ""]
    for variant in setting.variants:
        parts = []
        for kind, spec in (("dropout", variant.dropout), ("drop path", variant.drop_path)):
            if spec is not None:
                cutoff = "" if spec.cutoff is None else f", cutoff {spec.cutoff}"
                shape = f" {spec.shape}" if spec.kind == "early" else ""
                parts.append(f"{kind} {spec.kind}{shape} p={spec.p}{cutoff}")
        if variant.rdrop_alpha:
            parts.append(f"R-Drop alpha={variant.rdrop_alpha}")
        lines.append(f"- `{variant.name}`: " + ("; ".join(parts) or "no dropout"))
    lines.append("")
    lines += [f"![{name}](figures/{name})" for name in figure_names]
    lines.append("")
    return lines


def build_report(run_dir: str | Path) -> dict[str, Any]:
    """Write ``report.md``, ``report.json`` and figures for the run folder; return the JSON."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{run_dir} has no config.json: is it a dropkit run folder?")
    config = parse_config(read_json(config_path)["config"])
    results = load_results(run_dir, config)
    claims = evaluate_claims(config, results)
    figure_names = _figures(run_dir, config, results)
    wall = sum(r.get("wall_s", 0.0) for rs in results.values() for r in rs.values())
    report = {
        "name": config.name,
        "seeds": config.seeds,
        "claims": [c.to_json() for c in claims],
        "settings": {
            s.name: {
                v: {"seeds": r["seeds"], "metrics": r["metrics"], "wall_s": r.get("wall_s")}
                for v, r in results.get(s.name, {}).items()
            }
            for s in config.settings
        },
        "training_wall_s": wall,
    }
    lines = [
        f"# dropkit report: {config.name}",
        "",
        f"{config.seeds} seeds per variant, paired by seed across variants; training time "
        f"{wall:.0f} s. Effects are mean paired differences (A − B) over seeds with 95% "
        "Student-t intervals; a claim is confirmed only when the interval clears the claimed "
        "direction (for `>=`, when its low end is above minus the stated margin). Not confirmed "
        "is *inconclusive* when the interval straddles the line (with few seeds: not shown here, "
        "not refuted) and *opposite* when it lies wholly on the wrong side (the data here "
        "contradict the claim).",
        "",
        "## Claims",
        "",
        "| id | claim | comparison | metric | effect | 95% CI | seeds | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in claims:
        metric = METRIC_LABELS.get(c.metric) or INSTRUMENT_TITLES.get(
            c.metric.removeprefix("dynamics:"), c.metric
        )
        lines.append(
            f"| {c.id} | {c.statement} | `{c.comparison}` | {metric} | {_fmt(c.effect)} | "
            f"[{_fmt(c.ci_low)}, {_fmt(c.ci_high)}] | {c.n_seeds} | {_verdict(c)} |"
        )
    lines += ["", "## Results", "", summary_table(config, results), "## Settings and figures", ""]
    for setting in config.settings:
        lines += _setting_section(setting, figure_names.get(setting.name, []))
    write_atomic(run_dir / "report.md", "\n".join(lines))
    write_atomic(run_dir / "report.json", json.dumps(report, indent=2))
    return report
