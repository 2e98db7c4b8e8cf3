"""Cost tables and cost estimation (Sec. 3.3, Eq. 5-9) and the paper's FLOPs convention."""
import json
import math
import os
from functools import lru_cache

import pytest
import torch
import torch.nn.functional as F
import torchvision
from hypothesis import given, settings, strategies as st

import cost
import retrain
import supernet
import viterbi
from machinery import cli
from strategies import all_paths, chain_path, markov_dags, one_hot_choices, one_hot_params, path_prob

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
positive = st.floats(0.1, 100.0)


@st.composite
def costed_dags(draw):
    """A Markov DAG with a positive cost per block (0..n) and per edge."""
    n, p = draw(markov_dags())
    cost_b = [draw(positive) for _ in range(n + 1)]
    cost_align = {e: draw(positive) for e in p}
    return n, p, cost_b, cost_align


def path_cost(path, cost_b, cost_align):
    return sum(cost_b[i] for i in path) + sum(cost_align[e] for e in zip(path, path[1:]))


@settings(max_examples=150, deadline=None)
@given(costed_dags())
def test_chained_cost_is_expected_path_cost(case):
    """Eq. 6-7 (with the chained c~_j in the sum): c~_0 is the expected cost of a path drawn from the Markov chain p."""
    n, p, cost_b, cost_align = case
    expected = sum(path_prob(p, q) * path_cost(q, cost_b, cost_align) for q in all_paths(p, n))
    got = cost.chained_cost(cost_b, cost_align, p)
    assert math.isclose(got, expected, rel_tol=1e-9)

    t = lambda v: torch.tensor(v, dtype=torch.float64)
    got_t = cost.chained_cost([t(c) for c in cost_b], {e: t(c) for e, c in cost_align.items()},
                              {e: t(v) for e, v in p.items()})
    assert isinstance(got_t, torch.Tensor) and got_t.dim() == 0
    assert math.isclose(got_t.item(), expected, rel_tol=1e-9)


@settings(max_examples=100, deadline=None)
@given(costed_dags(), st.data())
def test_chained_cost_one_hot_is_path_cost(case, data):
    """Eq. 6-7: with one-hot p the chained estimate is exactly the cost of the single chosen path."""
    n, p, cost_b, cost_align = case
    path = data.draw(st.sampled_from(all_paths(p, n)))
    on = set(zip(path, path[1:]))
    sources = {j for j, _ in on}
    # the edges leaving the path's blocks are one-hot; the other blocks keep their random p
    hot = {e: (1.0 if e in on else 0.0) if e[0] in sources else v for e, v in p.items()}
    assert math.isclose(cost.chained_cost(cost_b, cost_align, hot), path_cost(path, cost_b, cost_align),
                        rel_tol=1e-12)


@settings(max_examples=100, deadline=None)
@given(costed_dags())
def test_local_cost_is_eq9(case):
    """Eq. 9: local estimate = sum over blocks of (cost_b^i + sum_j p_ji * cost_align^ji)."""
    n, p, cost_b, cost_align = case
    expected = sum(cost_b[i] + sum(p[j, k] * cost_align[j, k] for j, k in p if k == i) for i in range(n + 1))
    assert math.isclose(cost.local_cost(cost_b, cost_align, p), expected, rel_tol=1e-12)
    t = lambda v: torch.tensor(v, dtype=torch.float64)
    got_t = cost.local_cost([t(c) for c in cost_b], {e: t(c) for e, c in cost_align.items()},
                            {e: t(v) for e, v in p.items()})
    assert math.isclose(float(got_t), expected, rel_tol=1e-12)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 5), st.integers(1, 7), st.data())
def test_expected_cost_is_eq5(rows, k, data):
    """Eq. 5: a layer's cost is sum_o softmax(alpha)_o * cost_o (batched over layers)."""
    alpha = [[data.draw(st.floats(-5, 5)) for _ in range(k)] for _ in range(rows)]
    costs = [[data.draw(positive) for _ in range(k)] for _ in range(rows)]
    got = cost.expected_cost(torch.tensor(alpha, dtype=torch.float64), torch.tensor(costs, dtype=torch.float64))
    assert got.shape == (rows,)
    for r in range(rows):
        z = sum(math.exp(a) for a in alpha[r])
        manual = sum(math.exp(a) / z * c for a, c in zip(alpha[r], costs[r]))
        assert math.isclose(got[r].item(), manual, rel_tol=1e-9)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 4), st.integers(2, 7), st.sampled_from([1.0, 0.9, 0.5]), st.data())
