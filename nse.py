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
import dataclasses
import itertools
import os
import math
import random
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cost import op_flops
from supernet import NSE_POOL, bn_momentum, init_weights, make_op

# NSE App. B: theta starts at 0 (p = 0.5); an op whose theta falls below -2 is dropped; D and D_e samples
THRESHOLD, D, D_E = -2.0, 2000, 100
# NSE App. B: the resource term alpha * R^beta, FLOPs in millions (tau 300) or latency in ms (tau 7)
RESOURCE = {"flops": dict(alpha=1e-5, beta=2, tau=300.0), "latency": dict(alpha=2e-2, beta=2, tau=7.0)}


# ----------------------------------------------------------------------------------------
# The pool and the macro structure (NSE App. A.1, Table 4)

@dataclass(frozen=True)
class Macro:
    """A chain of multi-branch layers: a 3x3 stem, stages of (width, layers, stride of the first), a 1x1 conv,
    pooling and the classifier. A layer is a reduction layer where C_in != C_out (App. Fig. 6)."""
    name: str
    input_size: int
    in_channels: int
    num_classes: int
    stem: tuple
    stages: tuple
    head: int
    pool: tuple
    k: int

    def layers(self):
        """[(c_in, c_out, stride, input resolution)] of every multi-branch layer."""
        out, c, r = [], self.stem[0], -(-self.input_size // self.stem[1])
        for width, n, stride in self.stages:
            for i in range(n):
                s = stride if i == 0 else 1
                out.append((c, width, s, r))
                c, r = width, -(-r // s)
        return out


# the laptop pool: 13 ops of NSE_POOL's kinds (see README, "NSE"), K = 4, 3 rounds on Fashion-MNIST at 28 px
LAPTOP_POOL = tuple([f"mbconv_k{k}_e{e}" for k in (3, 5, 7) for e in (1, 3, 6)]
                    + ["dilconv_k3_d2_e3", "dilconv_k3_d3_e3", "fconv_k5_e2", "fconv_k7_e2"])
MACROS = {
    "imagenet": Macro("imagenet", 224, 3, 1000, (16, 2), ((16, 1, 1), (24, 4, 2), (40, 4, 2), (80, 4, 2), (96, 4, 1),
                                                         (192, 4, 2), (320, 1, 1)), 1024, tuple(NSE_POOL), 5),
    "laptop": Macro("laptop", 28, 1, 10, (16, 1), ((16, 1, 1), (24, 2, 2), (40, 2, 2), (80, 2, 2)), 256,
                    LAPTOP_POOL, 4),
}


def signature(op, c_in, c_out, stride, res):
    return f"{op}/{c_in}/{c_out}/{stride}/{res}"


def fixed_flops(macro):
    """FLOPs outside the multi-branch layers: the stem, the 1x1 conv and the classifier."""
    c_last, r_last = macro.stages[-1][0], macro.layers()[-1][3] // macro.layers()[-1][2]
    return (op_flops(signature("conv3x3", macro.in_channels, macro.stem[0], macro.stem[1], macro.input_size))
            + op_flops(signature("conv1x1", c_last, macro.head, 1, r_last))
            + op_flops(signature("linear", macro.head, macro.num_classes, 1, 1)))


# ----------------------------------------------------------------------------------------
# The multi-branch layer (Sec. 3.2.1, Eq. 1)

class MultiBranchLayer(nn.Module):
    """o_g(X) = (1 / sum_n g_n) sum_n g_n op_n(X) over the layer's ops and, in a normal layer, the identity
    (always on, Eq. 1). ops: {name: module}; theta: one fitness indicator per op (Sec. 3.3.1); alive: the ops not
    dropped by simplification (a dropped op's gate is always 0). A configuration g has one gate per op."""

    def __init__(self, ops, reduction):
        super().__init__()
        self.names = list(ops)
        self.ops = nn.ModuleDict(ops)
        self.reduction = reduction
        self.theta = nn.Parameter(torch.zeros(len(ops)))
        self.alive = list(range(len(ops)))

    def branch(self, x, g):
        outs = [self.ops[n](x) for n, on in zip(self.names, g) if on]
        if not self.reduction:
            outs.append(x)
        if not outs:
            raise ValueError("a reduction layer needs one op at least")
        return torch.stack(outs).mean(0) if len(outs) > 1 else outs[0]

    def full(self, g_alive):
        """A configuration over the alive ops, as one over all the layer's ops."""
        g = [0] * len(self.names)
        for i, on in zip(self.alive, g_alive):
            g[i] = on
        return tuple(g)

    def p(self):
        """p = sigmoid(theta) of the alive ops (Sec. 3.3.1)."""
        return torch.sigmoid(self.theta[self.alive])

    def weights(self, g_a, g_b):
        """Eq. 7's rescaled probabilities of two configurations, over the alive ops."""
        return two_config_weights(self.p(), [g_a[i] for i in self.alive], [g_b[i] for i in self.alive])

    def forward(self, x, g=None, pair=None):
        """g: a configuration (Eq. 1); pair: (g_a, g_b) for a fitness step (simulated_output), g_b None where the
        layer has a single allowed configuration."""
        if pair is None:
            return self.branch(x, g)
        g_a, g_b = pair
        if g_b is None:
            return self.branch(x, g_a)
        with torch.no_grad():
            o_b = self.branch(x, g_b)
        return simulated_output(self.branch(x, g_a), o_b, self.weights(g_a, g_b))


class NSENet(nn.Module):
    """The super network of one round: the macro structure with a MultiBranchLayer of the round's subset of ops in
    every layer. forward(x, gates): gates is one configuration per layer (Eq. 1), or (g_a, g_b) pairs for a
    fitness step. Weights and theta start afresh every round (Sec. 3.1, step 4)."""

    def __init__(self, macro, subsets):
        super().__init__()
        self.macro = macro
        self.stem = make_op("conv3x3", macro.in_channels, macro.stem[0], macro.stem[1])
        self.layers = nn.ModuleList(
            MultiBranchLayer({op: make_op(op, c_in, c_out, s) for op in ops}, reduction=c_in != c_out)
            for (c_in, c_out, s, _), ops in zip(macro.layers(), subsets))
        self.head = make_op("conv1x1", macro.stages[-1][0], macro.head)
        self.classifier = nn.Linear(macro.head, macro.num_classes)
        init_weights(self)

    def forward(self, x, gates, pairs=False):
        x = self.stem(x)
        for layer, g in zip(self.layers, gates):
            x = layer(x, pair=g) if pairs else layer(x, g)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.head(x), 1), 1))

    def op_costs(self):
        """Each layer's ops' FLOPs, in its ops' order (counted once per network: the Pareto retrieval asks often)."""
        if not hasattr(self, "_op_costs"):
            self._op_costs = [[op_flops(signature(op, c_in, c_out, s, r)) for op in layer.names]
                              for layer, (c_in, c_out, s, r) in zip(self.layers, self.macro.layers())]
        return self._op_costs

    def thetas(self):
        return [layer.theta for layer in self.layers]

    def weight_parameters(self):
        thetas = {id(t) for t in self.thetas()}
        return [p for p in self.parameters() if id(p) not in thetas]


