"""The search learns: planted problems with one right answer, solved by search.py's own architecture
step, and the derived network read from the shared weights is exactly the derived network.

A search that learns nothing (alpha and beta left at their random start, a step that does not reach
them, a rebias that undoes the step) fails both planted problems, and a cost with the wrong sign fails
the first; each first checks that the architecture derived before the steps is not the answer.
"""
import itertools
import math

import torch
import torch.nn as nn

from studies import random_search
from cost import CostModel, arch_cost, flops_table
from retrain import ArchNet
from search import Objective, arch_step, sample_candidates, set_trainable
from supernet import Space, SpaceDef, SuperNet, get_space
from viterbi import derive, derive_supernet

SIZE = 8  # input images 8x8: the planted problems need no more
# a small dense space: B_0 -> {B_1, B_2}, B_1 -> {B_2, B_3}, B_2 -> B_3 -> B_4 (three paths), a basic layer
# in B_1..B_3 with a light and a heavy MBConv and skip, two MBConvs in every shape-alignment branch
PLANTED = SpaceDef("planted", 8, (), 8, ((8, 1, 1, 1), (12, 1, 1, 1), (16, 2, 2, 1)), 32,
                   ("mbconv_k3_e3", "mbconv_k5_e6", "skip"), ("mbconv_k3_e3", "mbconv_k5_e6"), "relu6", 2)


def frozen_supernet(space, seed):
    """A super network whose weights are frozen: only alpha and beta can learn."""
    torch.manual_seed(seed)
    net = SuperNet(space).train()
    set_trainable(net.weight_parameters(), False)
    return net


def run_arch_steps(net, objective, labels, steps, lr, batch, seed):
    """`steps` architecture steps (two sampled candidates per layer, Eq. 8, Adam, Eq. 10) on fresh
    random batches whose labels come from labels(x)."""
    opt = torch.optim.Adam(net.arch_parameters(), lr=lr, betas=(0.5, 0.999))
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(batch, net.space.in_channels, SIZE, SIZE, generator=g)
        arch_step(net, opt, objective, x, labels(x), sample_candidates(net, 2, g))
    return derive_supernet(net)


def cheapest_arch(space, table):
    """The cheapest network of the space by brute force: every path from B_0 to B_n, and on it the
    cheapest candidate of every layer (the cost table prices a skip at nothing)."""
    succ = {i: [j for a, j in space.edges if a == i] for i in range(space.n)}

    def paths(i):
        if i == space.n:
            yield [i]
            return
        for j in succ[i]:
            for rest in paths(j):
                yield [i] + rest

    best = None
    for path in paths(0):
        alphas, p = [], torch.zeros(len(space.edges))
        for k, e in enumerate(space.edges):
            p[k] = 1.0 if e in set(zip(path, path[1:])) else 0.0
        for slot in space.slots:
            costs = [table["costs"][s] for s in slot.signatures()]
            alphas.append(torch.nn.functional.one_hot(torch.tensor(min(range(len(costs)), key=costs.__getitem__)),
                                                      len(costs)).float())
        arch = derive(space, alphas, p)
        cost = arch_cost(arch, table)
        if best is None or cost < best[0]:
            best = (cost, arch)
    return best


def test_large_lambda_finds_the_cheapest_network():
    """Planted problem 1: with lambda large the cost term rules Eq. 8 (the labels are noise), so the
    architecture steps must derive the cheapest network of the laptop space: its path and its
    candidates. (Measured: seeds 0-5 all reach it within 54 steps and keep it.)"""
    space = get_space("mini", SIZE, 3, 10)
    table = flops_table(space)
    net = frozen_supernet(space, 0)
    low, cheapest = cheapest_arch(space, table)
    assert derive_supernet(net) != cheapest  # the random start is not the answer
    objective = Objective(CostModel(space, table), lam=10.0, tau=15.0, unit=1e6)
    g = torch.Generator().manual_seed(1)
    arch = run_arch_steps(net, objective, lambda x: torch.randint(0, 10, (len(x),), generator=g), 100, 0.1, 16, 2)
    assert arch["path"] == cheapest["path"]
    assert arch == cheapest and arch_cost(arch, table) == low


