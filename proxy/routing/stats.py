"""Running statistics for experiments: Welford mean/variance, and Welch's two-sided t-test.

The p-value uses the regularised incomplete beta function (continued fraction, modified Lentz), so
no SciPy is needed: p = I_x(df/2, 1/2) with x = df / (df + t^2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(slots=True)
class Running:
    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        delta = value - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (value - self.mean)

    @property
    def variance(self) -> float:
        return self.m2 / (self.count - 1) if self.count > 1 else 0.0


def welch_p_value(a: Running, b: Running) -> float | None:
    """Two-sided p-value that a and b have the same mean; None with fewer than 2 samples each."""
    if a.count < 2 or b.count < 2:
        return None
    sa, sb = a.variance / a.count, b.variance / b.count
    if sa + sb == 0:
        return 1.0 if a.mean == b.mean else 0.0
    t = (a.mean - b.mean) / math.sqrt(sa + sb)
    df = (sa + sb) ** 2 / ((sa**2 / (a.count - 1) if sa else 0) + (sb**2 / (b.count - 1) if sb else 0))
    return regularized_beta(df / (df + t * t), df / 2, 0.5)


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) for 0 <= x <= 1."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _continued_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _continued_fraction(1 - x, b, a) / b


def _continued_fraction(x: float, a: float, b: float, steps: int = 300) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, steps + 1):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-12:
            break
    return result
