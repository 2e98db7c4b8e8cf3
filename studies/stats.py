"""The statistics the studies report: correlation and rank correlation, the share of the truly best found, a
bootstrap interval for any of them, and a permutation test. Plain torch on float64, so that every study and test
uses one definition of each.

    pearson(x, y), kendall(x, y) (tau-b, ties counted as scipy does), spearman(x, y) (ties: mean ranks)
    top_hit_rate(predicted, truth, fraction)   the share of the truly best `fraction` that the prediction puts there
    bootstrap_interval(statistic, x, y)        a percentile interval, resampling the (x, y) pairs
    permutation_p(a, b)                        one-sided p of mean(a) > mean(b) under exchangeability
    percentile(value, peers)                   the share (%) of peers below value, ties counted half
    matched_permutation_p(groups)              one-sided p that each group's first member beats its group by chance
    quadratic(columns)                         a design matrix: 1, each column, their squares and products
    loo_predictions(x, y)                      least squares' leave-one-out predictions of y, and the leverages
    adjusted_lead(x, y, treated)               the treated items' mean lead over a fit to the others, and its p
    chance_above_median(q, noise_sd, true_sd, peers)   how often a network at a true quantile measures above its peers
"""
import itertools
import math

import torch


def _vec(x):
    return torch.as_tensor(x, dtype=torch.float64).flatten()


def pearson(x, y):
    x, y = _vec(x), _vec(y)
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / (x.norm() * y.norm()))


def kendall(x, y):
    """Kendall's tau-b over all pairs: (concordant - discordant) / sqrt(pairs untied in x * pairs untied in y)."""
    x, y = _vec(x), _vec(y)
    dx, dy = torch.sign(x[:, None] - x[None, :]), torch.sign(y[:, None] - y[None, :])
    concord = (dx * dy).sum() / 2
    nx, ny = (dx != 0).sum().double() / 2, (dy != 0).sum().double() / 2  # (an integer sqrt would be float32)
    return float(concord / torch.sqrt(nx * ny))


def ranks(x):
    """Ranks 1..n, tied values sharing the mean of their ranks."""
    x = _vec(x)
    below = (x[None, :] < x[:, None]).sum(1).double()
    ties = (x[None, :] == x[:, None]).sum(1).double()
    return below + (ties + 1) / 2


def spearman(x, y):
    """Spearman's rho: Pearson's r of the ranks."""
    return pearson(ranks(x), ranks(y))


def top_hit_rate(predicted, truth, fraction=0.1):
    """Of the k = ceil(fraction * n) items best by `truth`, the share that `predicted` also ranks among its k best
    (higher is better in both; ties broken by position)."""
    predicted, truth = _vec(predicted), _vec(truth)
    k = max(1, math.ceil(fraction * len(truth)))
    best = set(torch.argsort(truth, descending=True, stable=True)[:k].tolist())
    picked = set(torch.argsort(predicted, descending=True, stable=True)[:k].tolist())
    return len(best & picked) / k


def _resampled(statistic, n, samples, seed):
    """statistic(idx) over `samples` resamples idx of range(n) with replacement; NaN values (ties) left out."""
    g = torch.Generator().manual_seed(seed)
    values = [statistic(torch.randint(n, (n,), generator=g)) for _ in range(samples)]
    return torch.tensor([v for v in values if not math.isnan(v)], dtype=torch.float64)


def _interval(values, level):
    if not len(values):  # every resample tied: no interval
        return math.nan, math.nan
    tail = (1 - level) / 2
    return float(torch.quantile(values, tail)), float(torch.quantile(values, 1 - tail))


def bootstrap_interval(statistic, x, y, samples=2000, level=0.95, seed=0):
    """The percentile interval of statistic(x, y) over `samples` resamples of the (x, y) pairs with replacement.
    A resample on which the statistic is undefined (all values tied: NaN) is left out."""
    x, y = _vec(x), _vec(y)
    return _interval(_resampled(lambda i: statistic(x[i], y[i]), len(x), samples, seed), level)


def paired_difference(statistic, a, b, truth, samples=2000, level=0.95, seed=0):
    """statistic(a, truth) - statistic(b, truth) for two readings of the same items, its paired bootstrap interval
    (the same resample of items for both) and the share of resamples where it is not above 0 (a one-sided
    bootstrap p-value for 'a ranks better than b')."""
    a, b, t = _vec(a), _vec(b), _vec(truth)
    values = _resampled(lambda i: statistic(a[i], t[i]) - statistic(b[i], t[i]), len(t), samples, seed)
    return (statistic(a, t) - statistic(b, t), _interval(values, level),
            float((values <= 0).double().mean()) if len(values) else math.nan)


def permutation_p(a, b, samples=10000, seed=0):
    """One-sided p-value of mean(a) - mean(b) under the null that the labels 'a' and 'b' are exchangeable: the
    share of random relabellings (the observed one counted, so p > 0) whose difference is at least the observed."""
    a, b = _vec(a), _vec(b)
    both, n = torch.cat([a, b]), len(a)
    observed = a.mean() - b.mean()
    g = torch.Generator().manual_seed(seed)
    hits = 1
    for _ in range(samples):
        perm = both[torch.randperm(len(both), generator=g)]
        hits += int(perm[:n].mean() - perm[n:].mean() >= observed - 1e-12)
    return hits / (samples + 1)


