from __future__ import annotations

import random

import pytest

from proxy.routing.stats import Running, regularized_beta, welch_p_value


@pytest.mark.parametrize(("df", "t", "p"), [(10, 2.228, 0.05), (1000, 1.962, 0.05), (5, 4.032, 0.01)])
def test_t_distribution_tail_matches_tables(df: float, t: float, p: float) -> None:
    assert regularized_beta(df / (df + t * t), df / 2, 0.5) == pytest.approx(p, rel=0.01)


def test_welch_separates_different_means_and_not_equal_ones() -> None:
    rng = random.Random(5)
    same_a, same_b, shifted = Running(), Running(), Running()
    for _ in range(300):
        same_a.add(rng.gauss(1.0, 0.2))
        same_b.add(rng.gauss(1.0, 0.2))
        shifted.add(rng.gauss(1.1, 0.2))
    assert welch_p_value(same_a, same_b) > 0.01  # type: ignore[operator]
    assert welch_p_value(same_a, shifted) < 1e-6  # type: ignore[operator]
    assert welch_p_value(Running(), shifted) is None


def test_running_mean_and_variance() -> None:
    r = Running()
    for value in (2, 4, 4, 4, 5, 5, 7, 9):
        r.add(value)
    assert r.mean == 5 and r.variance == pytest.approx(32 / 7)