def test_expected_cost_over_a_sampled_subset(rows, k, t, data):
    """Eq. 5 restricted to a subset (the architecture step's two sampled candidates, as its forward):
    sum over the subset of softmax(alpha_subset / T) * cost, the unsampled candidates not counted."""
    alpha = [[data.draw(st.floats(-5, 5)) for _ in range(k)] for _ in range(rows)]
    costs = [[data.draw(positive) for _ in range(k)] for _ in range(rows)]
    subsets = [data.draw(st.lists(st.integers(0, k - 1), min_size=1, max_size=2, unique=True)) for _ in range(rows)]
    mask = torch.zeros(rows, k, dtype=torch.bool)
    for r, s in enumerate(subsets):
        mask[r, s] = True
    got = cost.expected_cost(torch.tensor(alpha, dtype=torch.float64), torch.tensor(costs, dtype=torch.float64),
                             t, mask)
    for r, s in enumerate(subsets):
        z = sum(math.exp(alpha[r][o] / t) for o in s)
        manual = sum(math.exp(alpha[r][o] / t) / z * costs[r][o] for o in s)
        assert math.isclose(got[r].item(), manual, rel_tol=1e-9)


# ----------------------------------------------------------------------------------------
# CostModel on real spaces

@lru_cache(maxsize=None)
def space_and_table(name, size, connect=None):
    space = supernet.get_space(name, size, 3, 10, connect)
    return space, cost.flops_table(space)


def test_cost_gradient_reaches_alpha_and_beta():
    """Sec. 3.3: the chained cost is differentiable w.r.t. alpha (Eq. 5) and beta (through p, Eq. 3, 6-7)."""
    space, table = space_and_table("toy", 32)
    model = cost.CostModel(space, table)
    g = torch.Generator().manual_seed(0)
    alphas = [torch.randn(len(s.candidates), generator=g).requires_grad_() for s in space.slots]
    beta = torch.randn(len(space.edges), generator=g).requires_grad_()
    p = torch.cat([F.softmax(beta[a:b], 0) for a, b in space.out_edge_ranges])
    c = model(alphas, p)
    assert isinstance(c, torch.Tensor) and c.dim() == 0 and torch.isfinite(c)
    c.backward()
    for a, b in space.out_edge_ranges:
        if b - a > 1:  # a softmax over a single path has no gradient
            assert beta.grad[a:b].abs().max() > 0
    for s, a in zip(space.slots, alphas):
        if len(s.candidates) > 1:
            assert a.grad.abs().max() > 0


def test_cost_gradient_is_correct():
    """Eq. 3, 5-7: autograd's gradient of the chained cost w.r.t. beta and alpha matches finite differences."""
    space, table = space_and_table("toy", 32)
    mtable = dict(table, costs={k: v / 1e6 for k, v in table["costs"].items()})  # MFLOPs: well-scaled
    model = cost.CostModel(space, mtable)
    g = torch.Generator().manual_seed(1)
    sizes = [len(s.candidates) for s in space.slots]
    flat = torch.randn(sum(sizes) + len(space.edges), generator=g, dtype=torch.float64, requires_grad=True)

    def f(v):
        alphas = list(torch.split(v[:sum(sizes)], sizes))
        beta = v[sum(sizes):]
        return model(alphas, torch.cat([F.softmax(beta[a:b], 0) for a, b in space.out_edge_ranges]))

    assert torch.autograd.gradcheck(f, (flat,))


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10**6), st.sampled_from(["toy", "resnet"]))
def test_cost_model_prices_the_sampled_candidates(seed, name):
    """The architecture step's cost: each layer's Eq. 5 over its sampled candidates only, with the
    space's temperature (0.9 for the ResNet space); with every candidate sampled it is Eq. 5 itself."""
    space, table = space_and_table(name, 32)
    model = cost.CostModel(space, table)
    g = torch.Generator().manual_seed(seed)
    alphas = [torch.randn(len(s.candidates), generator=g, dtype=torch.float64) for s in space.slots]
    p = supernet.path_probs(torch.randn(len(space.edges), generator=g, dtype=torch.float64), space)
    samples = {k: torch.randperm(len(s.candidates), generator=g)[:2].tolist() for k, s in enumerate(space.slots)}
    cost_b, cost_align, _ = model.terms(alphas, p, samples)
    t = space.temperature
    want_b = list(model.fixed)
    for k, (slot, a) in enumerate(zip(space.slots, alphas)):
        s = samples[k]
        w = F.softmax(a[s] / t, 0)
        want = sum(float(wi) * model.rows[k][o] for wi, o in zip(w, s))
        if slot.edge:
            assert math.isclose(float(cost_align[slot.edge]), want, rel_tol=1e-9)
        else:
            want_b[slot.block] += want
    assert all(math.isclose(float(x), y, rel_tol=1e-9) for x, y in zip(cost_b, want_b))
    every = {k: list(range(len(s.candidates))) for k, s in enumerate(space.slots)}
    assert math.isclose(float(model(alphas, p, samples=every)), float(model(alphas, p)), rel_tol=1e-12)
    manual = [sum(float(wi) * c for wi, c in zip(F.softmax(a / t, 0), row)) for a, row in zip(alphas, model.rows)]
    b = list(model.fixed)
    for slot, c in zip(space.slots, manual):
        if not slot.edge:
            b[slot.block] += c
    assert all(math.isclose(float(x), y, rel_tol=1e-9) for x, y in zip(model.terms(alphas, p)[0], b))


