"""studies/stats.py against brute force and known cases: what the ranking audit and Table 1's statistics rest on."""
import itertools
import math

import torch
from hypothesis import given, settings, strategies as st

from studies.stats import (adjusted_lead, bootstrap_interval, chance_above_median, kendall, loo_predictions,
                           matched_permutation_p, paired_difference, pearson, percentile, permutation_p, quadratic,
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


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 3), st.integers(12, 30))
def test_loo_predictions_are_refits_without_the_item(seed, columns, n):
    """The closed form of leave-one-out least squares (quadratic design in `columns` random covariates) equals
    fitting to the other n - 1 items and predicting the one left out, for every item."""
    g = torch.Generator().manual_seed(seed)
    cols = [torch.randn(n, generator=g, dtype=torch.float64).tolist() for _ in range(columns)]
    x = quadratic(cols)
    assert x.shape == (n, 1 + columns + columns * (columns + 1) // 2)
    y = torch.randn(n, generator=g, dtype=torch.float64)
    loo, hat = loo_predictions(x, y)
    assert bool(((hat > 0) & (hat < 1)).all())
    for i in range(n):
        rest = [j for j in range(n) if j != i]
        beta = torch.linalg.lstsq(x[rest], y[rest, None]).solution[:, 0]
        assert math.isclose(float(loo[i]), float(x[i] @ beta), rel_tol=1e-6, abs_tol=1e-6)


def test_adjusted_lead_finds_a_planted_lead_at_equal_covariates_and_none_without():
    """Accuracy an exact quadratic in two covariates: treated items planted 1 above it lead by 1 each, and no other
    few other choices of items lead as much (a choice that leaves planted items in the fit can, through leverage:
    here 14 of the C(14, 3) = 364); with nothing planted every choice leads by 0, p = 1."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(14, generator=g, dtype=torch.float64), torch.randint(1, 9, (14,), generator=g).double()
    y = 80 - 2 * a + 0.3 * b - 0.1 * b * b + a * b
    x = quadratic([a.tolist(), b.tolist()])
    leads, mean, p = adjusted_lead(x, (y + torch.tensor([1.0, 1.0, 1.0] + [0.0] * 11)).tolist(), [0, 1, 2])
    assert all(math.isclose(v, 1.0, abs_tol=1e-9) for v in leads) and math.isclose(mean, 1.0)
    assert p == 14 / math.comb(14, 3) < 0.05
    leads, mean, p = adjusted_lead(x, y.tolist(), [0, 1, 2])
    assert abs(mean) < 1e-9 and p == 1.0
    _, _, sampled = adjusted_lead(x, y.tolist(), [0, 1, 2], samples=50)  # 364 choices > 50: sampled
    assert sampled == 1.0
    # a lead among noise: sampling 4,000 of the 364 choices (the observed one counted) agrees with enumerating them
    noisy = (y + torch.tensor([0.6, 0.6, 0.6] + [0.0] * 11) + 0.3 * torch.randn(14, generator=g, dtype=torch.float64))
    _, _, exact = adjusted_lead(x, noisy.tolist(), [0, 1, 2])
    _, _, sampled = adjusted_lead(x, noisy.tolist(), [0, 1, 2], samples=4000)
    assert 0 < exact < 0.5 and abs(sampled - exact) < 0.02


@settings(max_examples=20, deadline=None)
@given(st.floats(0.02, 0.98), st.floats(0.05, 2.0), st.floats(0.05, 2.0))
def test_chance_above_median_against_one_peer_in_closed_form(q, noise_sd, true_sd):
    """With one peer, 'above the median' is beating it: the difference of the two measurements is normal, mean
    true_sd * z_q, variance 2 noise^2 + true_sd^2; the Monte Carlo lies within 6 standard errors of that."""
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(q, dtype=torch.float64))
    exact = float(torch.distributions.Normal(0.0, 1.0).cdf(true_sd * z / math.sqrt(2 * noise_sd ** 2 + true_sd ** 2)))
    assert abs(chance_above_median(q, noise_sd, true_sd, 1, samples=40000) - exact) < 6 * 0.5 / math.sqrt(40000)


@settings(max_examples=25, deadline=None)
@given(st.floats(0.01, 0.99), st.floats(0.01, 0.99), st.floats(0.0, 1.0), st.integers(1, 30))
def test_chance_above_median_never_falls_as_the_true_quantile_rises(q1, q2, noise_sd, peers):
    lo, hi = sorted((q1, q2))
    assert (chance_above_median(lo, noise_sd, 0.5, peers, samples=2000)
            <= chance_above_median(hi, noise_sd, 0.5, peers, samples=2000))


def test_chance_above_median_known_cases():
    """Peers all alike (true_sd 0): the network's rank among n + 1 is uniform, so 'percentile above 50' (more than
    half below it) has chance #{b in 0..n: 2b > n} / (n + 1), e.g. 4/9 for 8 peers; a judge without noise puts a
    network at the 75th or 25th true percentile above or below the median of 2,001 peers almost surely."""
    for n in (1, 2, 7, 8, 24):
        exact = sum(2 * b > n for b in range(n + 1)) / (n + 1)
        assert abs(chance_above_median(0.7, 1.0, 0.0, n, samples=40000) - exact) < 0.015
    assert chance_above_median(0.75, 0.0, 1.0, 2001, samples=2000) > 0.999
    assert chance_above_median(0.25, 0.0, 1.0, 2001, samples=2000) < 0.001