def macro_of(arch):
    """The macro structure of a final network's file (its data's channels and classes where it records them)."""
    macro = MACROS[arch["nse"]]
    return dataclasses.replace(macro, **{k: arch[k] for k in ("in_channels", "num_classes") if k in arch})


class FinalNetwork(nn.Module):
    """An architecture of the evolved space trained stand-alone (NSE Sec. 4.1 retrains the retrieved networks):
    arch = {"nse": macro name, "layers": [the ops of each layer]}, every layer the mean of its ops and, in a normal
    layer, the identity (Eq. 1 with every gate on). theta is not trained."""

    def __init__(self, arch):
        super().__init__()
        self.net = NSENet(macro_of(arch), arch["layers"])
        for t in self.net.thetas():
            t.requires_grad_(False)
        self.gates = [tuple(1 for _ in ops) for ops in arch["layers"]]

    def forward(self, x):
        return self.net(x, self.gates)


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


def resource_term(layers, pairs, layer_costs, fixed, alpha, beta, tau):
    """Eq. 5 and 8: alpha * R^beta with R = sum_l (p~_a C(o_a) + p~_b C(o_b)) - tau. fixed: the cost of the network
    outside its multi-branch layers (stem, head), added so that tau is the whole network's target (Eq. 8 sums the
    layers alone). pairs: each layer's (g_a, g_b); layer_costs: each layer's op costs, in tau's unit."""
    total = torch.tensor(float(fixed))
    for layer, (g_a, g_b), costs in zip(layers, pairs, layer_costs):
        if g_b is None:
            total = total + config_cost(costs, g_a)
        else:
            w = layer.weights(g_a, g_b)
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


