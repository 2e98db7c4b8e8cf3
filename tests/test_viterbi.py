"""Deriving the architecture (Sec. 3.4): the Viterbi algorithm (supplement A.2, Algorithm 1) and derive()."""
import itertools
import math

import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

import retrain
import supernet
import viterbi
from machinery import cli
from strategies import all_paths, chain_path, markov_dags, one_hot_choices, one_hot_params, path_prob, spaces


def uncorrected_viterbi(p, n):
    """Algorithm 1 exactly as printed: P[i] <- max_j P[i-1] * p_ji (a typo)."""
    P, S = [1.0] + [0.0] * n, [0] * (n + 1)
    for i in range(1, n + 1):
        preds = [j for j, k in p if k == i]
        S[i] = max(preds, key=lambda j: P[i - 1] * p[j, i])
        P[i] = P[i - 1] * p[S[i], i]
    path = [n]
    while path[-1] != 0:
        path.append(S[path[-1]])
    return path[::-1]


@settings(max_examples=200, deadline=None)
@given(markov_dags())
def test_viterbi_matches_brute_force(dag):
    """Algorithm 1 (corrected: P[j], not P[i-1]): the returned path has the maximal product of p over
    all 0 -> n paths."""
    n, p = dag
    path = viterbi.viterbi(p, n)
    assert path[0] == 0 and path[-1] == n
    assert all(e in p for e in zip(path, path[1:])), "the path uses an edge that does not exist"
    best = max(path_prob(p, q) for q in all_paths(p, n))
    assert math.isclose(path_prob(p, path), best, rel_tol=1e-12)


def test_viterbi_uses_corrected_recursion():
    """Algorithm 1 lines 4-5: P[j] * p_ji (corrected) rather than P[i-1] * p_ji picks the most probable path."""
    p = {(0, 1): 0.2, (0, 2): 0.8,
         (1, 3): 1.0,
         (2, 3): 0.6, (2, 4): 0.4,
         (3, 4): 1.0}
    # 0-1-3-4: 0.2   0-2-3-4: 0.48   0-2-4: 0.32
    assert uncorrected_viterbi(p, 4) == [0, 1, 3, 4]  # the printed recursion goes wrong here
    assert viterbi.viterbi(p, 4) == [0, 2, 3, 4]


def test_viterbi_refuses_block_without_predecessor():
    """Algorithm 1 needs every block B_1..B_n to have an incoming connection."""
    with pytest.raises(ValueError):
        viterbi.viterbi({(0, 2): 1.0}, 2)


BUILTIN = [supernet.get_space("toy", 32, 1, 10), supernet.get_space("mbv2"), supernet.get_space("resnet"),
           supernet.get_space("toy", 28, 3, 10, connect=2)]


