"""What advise returns: the recommendation, the regime behind it, the probe's evidence and
limits (`Advice`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

RECOMMENDATIONS = (
    "early_dropout", "early_sd", "late_sd", "standard_dropout", "undecided", "no_dropout"
)  # fmt: skip
"""The values ``Advice.recommendation`` takes.

``early_dropout`` (underfitting, dropout sites), ``early_sd`` (underfitting, drop-path sites
only), ``late_sd`` (overfitting, drop-path sites), ``standard_dropout`` (overfitting, dropout
sites only), ``undecided`` (the probe cannot tell the regime yet: the reasons say what would)
and ``no_dropout`` (the model has no site dropkit can control).
"""
CANNOT_TELL = "cannot tell"
"""``Advice.regime`` when the probe does not separate the regimes."""
PAPER_CUTOFF = 1 / 6  # 50 of 300 epochs; the paper finds 1% to 50% of the run works
LATE_SD_P = 0.4  # the paper's late stochastic depth rate (ViT-B)


@dataclass(frozen=True)
class Advice:
    """A recommendation, the regime behind it, and the evidence and limits of the probe.

    What [`advise`][dropkit.experiments.advise.advise] and
    [`advise_function`][dropkit.experiments.advise.advise_function] return; ``dropkit advise``
    writes it as ``advice.json`` ([`to_dict`][dropkit.experiments.advise.Advice.to_dict]) and
    ``advice.md`` ([`to_markdown`][dropkit.experiments.advise.Advice.to_markdown]).

    Attributes:
        recommendation: One of [`RECOMMENDATIONS`][dropkit.experiments.advise.RECOMMENDATIONS]:
            ``early_dropout`` or ``early_sd`` for an underfitting model, ``late_sd`` or
            ``standard_dropout`` for an overfitting one, ``undecided`` when the regime cannot be
            told yet, ``no_dropout`` when the model has no dropout or drop-path site dropkit can
            control.
        schedule: The recommended schedule, ``{"sites", "schedule", "p", "cutoff", "shape"}``:
            ``sites`` is ``"dropout"`` or ``"drop_path"``, ``schedule`` ``"early"``,
            ``"late"`` or ``"standard"``, ``p`` the rate (the probed ``p`` or ``drop_path_p``;
            0.4 for late s.d., the paper's), ``cutoff`` the fraction of the run where an early
            or late schedule switches (1/6, the paper's; None for standard), ``shape``
            ``"linear"`` for early schedules (else None). None for ``undecided`` and
            ``no_dropout``.
        regime: ``"underfitting"`` (standard dropout raises the held-out loss: the paper's
            definition), ``"overfitting"`` (it lowers it) or ``"cannot tell"`` (the probe does
            not separate them; the reasons say what budget or seeds would).
        confidence: ``"high"`` (dropout's effect is clear at the probe's end and along its
            trend to the end of the run, and nothing else contradicts it), ``"medium"`` (clear
            in one of the two, or lowered by a contradiction: the gap projection, the gradient
            direction error, a probe ending inside the warm-up), None for ``"cannot tell"``.
        reasons: The findings behind the advice, as sentences.
        evidence: The measurements, as plain data: the held-out ``metric`` (``name``,
            ``better``), per variant and seed the probes' ``held_out`` value (and
            ``train_loss``, ``gap``, ``val_acc`` when known), the ``curve`` over the probe
            (``fractions`` of the run and per variant ``[seed][checkpoint]``), dropout's effect
            ``effect_now`` and ``effect_projected`` and the secondary ``projected_relative_gap``
            with their intervals (``mean``, ``ci_low``, ``ci_high``), GDE per seed when
            measured (``gde``), the probe's length and the seeds, ``seconds`` (its cost), and
            for "cannot tell" ``decide_with``: the ``budget`` and ``seeds`` it suggests.
        limits: What the probe cannot tell, as sentences.
    """

    recommendation: str  # one of RECOMMENDATIONS
    schedule: dict[str, Any] | None  # {"sites", "schedule", "p", "cutoff", "shape"}
    regime: str  # "underfitting", "overfitting" or "cannot tell"
    confidence: str | None  # "high" or "medium"; None when the regime cannot be told
    reasons: tuple[str, ...]
    evidence: dict[str, Any]
    limits: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """The advice as plain data (what ``advice.json`` holds).

        Returns:
            A dict with the seven fields, tuples turned into lists, ready for ``json.dump``.
        """
        return dataclasses.asdict(self)

    def to_markdown(self, figure: str | None = None) -> str:
        """The advice as Markdown (``advice.md``), with ``figure`` embedded if given.

        Args:
            figure: A path or URL of the probes' held-out figure, relative to where the
                Markdown will be read; embedded as an image at the end. None (default): none.

        Returns:
            The recommendation (with its schedule), the regime and confidence, the reasons and
                the limits, as Markdown text ending in a newline.
        """
        lines = [
            f"**Recommendation: {self.recommendation.replace('_', ' ')}**"
            + (f" — `{_schedule_text(self.schedule)}`" if self.schedule else ""),
            "",
            f"Regime: {self.regime} (confidence: {self.confidence})."
            if self.confidence
            else f"Regime: {self.regime} yet.",
            "",
            "Why:",
            *(f"- {reason}" for reason in self.reasons),
            "",
            "Limits:",
            *(f"- {limit}" for limit in self.limits),
        ]
        if figure:
            lines += ["", f"![probe held-out metric]({figure})"]
        return "\n".join(lines) + "\n"


def _schedule_text(schedule: Mapping[str, Any]) -> str:
    parts = [f"{schedule['sites']}: {schedule['schedule']} p={schedule['p']:g}"]
    if schedule.get("cutoff") is not None:
        parts.append(f"cutoff={schedule['cutoff']:.3g} of the run")
    if schedule.get("shape"):
        parts.append(f"shape={schedule['shape']}")
    return ", ".join(parts)
