"""Build ``report.md`` / ``report.json`` and the figures from a run folder's finished results.

Reads only what the runner wrote (``runs/<setting>/<variant>/result.json`` and the dynamics
results), so ``dropkit report DIR`` rebuilds the same report at any time.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dropkit.experiments.base import layout
from dropkit.experiments.base.io import (
    read_json,
    read_jsonl,
    utc_timestamp,
    write_atomic,
    write_jsonl,
)
from dropkit.experiments.base.lock import one_writer
from dropkit.experiments.base.record import RunRecord
from dropkit.experiments.base.stats import (
    paired_t_interval,
    seeds_for_power,
    sequential_seeds_for_power,
)
from dropkit.experiments.config.claim import Claim
from dropkit.experiments.config.parse import parse_config
from dropkit.experiments.config.specs import ExperimentConfig, SettingSpec
from dropkit.experiments.evidence import figures
from dropkit.experiments.evidence.claims import (
    MAX_FAILED_SHARE,
    MIN_SEEDS,
    ClaimResult,
    evaluate_claims,
)

__all__ = ["build_report", "load_results", "summary_table", "sweep_points"]

INSTRUMENT_TITLES = {
    "batch_grad_norm": "mean mini-batch gradient norm",
    "distance": "distance from initialization",
    "gdv": "gradient direction variance",
    "gde": "gradient direction error",
    "bias_sq": "bias² (unit gradients)",
    "variance": "variance (unit gradients)",
}


def load_results(run_dir: Path, config: ExperimentConfig) -> dict[str, dict[str, RunRecord]]:
    """``results[setting][variant]`` for every finished run (missing runs are left out)."""
    results: dict[str, dict[str, RunRecord]] = {}
    for setting in config.settings:
        found = {}
        for name in [v.name for v in setting.variants]:
            path = layout.run_dir(run_dir, setting.name, name) / layout.RESULT_FILE
            if not path.exists():
                continue
            try:
                found[name] = RunRecord.from_dict(read_json(path))
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(
                    f"{path} is damaged ({type(err).__name__}: {err}); run the experiment again "
                    "on this folder, which trains that run anew"
                ) from err
        results[setting.name] = found
    return results


def _crossover(steps: list[int], means: list[float]) -> int | None:
    """The first checkpoint from which the mean difference keeps the opposite sign to the first
    checkpoint's until the end of the curve: a lasting flip, not a one-checkpoint dip (None if
    the curve ends without one)."""
    first = np.sign(means[0])
    crossover = None
    for step, mean in zip(steps, means):
        if first and np.sign(mean) == -first:
            crossover = step if crossover is None else crossover
        else:
            crossover = None
    return crossover


def _finite_pairs_interval(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """The paired interval over the seeds finite in both arms (a diverged seed drops out, as
    in the claims); NaN where fewer than two are left."""
    finite = np.isfinite(a) & np.isfinite(b)
    if finite.sum() < 2:
        return math.nan, math.nan, math.nan
    return paired_t_interval(a[finite], b[finite])


def paired_curves(
    setting: SettingSpec, results: Mapping[str, RunRecord]
) -> dict[str, dict[str, Any]]:
    """Per instrument: the paired difference (second dynamics variant − first) per checkpoint.

    Each entry holds ``comparison``, ``steps`` (step 0 left out), ``mean``, ``ci_low``,
    ``ci_high`` (95% t over seeds) and ``crossover_step`` (see `_crossover`). Empty unless
    the setting measures exactly two variants and both finished.
    """
    if setting.dynamics is None or len(setting.dynamics.variants) != 2:
        return {}
    base, other = setting.dynamics.variants
    if base not in results or other not in results:
        return {}
    first, second = results[base].dynamics, results[other].dynamics
    if first is None or second is None:
        return {}
    keep = [k for k, step in enumerate(first.steps) if step > 0]
    out = {}
    for instrument in first.values:
        a = np.asarray(second.values[instrument], dtype=np.float64)[:, keep]
        b = np.asarray(first.values[instrument], dtype=np.float64)[:, keep]
        intervals = [_finite_pairs_interval(a[:, k], b[:, k]) for k in range(len(keep))]
        means = [m for m, _, _ in intervals]
        steps = [first.steps[k] for k in keep]
        crossover = _crossover(steps, means)
        out[instrument] = {
            "comparison": f"{other} - {base}",
            "steps": steps,
            "mean": means,
            "ci_low": [low for _, low, _ in intervals],
            "ci_high": [high for _, _, high in intervals],
            "crossover_step": crossover,
        }
    return out


def sweep_points(
    config: ExperimentConfig, claims: list[ClaimResult]
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``sweeps[setting][axis]``: the sweep's points in order of the swept value, each its claim,
    variant, ``value`` on the axis, effect with 95% interval and verdict."""
    results = {c.id: c for c in claims}
    variants = {s.name: {v.name: v for v in s.variants} for s in config.settings}
    sweeps: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for claim in config.claims:
        result = results[claim.id]
        for axis in claim.sweep:
            sweeps.setdefault(claim.setting, {}).setdefault(axis, []).append(
                {
                    "claim": claim.id,
                    "variant": claim.a,
                    "value": variants[claim.setting][claim.a].swept(axis),
                    "effect": result.effect,
                    "ci_low": result.ci_low,
                    "ci_high": result.ci_high,
                    "verdict": result.verdict,
                }
            )
    for axes in sweeps.values():
        for points in axes.values():
            points.sort(key=lambda point: point["value"])
    return sweeps


