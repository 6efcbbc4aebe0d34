"""Student-t intervals over seeds, and the power of the paired comparison they decide.

- `mean_interval`: the mean of some values and its two-sided Student-t interval;
- `paired_t_interval`: the same for the paired differences ``a - b``;
- `min_detectable_effect`: the smallest true paired difference the interval would show
  (clear 0) with a given probability, from the noncentral t distribution;
- `seeds_for_power`: how many seeds bring the minimum detectable effect down to a target
  (the report's one power definition: 80% power);
- `seeds_needed`: how many seeds bring the interval's half-width below a target;
- `confidence_sequence`: an interval for the mean of paired differences that stays valid
  however many times it is read as seeds are added (`sequential_min_detectable_effect` and
  `sequential_seeds_for_power` restate power for it).

scipy (the ``data`` extra) is imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from types import ModuleType

import numpy as np

from dropkit._optional import import_optional

__all__ = [
    "CS_PRIOR_PRECISION",
    "confidence_sequence",
    "confidence_sequence_radius",
    "mean_interval",
    "min_detectable_effect",
    "paired_t_interval",
    "seeds_for_power",
    "seeds_needed",
    "sequential_min_detectable_effect",
    "sequential_seeds_for_power",
    "t_quantile",
]


def _scipy(module: str) -> ModuleType:
    return import_optional(
        module, "data", "for the confidence intervals (dropkit.experiments.stats)"
    )


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")


def t_quantile(level: float, dof: int) -> float:
    """The two-sided Student-t quantile: ``t.ppf(0.5 + level / 2, dof)``."""
    t = _scipy("scipy.stats").t
    return float(t.ppf(0.5 + level / 2, dof))


def mean_interval(
    values: Sequence[float] | np.ndarray, level: float = 0.95
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` and its one-sample Student-t interval.

    ``mean -+ t(0.5 + level / 2, n - 1) * sd / sqrt(n)`` with ``sd`` the sample standard
    deviation (``ddof=1``). Needs at least 2 values.
    """
    _check_level(level)
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) < 2:
        raise ValueError(f"need at least 2 values in a flat sequence, got shape {x.shape}")
    mean = float(x.mean())
    half = t_quantile(level, len(x) - 1) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return mean, mean - half, mean + half


def paired_t_interval(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, level: float = 0.95
) -> tuple[float, float, float]:
    """Mean of ``a - b`` (paired by position) and its Student-t interval at ``level``."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired arms differ in shape: {x.shape} vs {y.shape}")
    if x.ndim != 1 or len(x) < 2:
        raise ValueError(f"need at least 2 paired values per arm, got shape {x.shape}")
    return mean_interval(x - y, level)


def min_detectable_effect(sd: float, n: int, level: float = 0.95, power: float = 0.8) -> float:
    """The smallest true mean paired difference shown with probability ``power``.

    For ``n`` pairs whose differences have standard deviation ``sd``, a difference of true mean
    ``delta > 0`` makes the t statistic ``T' = mean / (s / sqrt(n))`` noncentral t with
    ``n - 1`` degrees of freedom and noncentrality ``delta * sqrt(n) / sd``. The two-sided
    ``level`` interval clears 0 on the positive side exactly when ``T' > t_crit`` with
    ``t_crit = t.ppf(0.5 + level / 2, n - 1)``; the returned ``delta`` solves
    ``P(T' > t_crit) = power`` exactly (scipy's ``nct`` and ``brentq``), not by the normal
    approximation ``(z_{0.5+level/2} + z_power) * sd / sqrt(n)``.

    It ignores the probability of the interval clearing 0 on the opposite side, which at these
    effects is negligible. Read it as: "an effect this large would have been shown ``power``
    (80%) of the time"; an interval that straddles 0 with an mde far above the effect the paper
    reported says the experiment could not have shown it, not that the effect is absent.
    """
    brentq = _scipy("scipy.optimize").brentq
    nct = _scipy("scipy.stats").nct

    _check_level(level)
    if n < 2:
        raise ValueError(f"the minimum detectable effect needs n >= 2 pairs, got n={n}")
    if not math.isfinite(sd) or sd < 0:
        raise ValueError(f"sd must be finite and >= 0, got {sd!r}")
    alpha_half = (1.0 - level) / 2
    if not alpha_half < power < 1.0:
        raise ValueError(f"power must lie in ({alpha_half:g}, 1), got {power!r}")
    if sd == 0:
        return 0.0
    df = n - 1
    t_crit = t_quantile(level, df)

    def shortfall(nc: float) -> float:
        return float(nct.sf(t_crit, df, nc)) - power

    high = t_crit + 4.0  # at nc = 0 the shortfall is alpha_half - power < 0
    while shortfall(high) < 0:
        high *= 2
    nc = brentq(shortfall, 0.0, high, xtol=1e-12, rtol=1e-12)
    return float(nc * sd / math.sqrt(n))


def _smallest_n(enough: Callable[[int], bool]) -> int:
    """The smallest ``n >= 2`` with ``enough(n)``, for a condition that stays true once it holds:
    doubling to bracket it, then bisection (large answers without a scan)."""
    if enough(2):
        return 2
    low, high = 2, 4  # invariant: not enough(low)
    while not enough(high):
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        if enough(mid):
            high = mid
        else:
            low = mid
    return high


def seeds_for_power(sd: float, effect: float, level: float = 0.95, power: float = 0.8) -> int:
    """The smallest ``n >= 2`` whose `min_detectable_effect` is at most ``effect``: how
    many seeds would show a true paired difference of ``effect`` with probability ``power``
    when the differences have standard deviation ``sd`` (the MDE falls as ``n`` grows)."""
    if not effect > 0:
        raise ValueError(f"effect must be > 0, got {effect!r}")

    return _smallest_n(lambda n: min_detectable_effect(sd, n, level, power) <= effect)


def seeds_needed(sd: float, half_width: float, level: float = 0.95) -> int:
    """The smallest ``n >= 2`` with ``t.ppf(0.5 + level / 2, n - 1) * sd / sqrt(n) < half_width``.

    How many seeds bring the ``level`` interval's half-width below ``half_width`` when the paired
    differences have standard deviation ``sd`` (the half-width falls as ``n`` grows).
    """
    _check_level(level)
    if not math.isfinite(sd) or sd < 0:
        raise ValueError(f"sd must be finite and >= 0, got {sd!r}")
    if not half_width > 0:
        raise ValueError(f"half_width must be > 0, got {half_width!r}")

    return _smallest_n(lambda n: t_quantile(level, n - 1) * sd / math.sqrt(n) < half_width)


# --- confidence sequences --------------------------------------------------------------------

CS_PRIOR_PRECISION = 1.0
"""The precision ``c`` of the normal mixture over the standardized effect ``mean / sd`` (prior
sd ``1 / sqrt(c)`` = 1: effects of about one standard deviation of the differences), fixed
before any result was seen. It sets where the sequence is tightest: at 8, 16 and 32 seeds its
half-width is 1.80x, 1.65x and 1.64x the fixed-n 95% t interval's; at 4 seeds or fewer it is
the whole line."""


def confidence_sequence_radius(n: int, ss: float, alpha: float = 0.05) -> float:
    """The half-width of `confidence_sequence` for ``n`` differences whose squared deviations
    from their mean sum to ``ss`` (infinite when ``n`` is too small to exclude anything)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    if n < 2:
        return math.inf
    c = CS_PRIOR_PRECISION
    log_k = (2.0 * math.log(1.0 / alpha) + math.log((c + n) / c)) / n
    k = math.exp(log_k)
    room = 1.0 - k * c / (n + c)
    if room <= 0.0:
        return math.inf
    return math.sqrt(math.expm1(log_k) * ss / (n * room))


