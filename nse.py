"""NSE: evolving the search space over a large operation pool (Ci et al., "Evolving Search Space for Neural
Architecture Search", ICCV 2021), built on this project's operations and cost tables.

What each part is, in the paper's order:

    pool and layers      Sec. 3 (the pool A, a layer's subset of K ops), App. A.1 (the 27-op pool), A.3
    MultiBranchLayer     Sec. 3.2.1, Eq. 1: the mean of the gated branches; the identity always on in normal layers
    uniform_gates        Sec. 3.2.2, Eq. 2: every branch gated by Bernoulli(0.5) in the weight steps
    config_prob          Sec. 3.3.1, Eq. 4: a configuration's probability from p = sigmoid(theta)
    two_configs          Sec. 3.3.1, Eq. 7: two distinct configurations, their probabilities rescaled to sum to 1
    simulated_output     Sec. 3.3.1, Eq. 6-7: the output whose gradient in theta is the simulated gradient
    resource_term        Sec. 3.3.1, Eq. 5 and 8: alpha * R^beta, R the rescaled cost less the target tau
    simplify             Sec. 3.3.1: drop ops whose theta falls below the threshold, with Lock & Rehearse
    pareto_front         Sec. 3.3.2 and App. Fig. 11: the front of the samples, edge samples only as competitors
    aggregate            Sec. 3.3.2: the union of the front's operations, layer by layer
    replenish            Sec. 3.3.3: back to K ops per layer from the part of the pool a layer has not traversed

A configuration g of a layer is a tuple of 0/1 gates over its current ops (the identity of a normal layer is not
among them: it is always on, its p fixed to 1, App. A.3). A reduction layer (C_in != C_out) needs one op at least.
"""
import itertools
import math
import random

import torch
import torch.nn as nn

# NSE App. B: theta starts at 0 (p = 0.5); an op whose theta falls below -2 is dropped; D and D_e samples
THRESHOLD, D, D_E = -2.0, 2000, 100
# NSE App. B: the resource term alpha * R^beta, FLOPs in millions (tau 300) or latency in ms (tau 7)
RESOURCE = {"flops": dict(alpha=1e-5, beta=2, tau=300.0), "latency": dict(alpha=2e-2, beta=2, tau=7.0)}


# ----------------------------------------------------------------------------------------
# The multi-branch layer (Sec. 3.2.1, Eq. 1)

class MultiBranchLayer(nn.Module):
    """o_g(X) = (1 / sum_n g_n) sum_n g_n op_n(X) over the layer's current ops and, in a normal layer, the identity
    (always on, Eq. 1). ops: {name: module}; theta: one fitness indicator per op (Sec. 3.3.1)."""

    def __init__(self, ops, reduction):
        super().__init__()
        self.names = list(ops)
        self.ops = nn.ModuleDict(ops)
        self.reduction = reduction
        self.theta = nn.Parameter(torch.zeros(len(ops)))

    def branch(self, x, g):
        outs = [self.ops[n](x) for n, on in zip(self.names, g) if on]
        if not self.reduction:
            outs.append(x)
        if not outs:
            raise ValueError("a reduction layer needs one op at least")
        return torch.stack(outs).mean(0) if len(outs) > 1 else outs[0]

    def forward(self, x, g=None, pair=None):
        """g: a configuration (Eq. 1); pair: (g_a, g_b) for a fitness step (simulated_output)."""
        if pair is None:
            return self.branch(x, g)
        g_a, g_b = pair
        if g_b is None:  # a single allowed configuration: nothing to compare it with
            return self.branch(x, g_a)
        w = two_config_weights(torch.sigmoid(self.theta), g_a, g_b)
        with torch.no_grad():
            o_b = self.branch(x, g_b)
        return simulated_output(self.branch(x, g_a), o_b, w)


# ----------------------------------------------------------------------------------------
# Sampling and the fitness indicators (Sec. 3.2.2, 3.3.1)

def allowed(g, reduction):
    return any(g) or not reduction


def configs(k, reduction):
    """Every allowed configuration of a layer with k ops."""
    return [g for g in itertools.product((0, 1), repeat=k) if allowed(g, reduction)]


def uniform_gates(k, reduction, rng):
    """Eq. 2: every gate Bernoulli(0.5), drawn again until allowed (a reduction layer keeps one op)."""
    while True:
        g = tuple(int(rng.random() < 0.5) for _ in range(k))
        if allowed(g, reduction):
            return g


def config_prob(p, g):
    """Eq. 4: p_hat_g = prod_n (g_n p_n + (1 - g_n)(1 - p_n))."""
    terms = [pn if gn else 1 - pn for pn, gn in zip(p, g)]
    return torch.stack(terms).prod() if isinstance(p, torch.Tensor) else math.prod(terms)


def sample_config(p, reduction, rng):
    """A configuration drawn from Eq. 4 (each gate Bernoulli(p_n)), drawn again until allowed."""
    while True:
        g = tuple(int(rng.random() < float(pn)) for pn in p)
        if allowed(g, reduction):
            return g