def test_zero_lambda_recovers_the_network_that_made_the_labels():
    """Planted problem 2: the labels are the predictions of one target network of the space (a path
    and a candidate per layer, run on the super network's own frozen weights), so only that network
    fits them. With lambda = 0 the architecture steps must derive it: its path and its candidates.
    (Measured: seeds 0-7 all reach it within 95 steps and keep it.)"""
    space = Space(PLANTED, SIZE, 3, 10)
    net = frozen_supernet(space, 0)
    with torch.no_grad():
        net.classifier.weight.mul_(100)  # sharp teacher logits: the target's labels are unambiguous
    target_alphas, target_p = random_search.random_arch(space, torch.Generator().manual_seed(3))
    target = derive(space, target_alphas, target_p)
    samples = {slot: [int(a.argmax())] for slot, a in enumerate(target_alphas)}
    assert derive_supernet(net) != target  # the random start is not the answer

    def labels(x):
        with torch.no_grad():
            return net(x, samples, target["path"]).argmax(1)

    objective = Objective(CostModel(space, flops_table(space)), lam=0.0, tau=15.0, unit=1e6)
    arch = run_arch_steps(net, objective, labels, 150, 0.05, 32, 4)
    assert arch["path"] == target["path"]
    assert arch == target


def test_derived_network_on_shared_weights_is_the_derived_network():
    """search.Search.evaluate reads the derived network from the super network: net(x, argmax samples,
    Viterbi path) computes exactly what retrain.ArchNet computes for the derived arch file, once
    ArchNet holds the weights of the chosen candidates (BN on batch statistics in both)."""
    space = get_space("toy", 16, 3, 10)
    torch.manual_seed(0)
    net = SuperNet(space).train()
    with torch.no_grad():
        for a in net.arch_parameters():
            a.normal_()
    arch = derive_supernet(net)
    samples = net.argmax_samples()
    # the super network's modules of the derived network, in the order of supernet.arch_ops
    chosen = list(net.stem)
    path = arch["path"]
    for i, j in zip(path[:-1], path[1:]):
        blk = net.blocks[j - 1]
        branch = blk.branches[blk.sources.index(i)]
        chosen.append(branch.ops[samples[branch.slot][0]])
        chosen += [layer.ops[samples[layer.slot][0]] for layer in blk.layers
                   if layer.candidates[samples[layer.slot][0]] != "skip"]
    derived = ArchNet(arch).train()
    assert len(derived.features) == len(chosen)
    for mine, theirs in itertools.chain(zip(derived.features, chosen), [(derived.classifier, net.classifier)]):
        mods = [m for m in mine.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        src = [m for m in theirs.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        assert [m.weight.shape for m in mods] == [m.weight.shape for m in src]
        with torch.no_grad():
            for m, s in zip(mods, src):
                m.weight.copy_(s.weight)
                if m.bias is not None:
                    m.bias.copy_(s.bias)
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.allclose(net(x, samples, path), derived(x), atol=1e-5)


def test_target_steering_reaches_a_target_below_and_above_lambda_zero():
    """search.py --target-flops on the toy space, with the search's own architecture step and steering: a search
    at lambda = 0 derives a network of F0 FLOPs; steered to 0.6 F0 and to 1.6 F0 (noise labels, so only the cost
    term moves alpha and beta), the chained estimate must close at least half of its log-distance to the target,
    where the lambda = 0 search stays where it was, and the derived network (derive_within, as Search.derive) must
    land within 10% of the target. A steering that does not act (mu left at 0) fails the first; a derivation that
    ignores the target fails the second."""
    import search
    from viterbi import derive_within
    space = get_space("toy", SIZE, 3, 10)
    table = flops_table(space)
    prices = CostModel(space, table, skip_price=0)

    def steered(target, steps=150):
        net = frozen_supernet(space, 0)
        objective = Objective(CostModel(space, table), 0.0, 15.0, 1e6, target=target and target / 1e6)
        opt = torch.optim.Adam(net.arch_parameters(), lr=0.1, betas=(0.5, 0.999))
        g = torch.Generator().manual_seed(1)
        for _ in range(steps):
            x = torch.randn(8, 3, SIZE, SIZE, generator=g)
            arch_step(net, opt, objective, x, torch.randint(0, 10, (8,), generator=g), sample_candidates(net, 2, g))
            if target:
                objective.steer(net)
        return net, objective.cost(net).item() * 1e6

    net0, estimate0 = steered(None)
    f0 = arch_cost(derive_supernet(net0), table)
    for target in (0.6 * f0, 1.6 * f0):
        net, estimate = steered(target)
        assert abs(math.log(estimate / target)) <= 0.5 * abs(math.log(estimate0 / target))
        arch, _ = derive_within(space, [a.detach() for a in net.alphas()], net.path_probs().detach(), prices,
                                target * (1 - search.TARGET_TOLERANCE), target * (1 + search.TARGET_TOLERANCE))
        assert abs(arch_cost(arch, table) / target - 1) <= search.TARGET_TOLERANCE