def _sweep_claim(config: ExperimentConfig, points: list[dict[str, Any]]) -> Claim:
    """The claim of a sweep's first point: all its points share its metric, baseline, direction
    and target (the config parser checks)."""
    return next(c for c in config.claims if c.id == points[0]["claim"])


def _sweep_figures(
    fig_dir: Path,
    config: ExperimentConfig,
    sweeps: Mapping[str, Mapping[str, list[dict]]],
    fractions: Collection[str],
) -> dict[str, str]:
    """``{setting}_sweep.png`` per setting with a sweep that measured any point."""
    made = {}
    for setting, axes in sweeps.items():
        if not any(p["effect"] is not None for points in axes.values() for p in points):
            continue
        first = _sweep_claim(config, next(iter(axes.values())))
        scale, unit = _scaled(first.metric, fractions)
        path = figures.sweep_panels(
            axes,
            fig_dir / f"{setting}_sweep.png",
            f"{setting}: sensitivity, each point vs {first.b} "
            "(paired mean, 95% CI; filled: confirmed)",
            ylabel=f"{first.metric}: A − {first.b}" + (f" ({unit.strip()})" if unit else ""),
            scale=scale,
            target=first.target,
        )
        made[setting] = path.name
    return made


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:+.{digits}g}"


def _fractions(results: Mapping[str, Mapping[str, RunRecord]]) -> set[str]:
    """The accuracies recorded as fractions (every finite value in [0, 1]): those the report
    shows in percent. A training function may return one in percent already."""
    values: dict[str, list[float]] = {}
    for found in results.values():
        for record in found.values():
            for metric, per_seed in record.metrics.items():
                values.setdefault(metric, []).extend(per_seed)
    return {
        metric
        for metric, seen in values.items()
        if metric.endswith("_acc") and all(0 <= v <= 1 for v in seen if math.isfinite(v))
    }


def _scaled(metric: str, fractions: Collection[str]) -> tuple[float, str]:
    """Accuracies recorded as fractions read in percentage points, everything else in its own
    units."""
    return (100.0, " pt") if metric in fractions else (1.0, "")


def _effect_text(c: ClaimResult, fractions: Collection[str]) -> str:
    if c.effect is None or c.ci_low is None or c.ci_high is None:
        return "–"
    scale, unit = _scaled(c.metric, fractions)
    return (
        f"{_fmt(c.effect * scale, 3)}{unit} [{_fmt(c.ci_low * scale, 3)}, "
        f"{_fmt(c.ci_high * scale, 3)}]"
    )


