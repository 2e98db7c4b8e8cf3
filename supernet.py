"""The densely connected search space of DenseNAS (Sec. 3.1) and its relaxation (Sec. 3.2).

Read top to bottom: candidate operations, the BasicLayer (Eq. 1-2), the RoutingBlock
(Eq. 4), the dense SuperNet with its path probabilities (Eq. 3), and the search spaces
(`mbv2` as Sec. 3.1 and arXiv v1's Sec. 3.1.3 and Fig. 3 give it, `resnet` as the supplement's A.4
gives it; `mini` for the laptop walkthrough, `toy` for tests).

    python supernet.py --space mbv2 --describe [--input-size N] [--num-classes K] [--connect M]
"""
import argparse
import contextlib
import json
import math
import sys
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class InvalidInput(ValueError):
    """A value the definitions of this repository cannot take: an unknown op or space, a shape that does not
    fit, a malformed arch file or cost table. Every program prints it as one line and exits with code 2."""


# ----------------------------------------------------------------------------------------
# Candidate operations (Sec. 3.1.1; arXiv v1 Table 1)

MBCONVS = [f"mbconv_k{k}_e{e}" for k in (3, 5, 7) for e in (3, 6)]
OPS = MBCONVS + ["mbconv_k3_e1", "skip", "basic_block", "bottleneck"]
# NSE's 27-op pool (NSE App. A.1, Fig. 6): depthwise kernels 3-11 x expansions 1/3/6, 3x3 dilated by 2 or 3, and
# 1xk-kx1 factorised depthwise filters, each as an inverted residual (nse.py)
NSE_POOL = ([f"mbconv_k{k}_e{e}" for k in (3, 5, 7, 9, 11) for e in (1, 3, 6)]
            + [f"dilconv_k3_d{d}_e{e}" for d in (2, 3) for e in (1, 3, 6)]
            + [f"fconv_k{k}_e{e}" for k in (5, 7) for e in (1, 2, 4)])
# fixed parts of a network, priced in the same cost tables as the candidates
FIXED_OPS = ["conv3x3", "conv1x1", "linear"]