# ----------------------------------------------------------------------------------------
# One round: supernet training with fitness steps and simplification (Sec. 3.2, 3.3.1)

def layer_pair(layer, rng):
    """(g_a, g_b) over all the layer's ops, drawn from Eq. 4 over its alive ops (two_configs)."""
    g_a, g_b = two_configs(layer.p().detach().tolist(), layer.reduction, rng)
    return layer.full(g_a), g_b and layer.full(g_b)


def uniform_config(layer, rng):
    """Eq. 2: Bernoulli(0.5) gates over the alive ops."""
    return layer.full(uniform_gates(len(layer.alive), layer.reduction, rng))


def trainable(net, weights):
    """The weights train and theta is frozen, or the other way round."""
    for p in net.weight_parameters():
        p.requires_grad_(weights)
    for t in net.thetas():
        t.requires_grad_(not weights)


def train_round(net, train, val, settings, inherited, rng, log=print):
    """Step 2 (Sec. 3.1): weight steps on uniformly gated sub-networks (Eq. 2; SGD Nesterov, cosine) and, after
    every second one, a fitness step on a validation batch (Eq. 5-8; Adam on theta), each followed by
    simplification with Lock & Rehearse. train(epoch): that epoch's batches; val: batches, iterated in turn.
    Returns the drops: [(step, layer, op)]."""
    s = settings
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=s["lr"], momentum=0.9, nesterov=True, weight_decay=4e-5)
    steps = s["epochs"] * len(train(0))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, steps)
    t_opt = torch.optim.Adam(net.thetas(), lr=0.1)
    costs = [[c / s["unit"] for c in row] for row in net.op_costs()]
    fixed = fixed_flops(net.macro) / s["unit"]
    drops, step, val_iter, t0 = [], 0, iter(()), time.time()
    for epoch in range(s["epochs"]):
        correct = seen = 0
        for x, y in train(epoch):
            net.train()
            trainable(net, weights=True)
            logits = net(x, [uniform_config(layer, rng) for layer in net.layers])
            loss = F.cross_entropy(logits, y)
            correct, seen = correct + (logits.argmax(1) == y).sum().item(), seen + len(y)
            w_opt.zero_grad(set_to_none=True)
            loss.backward()
            w_opt.step()
            schedule.step()
            step += 1
            if step % 2:
                continue
            try:  # NSE App. B: a fitness step after every two weight steps, on the validation split
                xv, yv = next(val_iter)
            except StopIteration:
                val_iter = iter(val)
                xv, yv = next(val_iter)
            trainable(net, weights=False)  # the fitness step moves theta alone
            pairs = [layer_pair(layer, rng) for layer in net.layers]
            ce = F.cross_entropy(net(xv, pairs, pairs=True), yv)
            t_loss = ce + resource_term(net.layers, pairs, costs, fixed, s["alpha"], s["beta"], s["tau"])
            t_opt.zero_grad(set_to_none=True)
            t_loss.backward()
            t_opt.step()
            for l, layer in enumerate(net.layers):
                alive = [layer.names[i] for i in layer.alive]
                keep = simplify(alive, [float(layer.theta.detach()[i]) for i in layer.alive], inherited[l], layer.reduction)
                for op in alive:
                    if op not in keep:
                        drops.append((step, l, op))
                        log(f"  step {step}: layer {l} drops {op} (theta {float(layer.theta.detach()[layer.names.index(op)]):.2f})")
                layer.alive = [i for i in layer.alive if layer.names[i] in keep]
        spent = time.time() - t0
        log(f"  epoch {epoch + 1}/{s['epochs']}: sampled sub-networks {100 * correct / max(seen, 1):.1f}% on training "
            f"batches, {sum(len(layer.alive) for layer in net.layers)} ops alive; {seen * (epoch + 1) / spent:.0f} "
            f"img/s, round ETA {spent / (epoch + 1) * (s['epochs'] - epoch - 1):.0f}s")
    return drops


# ----------------------------------------------------------------------------------------
# Pareto-front retrieval (Sec. 3.3.2)

def arch_ops(net, gates):
    """An architecture as the sets of ops its gates turn on, layer by layer."""
    return [frozenset(n for n, on in zip(layer.names, g) if on) for layer, g in zip(net.layers, gates)]


def network_flops(macro, layers):
    """The FLOPs of an architecture (the ops each layer holds): its ops, the stem and the head."""
    return fixed_flops(macro) + sum(op_flops(signature(op, *shape)) for shape, ops in zip(macro.layers(), layers)
                                    for op in ops)