def percentile(value, peers):
    """The share (%) of `peers` below `value`, a tie counting half: 50 is the peers' median."""
    below = sum(v < value for v in peers) + 0.5 * sum(v == value for v in peers)
    return 100.0 * below / len(peers)


def matched_permutation_p(groups, samples=100000, seed=0):
    """One-sided p-value of T = sum over groups of (first member - the group's mean), each group a list [treated,
    *peers], under the null that within each group the treated one is any member with equal chance (a stratified
    permutation test: one searched network against random networks of its FLOPs, per seed). Exact when the
    groups' sizes multiply to at most `samples`, else that many random draws (the observed one counted)."""
    centred = [_vec(g) - _vec(g).mean() for g in groups]
    observed = float(sum(c[0] for c in centred))
    if math.prod(len(c) for c in centred) <= samples:
        sums = [float(sum(pick)) for pick in itertools.product(*(c.tolist() for c in centred))]
        return sum(t >= observed - 1e-9 for t in sums) / len(sums)
    g = torch.Generator().manual_seed(seed)
    hits = 1
    for _ in range(samples):
        t = sum(float(c[torch.randint(len(c), (), generator=g)]) for c in centred)
        hits += t >= observed - 1e-9
    return hits / (samples + 1)


def quadratic(columns):
    """The design matrix of a full quadratic model in the given columns (each a list over the same items): a
    constant, every column, every square and every product of two columns."""
    cols = [_vec(c) for c in columns]
    terms = [torch.ones_like(cols[0])] + cols + [a * b for i, a in enumerate(cols) for b in cols[i:]]
    return torch.stack(terms, 1)


def loo_predictions(x, y):
    """Each y_i predicted by least squares fitted to the other items (design matrix x): y_i - e_i / (1 - h_ii), with
    e the residuals of the fit to all and h the hat matrix's diagonal (the same as refitting without item i); and h.
    An item with h_ii near 1 has covariates outside the others' span: no fit to the others predicts it."""
    x, y = torch.as_tensor(x, dtype=torch.float64), _vec(y)
    pinv = torch.linalg.pinv(x)
    residual = y - x @ (pinv @ y)
    hat = (x * pinv.T).sum(1)
    return y - residual / (1 - hat), hat


def _lead(x, y, treated):
    rest = torch.ones(len(y), dtype=torch.bool)
    rest[treated] = False
    beta = torch.linalg.lstsq(x[rest], y[rest, None]).solution[:, 0]
    return y[treated] - x[treated] @ beta


def adjusted_lead(x, y, treated, samples=10000, seed=0):
    """The `treated` items' leads over a least-squares fit (design matrix x) to the other items, their mean, and the
    one-sided p-value of that mean under the null that the treated are any items of the same number: the share of
    relabellings (the model refitted for each) whose mean lead is at least the observed; exact (every choice of
    items enumerated) when there are at most `samples` choices, else that many random ones (the observed one
    counted). (An effect at equal covariates: e.g. searched networks against a model of the random ones' accuracy
    in FLOPs and depth.)"""
    x, y = torch.as_tensor(x, dtype=torch.float64), _vec(y)
    treated = torch.as_tensor(treated, dtype=torch.long)
    leads = _lead(x, y, treated)
    observed = float(leads.mean())
    n, k = len(y), len(treated)
    if math.comb(n, k) <= samples:
        means = [float(_lead(x, y, torch.tensor(pick)).mean()) for pick in itertools.combinations(range(n), k)]
        return leads.tolist(), observed, sum(m >= observed - 1e-9 for m in means) / len(means)
    g = torch.Generator().manual_seed(seed)
    hits = 1
    for _ in range(samples):
        hits += float(_lead(x, y, torch.randperm(n, generator=g)[:k]).mean()) >= observed - 1e-9
    return leads.tolist(), observed, hits / (samples + 1)


def chance_above_median(q, noise_sd, true_sd, peers, samples=100000, seed=0):
    """The probability that a network whose true accuracy lies at quantile `q` of its peers' measures with a
    percentile above 50 among `peers` measured ones (stats.percentile), when the peers' true accuracies are normal
    with sd `true_sd` and every measurement adds normal noise of sd `noise_sd` (a judge's seed noise: one training
    seed's sd over the square root of the seeds averaged). Monte Carlo over `samples` draws, the same draws for every
    q (so it never falls as q rises)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(q, dtype=torch.float64))
    mine = true_sd * z + noise_sd * torch.randn(samples, 1, generator=g, dtype=torch.float64)
    theirs = (true_sd * torch.randn(samples, peers, generator=g, dtype=torch.float64)
              + noise_sd * torch.randn(samples, peers, generator=g, dtype=torch.float64))
    below = (theirs < mine).sum(1)
    return float((2 * below > peers).double().mean())
