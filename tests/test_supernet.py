"""The densely connected search space (Sec. 3.1) and its relaxation (Sec. 3.2, Eq. 1-4)."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import supernet
from conftest import run_here
from strategies import spaces

# ----------------------------------------------------------------------------------------
# The paper's spaces, written out (Sec. 3.1, arXiv v1 Sec. 3.1.3; supplement A.4):
# (channels, resolution at 224, stage, basic layers) of B_1 ..

MBV2_B0 = (16, 112)
MBV2_SPEC = [
    (24, 56, 1, 3),
    (32, 28, 2, 3), (40, 28, 2, 3), (48, 28, 2, 3),
    (56, 14, 3, 3), (64, 14, 3, 3), (72, 14, 3, 3),
    (96, 14, 4, 3), (112, 14, 4, 3), (128, 14, 4, 3),
    (160, 7, 5, 3), (176, 7, 5, 3), (192, 7, 5, 3),
    (320, 7, 6, 0), (352, 7, 6, 0), (384, 7, 6, 0),
]
MBV2_END = (1984, 7)

RESNET_B0 = (32, 112)
RESNET_SPEC = [
    (48, 56, 1, 0), (56, 56, 1, 0), (64, 56, 1, 0),
    (72, 28, 2, 5), (96, 28, 2, 5), (112, 28, 2, 5),
    (128, 14, 3, 15), (144, 14, 3, 15), (160, 14, 3, 15), (176, 14, 3, 15),
    (192, 14, 4, 5), (208, 14, 4, 5), (224, 14, 4, 5),
    (240, 7, 5, 5), (256, 7, 5, 5), (272, 7, 5, 5), (288, 7, 5, 5),
    (480, 7, 6, 1), (496, 7, 6, 1), (512, 7, 6, 1),
]
RESNET_END = (512, 7)


def spec_rows(b0, table, end):
    """(channels, resolution, stage) of B_0 .. B_n. The ending block follows the last stage (stage + 1),
    so that only the last stage's blocks feed it (Table 6: the derived ResNets end in a 512-wide block)."""
    return ([(b0[0], b0[1], 0)] + [(c, r, s) for c, r, s, _ in table]
            + [(end[0], end[1], table[-1][2] + 1)])


def spec_edges(rows, M):
    """C_ij exists when 0 < j - i <= M, H_i / H_j is 1 or 2 and the stage rises by 0 or 1 (Sec. 3.1.3)."""
    return {(i, j) for i in range(len(rows)) for j in range(i + 1, len(rows))
            if j - i <= M and rows[i][1] in (rows[j][1], 2 * rows[j][1]) and rows[j][2] - rows[i][2] in (0, 1)}


@pytest.fixture(scope="module")
def described():
    """`supernet.py --describe` run once per setting, in this process; parsed JSON by name."""
    res = run_here({"mbv2": ["supernet.py", "--space", "mbv2", "--describe"],
                    "toy_m2": ["supernet.py", "--space", "toy", "--connect", "2", "--describe"]})
    out = {}
    for name, r in res.items():
        assert r.returncode == 0, r.stderr
        out[name] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


def test_describe_mbv2_matches_spec(described):
    """The MobileNetV2 space (Sec. 3.1, 4.1): B_0 = 16@112, B_1..B_16 as tabled, ending 1984@7, M = 4."""
    d = described["mbv2"]
    assert set(d) >= {"space", "input_size", "blocks", "edges", "params"}
    assert d["space"] == "mbv2" and d["input_size"] == 224
    assert isinstance(d["params"], int) and d["params"] > 0
    blocks = d["blocks"]
    assert [b["index"] for b in blocks] == list(range(18))
    assert (blocks[0]["channels"], blocks[0]["resolution"]) == MBV2_B0
    assert [(b["channels"], b["resolution"], b["stage"], b["layers"]) for b in blocks[1:17]] == MBV2_SPEC
    assert (blocks[17]["channels"], blocks[17]["resolution"], blocks[17]["layers"]) == MBV2_END + (0,)
    edges = {tuple(e) for e in d["edges"]}
    assert len(edges) == len(d["edges"])
    assert edges == spec_edges(spec_rows(MBV2_B0, MBV2_SPEC, MBV2_END), 4)


def test_describe_resnet_matches_spec():
    """The ResNet space (supplement A.4, Table 6): B_0 = 32@112, B_1..B_20 as tabled, ending 512@7, M = 10."""
    d = supernet.get_space("resnet").describe()
    blocks = d["blocks"]
    assert len(blocks) == 22
    assert (blocks[0]["channels"], blocks[0]["resolution"]) == RESNET_B0
    assert [(b["channels"], b["resolution"], b["stage"], b["layers"]) for b in blocks[1:21]] == RESNET_SPEC
    assert (blocks[21]["channels"], blocks[21]["resolution"], blocks[21]["layers"]) == RESNET_END + (0,)
    assert {tuple(e) for e in d["edges"]} == spec_edges(spec_rows(RESNET_B0, RESNET_SPEC, RESNET_END), 10)