def arch_flops(net, ops):
    """The FLOPs of an architecture of the round's space."""
    return network_flops(net.macro, ops)


def gates_of(net, ops):
    return [tuple(int(n in o) for n in layer.names) for layer, o in zip(net.layers, ops)]


def recalibrated_accuracy(net, gates, calib, val):
    """Top-1 (%) of one architecture on the shared weights, BN statistics first recalculated on the calibration
    batches (Sec. 3.3.2: 20k training images on ImageNet), as a cumulative average, then read in eval mode."""
    with torch.no_grad(), bn_momentum(net, None) as bns:
        for m in bns:
            m.reset_running_stats()
        net.train()
        for x, _ in calib:
            net(x, gates)
        net.eval()
        correct = total = 0
        for x, y in val:
            correct += (net(x, gates).argmax(1) == y).sum().item()
            total += len(y)
    return 100.0 * correct / max(total, 1)


def sample_archs(net, count, accept, rng, tries=100):
    """Up to count distinct architectures drawn from P_a(Theta) (Eq. 4, layer by layer) whose FLOPs pass accept."""
    seen, out = set(), []
    for _ in range(count * tries):
        if len(out) == count:
            break
        ops = tuple(arch_ops(net, [layer.full(sample_config(layer.p().detach().tolist(), layer.reduction, rng))
                                   for layer in net.layers]))
        if ops in seen:
            continue
        seen.add(ops)
        if accept(arch_flops(net, ops)):
            out.append(ops)
    return out


def retrieve_front(net, settings, previous, calib, val, rng, log=print):
    """Sec. 3.3.2: D distinct architectures from P_a(Theta) within the FLOPs window, D_e edge samples just below
    it (App. Fig. 11), and the previous round's front (Lock & Rehearse), each evaluated with recalibrated BN.
    Returns the evaluated samples [(ops, flops, acc, kind)] and the front's indices into them."""
    s = settings
    lo, hi = s["tau"] * s["unit"] * (1 - s["window"]), s["tau"] * s["unit"] * (1 + s["window"])
    edge_lo = lo * (1 - s["window"])
    kinds = [("sample", a) for a in sample_archs(net, s["d"], lambda f: lo <= f <= hi, rng)]
    kinds += [("edge", a) for a in sample_archs(net, s["d_e"], lambda f: edge_lo <= f < lo, rng)]
    kinds += [("previous", tuple(a)) for a in previous]
    samples = []
    for k, (kind, ops) in enumerate(kinds):
        samples.append((ops, arch_flops(net, ops), recalibrated_accuracy(net, gates_of(net, ops), calib, val), kind))
    front = pareto_front([(f, a, kind == "edge") for _, f, a, kind in samples])
    log(f"  Pareto retrieval: {sum(k == 'sample' for k, _ in kinds)} samples in [{lo / 1e6:.2f}M, {hi / 1e6:.2f}M] "
        f"FLOPs, {sum(k == 'edge' for k, _ in kinds)} edge samples, {len(previous)} from the previous front; "
        f"front of {len(front)}")
    return samples, front


# ----------------------------------------------------------------------------------------
# The evolution (Sec. 3.1, steps 1-4)