def conv_bn(c_in, c_out, k, stride=1, groups=1, affine=False, dilation=1):
    """A convolution (k an int, or (kh, kw)) with 'same' padding, and BN."""
    kh, kw = (k, k) if isinstance(k, int) else k
    if groups > 1 and groups == c_in == c_out and dilation == 1 and kh == kw:
        conv = DepthwiseConv2d(c_in, c_out, kh, stride, kh // 2, groups=groups, bias=False)
    else:
        conv = nn.Conv2d(c_in, c_out, (kh, kw), stride, (dilation * (kh // 2), dilation * (kw // 2)), dilation,
                         groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(c_out, affine=affine)]


def activation(act):
    """ReLU6 out of place: an in-place ReLU6 that needs a gradient first copies its input (its backward
    reads the input), which made BN + ReLU6 1.4-2.5x slower here (studies/bench.py). ReLU's backward reads its
    output, so an in-place ReLU costs no copy."""
    return nn.ReLU6() if act == "relu6" else nn.ReLU(inplace=True)


class MBConv(nn.Module):
    """Inverted residual of MobileNetV2: 1x1 expand (absent when e = 1), kxk depthwise, 1x1 linear. NSE's pool
    (App. A.1) adds a dilated depthwise filter and a factorised one (1xk then kx1, depthwise)."""

    def __init__(self, c_in, c_out, k, e, stride, affine=False, dilation=1, factorised=False):
        super().__init__()
        hidden = c_in * e
        layers = []
        if e != 1:
            layers += conv_bn(c_in, hidden, 1, affine=affine) + [activation("relu6")]
        if factorised:
            layers += conv_bn(hidden, hidden, (1, k), stride, groups=hidden, affine=affine)
            layers += conv_bn(hidden, hidden, (k, 1), groups=hidden, affine=affine) + [activation("relu6")]
        else:
            layers += conv_bn(hidden, hidden, k, stride, groups=hidden, affine=affine, dilation=dilation)
            layers += [activation("relu6")]
        layers += conv_bn(hidden, c_out, 1, affine=affine)
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class ResBlock(nn.Module):
    """ResNet's basic block (two 3x3) or bottleneck (1x1, 3x3 with the stride, 1x1 to c_out = 4x middle)."""

    def __init__(self, c_in, c_out, stride, bottleneck=False, affine=False):
        super().__init__()
        if bottleneck:
            mid = c_out // 4
            body = (conv_bn(c_in, mid, 1, affine=affine) + [activation("relu")]
                    + conv_bn(mid, mid, 3, stride, affine=affine) + [activation("relu")]
                    + conv_bn(mid, c_out, 1, affine=affine))
        else:
            body = (conv_bn(c_in, c_out, 3, stride, affine=affine) + [activation("relu")]
                    + conv_bn(c_out, c_out, 3, affine=affine))
        self.body = nn.Sequential(*body)
        same = stride == 1 and c_in == c_out
        self.shortcut = nn.Identity() if same else nn.Sequential(*conv_bn(c_in, c_out, 1, stride, affine=affine))

    def forward(self, x):
        return F.relu(self.body(x) + self.shortcut(x))


def make_op(name, c_in, c_out, stride=1, affine=False, act="relu6"):
    """One operation by name. `act` is the activation of the fixed convs (stem, ending block)."""
    if stride not in (1, 2):
        raise InvalidInput(f"stride must be 1 or 2, got {stride}")
    if name.startswith("mbconv_k"):
        if name not in OPS + NSE_POOL:
            raise InvalidInput(f"unknown op '{name}'")
        k, e = (int(s[1:]) for s in name.split("_")[1:])
        return MBConv(c_in, c_out, k, e, stride, affine)
    if name in NSE_POOL:  # dilconv_k3_dD_eE, fconv_kK_eE
        parts = {p[0]: int(p[1:]) for p in name.split("_")[1:]}
        return MBConv(c_in, c_out, parts["k"], parts["e"], stride, affine, parts.get("d", 1), name.startswith("f"))
    if name == "skip":
        if stride != 1 or c_in != c_out:
            raise InvalidInput(f"skip cannot map {c_in} to {c_out} channels with stride {stride}")
        return nn.Identity()
    if name in ("basic_block", "bottleneck"):
        if name == "bottleneck" and c_out % 4:
            raise InvalidInput(f"bottleneck width {c_out} is not a multiple of 4")
        return ResBlock(c_in, c_out, stride, name == "bottleneck", affine)
    if name in ("conv3x3", "conv1x1"):
        return nn.Sequential(*conv_bn(c_in, c_out, int(name[4]), stride, affine=affine), activation(act))
    if name == "linear":
        return nn.Linear(c_in, c_out)
    raise InvalidInput(f"unknown op '{name}' (known: {', '.join(OPS + FIXED_OPS)}, and NSE's pool)")


def init_weights(model):
    """He initialisation (fan-out) for convolutions, as in the ResNet and MobileNetV2 papers. The fan-out
    is counted per group, as the authors' code does: a depthwise kxk filter feeds k*k outputs, not
    k*k*channels (PyTorch's kaiming_normal_ counts the latter, starting depthwise filters ~sqrt(channels)
    times smaller, which behind BN means a far larger effective learning rate on them)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


# A speed fix that changes no number: conv_bn builds a depthwise convolution as this class

class DepthwiseConv2d(nn.Conv2d):
    """A depthwise kxk convolution with padding k//2. On a map of H rows, the filter taps further than
    H-1 from its centre only ever meet zero padding, so the filter is cropped to the taps that can reach
    the map: the output and every gradient are exactly those of the whole filter (its outer taps get a zero
    gradient either way). oneDNN is very slow on such padding-dominated filters (a 7x7 filter on a 2x2 map:
    mbv2's last stages at 64 px), which made this the slowest part of a CPU search step."""

    def forward(self, x):
        (kh, kw), (h, w) = self.kernel_size, x.shape[-2:]
        rh, rw = min(kh // 2, h - 1), min(kw // 2, w - 1)
        if (rh, rw) == (kh // 2, kw // 2):
            return super().forward(x)
        oh, ow = kh // 2 - rh, kw // 2 - rw
        weight = self.weight[:, :, oh:oh + 2 * rh + 1, ow:ow + 2 * rw + 1]
        return F.conv2d(x, weight, self.bias, self.stride, (rh, rw), self.dilation, self.groups)


# ----------------------------------------------------------------------------------------
# Relaxed layers and blocks (Sec. 3.2)

class BasicLayer(nn.Module):
    """A set of candidate operations mixed by softmax(alpha) (Eq. 1-2).

    The shape-alignment branches of a routing block are BasicLayers too (c_in -> c_out,
    stride 1 or 2, no skip among their candidates; Sec. 3.1.2). `slot` is this layer's
    index in SuperNet.layers, which is where the search keeps its sampled candidates.
    `temperature` divides alpha in every softmax (0.9 in the authors' ResNet search, else 1).
    """

    def __init__(self, candidates, c_in, c_out, stride, resolution, act="relu6", temperature=1.0):
        super().__init__()
        self.candidates = list(candidates)
        self.c_in, self.c_out, self.stride, self.resolution = c_in, c_out, stride, resolution
        self.temperature = temperature
        self.ops = nn.ModuleList(make_op(n, c_in, c_out, stride, act=act) for n in self.candidates)
        # a small random start, as in the authors' code: never a tie that argmax would break by position
        self.alpha = nn.Parameter(1e-3 * torch.randn(len(self.candidates)))
        self.slot = None

    def weights(self, subset=None):
        """w = softmax(alpha / T) over all candidates (Eq. 2) or over a sampled subset of them."""
        a = self.alpha if subset is None else self.alpha[list(subset)]
        return F.softmax(a / self.temperature, 0)

    def forward(self, x, sample=None):
        if sample is None:  # Eq. 2 over all candidates
            return add_all(w * op(x) for w, op in zip(self.weights(), self.ops))
        if len(sample) == 1:  # dropping-path, weight step: softmax over one candidate is 1
            return self.ops[sample[0]](x)
        # Eq. 2 restricted to the sampled subset (dropping-path, architecture step; supplement A.3)
        return add_all(w * self.ops[k](x) for w, k in zip(self.weights(sample), sample))


def start_alike(layer):
    """Make every MBConv candidate of a layer compute, at the start, the same function as its smallest
    one (least expansion, then smallest kernel): the smallest kernel sits in the centre of each larger
    one (zeros around it, the same output for padding k//2), the smallest's expanded channels come first
    and the projection reads only those (zero weights from the extra ones). Training then moves each
    candidate on its own. Under dropping-path this means that the candidates of a layer start in
    agreement, so the layers after them do not see a different random basis at every step (not in the
    paper; the laptop space uses it, see SpaceDef.start_alike)."""
    mb = [op for op in layer.ops if isinstance(op, MBConv) and len(op.body) == 8]  # expand, dw, project
    if len(mb) < 2:
        return
    base = min(mb, key=lambda op: (op.body[0].out_channels, op.body[3].kernel_size[0]))
    (e0, d0, p0) = (base.body[i] for i in (0, 3, 6))
    h, k0 = e0.out_channels, d0.kernel_size[0]
    if any(op.body[3].kernel_size[0] < k0 for op in mb):
        raise ValueError("start_alike needs a candidate with both the least expansion and the smallest kernel")
    with torch.no_grad():
        for op in mb:
            if op is base:
                continue
            e1, d1, p1 = (op.body[i] for i in (0, 3, 6))
            off = (d1.kernel_size[0] - k0) // 2
            e1.weight[:h] = e0.weight
            d1.weight[:h] = 0.0
            d1.weight[:h, :, off:off + k0, off:off + k0] = d0.weight
            p1.weight.zero_()
            p1.weight[:, :h] = p0.weight


def add_all(terms):
    """t_0 + t_1 + ...; unlike sum() it starts from t_0, not from 0, so it adds no pass over a zero."""
    terms = iter(terms)
    x = next(terms)
    for t in terms:
        x = x + t
    return x


def signature(op, c_in, c_out, stride, resolution):
    """The key of an operation in a cost table: identical operations share one entry."""
    return f"{op}/{c_in}/{c_out}/{stride}/{resolution}"


class RoutingBlock(nn.Module):
    """B_j: one shape-alignment branch per incoming block, their p-weighted sum (Eq. 4), then basic layers."""

    def __init__(self, space, j):
        super().__init__()
        self.sources = [i for (i, k) in space.edges if k == j]
        slots = [(k, s) for k, s in enumerate(space.slots) if s.block == j]
        args = (space.act, space.temperature)
        self.branches = nn.ModuleList(BasicLayer(*s.make_args(*args)) for _, s in slots if s.edge)
        self.layers = nn.ModuleList(BasicLayer(*s.make_args(*args)) for _, s in slots if not s.edge)
        for (k, _), layer in zip(slots, list(self.branches) + list(self.layers)):
            layer.slot = k

    def forward(self, inputs, p_in, samples=None):
        """inputs: the outputs b_i of self.sources (None for a block that was not computed);
        p_in: their path probabilities p_ij (Eq. 4)."""
        s = samples or {}
        x = add_all(p * br(x_i, s.get(br.slot)) for br, x_i, p in zip(self.branches, inputs, p_in) if x_i is not None)
        for layer in self.layers:
            x = layer(x, s.get(layer.slot))
        return x


class SuperNet(nn.Module):
    """The dense super network (Sec. 3.1.3): B_0 (stem), routing blocks B_1..B_{n-1}, ending block B_n.

    beta holds one parameter per connection (i, j), in the order of space.edges; the path
    probabilities p_ij are a softmax over each block's outgoing connections (Eq. 3) and weight
    the incoming branches of B_j (Eq. 4). The ending block is a routing block whose branches
    are 1x1 convs to the final width, followed by pooling and the classifier.
    """

    def __init__(self, space, init=True):
        super().__init__()
        self.space = space
        b0 = space.blocks[0]
        stem = [make_op("conv3x3", space.in_channels, space.stem_out, space.stem_stride, act=space.act)]
        stem += [make_op(o, space.stem_out, b0.channels, 1) for o in space.b0_ops]
        self.stem = nn.Sequential(*stem)
        self.blocks = nn.ModuleList(RoutingBlock(space, j) for j in range(1, space.n + 1))
        self.classifier = nn.Linear(space.end_width, space.num_classes)
        self.beta = nn.Parameter(1e-3 * torch.randn(len(space.edges)))  # as alpha: a small random start
        # every mixed layer, in the order of space.slots (layer.slot is its index here)
        self.layers = sorted((m for blk in self.blocks for m in list(blk.branches) + list(blk.layers)),
                             key=lambda m: m.slot)
        self._edge_index = {e: k for k, e in enumerate(space.edges)}
        self._in_edges = [[self._edge_index[(i, j)] for i in blk.sources]
                          for j, blk in enumerate(self.blocks, start=1)]
        if init:
            init_weights(self)
            if space.start_alike:
                for layer in self.layers:
                    start_alike(layer)

    def path_probs(self):
        """p_ij for every edge (Eq. 3): softmax of beta / T over the outgoing connections of each B_i."""
        return path_probs(self.beta, self.space)

    def forward(self, x, samples=None, path=None):
        """samples: None (every candidate, Eq. 2) or {slot: [candidate indices]} (dropping-path).
        path: None (every block, inputs weighted by p, Eq. 4), or a block sequence from B_0 to B_n:
        then only its blocks run, each fed by its predecessor alone. With path = the Viterbi path
        and samples = argmax alpha this is the derived network (Sec. 3.4) on the shared weights (in the ResNet
        space with the ending 1x1 conv, which the derived ResNets of Table 6 drop)."""
        p = self.path_probs()
        if path is not None and (path[0] != 0 or path[-1] != self.space.n
                                 or not set(zip(path, path[1:])) <= set(self.space.edges)):
            raise ValueError(f"{path} is not a path of connections from B_0 to B_{self.space.n}")
        before = dict(zip(path[1:], path[:-1])) if path is not None else None
        outs = [self.stem(x)]
        for j, (blk, idx) in enumerate(zip(self.blocks, self._in_edges), start=1):
            if before is None:
                outs.append(blk([outs[i] for i in blk.sources], p[idx], samples))
            elif j in before:
                outs.append(blk([outs[i] if i == before[j] else None for i in blk.sources], [1.0] * len(idx), samples))
            else:
                outs.append(None)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(outs[-1], 1), 1))

    def alphas(self):
        return [layer.alpha for layer in self.layers]

    def argmax_samples(self):
        """{slot: [argmax alpha]}: every layer at its chosen candidate, as the derived network has it (Sec. 3.4)."""
        return {layer.slot: [int(layer.alpha.argmax())] for layer in self.layers}

    def arch_parameters(self):
        return self.alphas() + [self.beta]

    def weight_parameters(self):
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]


def path_probs(beta, space):
    """Eq. 3: p_ij = softmax over the outgoing connections of each B_i of beta / T (T: the space's temperature)."""
    return torch.cat([F.softmax(beta[a:b] / space.temperature, 0) for a, b in space.out_edge_ranges])


@contextlib.contextmanager
def bn_momentum(net, momentum):
    """Every BN layer of net with this momentum while the block runs, its own put back after: 0 normalises with
    batch statistics and leaves the running ones as they are; None makes them a cumulative average."""
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.momentum = momentum
    try:
        yield bns
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom


def count_params(params):
    return sum(p.numel() for p in params if p.requires_grad)


# ----------------------------------------------------------------------------------------
# Search spaces (Sec. 3.1; arXiv v1 Sec. 3.1.3; supplement A.4)

@dataclass(frozen=True)
class Block:
    index: int
    channels: int
    resolution: int
    level: int  # number of halvings after the stem output (resolution = stem output / 2**level)
    stage: int
    layers: int


@dataclass(frozen=True)
class MixedLayerSpec:
    """One mixed layer of the super network: the branch of edge (i, j) in B_j, or basic layer `layer` of B_j."""
    block: int
    edge: tuple  # (i, j) for a shape-alignment branch, None for a basic layer
    layer: int  # index among B_j's basic layers, None for a branch
    candidates: tuple
    c_in: int
    c_out: int
    stride: int
    resolution: int  # input resolution

    def make_args(self, act, temperature):
        return self.candidates, self.c_in, self.c_out, self.stride, self.resolution, act, temperature

    def signatures(self):
        return [signature(o, self.c_in, self.c_out, self.stride, self.resolution) for o in self.candidates]


@dataclass(frozen=True)
class SpaceDef:
    """A search space independent of input size: stem, B_0's fixed layers, routing blocks, ending width."""
    name: str
    stem_out: int
    b0_ops: tuple  # fixed layers of B_0 after the stem conv
    b0_out: int
    blocks: tuple  # Row(channels, level, stage, layers) for B_1 .. B_{n-1}
    end_width: int
    candidates: tuple  # basic-layer candidates
    align_candidates: tuple  # shape-alignment candidates
    act: str
    connect: int  # M
    skip_price: float = 0.0  # cost of skip as a fraction of the first candidate's (the authors' ResNet search)
    temperature: float = 1.0  # softmax temperature on alpha and beta (the authors' ResNet search: 0.9)
    start_alike: bool = False  # MBConv candidates of a layer start as the same function (start_alike; laptop)
    derived_end_conv: bool = True  # the derived network keeps the ending 1x1 conv (the ResNets of Table 6 do not)


class Row(NamedTuple):
    """One routing block of a space: its width, resolution level (halvings after B_0), stage and basic layers."""
    channels: int
    level: int
    stage: int
    layers: int


def rows(widths, level, stage, layers):
    """The routing blocks of one stage (Sec. 3.1.2): one level, stage and layer count, growing widths."""
    return tuple(Row(c, level, stage, layers) for c in widths)


# Sec. 3.1 and Fig. 3 (arXiv v1's Sec. 3.1.3): MobileNetV2-based, searched on GPU latency
MBV2 = SpaceDef(
    name="mbv2", stem_out=16, b0_ops=("mbconv_k3_e1",), b0_out=16,
    blocks=(rows([24], level=1, stage=1, layers=3) + rows([32, 40, 48], level=2, stage=2, layers=3)
            + rows([56, 64, 72], level=3, stage=3, layers=3) + rows([96, 112, 128], level=3, stage=4, layers=3)
            + rows([160, 176, 192], level=4, stage=5, layers=3) + rows([320, 352, 384], level=4, stage=6, layers=0)),
    end_width=1984, candidates=tuple(MBCONVS + ["skip"]), align_candidates=tuple(MBCONVS), act="relu6", connect=4)

# supplement A.4 and Table 6: ResNet-based, searched on FLOPs
RESNET = SpaceDef(
    name="resnet", stem_out=32, b0_ops=(), b0_out=32,
    blocks=(rows([48, 56, 64], level=1, stage=1, layers=0) + rows([72, 96, 112], level=2, stage=2, layers=5)
            + rows([128, 144, 160, 176], level=3, stage=3, layers=15)
            + rows([192, 208, 224], level=3, stage=4, layers=5)
            + rows([240, 256, 272, 288], level=4, stage=5, layers=5)
            + rows([480, 496, 512], level=4, stage=6, layers=1)),
    end_width=512, candidates=("basic_block", "skip"), align_candidates=("basic_block",), act="relu", connect=10,
    skip_price=0.1, temperature=0.9, derived_end_conv=False)

# small enough that a forward+backward of the whole super network takes well under a second
TOY = SpaceDef(
    name="toy", stem_out=8, b0_ops=("mbconv_k3_e1",), b0_out=8,
    blocks=(rows([12], level=1, stage=1, layers=1) + rows([16, 20], level=2, stage=2, layers=1)
            + rows([24, 32], level=3, stage=3, layers=1) + rows([40], level=3, stage=4, layers=0)),
    end_width=64, candidates=tuple(MBCONVS + ["skip"]), align_candidates=tuple(MBCONVS), act="relu6", connect=3)

# MobileNetV2-like, scaled down for 28-32 px images on a CPU (the laptop walkthrough, search.py --preset laptop).
# Two MBConvs per layer (a light and a heavy one; and skip in basic layers), not six: under dropping-path each
# candidate trains only on the steps that sample it, and with six the super network stays near chance for the
# first thousand steps, most of a laptop's budget (README, "How the laptop preset departs from the paper").
MINI = SpaceDef(
    name="mini", stem_out=16, b0_ops=("mbconv_k3_e1",), b0_out=16,
    blocks=(rows([16], level=1, stage=1, layers=1) + rows([24], level=1, stage=1, layers=2)
            + rows([32], level=2, stage=2, layers=1) + rows([40], level=2, stage=2, layers=2)
            + rows([48], level=2, stage=3, layers=2) + rows([64], level=3, stage=4, layers=1)
            + rows([80], level=3, stage=4, layers=2) + rows([96], level=3, stage=5, layers=0)),
    end_width=256, candidates=("mbconv_k3_e3", "mbconv_k5_e6", "skip"),
    align_candidates=("mbconv_k3_e3", "mbconv_k5_e6"), act="relu6", connect=3, start_alike=True)

SPACES = {s.name: s for s in (MBV2, RESNET, MINI, TOY)}


# what a space can be built for: beyond these a super network would need hundreds of GB (input size, classes)
# or is no network at all; arch files are held to the same limits and a width limit (check_arch below)
LIMITS = {"connect": (1, 64), "input_size": (8, 1024), "in_channels": (1, 64), "num_classes": (2, 100_000),
          "width": (1, 16_384)}


def halve(r, times):
    """Spatial size after `times` stride-2 convs with padding k//2: ceil(r/2) each time."""
    for _ in range(times):
        r = (r + 1) // 2
    return r


@dataclass
class Space:
    """A space made concrete for an input size, class count and connection number M."""
    defn: SpaceDef
    input_size: int = 224
    in_channels: int = 3
    num_classes: int = 1000
    connect: int = None
    blocks: list = field(init=False)  # B_0 .. B_n (B_n is the ending block)
    edges: list = field(init=False)  # (i, j), sorted by i then j
    out_edge_ranges: list = field(init=False)  # [a, b) of edges leaving B_i, for i = 0 .. n-1
    slots: list = field(init=False)  # every mixed layer: B_1's branches then layers, B_2's, ..., B_n's

    def __post_init__(self):
        d = self.defn
        self.connect = d.connect if self.connect is None else self.connect
        for what, value, (low, high) in (("connection number M", self.connect, LIMITS["connect"]),
                                         ("input size", self.input_size, LIMITS["input_size"]),
                                         ("input channels", self.in_channels, LIMITS["in_channels"]),
                                         ("class count", self.num_classes, LIMITS["num_classes"])):
            if not low <= value <= high:
                raise InvalidInput(f"the {what} must be between {low} and {high}, got {value}")
        # at 224 the stem halves the input (the paper's resolutions); under 64 px it keeps it (CIFAR)
        self.stem_stride = 2 if self.input_size >= 64 else 1
        r0 = halve(self.input_size, self.stem_stride - 1)
        last = Row(*d.blocks[-1])
        table = [Row(d.b0_out, 0, 0, 0)] + [Row(*r) for r in d.blocks]
        table.append(Row(d.end_width, last.level, last.stage + 1, 0))  # ending block: one stage past the last
        self.blocks = [Block(k, r.channels, halve(r0, r.level), r.level, r.stage, r.layers)
                       for k, r in enumerate(table)]
        self.edges = [(i, j) for i in range(self.n) for j in range(i + 1, self.n + 1) if self.connects(i, j)]
        self.out_edge_ranges = []
        for i in range(self.n):
            ks = [k for k, (a, _) in enumerate(self.edges) if a == i]
            if not ks:
                raise InvalidInput(f"space '{d.name}': block {i} has no outgoing connection with M={self.connect}")
            self.out_edge_ranges.append((ks[0], ks[-1] + 1))
        self.slots = []
        for j in range(1, self.n + 1):
            b = self.blocks[j]
            sources = [i for i, k in self.edges if k == j]
            if not sources:
                raise InvalidInput(f"space '{d.name}': block {j} has no incoming connection with M={self.connect}")
            self.slots += [MixedLayerSpec(j, (i, j), None, tuple(self.align_candidates_for(i, j)),
                                          self.blocks[i].channels, b.channels, self.stride(i, j),
                                          self.blocks[i].resolution) for i in sources]
            self.slots += [MixedLayerSpec(j, None, l, tuple(d.candidates), b.channels, b.channels, 1, b.resolution)
                           for l in range(b.layers)]

    # the definition's fields, read through by name (blocks and connect are the concrete space's own)
    name = property(lambda self: self.defn.name)
    act = property(lambda self: self.defn.act)
    stem_out = property(lambda self: self.defn.stem_out)
    b0_ops = property(lambda self: self.defn.b0_ops)
    b0_out = property(lambda self: self.defn.b0_out)
    end_width = property(lambda self: self.defn.end_width)
    candidates = property(lambda self: self.defn.candidates)
    align_candidates = property(lambda self: self.defn.align_candidates)
    skip_price = property(lambda self: self.defn.skip_price)
    temperature = property(lambda self: self.defn.temperature)
    start_alike = property(lambda self: self.defn.start_alike)
    derived_end_conv = property(lambda self: self.defn.derived_end_conv)

    @property
    def n(self):
        """Index of the ending block; routing blocks are B_1 .. B_{n-1}."""
        return len(self.defn.blocks) + 1

    def connects(self, i, j):
        """C_ij exists when j - i <= M, H_i / H_j is 1 or 2 and the stage rises by at most one (Sec. 3.1.3)."""
        a, b = self.blocks[i], self.blocks[j]
        return 0 < j - i <= self.connect and 0 <= b.level - a.level <= 1 and 0 <= b.stage - a.stage <= 1

    def stride(self, i, j):
        return 2 ** (self.blocks[j].level - self.blocks[i].level)

    def align_candidates_for(self, i, j):
        """Candidates of the branch B_i -> B_j; the ending block's branches are fixed 1x1 convs to the
        final width, one per incoming block (Sec. 3.1.3), in the ResNet space too (supplement A.4)."""
        return self.align_candidates if j < self.n else ["conv1x1"]

    def fixed_signatures(self, j):
        """The operations of B_j that are not searched: the stem and B_0's fixed layers, the classifier."""
        if j == 0:
            return ([signature("conv3x3", self.in_channels, self.stem_out, self.stem_stride, self.input_size)]
                    + [signature(o, self.stem_out, self.b0_out, 1, self.blocks[0].resolution) for o in self.b0_ops])
        if j == self.n:
            return [self.classifier_signature(self.end_width)]
        return []

    def classifier_signature(self, width):
        """The classifier after global average pooling, fed by `width` channels."""
        return signature("linear", width, self.num_classes, 1, 1)

    def derived_classifiers(self):
        """Classifier signatures a derived network can have: after the ending conv, or where the derived network
        keeps none (the ResNets of Table 6), after any block that feeds the ending block."""
        if self.derived_end_conv:
            return self.fixed_signatures(self.n)
        widths = sorted({self.blocks[i].channels for i, j in self.edges if j == self.n})
        return [self.classifier_signature(c) for c in widths]

    def describe(self, params=None):
        return {"space": self.name, "input_size": self.input_size,
                "blocks": [{"index": b.index, "channels": b.channels, "resolution": b.resolution,
                            "stage": b.stage, "layers": b.layers} for b in self.blocks],
                "edges": [list(e) for e in self.edges], "params": params}


def get_space(name, input_size=224, in_channels=3, num_classes=1000, connect=None):
    if name not in SPACES:
        raise InvalidInput(f"unknown space '{name}' (known: {', '.join(SPACES)})")
    return Space(SPACES[name], input_size, in_channels, num_classes, connect)


# ----------------------------------------------------------------------------------------
# The arch file: one network of a space, as derive() writes it and retrain.py builds it (Sec. 3.4)
#   {"space": "mbv2", "input_size": 224, "in_channels": 3, "num_classes": 1000, "stem": {"out": 16, "stride": 2},
#    "blocks": [{"in": 16, "out": 24, "stride": 2, "head": "mbconv_k3_e6", "layers": ["mbconv_k5_e3"]}, ...],
#    "last": {"out": 1984} or null}
# Channels are tensor widths. `head` is a block's first operation (its shape-alignment layer); `last` is the
# final 1x1 conv (null: the last block feeds pooling directly, as in the derived ResNets of Table 6).

def check_arch(arch):
    """Raise InvalidInput naming the first problem of a malformed arch dict."""
    def need(obj, key, kind, where):
        if not isinstance(obj, dict) or key not in obj:
            raise InvalidInput(f"arch file: {where} is missing '{key}'")
        if not isinstance(obj[key], kind) or isinstance(obj[key], bool):
            raise InvalidInput(f"arch file: {where}.{key} has the wrong type")
        return obj[key]

    if need(arch, "space", str, "top level") not in SPACES:
        raise InvalidInput(f"arch file: unknown space '{arch['space']}' (known: {', '.join(SPACES)})")
    for key in ("input_size", "in_channels", "num_classes"):
        low, high = LIMITS[key]
        if not low <= need(arch, key, int, "top level") <= high:
            raise InvalidInput(f"arch file: {key} must be between {low} and {high}, got {arch[key]}")
    stem = need(arch, "stem", dict, "top level")
    c = need(stem, "out", int, "stem")
    if not 1 <= c <= LIMITS["width"][1]:
        raise InvalidInput(f"arch file: stem.out must be between 1 and {LIMITS['width'][1]}")
    if need(stem, "stride", int, "stem") not in (1, 2):
        raise InvalidInput(f"arch file: stem stride must be 1 or 2, got {stem['stride']}")
    for k, b in enumerate(need(arch, "blocks", list, "top level")):
        where = f"blocks[{k}]"
        if need(b, "in", int, where) != c:
            raise InvalidInput(f"arch file: {where} takes {b['in']} channels but the layer before gives {c}")
        c = need(b, "out", int, where)
        if need(b, "stride", int, where) not in (1, 2):
            raise InvalidInput(f"arch file: {where} has stride {b['stride']} (must be 1 or 2)")
        ops = [need(b, "head", str, where)] + need(b, "layers", list, where)
        for o in ops:
            if o not in OPS:
                raise InvalidInput(f"arch file: {where} has unknown op '{o}'")
        if b["head"] == "skip" and (b["in"] != b["out"] or b["stride"] != 1):
            raise InvalidInput(f"arch file: {where} has a skip head that changes shape")
        if any(o == "bottleneck" for o in ops) and c % 4:
            raise InvalidInput(f"arch file: {where} uses bottleneck with width {c}, not a multiple of 4")
        if not LIMITS["width"][0] <= c <= LIMITS["width"][1]:
            raise InvalidInput(f"arch file: {where} has width {c} (must be between 1 and {LIMITS['width'][1]})")
    if "last" not in arch:
        raise InvalidInput("arch file: top level is missing 'last'")
    if arch["last"] is not None and not 1 <= need(arch["last"], "out", int, "last") <= LIMITS["width"][1]:
        raise InvalidInput(f"arch file: last.out must be between 1 and {LIMITS['width'][1]}")


def arch_ops(arch):
    """The operations of an arch in network order, as (op, c_in, c_out, stride, input resolution).

    retrain.py builds the network from this list and arch_signatures prices it from a table,
    so the built network and its table cost cannot disagree.
    """
    check_arch(arch)
    r, c, s = arch["input_size"], arch["in_channels"], arch["stem"]
    ops = [("conv3x3", c, s["out"], s["stride"], r)]
    r, c = halve(r, s["stride"] - 1), s["out"]
    for b in arch["blocks"]:
        ops.append((b["head"], c, b["out"], b["stride"], r))
        r, c = halve(r, b["stride"] - 1), b["out"]
        ops += [(o, c, c, 1, r) for o in b["layers"]]
    if arch["last"] is not None:
        ops.append(("conv1x1", c, arch["last"]["out"], 1, r))
        c = arch["last"]["out"]
    ops.append(("linear", c, arch["num_classes"], 1, 1))  # after global average pooling
    return ops


def arch_signatures(arch):
    return [signature(*op) for op in arch_ops(arch)]


def arch_text(arch):
    """A compact text form: one line per block with widths, stride and operations."""
    s = arch["stem"]
    lines = [f"stem conv3x3 {arch['in_channels']}->{s['out']} s{s['stride']} @ {arch['input_size']}px"]
    for k, b in enumerate(arch["blocks"]):
        ops = " ".join([b["head"]] + b["layers"])
        lines.append(f"block {k:2d} {b['in']:4d}->{b['out']:<4d} s{b['stride']}  {ops}")
    if arch["last"]:
        lines.append(f"last conv1x1 ->{arch['last']['out']}")
    lines.append(f"pool, linear ->{arch['num_classes']}")
    return "\n".join(lines)


def main():
    ap = Parser(__doc__)
    ap.add_argument("--space", default="mbv2", help=f"search space: {', '.join(SPACES)} (default mbv2)")
    ap.add_argument("--describe", action="store_true", help="print the super network as one JSON object")
    ap.add_argument("--input-size", type=int, default=224, help="input image size (default 224)")
    ap.add_argument("--in-channels", type=int, default=3, help="input channels (default 3)")
    ap.add_argument("--num-classes", type=int, default=1000, help="classes (default 1000)")
    ap.add_argument("--connect", type=int, default=None, help="connection number M (default: the space's)")
    args = ap.parse_args()
    space = get_space(args.space, args.input_size, args.in_channels, args.num_classes, args.connect)
    with torch.device("meta"):  # shapes only: the parameter count needs no memory or compute
        net = SuperNet(space, init=False)
    desc = space.describe(count_params(net.weight_parameters()))
    if args.describe:
        print(json.dumps(desc))
    else:
        print(f"space {space.name} at {space.input_size}px, M={space.connect}: {len(space.blocks)} blocks "
              f"(B_0..B_{space.n}), {len(space.edges)} connections, {len(net.layers)} mixed layers, "
              f"{desc['params']:,} weights")
        for b in space.blocks:
            outs = [j for i, j in space.edges if i == b.index]
            print(f"  B_{b.index:<2d} {b.channels:4d} ch @ {b.resolution:3d}px  stage {b.stage}  "
                  f"{b.layers} layers  -> {outs}")
        print("(--describe prints this as JSON)")


# ----------------------------------------------------------------------------------------
# Running a module of the paper on its own (python supernet.py, cost.py, viterbi.py)

class Parser(argparse.ArgumentParser):
    """argparse, with a usage error printed as one line (exit code 2) instead of the whole usage block."""

    def __init__(self, description=None, **kw):
        super().__init__(description=description, formatter_class=argparse.RawDescriptionHelpFormatter, **kw)

    def error(self, message):
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def run(main):
    """main(), with bad input (InvalidInput) printed as one line and exit code 2."""
    try:
        main()
    except InvalidInput as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run(main)