def test_connect_override(described):
    """Sec. 4.5 / Table 5 (connection number M): --connect M keeps exactly the edges with j - i <= M."""
    toy2 = {tuple(e) for e in described["toy_m2"]["edges"]}  # the CLI flag
    toy3 = set(supernet.get_space("toy").edges)  # the toy space's own M = 3
    assert all(j - i <= 2 for i, j in toy2) and toy2 < toy3
    assert toy2 == {(i, j) for i, j in toy3 if j - i <= 2}
    mbv2_3 = supernet.get_space("mbv2", connect=3)
    assert mbv2_3.connect == 3
    assert set(mbv2_3.edges) == spec_edges(spec_rows(MBV2_B0, MBV2_SPEC, MBV2_END), 3)
    assert len(mbv2_3.edges) < len(described["mbv2"]["edges"])


def test_input_size_scaling():
    """Sec. 3.1: at 224 the stem halves the input (112, 56, 28, 14, 7); at 28 it keeps it (28, 14, 7, 4, 2)."""
    level = {112: 0, 56: 1, 28: 2, 14: 3, 7: 4}  # from the paper's resolutions at 224
    rows = spec_rows(MBV2_B0, MBV2_SPEC, MBV2_END)
    for size, stride, by_level in ((224, 2, [112, 56, 28, 14, 7]), (28, 1, [28, 14, 7, 4, 2])):
        space = supernet.get_space("mbv2", size)
        assert space.stem_stride == stride
        assert [b.resolution for b in space.blocks] == [by_level[level[r]] for _, r, _ in rows]
    net = supernet.SuperNet(supernet.get_space("toy", 28, 1, 10))
    assert net.stem[0][0].stride == (1, 1)


# ----------------------------------------------------------------------------------------
# Random small spaces

def halvings(r, times):
    for _ in range(times):
        r = math.ceil(r / 2)
    return r


def block_shapes(net, x):
    """Run the super network and record every routing block's output shape (B_1 .. B_n)."""
    shapes = []
    hooks = [b.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape))) for b in net.blocks]
    try:
        y = net(x)
    finally:
        for h in hooks:
            h.remove()
    return y, shapes


@settings(max_examples=30, deadline=None)
@given(spaces(), st.integers(0, 2**16))
def test_random_space_connections_and_forward(space, seed):
    """Sec. 3.1.3 and Eq. 3: connections obey M, the 2x resolution and the 1-stage rules; p sums to 1 per
    block; the super network runs and each block outputs its width at its resolution."""
    d = space.defn
    rows = [(d.b0_out, 0, 0)] + [(c, lv, s) for c, lv, s, _ in d.blocks] + [(d.end_width, d.blocks[-1][1],
                                                                           d.blocks[-1][2] + 1)]
    res = [halvings(space.input_size, lv) for _, lv, _ in rows]
    assert [b.resolution for b in space.blocks] == res and [b.channels for b in space.blocks] == [r[0] for r in rows]
    expected = {(i, j) for i in range(len(rows)) for j in range(i + 1, len(rows))
                if j - i <= space.connect and rows[j][1] - rows[i][1] in (0, 1) and rows[j][2] - rows[i][2] in (0, 1)}
    assert set(space.edges) == expected and len(space.edges) == len(expected)
    for i, j in space.edges:
        assert 0 < j - i <= space.connect
        assert res[j] in (res[i], math.ceil(res[i] / 2))
        assert space.blocks[j].stage - space.blocks[i].stage in (0, 1)
    for i, (a, b) in enumerate(space.out_edge_ranges):
        assert b > a and all(e[0] == i for e in space.edges[a:b])
    for s in space.slots:
        if s.edge:
            assert s.stride == 2 ** (rows[s.edge[1]][1] - rows[s.edge[0]][1])

    torch.manual_seed(seed)
    net = supernet.SuperNet(space)
    with torch.no_grad():
        net.beta.copy_(3 * torch.randn(len(space.edges)))
    p = net.path_probs()
    for i, (a, b) in enumerate(space.out_edge_ranges):
        assert math.isclose(p[a:b].sum().item(), 1.0, rel_tol=1e-6)
        ref = F.softmax(torch.stack([net.beta[k] for k, e in enumerate(space.edges) if e[0] == i]), 0)
        assert torch.allclose(p[a:b], ref)
    x = torch.randn(2, space.in_channels, space.input_size, space.input_size)
    with torch.no_grad():
        y, shapes = block_shapes(net, x)
    assert y.shape == (2, space.num_classes)
    assert shapes == [(2, c, r, r) for (c, _, _), r in zip(rows[1:], res[1:])]