def _mde_text(c: ClaimResult, fractions: Collection[str]) -> str:
    if c.mde is None:
        return "–"
    scale, unit = _scaled(c.metric, fractions)
    return f"{c.mde * scale:.3g}{unit}"


VERDICT_WORDS = {
    "confirmed": "**confirmed**",
    "non-inferior": "non-inferior (improvement not shown)",
    "inconclusive": "inconclusive",
    "opposite": "**opposite**",
    "not applicable": "not applicable",
    "not measured": "not measured",
}


# metric, scale, decimals: fixed decimals, so a KL of 1e-19 (float noise at p = 0) reads 0.0000
_TABLE_COLUMNS = (
    ("train_loss", 1, 4),
    ("test_acc", 100, 2),
    ("test_loss", 1, 4),
    ("inconsistency_kl", 1, 4),
)
_TABLE_HEADERS = {
    "train_loss": "final train loss",
    "test_acc": "test acc. %",
    "test_loss": "test loss",
    "inconsistency_kl": "inconsistency KL",
}


def _setting_line(
    config: ExperimentConfig, setting: SettingSpec, found: Mapping[str, RunRecord]
) -> str:
    steps = "/".join(map(str, sorted({r.total_steps for r in found.values()}))) or "?"
    regime = f", meant to be {setting.regime}" if setting.regime else ""
    seeds = f"{len(config.seeds_of(setting))} seeds{regime}"
    if setting.function is not None:
        return f"**{setting.name}** — function `{setting.function}`, {steps} steps, {seeds}"
    data, model, train = setting.recipe()
    return (
        f"**{setting.name}** — data `{data}`, model `{model['kind']}`, {train.epochs} epochs = "
        f"{steps} steps, {seeds}"
    )


def _columns(
    setting: SettingSpec, found: Mapping[str, RunRecord]
) -> tuple[tuple[str, float, int], ...]:
    """The built-in metrics (the inconsistency where it was measured), or every metric a
    training function returned (4 decimals; an ``*_acc`` metric in percent, times 100 where
    it was recorded as a fraction)."""
    if setting.function is None:
        return tuple(c for c in _TABLE_COLUMNS if c[0] != "inconsistency_kl" or setting.mc_passes)
    names = sorted({m for r in found.values() for m in r.metrics})
    fractions = _fractions({setting.name: found})
    return tuple((m, _scaled(m, fractions)[0], 2 if m.endswith("_acc") else 4)
                 for m in names)  # fmt: skip


def summary_table(
    config: ExperimentConfig,
    results: Mapping[str, Mapping[str, RunRecord]],
    run_folder: Path | None = None,
) -> str:
    """Per setting and variant: mean ± sd over seeds of the final metrics (Markdown). A failed
    seed's folder is named under ``run_folder`` (for a terminal), else relative to the run
    folder (for its report)."""
    lines = []
    for setting in config.settings:
        found = results.get(setting.name, {})
        columns = _columns(setting, found)
        headers = [_TABLE_HEADERS.get(m, m) for m, _, _ in columns]
        lines += [
            _setting_line(config, setting, found),
            "",
            "| variant | seeds | " + " | ".join(headers) + " |",
            "|---|---|" + "---|" * len(columns),
        ]
        for variant in setting.variants:
            record = found.get(variant.name)
            if record is None:
                lines.append(f"| {variant.name} | 0 | not run |" + " |" * len(columns))
                continue
            cells = []
            for metric, scale, digits in columns:
                values = np.asarray(record.metrics.get(metric, []), dtype=np.float64) * scale
                finite = values[np.isfinite(values)]
                if len(finite) == 0:
                    cells.append("–")
                    continue
                sd = finite.std(ddof=1) if len(finite) > 1 else 0.0
                lost = len(values) - len(finite)
                failed = f" ({lost} non-finite)" if lost else ""
                cells.append(f"{finite.mean():.{digits}f} ± {sd:.{digits}f}{failed}")
            lines.append(f"| {variant.name} | {len(record.seeds)} | " + " | ".join(cells) + " |")
        lines += ["", *_divergence_lines(found), *_failure_lines(found, run_folder)]
    return "\n".join(lines)