def test_cost_model_local_matches_eq9_terms():
    """Eq. 9 through CostModel: the local estimate uses the same Eq. 5 terms as the chained one."""
    space, table = space_and_table("toy", 32)
    model = cost.CostModel(space, table)
    g = torch.Generator().manual_seed(2)
    alphas = [torch.randn(len(s.candidates), generator=g) for s in space.slots]
    beta = torch.randn(len(space.edges), generator=g)
    p = torch.cat([F.softmax(beta[a:b], 0) for a, b in space.out_edge_ranges])
    cost_b, cost_align, pd = model.terms(alphas, p)
    manual = sum(float(c) for c in cost_b) + sum(float(pd[e]) * float(cost_align[e]) for e in space.edges)
    assert math.isclose(float(model(alphas, p, "local")), manual, rel_tol=1e-9)
    # with all p > 0 the local estimate counts every block, so it exceeds the chained one
    assert float(model(alphas, p, "local")) > float(model(alphas, p))


def fresh(table):
    """A copy of a cached table: arch_cost adds the FLOPs of operations a FLOPs table lacks."""
    return dict(table, costs=dict(table["costs"]))


ONE_HOT_SPACES = [("toy", 32, None), ("toy", 28, 2), ("toy", 64, 4), ("mbv2", 32, None)]


@settings(max_examples=10, deadline=None)
@given(st.sampled_from(ONE_HOT_SPACES), st.integers(0, 2**32))
def test_chained_estimate_is_exact_for_one_hot(which, seed):
    """Eq. 6-7 with one-hot alpha and beta: the estimate equals the derived network's cost, both from
    the table (arch_cost) and counted on the built network (retrain.profile)."""
    space, table = space_and_table(*which)
    layer, edge = one_hot_choices(seed, space)
    alphas, p = one_hot_params(space, layer, edge, noise_seed=seed)
    estimate = float(cost.CostModel(space, table, skip_price=0)(alphas, p))
    arch = viterbi.derive(space, alphas, p)
    assert arch["path"] == chain_path(space, edge)
    # every operation of the derived network is an operation of the super network
    assert set(supernet.arch_signatures(arch)) <= set(table["costs"])
    assert math.isclose(estimate, cost.arch_cost(arch, fresh(table)), rel_tol=1e-9)
    assert math.isclose(estimate, retrain.profile(arch)["flops"], rel_tol=1e-9)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**32))
def test_resnet_skip_price(seed):
    """The authors' ResNet search: a skip layer is priced at one tenth of the first candidate (basic_block)."""
    space, table = space_and_table("resnet", 32)
    layer, edge = one_hot_choices(seed, space)
    alphas, p = one_hot_params(space, layer, edge, noise_seed=seed)
    arch = viterbi.derive(space, alphas, p)
    exact = cost.arch_cost(arch, fresh(table))
    assert math.isclose(float(cost.CostModel(space, table, skip_price=0)(alphas, p)), exact, rel_tol=1e-9)
    on_path = set(arch["path"])
    skip_cost = sum(0.1 * table["costs"][s.signatures()[0]] for s, k in zip(space.slots, layer)
                    if s.edge is None and s.block in on_path and s.candidates[k] == "skip")
    assert math.isclose(float(cost.CostModel(space, table)(alphas, p)), exact + skip_cost, rel_tol=1e-9)


