"""The experiment that tests an advice: a config for ``dropkit run`` with the recommended
schedule against ``none`` and standard dropout (or s.d.), claims in the paper's direction."""

from __future__ import annotations

from typing import Any

from dropkit.experiments.advise.advice import PAPER_CUTOFF, Advice
from dropkit.experiments.config.specs import SettingSpec, setting_dict


def emit_config(advice: Advice, setting: SettingSpec, *, p: float = 0.1, seeds: int = 5) -> dict:
    """The experiment that tests ``advice`` on ``setting``: its recommendation against ``none``
    and standard dropout (or s.d.), with claims in the paper's direction, for ``dropkit run``.

    What ``dropkit advise --emit-config`` writes. The regime claim A1 (standard vs none) comes
    first and gates the others, as in the demo; for an early schedule A2 claims a lower final
    training loss than ``none``, and A3 a better test metric than ``none`` (than standard s.d.
    for late s.d.). The test metric is ``test_acc`` when the probes reported an accuracy (a
    function: returned ``test_acc``), else ``test_loss`` (a function returning neither: its
    validation metric). A ``no_dropout`` or ``standard_dropout`` advice gets the regime claim
    only. An ``undecided`` advice gets the experiment that decides it: A1 in the underfitting
    direction, gating the early schedule's claims; A1 reading *opposite* means overfitting,
    where standard dropout (the ``dropout`` arm) is the schedule.

    Args:
        advice: The advice to test.
        setting: The setting it was given for; its data, model and train block (or function
            and params) are copied, its variants replaced, its dynamics and seeds dropped.
        p: The standard dropout rate of the ``dropout`` arm (default 0.1; ``dropkit advise``
            passes its ``--p``).
        seeds: Seeds of the experiment (default 5).

    Returns:
        The config as a dict in the YAML schema of ``dropkit run`` (``name``, ``seeds``,
            ``settings``, ``claims``), ready for ``yaml.safe_dump``.
    """
    regulariser = "sd" if "sd" in advice.evidence["variants"] else "dropout"
    reg_kind = "drop_path" if regulariser == "sd" else "dropout"
    reg_p = p if regulariser == "dropout" else float(advice.schedule["p"] if advice.schedule else p)
    variants: dict[str, Any] = {
        "none": {},
        regulariser: {reg_kind: {"schedule": "standard", "p": reg_p}},
    }
    metric, higher = _test_metric(advice.evidence)
    better, worse = (">", "<") if higher else ("<", ">")
    undecided = advice.recommendation == "undecided"
    under = advice.regime == "underfitting" or undecided
    regime = "underfitting" if undecided else advice.regime
    label = "dropout" if regulariser == "dropout" else "stochastic depth"
    claims = [
        {
            "id": "A1",
            "setting": setting.name,
            "metric": metric,
            "a": regulariser,
            "b": "none",
            "direction": worse if under else better,
            "statement": f"{regime.capitalize()} regime: standard {label} "
            f"{'hurts' if under else 'helps'} {metric}",
            "paper": "regime definition (Liu et al. 2023, §4): standard dropout hurts models that "
            "underfit (ViT-T) and helps those that overfit (ViT-B)",
        }
    ]
    schedule = advice.schedule
    name = advice.recommendation
    if undecided:  # the experiment that decides it: the early schedule, gated on A1
        sites = "drop_path" if regulariser == "sd" else "dropout"
        name = "early_sd" if regulariser == "sd" else "early_dropout"
        schedule = {"sites": sites, "schedule": "early", "p": reg_p,
                    "cutoff": PAPER_CUTOFF, "shape": "linear"}  # fmt: skip
    if schedule is not None and name in ("early_dropout", "early_sd", "late_sd"):
        spec = {k: schedule[k] for k in ("schedule", "p", "cutoff", "shape") if schedule.get(k)}
        if name == "late_sd":
            variants["sd"] = {"drop_path": {"schedule": "standard", "p": schedule["p"]}}
        variants[name] = {schedule["sites"]: spec}
        base = "sd" if name == "late_sd" else "none"
        if name != "late_sd":
            claims.append({
                "id": "A2", "setting": setting.name, "metric": "train_loss", "a": name,
                "b": "none", "direction": "<",
                "statement": f"{name.replace('_', ' ').capitalize()} ends with a lower training "
                "loss than no dropout",
                "paper": "Liu et al. 2023: lower final training loss (ViT-T, ImageNet-1K)",
            })  # fmt: skip
        claims.append({
            "id": "A3", "setting": setting.name, "metric": metric, "a": name, "b": base,
            "direction": better,
            "statement": f"{name.replace('_', ' ').capitalize()} improves {metric} over {base}",
            "paper": "Liu et al. 2023, Table 1 / 3: +0.3 to +0.9 pt top-1 on ImageNet-1K",
        })  # fmt: skip
    entry = setting_dict(setting)
    entry["variants"] = variants
    entry["regime"] = regime
    entry["regime_claim"] = "A1"
    entry.pop("dynamics", None)
    entry.pop("seeds", None)
    return {"name": f"test-{name}-{setting.name}", "seeds": seeds,
            "settings": {setting.name: entry}, "claims": claims}  # fmt: skip


def _test_metric(evidence: dict[str, Any]) -> tuple[str, bool]:
    """The full run's metric for the claims, and whether higher is better."""
    returned = evidence.get("returned")
    if returned is None:  # a built-in setting reports test_acc and test_loss
        return "test_acc", True
    for metric, higher in (("test_acc", True), ("test_loss", False)):
        if metric in returned:
            return metric, higher
    return evidence["metric"]["name"], evidence["metric"]["better"] == "higher"