# ----------------------------------------------------------------------------------------
# Forward passes of the built-in spaces

@pytest.mark.parametrize("size", [28, 32])
def test_toy_forward_shapes(size):
    """Sec. 3.1-3.2: the toy super network maps a 1-channel batch to logits; blocks have their tabled shapes."""
    space = supernet.get_space("toy", size, 1, 10)
    net = supernet.SuperNet(space)
    y, shapes = block_shapes(net, torch.randn(2, 1, size, size))
    assert y.shape == (2, 10)
    assert shapes == [(2, b.channels, b.resolution, b.resolution) for b in space.blocks[1:]]


def test_mbv2_forward_shape():
    """Sec. 4 (MobileNetV2 space): the full mbv2 super network runs at 32 px."""
    net = supernet.SuperNet(supernet.get_space("mbv2", 32, 3, 10))
    with torch.no_grad():
        assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet_forward_shape():
    """Supplement (ResNet space): the full ResNet super network runs at 16 px (eval mode, batch 1)."""
    net = supernet.SuperNet(supernet.get_space("resnet", 16, 3, 10)).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 16, 16)).shape == (1, 10)


def test_toy_forward_backward():
    """Sec. 3.4: one search step's forward+backward over all candidates reaches weights, alpha and beta."""
    net = supernet.SuperNet(supernet.get_space("toy", 32, 3, 10))
    net(torch.randn(2, 3, 32, 32)).logsumexp(1).sum().backward()
    assert net.beta.grad is not None and all(a.grad is not None for a in net.alphas())
    assert all(p.grad is not None for p in net.weight_parameters())


def test_samples_with_every_candidate_equal_full_forward():
    """Eq. 2 and dropping-path: sampling every candidate of every layer equals the unsampled forward."""
    torch.manual_seed(0)
    net = supernet.SuperNet(supernet.get_space("toy", 16, 3, 10)).eval()
    with torch.no_grad():
        for a in net.alphas():
            a.normal_()
        net.beta.normal_()
        x = torch.randn(2, 3, 16, 16)
        full = net(x)
        sampled = net(x, {k: list(range(len(m.candidates))) for k, m in enumerate(net.layers)})
    assert torch.allclose(full, sampled, atol=1e-5)


def test_routing_block_aggregation_eq4():
    """Eq. 4: a routing block without basic layers outputs sum_i p_ij * align_ij(b_i)."""
    torch.manual_seed(0)
    space = supernet.get_space("toy", 16, 3, 10)
    net = supernet.SuperNet(space).eval()
    j = next(k for k, b in enumerate(space.blocks) if 0 < k < space.n and b.layers == 0)
    blk = net.blocks[j - 1]
    assert len(blk.sources) > 1 and len(blk.layers) == 0
    inputs = [torch.randn(2, space.blocks[i].channels, space.blocks[i].resolution, space.blocks[i].resolution)
              for i in blk.sources]
    p_in = torch.softmax(torch.randn(len(inputs)), 0)
    with torch.no_grad():
        got = blk(inputs, p_in)
        ref = sum(p_in[k] * br(x) for k, (br, x) in enumerate(zip(blk.branches, inputs)))
        # one-hot p selects exactly one branch
        one = blk(inputs, torch.eye(len(inputs))[1])
        assert torch.allclose(one, blk.branches[1](inputs[1]), atol=1e-6)
    assert torch.allclose(got, ref, atol=1e-5)


# ----------------------------------------------------------------------------------------
# Eq. 1-2 and dropping-path in one BasicLayer

@st.composite
def basic_layers(draw):
    c_in = draw(st.integers(1, 6))
    stride = draw(st.sampled_from([1, 2]))
    c_out = draw(st.sampled_from([c_in, c_in + draw(st.integers(1, 4))]))
    pool = supernet.MBCONVS + (["skip"] if stride == 1 and c_in == c_out else [])
    cands = draw(st.lists(st.sampled_from(pool), min_size=2, max_size=4, unique=True))
    alpha = draw(st.lists(st.floats(-4, 4), min_size=len(cands), max_size=len(cands)))
    res = draw(st.integers(3, 8))
    return supernet.BasicLayer(cands, c_in, c_out, stride, res), torch.tensor(alpha), res


