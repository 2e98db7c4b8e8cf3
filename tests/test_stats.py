"""studies/stats.py against brute force and known cases: what the ranking audit and Table 1's statistics rest on."""
import itertools
import math

import torch
from hypothesis import given, settings, strategies as st

from studies.stats import (bootstrap_interval, kendall, matched_permutation_p, paired_difference, pearson, percentile,
                           permutation_p,
                           ranks, spearman, top_hit_rate)

values = st.lists(st.integers(-5, 5), min_size=3, max_size=12)


def brute_tau_b(x, y):
    pairs = list(itertools.combinations(range(len(x)), 2))
    c = sum(((x[i] > x[j]) - (x[i] < x[j])) * ((y[i] > y[j]) - (y[i] < y[j])) for i, j in pairs)
    nx = sum(x[i] != x[j] for i, j in pairs)
    ny = sum(y[i] != y[j] for i, j in pairs)
    return c / math.sqrt(nx * ny)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_kendall_is_tau_b_by_pair_counting(data):
    x = data.draw(values)
    y = data.draw(st.lists(st.integers(-5, 5), min_size=len(x), max_size=len(x)))
    if len(set(x)) < 2 or len(set(y)) < 2:
        return
    assert math.isclose(kendall(x, y), brute_tau_b(x, y), abs_tol=1e-12)
    assert kendall(x, x) == 1.0 and kendall(x, [-v for v in x]) == -1.0


@settings(max_examples=200, deadline=None)
@given(values)
def test_ranks_average_ties_and_spearman_sees_only_order(x):
    r = ranks(x)
    assert math.isclose(float(r.sum()), len(x) * (len(x) + 1) / 2)
    for v in set(x):  # tied values share one rank, the mean of the places they take
        places = [k + 1 for k, u in enumerate(sorted(x)) if u == v]
        assert all(math.isclose(float(r[i]), sum(places) / len(places)) for i, u in enumerate(x) if u == v)
    if len(set(x)) > 1:
        assert math.isclose(spearman(x, [math.exp(v) for v in x]), 1.0)  # any increasing map: rho = 1
        assert math.isclose(spearman(x, x), pearson(r, r))


def test_known_values():
    """Textbook cases: one swapped pair of four gives tau = 2/3 and rho = 0.8."""
    assert math.isclose(kendall([1, 2, 3, 4], [1, 2, 4, 3]), 4 / 6)
    assert math.isclose(spearman([1, 2, 3, 4], [1, 2, 4, 3]), 0.8)
    assert math.isclose(pearson([1, 2, 3], [2, 4, 6]), 1.0)
    assert top_hit_rate([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], list(range(10)), 0.2) == 1.0
    assert top_hit_rate([10, 9, 8, 7, 6, 5, 4, 3, 2, 1], list(range(10)), 0.2) == 0.0
    assert top_hit_rate([0, 0, 0, 0, 0, 0, 0, 0, 5, 0], list(range(10)), 0.2) == 0.5


def test_bootstrap_interval_holds_the_estimate_and_narrows_with_data():
    g = torch.Generator().manual_seed(0)
    widths = []
    for n in (20, 200):
        x = torch.randn(n, generator=g, dtype=torch.float64)
        y = x + torch.randn(n, generator=g, dtype=torch.float64)
        lo, hi = bootstrap_interval(kendall, x, y, samples=500)
        assert lo <= kendall(x, y) <= hi and -1 <= lo < hi <= 1
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2  # about 1/sqrt(n): ten times the data, about a third of the width


def test_permutation_p_matches_exact_enumeration():
    """For small groups the share of all relabellings is known exactly; the sampled p must come close to it."""
    a, b = [3.1, 2.7, 3.5], [2.0, 2.9, 2.2, 2.4]
    both, observed = a + b, sum(a) / 3 - sum(b) / 4
    splits = list(itertools.combinations(range(7), 3))
    exact = sum(sum(both[i] for i in s) / 3 - sum(both[i] for i in range(7) if i not in s) / 4 >= observed - 1e-12
                for s in splits) / len(splits)
    assert abs(permutation_p(a, b, samples=20000) - exact) < 0.01
    assert permutation_p(b, a, samples=2000) > 0.9  # the other direction: no evidence at all


def test_percentile_counts_ties_half():
    assert percentile(5, [1, 2, 3, 4]) == 100 and percentile(0, [1, 2]) == 0
    assert percentile(2, [1, 2, 3]) == 50 and percentile(2.5, [1, 2, 3, 4]) == 50


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 6), min_size=2, max_size=5), min_size=1, max_size=4))
def test_matched_permutation_p_is_the_share_of_assignments_at_least_as_extreme(groups):
    """Exact: the share of the ways to call one member of each group 'treated' whose summed lead over its group's
    mean is at least the observed one; the sampled version comes close to it."""
    observed = sum(g[0] - sum(g) / len(g) for g in groups)
    picks = list(itertools.product(*groups))
    lead = [sum(v - sum(g) / len(g) for v, g in zip(pick, groups)) for pick in picks]
    exact = sum(t >= observed - 1e-9 for t in lead) / len(picks)
    assert math.isclose(matched_permutation_p(groups), exact)
    if len(picks) > 100:  # more assignments than draws: sampled, within 4 standard errors of its 100 draws
        assert abs(matched_permutation_p(groups, samples=100) - exact) < 4 * 0.5 / math.sqrt(100) + 0.01


def test_matched_permutation_p_known_cases():
    """Three searched networks each best of its 9 peers: p = (1/10)^3; each the median: p near one half or more."""
    best = [[10.0] + list(range(9)) for _ in range(3)]
    assert math.isclose(matched_permutation_p(best), 1e-3)
    assert matched_permutation_p([[4.0] + list(range(9)) for _ in range(3)]) > 0.4


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-100, 100), min_size=4, max_size=30, unique=True))
def test_paired_difference_of_a_reading_with_itself_and_with_its_reverse(truth):
    """The same reading twice differs by 0 on every resample; the truth itself against its reverse differs by
    tau 1 - (-1) = 2, never at or below 0."""
    diff, interval, share = paired_difference(kendall, truth, truth, truth, samples=200)
    assert diff == 0 and interval == (0.0, 0.0) and share == 1.0
    rev = [-t for t in truth]
    diff, interval, share = paired_difference(kendall, truth, rev, truth, samples=200)
    assert math.isclose(diff, 2.0) and share == 0.0 and interval[1] <= 2.0 + 1e-12