def confidence_sequence(
    differences: Sequence[float] | np.ndarray, alpha: float = 0.05
) -> tuple[float, float]:
    """``(low, high)`` for the mean of ``differences``, valid simultaneously over every number
    of them: the chance that any of the intervals read as they grow ever excludes the true
    mean is at most ``alpha``, however often they are read and whenever one stops.

    The scale-invariant mixture of Lai (1976) (see Wang and Ramdas 2023, "Anytime-valid t-tests
    and confidence sequences for Gaussian means with unknown variance"): for i.i.d. normal
    differences of unknown variance, the likelihood ratio of the maximal scale invariant, mixed
    over the standardized effect with a normal prior of precision ``CS_PRIOR_PRECISION``,

        M_n(mu) = sqrt(c / (c + n)) * (V / (V - S**2 / (n + c))) ** (n / 2),

    with ``S`` and ``V`` the sum and the sum of squares of ``differences - mu``, is a
    nonnegative martingale of mean 1 when ``mu`` is the true mean; Ville's inequality bounds
    the chance it ever reaches ``1 / alpha``. The sequence is ``{mu: M_n(mu) < 1 / alpha}``,
    an interval around the sample mean in closed form. It assumes normal differences: heavy
    tails cost coverage (``benchmarks/sequential_seeds.py`` measures it).

    Args:
        differences: The paired differences so far, at least 2, all finite.
        alpha: One minus the coverage over the whole sequence (default 0.05).

    Returns:
        The interval; ``(-inf, inf)`` while too few differences can exclude anything (4 or
            fewer at the default precision).

    Raises:
        ValueError: If fewer than 2 differences are given, one is not finite, or ``alpha``
            is not in (0, 1).
    """
    x = np.asarray(differences, dtype=np.float64)
    if x.ndim != 1 or len(x) < 2:
        raise ValueError(f"need at least 2 differences in a flat sequence, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("every difference must be finite")
    mean = float(x.mean())
    radius = confidence_sequence_radius(len(x), float(((x - mean) ** 2).sum()), alpha)
    return mean - radius, mean + radius


def sequential_min_detectable_effect(
    sd: float, n: int, alpha: float = 0.05, power: float = 0.8
) -> float:
    """The smallest true mean difference the `confidence_sequence` clears 0 for with
    probability ``power`` at ``n`` differences of standard deviation ``sd``: its radius (with
    the sample sd taken as ``sd``) plus ``z_power * sd / sqrt(n)``, a normal approximation.
    Infinite where the sequence is still the whole line."""
    if not math.isfinite(sd) or sd < 0:
        raise ValueError(f"sd must be finite and >= 0, got {sd!r}")
    norm = _scipy("scipy.stats").norm
    radius = confidence_sequence_radius(n, (n - 1) * sd**2, alpha)
    return radius + float(norm.ppf(power)) * sd / math.sqrt(n)


def sequential_seeds_for_power(
    sd: float, effect: float, alpha: float = 0.05, power: float = 0.8
) -> int:
    """The smallest ``n >= 2`` whose `sequential_min_detectable_effect` is at most ``effect``."""
    if not effect > 0:
        raise ValueError(f"effect must be > 0, got {effect!r}")
    return _smallest_n(lambda n: sequential_min_detectable_effect(sd, n, alpha, power) <= effect)