def evolve(macro, data, settings, seed, out, log=print):
    """Rounds of: train the super network of the current subsets with simplification (step 2), retrieve the
    Pareto front and aggregate it (step 3), replenish every layer to K ops from its untraversed pool (step 4), the
    aggregated ops inherited (locked); until the pool is traversed or settings["rounds"] have run. Each round's
    record goes to OUT/rounds.jsonl with its pictures; the last front's networks to OUT/final-*.json."""
    from machinery import cli, draw  # the run machinery, imported where the run needs it
    from machinery.data import make_loader
    s, rng, n = settings, random.Random(seed), len(macro.layers())
    fills = [replenish([], set(), macro.pool, macro.k, rng) for _ in range(n)]
    subsets, traversed = [f[0] for f in fills], [f[1] for f in fills]
    inherited, previous, rounds = [set() for _ in range(n)], [], []
    calib = list(make_loader(data.train, s["batch_size"], True, 10**6, seed))[:max(1, s["calib"] // s["batch_size"])]
    val = list(make_loader(data.val, s["batch_size"], False, 0, seed, drop_last=False))
    val_eval = val[:max(1, s["val_images"] // s["batch_size"])]
    for r in range(s["rounds"] or 10**9):
        log(f"round {r + 1}: {sum(map(len, subsets))} ops over {n} layers (K = {macro.k}), "
            f"{sum(map(len, inherited))} inherited")
        torch.manual_seed(seed * 1000 + r)  # weights and theta start afresh every round (Sec. 3.1, step 4)
        net = NSENet(macro, subsets)
        drops = train_round(net, lambda e: make_loader(data.train, s["batch_size"], True, r * 1000 + e, seed), val,
                            s, inherited, rng, log)
        samples, front = retrieve_front(net, s, previous, calib, val_eval, rng, log)
        front_archs = [samples[i][0] for i in front]
        kept = aggregate(front_archs, n)
        accs = [a for _, _, a, kind in samples if kind == "sample"]
        record = {"round": r + 1, "subsets": subsets, "inherited": [sorted(i) for i in inherited],
                  "drops": drops, "theta": [[round(t, 3) for t in layer.theta.detach().tolist()] for layer in net.layers],
                  "kept": [sorted(k) for k in kept], "samples": [[[sorted(o) for o in ops], f, a, kind]
                                                                for ops, f, a, kind in samples],
                  "front": front, "sample_acc_mean": sum(accs) / max(len(accs), 1),
                  "sample_acc_max": max(accs, default=0.0)}
        rounds.append(record)
        cli.append_line(os.path.join(out, "rounds.jsonl"), record)
        log(grid_text(macro, record))
        log(f"  super network: {len(accs)} samples read at {record['sample_acc_mean']:.2f}% on average (best "
            f"{record['sample_acc_max']:.2f}%; chance {100 / macro.num_classes:.0f}%)")
        draw_round(draw, cli, macro, record, out)
        previous = front_archs
        done = pool_traversed(traversed, macro.pool)
        if done or (s["rounds"] and r + 1 == s["rounds"]):
            break
        fills = [replenish([op for op in subsets[l] if op in kept[l]], traversed[l], macro.pool, macro.k, rng)
                 for l in range(n)]
        subsets, traversed, inherited = [f[0] for f in fills], [f[1] for f in fills], [set(k) for k in kept]
    for i, ops in enumerate(front_archs):
        f, acc = next((f, a) for o, f, a, _ in samples if o == ops)
        cli.save_json_atomic({"nse": macro.name, "in_channels": macro.in_channels, "num_classes": macro.num_classes,
                              "layers": [sorted(o) for o in ops], "flops": f, "one_shot_acc": acc},
                             os.path.join(out, f"final-{i}.json"))
    return rounds


def grid_text(macro, record):
    """The layers x ops grid of a round: I inherited, N new, x dropped (at step), K kept by aggregation."""
    pool = [op for op in macro.pool if any(op in s for s in record["subsets"])]
    dropped = {(l, op): step for step, l, op in record["drops"]}
    lines = ["  layer  " + " ".join(f"{i:>3}" for i in range(len(pool))) + "   (ops: " +
             ", ".join(f"{i} {op}" for i, op in enumerate(pool)) + ")"]
    for l, subset in enumerate(record["subsets"]):
        cells = []
        for op in pool:
            mark = "."
            if op in subset:
                mark = ("I" if op in record["inherited"][l] else "N") + ("x" if (l, op) in dropped else "") + \
                       ("K" if op in record["kept"][l] else "")
            cells.append(f"{mark:>3}")
        lines.append(f"  {l:>5}  " + " ".join(cells))
    return "\n".join(lines)


def draw_round(draw, cli, macro, record, out):
    """OUT/round-R-grid.svg (the grid) and OUT/round-R-front.svg (samples, edge samples, previous front, front)."""
    r = record["round"]
    cli.save_text_atomic(draw.grid_svg(macro.pool, record, f"NSE round {r}: layers x ops"),
                         os.path.join(out, f"round-{r}-grid.svg"))
    pts = {kind: [(f / 1e6, a) for _, f, a, k in record["samples"] if k == kind] for kind in ("sample", "edge",
                                                                                              "previous")}
    front = sorted((record["samples"][i][1] / 1e6, record["samples"][i][2]) for i in record["front"])
    series = {"samples": ("#9e9e9e", pts["sample"]), "edge samples": ("#ff7f0e", pts["edge"]),
              "previous front": ("#1f77b4", pts["previous"]), "front": ("#d62728", front)}  # (Fig. 11's kinds)
    if not any(v[1] for v in series.values()):
        return
    cli.save_text_atomic(draw.scatter_svg({k: v for k, v in series.items() if v[1]}, "FLOPs (M)",
                                          "one-shot validation top-1 (%)", f"NSE round {r}: Pareto front",
                                          lines={"Pareto front": ("#d62728", front)} if front else None),
                         os.path.join(out, f"round-{r}-front.svg"))


# ----------------------------------------------------------------------------------------
# Settings and the command line

# NSE App. B at ImageNet scale (the cost window, +-10% of tau, is ours: the paper does not give one)
IMAGENET = dict(epochs=100, batch_size=1024, lr=0.4, unit=1e6, tau=300.0, alpha=1e-5, beta=2, window=0.1, d=D, d_e=D_E,
                calib=20000, val_images=50000, rounds=None, subset=None)
# the laptop preset (README, "NSE at laptop scale", says why each value departs)
LAPTOP = dict(epochs=8, batch_size=64, lr=0.1, unit=1e6, tau=6.0, alpha=1e-5 * (300 / 6.0) ** 2, beta=2, window=0.1,
              d=50, d_e=10, calib=512, val_images=1024, rounds=3, subset=4800)


def main(argv=None):
    from machinery import cli
    from machinery.cli import ArgumentParser, UsageError, integer, number
    from machinery.data import load_data
    ap = ArgumentParser(__doc__, prog="python nse.py")
    ap.add_argument("--preset", choices=["laptop"], help="laptop: Fashion-MNIST at 28 px on a CPU, a 13-op pool, "
                                                         "K = 4, 3 rounds (about 12 minutes on 2 cores)")
    ap.add_argument("--data", help="fake, fashion-mnist, or an ImageFolder root (default: the preset's)")
    ap.add_argument("--out", help="output folder (default runs/nse-laptop or runs/nse)")
    ap.add_argument("--seed", type=cli.SEED, default=0, help="seed (default 0)")
    ap.add_argument("--rounds", type=integer(1, 1000), help="rounds at most (default: until the pool is traversed; "
                                                            "laptop 3)")
    ap.add_argument("--epochs", type=integer(1, 10**4), help="super-network epochs per round (App. B: 100)")
    ap.add_argument("--tau", type=number(0, low_open=True), help="FLOPs target in millions (App. B: 300)")
    ap.add_argument("--d", type=integer(1, 10**6), help=f"samples of the Pareto retrieval (App. B: {D})")
    ap.add_argument("--d-e", type=integer(0, 10**6), help=f"edge samples (App. B: {D_E})")
    ap.add_argument("--k", type=integer(1, 1000), help="ops per layer and round (App. B: 5; laptop 4); the pool's "
                                                       "size is a one-shot search over the whole pool in one round")
    ap.add_argument("--subset", type=integer(1), help="the first N images of each split")
    ap.add_argument("--batch-size", type=integer(1, 4096), help="batch size (App. B: 1024)")
    args = ap.parse_args(argv)
    macro = MACROS["laptop" if args.preset else "imagenet"]
    if args.k is not None:
        macro = dataclasses.replace(macro, k=min(args.k, len(macro.pool)))
    settings = dict(LAPTOP if args.preset else IMAGENET)
    for key in ("rounds", "epochs", "tau", "d", "d_e", "subset", "batch_size"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    data_name = args.data or ("fashion-mnist" if args.preset else None)
    if data_name is None:
        raise UsageError("give --data (an ImageFolder root, fashion-mnist or fake) or --preset laptop")
    out = args.out or os.path.join("runs", "nse-laptop" if args.preset else "nse")
    cli.check_folder(out, False)
    data = load_data(data_name, "search", args.seed, macro.input_size, settings["subset"],
                     classes=macro.num_classes)
    if (data.in_channels, data.num_classes) != (macro.in_channels, macro.num_classes):
        macro = dataclasses.replace(macro, in_channels=data.in_channels, num_classes=data.num_classes)
    os.makedirs(out, exist_ok=True)
    cli.save_json_atomic({"macro": macro.name, "k": macro.k, "data": data_name, "seed": args.seed, **settings},
                         os.path.join(out, "args.json"))
    print(f"NSE on {data.info}: {len(macro.layers())} multi-branch layers, pool of {len(macro.pool)} ops, "
          f"K = {macro.k}, FLOPs target {settings['tau']}M", flush=True)
    evolve(macro, data, settings, args.seed, out)
    print(f"final networks: {os.path.join(out, 'final-*.json')}; rounds: {os.path.join(out, 'rounds.jsonl')}")


if __name__ == "__main__":
    from machinery.cli import run_cli
    run_cli(main)