def _failure_lines(found: Mapping[str, RunRecord], run_folder: Path | None) -> list[str]:
    """One line per run with failed seeds: which, and why (the traceback stays in the run)."""
    lines = []
    for name, record in found.items():
        for seed, reason in record.failed().items():
            where = layout.trial_dir(run_folder or Path(), record.setting, name, seed)
            lines.append(
                f"- `{name}` seed {seed} **failed**: {reason.splitlines()[0] if reason else '?'} "
                f"({where}/); its metrics are NaN and claims list it as failed. Run the same "
                "command again to retrain only the failed seeds."
            )
    return [*lines, ""] if lines else []


def _divergence_lines(found: Mapping[str, RunRecord]) -> list[str]:
    """One line per run with seeds whose loss became non-finite: which, and at which step."""
    lines = []
    for name, record in found.items():
        diverged = [(s, t) for s, t in zip(record.seeds, record.diverged_at) if t is not None]
        if diverged:
            where = ", ".join(f"seed {s} at step {t}" for s, t in diverged)
            lines.append(
                f"- `{name}`: **{len(diverged)} of {len(record.seeds)} seeds diverged** ({where}); "
                "their metrics are NaN and every claim on this run is computed on the rest."
            )
    return [*lines, ""] if lines else []


def _file_safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)


def _figures(
    run_dir: Path,
    config: ExperimentConfig,
    results: Mapping[str, Mapping[str, RunRecord]],
    curves: Mapping[str, Mapping[str, dict[str, Any]]],
    sweeps: Mapping[str, Mapping[str, list[dict[str, Any]]]],
) -> dict[str, list[str]]:
    made: dict[str, list[str]] = {}
    fig_dir = run_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    sweep_figures = _sweep_figures(fig_dir, config, sweeps, _fractions(results))
    for setting in config.settings:
        found = results.get(setting.name, {})
        if not found:
            continue
        names = []
        cutoffs = {r.cutoff_step for r in found.values() if r.cutoff_step}
        path = figures.loss_curves(
            {name: (r.curve.steps, np.asarray(r.curve.train_loss)) for name, r in found.items()},
            fig_dir / f"{setting.name}_train_loss.png",
            f"{setting.name}: training loss",
            cutoff_step=min(cutoffs) if cutoffs else None,
        )
        names.append(path.name)
        for logged in sorted({name for r in found.values() for name in r.logged}):
            path = figures.loss_curves(
                {
                    name: (r.logged[logged].steps, np.asarray(r.logged[logged].values))
                    for name, r in found.items()
                    if logged in r.logged
                },
                fig_dir / f"{setting.name}_{_file_safe(logged)}.png",
                f"{setting.name}: {logged} (as logged)",
                cutoff_step=min(cutoffs) if cutoffs else None,
                ylabel=f"{logged} (mean ± s.e. over seeds)",
            )
            names.append(path.name)
        if all("test_acc" in r.metrics for r in found.values()):
            path = figures.accuracy_bars(
                {name: r.metrics["test_acc"] for name, r in found.items()},
                fig_dir / f"{setting.name}_test_acc.png",
                f"{setting.name}: test accuracy",
            )
            names.append(path.name)
        measured = {name: r.dynamics for name, r in found.items() if r.dynamics is not None}
        if measured and setting.dynamics is not None:
            instruments = list(next(iter(measured.values())).values)
            path = figures.dynamics_panels(
                {
                    instrument: {
                        variant: (d.steps, np.asarray(d.values[instrument]))
                        for variant, d in measured.items()
                    }
                    for instrument in instruments
                },
                fig_dir / f"{setting.name}_dynamics.png",
                f"{setting.name}: training dynamics (mean ± s.e. over seeds)",
                window_end=setting.dynamics.window,
                titles=INSTRUMENT_TITLES,
            )
            names.append(path.name)
        if curves.get(setting.name) and setting.dynamics is not None:
            comparison = next(iter(curves[setting.name].values()))["comparison"]
            path = figures.paired_difference_panels(
                curves[setting.name],
                fig_dir / f"{setting.name}_dynamics_difference.png",
                f"{setting.name}: {comparison} per checkpoint (paired mean, 95% CI)",
                window_end=setting.dynamics.window,
                titles=INSTRUMENT_TITLES,
            )
            names.append(path.name)
        if setting.name in sweep_figures:
            names.append(sweep_figures[setting.name])
        made[setting.name] = names
    return made