def chosen_ops(space, layer):
    """The chosen candidate of every mixed layer, keyed ("edge", i, j) or ("layer", j, l)."""
    return {(("edge",) + s.edge if s.edge else ("layer", s.block, s.layer)): s.candidates[k]
            for s, k in zip(space.slots, layer)}


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.sampled_from(BUILTIN), spaces()), st.integers(0, 2**32))
def test_derive_one_hot(space, seed):
    """Sec. 3.4: argmax alpha per layer (a skip removes the layer), Viterbi path over p, blocks chained."""
    layer, edge = one_hot_choices(seed, space)
    alphas, p = one_hot_params(space, layer, edge, noise_seed=seed)
    arch = viterbi.derive(space, alphas, p)

    path = chain_path(space, edge)  # the only path with probability 1
    assert arch["path"] == path
    chosen = chosen_ops(space, layer)
    b0 = space.blocks[0]
    expected = [{"in": space.stem_out, "out": b0.channels, "stride": 1, "head": o, "layers": []}
                for o in space.b0_ops]
    for i, j in zip(path[:-2], path[1:-1]):
        bi, bj = space.blocks[i], space.blocks[j]
        assert bj.level - bi.level in (0, 1) and bj.resolution in (bi.resolution, (bi.resolution + 1) // 2)
        layers = [chosen["layer", j, l] for l in range(bj.layers)]
        expected.append({"in": bi.channels, "out": bj.channels,
                         "stride": 2 ** (bj.level - bi.level),
                         "head": chosen["edge", i, j], "layers": [o for o in layers if o != "skip"]})
    assert arch["blocks"] == expected
    assert chosen["edge", path[-2], path[-1]] == "conv1x1"  # the ending block's branches (Sec. 3.1.3)
    # the derived ResNets of Table 6 end in their last block, with no 1x1 conv before pooling
    assert arch["last"] == ({"out": space.end_width} if space.derived_end_conv else None)
    assert arch["stem"] == {"out": space.stem_out, "stride": space.stem_stride}

    c = space.stem_out
    for b in arch["blocks"]:
        assert b["in"] == c and b["stride"] in (1, 2) and "skip" not in b["layers"]
        c = b["out"]
    # check_arch knows only the built-in spaces by name; the random ones are toy-like (MBConv, ReLU6)
    supernet.check_arch(arch if space.name in supernet.SPACES else {**arch, "space": "toy"})


@settings(max_examples=30, deadline=None)
@given(spaces(), st.integers(0, 2**16))
def test_derive_path_is_viterbi_of_softmax_beta(space, seed):
    """Sec. 3.4 / Eq. 3: for arbitrary beta the derived block sequence is the most probable path of p."""
    g = torch.Generator().manual_seed(seed)
    beta = 2 * torch.randn(len(space.edges), generator=g, dtype=torch.float64)
    p = torch.cat([torch.softmax(beta[a:b], 0) for a, b in space.out_edge_ranges])
    alphas = [torch.randn(len(s.candidates), generator=g) for s in space.slots]
    arch = viterbi.derive(space, alphas, p)
    pd = {e: float(v) for e, v in zip(space.edges, p)}
    best = max(path_prob(pd, q) for q in all_paths(pd, space.n))
    assert math.isclose(path_prob(pd, arch["path"]), best, rel_tol=1e-9)


def test_derive_keeps_layer_and_branch_choices_apart():
    """Sec. 3.4: basic layer l of B_j and the alignment branch B_j -> B_l are different layers, each with
    its own argmax. In mbv2, B_1's third basic layer (l = 2) and the branch of edge (1, 2) both exist."""
    space = supernet.get_space("mbv2")
    assert (1, 2) in space.edges and space.blocks[1].layers == 3
    layer = [0] * len(space.slots)
    third = next(k for k, s in enumerate(space.slots) if s.edge is None and (s.block, s.layer) == (1, 2))
    layer[third] = space.slots[third].candidates.index("skip")
    edge = [a for a, _ in space.out_edge_ranges]  # B_0 -> B_1 -> B_2 -> ...
    alphas, p = one_hot_params(space, layer, edge)
    arch = viterbi.derive(space, alphas, p)
    b1 = arch["blocks"][1]  # blocks[0] is B_0's fixed MBConv
    assert (b1["in"], b1["out"]) == (16, 24)
    assert b1["layers"] == ["mbconv_k3_e3", "mbconv_k3_e3"]  # the skip removes the third layer


def test_decisiveness_reads_uniform_as_undecided_and_one_hot_as_decided():
    """The summary's evidence: p along the path over the blocks with a choice, and w of the chosen
    candidates, are 1/choices at uniform parameters and 1 when alpha and beta are one-hot."""
    space = supernet.get_space("toy", 16, 3, 10)
    outs = [b - a for a, b in space.out_edge_ranges]
    p = torch.cat([torch.full((b - a,), 1.0 / (b - a)) for a, b in space.out_edge_ranges])
    path = viterbi.viterbi(dict(zip(space.edges, p.tolist())), space.n)
    weights = [torch.full((len(s.candidates),), 1.0 / len(s.candidates)) for s in space.slots]
    got = viterbi.decisiveness(space, weights, p, path)
    on_path = [1.0 / outs[i] for i in path[:-1] if outs[i] > 1]
    assert math.isclose(got["p_path"], sum(on_path) / len(on_path), rel_tol=1e-6)
    chosen = [1.0 / len(w) for w in weights if len(w) > 1]
    assert math.isclose(got["w_chosen"], sum(chosen) / len(chosen), rel_tol=1e-6)
    one_hot_p = torch.tensor([1.0 if (i, j) in set(zip(path, path[1:])) else 0.0 for i, j in space.edges])
    one_hot_w = [torch.eye(len(w))[0] for w in weights]
    assert viterbi.decisiveness(space, one_hot_w, one_hot_p, path) == {"p_path": 1.0, "w_chosen": 1.0}


# Table 3: params and FLOPs of the published ResNet-space networks, whose layouts Table 6 gives
TABLE3_RESNETS = {"densenas_r1": (11.1e6, 1.61e9), "densenas_r2": (19.5e6, 3.06e9), "densenas_r3": (24.7e6, 3.41e9)}


@pytest.mark.parametrize("name", sorted(TABLE3_RESNETS))
def test_published_resnets_profile_to_table3(name):
    """examples/densenas_r*.json (Table 6: the last 512-wide block feeds pooling, no ending conv) count the
    params and FLOPs of Table 3 to the figures' precision; R1 and R2 are networks of the ResNet space that
    derive() returns for one-hot alpha and p on their path; R3 swaps in bottlenecks (Sec. 4.2), outside it."""
    arch = cli.load_arch(f"examples/{name}.json")
    prof, (params, flops) = retrain.profile(arch), TABLE3_RESNETS[name]
    assert abs(prof["params"] - params) < 0.05e6 and abs(prof["flops"] - flops) < 0.005e9
    assert arch["last"] is None and arch["blocks"][-1]["out"] in (512, 4 * 512)  # R3: a bottleneck's 4x
    if name == "densenas_r3":
        return
    space = supernet.get_space("resnet")
    width_to_block = {b.channels: b.index for b in space.blocks[1:-1]}  # the space's widths are distinct
    path = [0] + [width_to_block[b["out"]] for b in arch["blocks"]] + [space.n]
    ops = {("edge", i, j): b["head"] for i, j, b in zip(path, path[1:], arch["blocks"])}
    ops |= {("layer", j, l): "basic_block" for j, b in zip(path[1:], arch["blocks"]) for l in range(len(b["layers"]))}
    keys = [("edge", *s.edge) if s.edge else ("layer", s.block, s.layer) for s in space.slots]
    alphas = [torch.tensor([float(c == ops.get(k, "skip")) for c in s.candidates]) for s, k in zip(space.slots, keys)]
    on_path = set(zip(path, path[1:]))
    p = torch.tensor([float((i, j) in on_path or not any(e[0] == i for e in on_path)) for i, j in space.edges])
    p = p / torch.tensor([sum(p[k] for k, e in enumerate(space.edges) if e[0] == i) for i, _ in space.edges])
    derived = viterbi.derive(space, alphas, p)
    assert derived["path"] == path
    assert {k: v for k, v in derived.items() if k != "path"} == arch


def test_resnet_ending_block_has_a_conv_per_incoming_block():
    """Supplement A.4 / Sec. 3.1.3: every branch into the ResNet space's ending block is a 1x1 conv to 512
    channels, the 512-wide block's too (no identity branch); the classifier of a derived ResNet is priced
    for every width that can end it."""
    space = supernet.get_space("resnet")
    ending = [s for s in space.slots if s.block == space.n]
    assert [s.edge[0] for s in ending] == [i for i, j in space.edges if j == space.n]
    assert all(s.candidates == ("conv1x1",) for s in ending)
    assert {s.c_in for s in ending} == {480, 496, 512}
    assert space.derived_classifiers() == [f"linear/{c}/1000/1/1" for c in (480, 496, 512)]


# ----------------------------------------------------------------------------------------
# The derivation under a cost window (search.py --target-flops, --target-latency; not in the paper)

def on_path(slot, path):
    """Whether a mixed layer belongs to the network of this block sequence: its branch's connection or its block."""
    return slot.edge in set(zip(path, path[1:])) if slot.edge else slot.block in path[1:]


def network_score(space, alphas, p, path, chosen):
    """sum log p along the path plus alpha / T - max alpha / T of the chosen candidate of every layer on it."""
    pd = {e: float(v) for e, v in zip(space.edges, p)}
    return sum(math.log(pd[e]) for e in zip(path, path[1:])) + sum(
        (float(a[c]) - float(max(a))) / space.temperature for s, a, c in zip(space.slots, alphas, chosen)
        if on_path(s, path))


def every_network(space, alphas, p):
    """Brute force: (score, cost, arch) of every network of the space, priced by the FLOPs table (arch_cost), scored
    as derive_within scores: sum log p along the path plus alpha / T - max alpha / T of every chosen candidate."""
    from cost import arch_cost, flops_table
    table = flops_table(space)
    pd = {e: float(v) for e, v in zip(space.edges, p)}
    base = [viterbi.argmax(a) for a in alphas]
    out = []
    for path in all_paths(pd, space.n):
        free = [k for k, s in enumerate(space.slots) if on_path(s, path)]
        for pick in itertools.product(*[range(len(space.slots[k].candidates)) for k in free]):
            chosen = list(base)
            for k, c in zip(free, pick):
                chosen[k] = c
            arch = viterbi.arch_file(space, chosen, path)
            score = network_score(space, alphas, p, path, chosen)
            out.append((score, arch_cost({**arch, "space": "toy"}, table), arch))  # (check_arch knows toy)
    return out


def network_count(space):
    pd = {e: 0.5 for e in space.edges}
    total = 0
    for path in all_paths(pd, space.n):
        total += math.prod(len(s.candidates) for s in space.slots if on_path(s, path))
    return total


@settings(max_examples=25, deadline=None)
@given(spaces(), st.integers(0, 2**16), st.floats(0, 1), st.floats(0.01, 0.5))
def test_derive_within_is_the_most_probable_network_in_the_window(space, seed, where, half):
    """derive_within against every network of small random spaces: its network lies in the window whenever one
    does, and none with a higher score lies inside the window by more than the buckets' drift (one bucket per
    block); with no network in the window, it is the nearest (up to that drift)."""
    from cost import CostModel, arch_cost, flops_table
    assume(network_count(space) <= 600)
    g = torch.Generator().manual_seed(seed)
    alphas = [torch.randn(len(s.candidates), generator=g, dtype=torch.float64) for s in space.slots]
    p = supernet.path_probs(torch.randn(len(space.edges), generator=g, dtype=torch.float64), space)
    nets = every_network(space, alphas, p)
    costs = sorted(c for _, c, _ in nets)
    centre = costs[0] * 0.8 + where * (costs[-1] * 1.2 - costs[0] * 0.8)  # now and then outside the space's range
    lo, hi = centre * (1 - half), centre * (1 + half)
    prices = CostModel(space, flops_table(space), skip_price=0)
    arch, chosen = viterbi.derive_within(space, alphas, p, prices, lo, hi, buckets=200)
    cost = arch_cost({**arch, "space": "toy"}, flops_table(space))
    assert arch == viterbi.arch_file(space, chosen, arch["path"])
    drift = (space.n + 1) * min(hi - lo, sum(prices.fixed) + sum(max(r) for r in prices.rows)) / 200
    score = network_score(space, alphas, p, arch["path"], chosen)  # (two choices can make one arch file)
    if any(lo <= c <= hi for c in costs):
        assert lo <= cost <= hi
        assert score >= max((s for s, c, _ in nets if lo + drift <= c <= hi - drift), default=-math.inf) - 1e-9
    else:
        def miss(c):
            return max(math.log(lo / c), math.log(c / hi))
        assert miss(cost) <= min(miss(c) for c in costs) + math.log(1 + drift / lo) + 1e-12


@settings(max_examples=15, deadline=None)
@given(st.one_of(st.sampled_from(BUILTIN), spaces()), st.integers(0, 2**16))
def test_derive_within_an_unbounded_window_is_derive(space, seed):
    """With a window holding every network, derive_within is Algorithm 1 and argmax alpha (derive)."""
    from cost import CostModel, flops_table
    alphas, p = viterbi.random_arch_params(space, torch.Generator().manual_seed(seed))
    prices = CostModel(space, flops_table(space), skip_price=0)
    assert viterbi.derive_within(space, alphas, p, prices, 0.0, math.inf)[0] == viterbi.derive(space, alphas, p)


@settings(max_examples=25, deadline=None)
@given(spaces(), st.integers(0, 2**16))
def test_cost_extremes_are_the_cheapest_and_dearest_networks(space, seed):
    """CostModel.extremes against every network of small random spaces: the least and the most of their costs
    (which --target-flops and --target-latency are checked against before a search)."""
    from cost import CostModel, flops_table
    assume(network_count(space) <= 600)
    alphas, p = viterbi.random_arch_params(space, torch.Generator().manual_seed(seed))
    costs = [c for _, c, _ in every_network(space, alphas, p)]
    least, most = CostModel(space, flops_table(space), skip_price=0).extremes()
    assert least == pytest.approx(min(costs), rel=1e-12) and most == pytest.approx(max(costs), rel=1e-12)