@settings(max_examples=25, deadline=None)
@given(basic_layers(), st.data())
def test_sampled_basic_layer(layer_alpha_res, data):
    """Eq. 2: the layer is sum_o softmax(alpha)_o * o(x); a sample restricts the softmax to the sampled ops."""
    layer, alpha, res = layer_alpha_res
    torch.manual_seed(data.draw(st.integers(0, 2**16)))
    layer.eval()  # BN on running statistics: every op is a fixed function of x
    with torch.no_grad():
        layer.alpha.copy_(alpha)
        x = torch.randn(2, layer.c_in, res, res)
        outs = [op(x) for op in layer.ops]
        w = torch.softmax(alpha, 0)
        assert torch.allclose(layer(x), sum(wk * o for wk, o in zip(w, outs)), atol=1e-5)
        K = len(outs)
        a, b = data.draw(st.lists(st.integers(0, K - 1), min_size=2, max_size=2, unique=True))
        ws = torch.softmax(alpha[[a, b]], 0)
        assert torch.allclose(layer(x, [a, b]), ws[0] * outs[a] + ws[1] * outs[b], atol=1e-5)
        k = data.draw(st.integers(0, K - 1))
        assert torch.allclose(layer(x, [k]), outs[k], atol=1e-6)


def test_path_probs_use_the_space_temperature():
    """Eq. 3 with the authors' temperature: p = softmax(beta / T) per block's outgoing paths; T = 0.9 for resnet."""
    for name, t in (("resnet", 0.9), ("mbv2", 1.0)):
        space = supernet.get_space(name, 64, 3, 10)
        beta = torch.randn(len(space.edges), generator=torch.Generator().manual_seed(0))
        p = supernet.path_probs(beta, space)
        for a, b in space.out_edge_ranges:
            assert torch.allclose(p[a:b], torch.softmax(beta[a:b] / t, 0))


def test_architecture_parameters_start_small_and_random():
    """alpha and beta start as 1e-3 x N(0, 1) (the authors' code), not zeros: no tie decides the start,
    and the same seed gives the same start."""
    def start(seed):
        torch.manual_seed(seed)
        net = supernet.SuperNet(supernet.get_space("toy", 16, 3, 10))
        return torch.cat([a.detach().flatten() for a in net.arch_parameters()])
    a, b, c = start(0), start(0), start(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert 0.5e-3 < a.std() < 2e-3 and a.abs().max() < 1e-2 and len(set(a.tolist())) == len(a)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10**6))
def test_mini_candidates_start_alike(seed):
    """The laptop space starts every MBConv candidate of a layer as the same function (supernet.start_alike);
    the other spaces do not."""
    torch.manual_seed(seed)
    net = supernet.SuperNet(supernet.get_space("mini", 16, 1, 10)).train()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in net.layers:
            x = torch.randn(4, layer.c_in, layer.resolution, layer.resolution, generator=g)
            outs = [op(x) for n, op in zip(layer.candidates, layer.ops) if n.startswith("mbconv")]
            assert all(torch.allclose(o, outs[0], atol=1e-5) for o in outs)
    torch.manual_seed(seed)
    toy = supernet.SuperNet(supernet.get_space("toy", 16, 3, 10)).train()
    layer = toy.layers[0]
    x = torch.randn(4, layer.c_in, layer.resolution, layer.resolution, generator=g)
    with torch.no_grad():
        assert not torch.allclose(layer.ops[0](x), layer.ops[1](x), atol=1e-3)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([3, 5, 7]), st.sampled_from([1, 2]), st.integers(1, 9), st.integers(1, 9), st.integers(0, 10**6))
def test_depthwise_conv_crop_is_exact(k, stride, h, w, seed):
    """supernet.DepthwiseConv2d crops the filter to the taps that can reach a small map: its output and
    its gradients (to the input and to the whole filter) equal stock nn.Conv2d's, on any map size."""
    g = torch.Generator().manual_seed(seed)
    mine = supernet.DepthwiseConv2d(6, 6, k, stride, k // 2, groups=6, bias=False)
    stock = torch.nn.Conv2d(6, 6, k, stride, k // 2, groups=6, bias=False)
    with torch.no_grad():
        stock.weight.copy_(torch.randn(stock.weight.shape, generator=g))
        mine.weight.copy_(stock.weight)
    x = torch.randn(2, 6, h, w, generator=g, dtype=torch.float32)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = mine(xa), stock(xb)
    assert ya.shape == yb.shape and torch.allclose(ya, yb, atol=1e-5)
    up = torch.randn(ya.shape, generator=g)
    ga = torch.autograd.grad(ya, (xa, mine.weight), up)
    gb = torch.autograd.grad(yb, (xb, stock.weight), up)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(ga, gb))