def _setting_section(setting: SettingSpec, figure_names: list[str]) -> list[str]:
    lines = [f"### {setting.name}", ""]
    if setting.regime:
        lines += [
            f"Meant to be in the **{setting.regime}** regime, established by "
            f"{setting.regime_claim}; the setting's other claims depend on it.",
            "",
        ]
    for variant in setting.variants:
        parts = []
        for kind, spec in (("dropout", variant.dropout), ("drop path", variant.drop_path)):
            if spec is not None:
                cutoff = "" if spec.cutoff is None else f", cutoff {spec.cutoff}"
                shape = f" {spec.shape}" if spec.kind == "early" else ""
                parts.append(f"{kind} {spec.kind}{shape} p={spec.p}{cutoff}")
        if variant.rdrop_alpha:
            parts.append(f"R-Drop alpha={variant.rdrop_alpha}")
        if variant.double_batch:
            parts.append("doubled batch [x; x], no KL (R-Drop's alpha = 0 control)")
        lines.append(f"- `{variant.name}`: " + ("; ".join(parts) or "no dropout"))
    if setting.dynamics is not None:
        d = setting.dynamics
        lines += [
            "",
            f"Dynamics of {', '.join(d.variants)}: checkpoints every {d.every} steps up to "
            f"step {d.until}, |G| = {d.n_batches} mini-batch gradients each, ĝ over the whole "
            f"training set with dropout off; claims average the checkpoints in (0, {d.window}].",
        ]
    lines.append("")
    lines += [f"![{name}](figures/{name})" for name in figure_names]
    lines.append("")
    return lines


def _power_lines(
    config: ExperimentConfig, claims: list[ClaimResult], fractions: Collection[str]
) -> list[str]:
    """For claims with the paper's effect as a target: would an effect of that size have been
    shown 80% of the time (MDE at most the target)? One power definition, the MDE column's."""
    targets = {c.id: c.target for c in config.claims if c.target is not None}
    lines = []
    for c in claims:
        target = targets.get(c.id)
        if target is None:
            continue
        if c.effect is None or c.ci_low is None or c.ci_high is None or c.mde is None:
            lines.append(f"- {c.id}: {c.verdict}, so not powered here: {c.reason}.")
            continue
        scale, unit = _scaled(c.metric, fractions)
        sd = c.sd if c.sd is not None else math.nan
        if c.mde <= target:
            lines.append(
                f"- {c.id}: MDE {c.mde * scale:.3g}{unit} ≤ the paper's effect "
                f"{target * scale:.3g}{unit}: an effect of the paper's size would show 80% of "
                "the time (powered)."
            )
        else:
            sequential = c.interval == "confidence sequence"
            need = (sequential_seeds_for_power if sequential else seeds_for_power)(sd, target)
            lines.append(
                f"- {c.id}: MDE {c.mde * scale:.3g}{unit} > the paper's effect "
                f"{target * scale:.3g}{unit}: **not powered**; about {need} seeds would show an "
                f"effect of that size 80% of the time (here {c.n_seeds})."
            )
    return lines


LOOKS_FILE = "looks.jsonl"


def _record_look(run_dir: Path, results: Mapping[str, Mapping[str, RunRecord]]) -> list[dict]:
    """Append this report to the folder's looks (when, and how many seeds each setting had);
    return every look so far."""
    seeds = {
        setting: max((len(r.seeds) for r in found.values()), default=0)
        for setting, found in results.items()
    }
    path = run_dir / LOOKS_FILE
    looks = read_jsonl(path)
    if not looks or looks[-1]["seeds"] != seeds:  # the same folder read again is no new look
        looks.append({"at": utc_timestamp(), "seeds": seeds})
        write_jsonl(path, looks)
    return looks