def two_configs(p, reduction, rng):
    """Eq. 7: g_a drawn from Eq. 4, and another, distinct configuration g_b drawn the same way; g_b is None
    where the layer has one allowed configuration only."""
    g_a = sample_config(p, reduction, rng)
    if len(configs(len(p), reduction)) < 2:
        return g_a, None
    while True:
        g_b = sample_config(p, reduction, rng)
        if g_b != g_a:
            return g_a, g_b


def two_config_weights(p, g_a, g_b):
    """Eq. 7's rescaled probabilities (p~_a, p~_b) = (p_hat_a, p_hat_b) / (p_hat_a + p_hat_b), differentiable in p."""
    pa, pb = config_prob(p, g_a), config_prob(p, g_b)
    return torch.stack([pa, pb]) / (pa + pb)


def simulated_output(o_a, o_b, w):
    """Eq. 6-7: the layer passes o_a on (the sampled configuration, as BinaryConnect), and its gradient in theta is
    dL/do * o_a * dp~_a/dtheta + dL/do * o_b * dp~_b/dtheta. The paper writes dL/do_gb for the second; only o_a is
    forwarded, so both use the gradient at the layer's output, as ProxylessNAS (the paper's [7]) does."""
    return o_a + (w[0] - w[0].detach()) * o_a.detach() + (w[1] - w[1].detach()) * o_b.detach()


def config_cost(costs, g):
    """C(o_g): the cost of a configuration, the sum of its ops' costs (the identity costs nothing)."""
    return sum(c for c, on in zip(costs, g) if on)


def resource_term(layers_pairs, layer_costs, fixed, alpha, beta, tau):
    """Eq. 5 and 8: alpha * R^beta with R = sum_l (p~_a C(o_a) + p~_b C(o_b)) - tau. fixed: the cost of the network
    outside its multi-branch layers (stem, head), added so that tau is the whole network's target (Eq. 8 sums the
    layers alone). layers_pairs: [(layer, (g_a, g_b))]; layer_costs: each layer's op costs."""
    total = torch.tensor(float(fixed))
    for (layer, (g_a, g_b)), costs in zip(layers_pairs, layer_costs):
        if g_b is None:
            total = total + config_cost(costs, g_a)
        else:
            w = two_config_weights(torch.sigmoid(layer.theta), g_a, g_b)
            total = total + w[0] * config_cost(costs, g_a) + w[1] * config_cost(costs, g_b)
    return alpha * (total - tau) ** beta


# ----------------------------------------------------------------------------------------
# Search-space simplification (Sec. 3.3.1)

def simplify(names, theta, inherited, reduction, threshold=THRESHOLD):
    """The ops of one layer kept after a fitness step: those with theta >= threshold, and, by Lock & Rehearse,
    every op inherited from the previous round and the last op of a reduction layer (its highest theta)."""
    keep = [n for n, t in zip(names, theta) if t >= threshold or n in inherited]
    if reduction and not keep:
        keep = [max(zip(names, theta), key=lambda nt: nt[1])[0]]
    return keep


# ----------------------------------------------------------------------------------------
# Pareto-front retrieval and aggregation (Sec. 3.3.2)

def pareto_front(points):
    """Indices of the Pareto-optimal points among [(cost, accuracy, is_edge)]: no other point costs no more and is
    no less accurate, and better in one of the two. Edge samples (D_e, just outside the cost window; App.
    Fig. 11) compete but are never returned. Equal points are all kept."""
    front = []
    for i, (c, a, edge) in enumerate(points):
        if edge:
            continue
        if not any((c2 <= c and a2 >= a) and (c2 < c or a2 > a) for j, (c2, a2, _) in enumerate(points) if j != i):
            front.append(i)
    return front


def aggregate(front_archs, n_layers):
    """The smallest space holding every architecture of the front: per layer, the union of their ops.
    An architecture is a list over layers of the sets of ops its gates turn on."""
    return [set().union(*(arch[l] for arch in front_archs)) for l in range(n_layers)]


# ----------------------------------------------------------------------------------------
# Replenishment (Sec. 3.3.3)

def replenish(kept, traversed, pool, k, rng):
    """A layer's next subset: its kept ops, then ops of the pool it has never held (traversed), drawn at random,
    up to k. Returns (subset, the traversed set with the new ops added)."""
    fresh = [op for op in pool if op not in traversed and op not in kept]
    new = rng.sample(fresh, min(max(k - len(kept), 0), len(fresh)))
    return list(kept) + new, set(traversed) | set(kept) | set(new)


def pool_traversed(traversed, pool):
    """Whether every layer has held every op of the pool: the rounds end (Sec. 3.1, step 4)."""
    return all(set(pool) <= t for t in traversed)


def rng_for(seed):
    return random.Random(seed)