# ----------------------------------------------------------------------------------------
# The FLOPs convention: MACs of conv and linear layers

def test_count_flops_torchvision_mobilenet_v2():
    """MACs of conv and linear layers; torchvision's MobileNetV2 1.0 counts 300M at 224."""
    flops = cost.count_flops(torchvision.models.mobilenet_v2(), (3, 224, 224))
    assert abs(flops - 300e6) / 300e6 < 0.01
    assert flops == 300_774_272


def test_count_flops_torchvision_resnet18():
    """ResNet-18 counts 1.81G MACs at 224."""
    flops = cost.count_flops(torchvision.models.resnet18(), (3, 224, 224))
    assert abs(flops - 1.81e9) / 1.81e9 < 0.01


def test_mobilenetv2_arch_file_matches_torchvision():
    """examples/mobilenetv2.json (MobileNetV2-1.0) profiles as torchvision's model: FLOPs and params."""
    arch = cli.load_arch(os.path.join(ROOT, "examples", "mobilenetv2.json"))
    prof = retrain.profile(arch)
    tv = torchvision.models.mobilenet_v2()
    tv_flops = cost.count_flops(tv, (3, 224, 224))
    assert abs(prof["flops"] - tv_flops) / tv_flops < 0.005
    assert prof["params"] == sum(p.numel() for p in tv.parameters())
    # the table price of the same network (op by op, Sec. 3.3) agrees with the counted one
    assert cost.arch_cost(arch, {"metric": "flops", "costs": {}}) == prof["flops"]


def test_op_flops_by_hand():
    """The table prices an op by MACs; an MBConv k3 e6 16->24 stride 2 at 112 by hand."""
    c_in, c_out, hid, r_out = 16, 24, 96, 56
    by_hand = 112 * 112 * c_in * hid + r_out * r_out * hid * 9 + r_out * r_out * hid * c_out
    assert cost.op_flops(supernet.signature("mbconv_k3_e6", c_in, c_out, 2, 112)) == by_hand
    assert cost.op_flops(supernet.signature("skip", 24, 24, 1, 56)) == 0
    assert cost.op_flops(supernet.signature("linear", 1984, 1000, 1, 1)) == 1984 * 1000


# ----------------------------------------------------------------------------------------
# Cost tables

def test_check_table_refuses_mismatched_tables(tmp_path):
    """Sec. 3.3 lookup table: a table built for another space / input size / M, or lacking an op, is refused."""
    space, table = space_and_table("toy", 32)
    path = tmp_path / "toy32.json"
    cli.save_json_atomic(table, str(path))
    loaded = cli.load_table(str(path))
    assert loaded == json.loads(json.dumps(table))
    cost.check_table(loaded, space)  # the right table passes

    for other in (supernet.get_space("mbv2", 32, 3, 10), supernet.get_space("toy", 28, 3, 10),
                  supernet.get_space("toy", 32, 3, 10, connect=2)):
        with pytest.raises(supernet.InvalidInput):
            cost.check_table(loaded, other)

    missing = sorted(loaded["costs"])[3]
    lacking = dict(loaded, costs={k: v for k, v in loaded["costs"].items() if k != missing})
    with pytest.raises(supernet.InvalidInput, match="lacks"):
        cost.check_table(lacking, space)


def test_arch_cost_needs_measured_ops():
    """Sec. 3.3: FLOPs of a missing op can be counted, a latency table must hold every op of the arch."""
    arch = cli.load_arch(os.path.join(ROOT, "examples", "mobilenetv2.json"))
    with pytest.raises(supernet.InvalidInput):
        cost.arch_cost(arch, {"metric": "latency", "meta": {}, "costs": {}})


def test_load_table_refuses_bad_files(tmp_path):
    """Sec. 3.3 lookup table files: missing, not JSON, or not a table are refused with UsageError."""
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "nocosts.json").write_text(json.dumps({"metric": "flops", "meta": {}}))
    for name in ("absent.json", "bad.json", "list.json", "nocosts.json"):
        with pytest.raises(supernet.InvalidInput):
            cli.load_table(str(tmp_path / name))