def _sequential_settings(
    config: ExperimentConfig, looks: list[dict], until_decided: bool
) -> set[str]:
    """The settings whose claims need the confidence sequence: every one of a run trained
    until decided; else those a report was read at with fewer seeds than they have now."""
    if until_decided:
        return {s.name for s in config.settings}
    now = looks[-1]["seeds"]
    return {
        setting
        for setting, n in now.items()
        if any(0 < look["seeds"].get(setting, 0) < n for look in looks[:-1])
    }


def _sequential_note(
    looks: list[dict], sequential: set[str], until_decided: dict[str, int] | None
) -> str:
    counts = {
        name: sorted({look["seeds"][name] for look in looks if look["seeds"].get(name)})
        for name in sorted(sequential)
    }
    read_at = "; ".join(f"`{name}` at {', '.join(map(str, n))} seeds" for name, n in counts.items())
    if until_decided:
        why = (
            f"this run trains seeds in rounds of {until_decided['step']} until every claim is "
            "decided (confirmed, opposite, non-inferior, not applicable, or futile: its interval "
            f"excludes the paper's effect) or {until_decided['max_seeds']} seeds; rounds read "
            f"{read_at}"
        )
    else:
        why = f"their seeds were added after a report was read ({read_at})"
    return (
        f"‡ A 95% confidence sequence, not a fixed-n t interval: {why}. A t interval read "
        "again as seeds grow is no longer 95% (read after every seed up to 64 with no true "
        "effect, it confirms about 18% of the time); the sequence is valid however often it is "
        "read, at the price of width (1.65x the t interval at 16 seeds; nothing excluded "
        "before 5). Its MDE and the seeds advised below are the sequence's."
    )


def _multiplicity_line(tested: list[ClaimResult]) -> str:
    """How many verdicts chance alone would give, by test: a superiority claim is confirmed
    when its 95% two-sided interval clears 0 on the paper's side, which with no effect happens
    2.5% of the time (one side); a non-inferiority row reads non-inferior by chance at most 2.5%
    of the time, when the true difference sits exactly at the margin."""
    superiority = sum(c.test == "superiority" for c in tested)
    non_inferiority = len(tested) - superiority
    line = (
        f"Multiplicity: {superiority} superiority claims are tested here; with no real effect "
        "each reads *confirmed* by chance 2.5% of the time (its 95% interval clears 0 on the "
        f"paper's side), about {0.025 * superiority:.2f} chance confirmations in all"
    )
    if non_inferiority:
        line += (
            f"; {non_inferiority} non-inferiority rows read *non-inferior* by chance at most 2.5% "
            "of the time each (when the true difference sits at the margin)"
        )
    return line + ". Read single confirmations near the line with care."


def _held_paragraph(
    config: ExperimentConfig,
    claims: list[ClaimResult],
    curves: Mapping[str, Mapping[str, dict[str, Any]]],
    fractions: Collection[str],
) -> list[str]:
    """What held here, read from the verdicts and the dynamics curves (no hand-written hopes)."""
    by_verdict: dict[str, list[str]] = {}
    for c in claims:
        by_verdict.setdefault(c.verdict, []).append(c.id)
    lines = [
        "Verdicts: "
        + "; ".join(f"{verdict} {', '.join(ids)}" for verdict, ids in by_verdict.items())
        + "."
    ]
    for setting in config.settings:
        if not setting.regime_claim:
            continue
        regime = next(c for c in claims if c.id == setting.regime_claim)
        held = "established" if regime.confirmed else "not established"
        lines.append(
            f"`{setting.name}`: the {setting.regime} regime is {held} ({regime.id} "
            f"{regime.verdict}, {_effect_text(regime, fractions)})."
        )
    for name, instruments in curves.items():
        parts = []
        for instrument, curve in instruments.items():
            first_mean = curve["mean"][0]
            if not math.isfinite(first_mean):
                parts.append(f"{INSTRUMENT_TITLES.get(instrument, instrument)} not measured")
                continue
            sign = "below" if first_mean < 0 else "above"
            flip = curve["crossover_step"]
            parts.append(
                f"{INSTRUMENT_TITLES.get(instrument, instrument)} starts {sign} zero"
                + (
                    f" and crosses for good at step {flip}"
                    if flip is not None
                    else " and does not cross for good"
                )
            )
        comparison = next(iter(instruments.values()))["comparison"]
        lines.append(f"`{name}` dynamics ({comparison}): " + "; ".join(parts) + ".")
    return lines


def _sweep_lines(
    config: ExperimentConfig, sweeps: Mapping[str, Mapping[str, list[dict[str, Any]]]]
) -> list[str]:
    """Per sweep, the verdict at each swept value, in the order of the axis."""
    lines = []
    for setting, axes in sweeps.items():
        for axis, points in axes.items():
            first = _sweep_claim(config, points)
            verdicts: dict[str, list[str]] = {}
            for point in points:
                verdicts.setdefault(point["verdict"], []).append(f"{point['value']:g}")
            lines.append(
                f"`{setting}` {axis} sweep (each point − {first.b}, {first.metric}): "
                + "; ".join(f"{verdict} at {', '.join(at)}" for verdict, at in verdicts.items())
                + "."
            )
    return lines


def _extension_lines(extensions: list[dict[str, Any]]) -> list[str]:
    """One line per ``--seeds`` extension of the run folder, disclosing any look before it."""
    lines = []
    for extension in extensions:
        grown = ", ".join(
            f"`{name}` from {old} to {new} seeds" for name, (old, new) in extension["seeds"].items()
        )
        when = (
            "after a report had been built from the seeds before: that look is why their "
            "claims use the confidence sequence (‡ above; adding seeds until a t interval "
            "settles raises the chance of a false confirmation above the nominal 2.5%)"
            if extension["after_report"]
            else "before any report was built (no look to correct for)"
        )
        lines.append(f"- {extension['at']}: {grown}, {when}.")
    return lines


def _code_lines(code: dict[str, Any], changes: list[dict[str, Any]]) -> list[str]:
    """Which file each training function came from, and any change of it during the run."""
    lines = []
    for setting, source in code.items():
        git = source.get("git")
        where = ""
        if git:
            dirty = ", with uncommitted changes" if git["dirty"] else ""
            where = f", git commit {git['commit'][:12]}{dirty}"
        lines.append(
            f"- `{setting}`: `{source['function']}` from `{source['file']}` "
            f"(sha256 {source['sha256'][:12]}{where})."
        )
    for change in changes:
        lines.append(
            f"- **The code changed during this run** ({change['at']}, allowed by "
            f"--allow-changed-code): `{change['setting']}`'s `{change['file']}` went from sha256 "
            f"{change['from'][:12]} to {change['to'][:12]}. Seeds trained before and after came "
            "from different code, and the verdicts above mix them."
        )
    return lines


def build_report(run_dir: str | Path) -> dict[str, Any]:
    """Write ``report.md``, ``report.json`` and figures for the run folder; return the JSON.

    Holds the run folder's lock while it reads and writes (`RunFolderBusy` while another
    command writes the folder)."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{run_dir} has no config.json: is it a dropkit run folder?")
    with one_writer(run_dir):
        return _build_report(run_dir, config_path)


def _build_report(run_dir: Path, config_path: Path) -> dict[str, Any]:
    stored = read_json(config_path)
    config = parse_config(stored["config"])
    extensions = stored.get("extensions", [])
    results = load_results(run_dir, config)
    looks = _record_look(run_dir, results)
    sequential = _sequential_settings(config, looks, bool(stored.get("until_decided")))
    claims = evaluate_claims(config, results, sequential)
    fractions = _fractions(results)
    curves = {
        s.name: found
        for s in config.settings
        if (found := paired_curves(s, results.get(s.name, {})))
    }
    sweeps = sweep_points(config, claims)
    figure_names = _figures(run_dir, config, results, curves, sweeps)
    wall = sum(r.wall_s for rs in results.values() for r in rs.values())
    report = {
        "name": config.name,
        "seeds": config.seeds,
        "claims": [c.to_json() for c in claims],
        "settings": {
            s.name: {
                "regime": s.regime,
                "regime_claim": s.regime_claim,
                "variants": {
                    v: {"seeds": r.seeds, "metrics": r.metrics, "wall_s": r.wall_s}
                    for v, r in results.get(s.name, {}).items()
                },
            }
            for s in config.settings
        },
        "dynamics": curves,
        "sweeps": sweeps,
        "training_wall_s": wall,
        "extensions": extensions,
        "code_changes": stored.get("code_changes", []),
        "looks": looks,
        "sequential_settings": sorted(sequential),
    }
    tested = [c for c in claims if c.verdict not in ("not applicable", "not measured")]
    lines = [
        f"# dropkit report: {config.name}",
        "",
        "This run **tests** the papers' claims at a small scale; it does not assume them. Each "
        "claim compares two variants of one setting seed by seed (variants share seeds); the "
        "effect is the mean paired difference A − B with a 95% Student-t interval. "
        "*Superiority* claims (the paper's direction) are **confirmed** only when the interval "
        "lies wholly on the paper's side of 0, **opposite** when it lies wholly on the other "
        "side, *inconclusive* otherwise. *Non-inferiority* rows (a margin well below the paper's "
        "effect) read *non-inferior* when the interval's lower end clears the margin: "
        "improvement not shown (the reason notes when A is worse than B, within the margin); "
        "*opposite* only when the interval lies wholly beyond the margin. When more than "
        f"{MAX_FAILED_SHARE:.0%} of a claim's seeds failed, its verdict is capped at "
        "*inconclusive*: the surviving seeds are a selected sample. A verdict needs at least "
        f"{MIN_SEEDS} finite paired seeds: with fewer, a claim reads *inconclusive* (its effect "
        "and interval still shown). "
        "A claim whose setting's regime claim is not confirmed is *not applicable*. "
        "MDE: the smallest true effect these seeds would show 80% of the time at this spread; "
        "a claim is *powered* when its MDE is at most the paper's effect (one power "
        "definition throughout, 80%).",
        "",
        _multiplicity_line(tested),
        "",
        "## Claims",
        "",
        "| id | claim | the paper | test | ours: effect [95% CI] | MDE | seeds | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in claims:
        note = f" — {c.reason}" if c.reason else ""
        mark = " ‡" if c.interval == "confidence sequence" else ""
        lines.append(
            f"| {c.id} | {c.statement} | {c.paper or '–'} | {c.test}: `{c.comparison}` | "
            f"{_effect_text(c, fractions)}{mark} | {_mde_text(c, fractions)} | {c.n_seeds} | "
            f"{VERDICT_WORDS[c.verdict]}{note} |"
        )
    if sequential:
        lines += ["", _sequential_note(looks, sequential, stored.get("until_decided"))]
    if extensions:
        lines += ["", "## Seeds added later", "", *_extension_lines(extensions)]
    if stored.get("code"):
        lines += ["", "## Code", "", *_code_lines(stored["code"], stored.get("code_changes", []))]
    power = _power_lines(config, claims, fractions)
    if power:
        lines += ["", "## Power against the paper's effect", "", *power]
    lines += ["", "## What held here", "", *_held_paragraph(config, claims, curves, fractions)]
    lines += _sweep_lines(config, sweeps)
    lines += ["", "## Results", "", summary_table(config, results), "## Settings and figures", ""]
    for setting in config.settings:
        lines += _setting_section(setting, figure_names.get(setting.name, []))
    write_atomic(run_dir / "report.md", "\n".join(lines))
    write_atomic(run_dir / "report.json", json.dumps(report, indent=2))
    return report
