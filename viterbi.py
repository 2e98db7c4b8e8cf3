"""Deriving the final architecture (Sec. 3.4): argmax alpha per layer and the Viterbi algorithm
over the path probabilities (supplement A.2, Algorithm 1), into an arch file (supernet.py says
what it holds).

    python viterbi.py --space toy [--seed S] [--json]     derive a network from random alpha, beta
(Drawing a derived network or a search: `python -m machinery.draw --help`.)
"""
import json
import math

import torch

from cost import op_flops
from supernet import SPACES, Parser, arch_signatures, arch_text, get_space, path_probs, run


def viterbi(p, n):
    """Algorithm 1: the maximum-probability block sequence from B_0 to B_n.

    p maps (j, i) to the transition probability from B_j to B_i. Lines 4-5 of Algorithm 1 print
    P[i-1] * p_ji, a typo: the maximum-product path needs P[j] * p_ji, which we use.
    """
    preds = {i: [] for i in range(n + 1)}
    for j, i in p:
        preds[i].append(j)
    P, S = [1.0] + [0.0] * n, [0] * (n + 1)  # line 1-2: probabilities, best predecessors
    for i in range(1, n + 1):  # line 3-5; ties go to the earliest predecessor
        if not preds[i]:
            raise ValueError(f"block {i} has no incoming connection")
        S[i] = max(preds[i], key=lambda j: (P[j] * p[j, i], -j))
        P[i] = P[S[i]] * p[S[i], i]
    X, idx = [n], n
    while idx != 0:
        idx = S[idx]
        X.append(idx)
    return X[::-1]


def argmax(values):
    values = [float(v) for v in values]
    return values.index(max(values))


def derive(space, alphas, p):
    """The final architecture (Sec. 3.4): Viterbi over p for the blocks, argmax alpha for every layer.

    alphas: one sequence per mixed layer in space.slots order; p: a sequence over space.edges.
    """
    path = viterbi({e: float(v) for e, v in zip(space.edges, p)}, space.n)
    return arch_file(space, [argmax(a) for a in alphas], path)


def arch_file(space, chosen, path):
    """The arch file of a derived network: chosen (a candidate index per mixed layer, space.slots order) and its
    block sequence. A chosen skip removes its layer; every kept block connects only to the next."""
    choice = {}  # ("edge", i, j) -> the branch's op; ("layer", j, l) -> basic layer l of B_j
    for slot, k in zip(space.slots, chosen):
        key = ("edge", *slot.edge) if slot.edge else ("layer", slot.block, slot.layer)
        choice[key] = slot.candidates[k]
    b0 = space.blocks[0]
    blocks = [{"in": space.stem_out, "out": b0.channels, "stride": 1, "head": o, "layers": []}
              for o in space.b0_ops]
    for i, j in zip(path[:-2], path[1:-1]):
        b = space.blocks[j]
        layers = [choice["layer", j, l] for l in range(b.layers)]
        blocks.append({"in": space.blocks[i].channels, "out": b.channels, "stride": space.stride(i, j),
                       "head": choice["edge", i, j], "layers": [o for o in layers if o != "skip"]})
    return {"space": space.name, "input_size": space.input_size, "in_channels": space.in_channels,
            "num_classes": space.num_classes, "stem": {"out": space.stem_out, "stride": space.stem_stride},
            "blocks": blocks, "last": {"out": space.end_width} if space.derived_end_conv else None,
            "path": path}


# ----------------------------------------------------------------------------------------
# Not in the paper: the derivation under a cost window (search.py --target-flops, --target-latency)

def best_per_bucket(cost, score, width):
    """Indices of the highest score in every cost bucket of this width (ties: the first)."""
    order = torch.sort(score, descending=True, stable=True).indices
    bucket = torch.div(cost[order], width, rounding_mode="floor")
    by_bucket = torch.sort(bucket, stable=True).indices
    order, bucket = order[by_bucket], bucket[by_bucket]
    first = torch.ones_like(bucket, dtype=torch.bool)
    first[1:] = bucket[1:] != bucket[:-1]
    return order[first]


def combine(cost, score, option_cost, option_score, width):
    """Every pair of a label (cost, score) and an option, the best per cost bucket: (cost, score, label, option)."""
    c = (cost[:, None] + option_cost[None, :]).flatten()
    s = (score[:, None] + option_score[None, :]).flatten()
    keep = best_per_bucket(c, s, width)
    return c[keep], s[keep], keep // len(option_cost), keep % len(option_cost)


def derive_within(space, alphas, p, prices, lo, hi, buckets=200):
    """The most probable network of the space whose cost lies in [lo, hi]. Algorithm 1 and argmax alpha maximise
    sum log p_ij along the path plus, over every mixed layer, log w of its chosen candidate; so does this, over the
    networks in the window. The same dynamic programme over the blocks keeps, for every block, the best partial
    network per cost bucket ((hi - lo) / buckets wide at most; exact costs are carried, so the result lies in the
    window, and is the most probable up to networks within a bucket of its edges). With an unbounded
    window it is derive(). Where nothing in the space lies in the window, the network nearest to it.
    prices: a CostModel with skips at no cost (a chosen skip leaves the derived network). Returns the arch and
    its chosen candidate per mixed layer."""
    most = sum(prices.fixed) + sum(max(r) for r in prices.rows)  # no network costs more
    width = min(hi - lo, most) / buckets
    f64 = dict(dtype=torch.float64)
    # a candidate scores log w less log w of the argmax candidate: the layers off the path keep their argmax
    # candidates (at no cost), so the unbounded window is derive() exactly (path by Algorithm 1, argmax alpha)
    logw = [torch.as_tensor(a, **f64) / space.temperature for a in alphas]
    logw = [a - a.max() for a in logw]
    rows = [torch.tensor(r, **f64) for r in prices.rows]
    edge_slot = {slot.edge: k for k, slot in enumerate(space.slots) if slot.edge}
    p_of = {e: float(v) for e, v in zip(space.edges, p)}
    # every block's basic layers: the best choices per cost bucket, over the product of its layers' candidates
    blocks = {}
    for j in range(1, space.n + 1):
        cost, score, picks = torch.tensor([float(prices.fixed[j])], **f64), torch.zeros(1, **f64), [[]]
        for k, slot in enumerate(space.slots):
            if not slot.edge and slot.block == j:
                cost, score, lab, opt = combine(cost, score, rows[k], logw[k], width)
                picks = [picks[a] + [(k, b)] for a, b in zip(lab.tolist(), opt.tolist())]
        blocks[j] = cost, score, picks
    # labels[i]: (cost, score, back) of the best partial networks B_0 -> B_i per bucket; back: (j, label, head, block)
    labels = {0: (torch.tensor([float(prices.fixed[0])], **f64), torch.zeros(1, **f64), [None])}
    for i in range(1, space.n + 1):
        bc, bs, _ = blocks[i]
        cs, ss, backs = [], [], []
        for j in [a for a, b in space.edges if b == i]:
            k = edge_slot[j, i]
            logp = math.log(max(p_of[j, i], 1e-300))
            oc = (rows[k][:, None] + bc[None, :]).flatten()  # head x block options
            os_ = (logw[k][:, None] + bs[None, :]).flatten() + logp
            c, s, lab, opt = combine(labels[j][0], labels[j][1], oc, os_, width)
            cs.append(c), ss.append(s)
            backs += [(j, a, b // len(bc), b % len(bc)) for a, b in zip(lab.tolist(), opt.tolist())]
        c, s = torch.cat(cs), torch.cat(ss)
        keep = best_per_bucket(c, s, width)
        labels[i] = c[keep], s[keep], [backs[t] for t in keep.tolist()]
    cost, score, _ = labels[space.n]
    inside = (cost >= lo) & (cost <= hi)
    if inside.any():
        end = int(torch.where(inside, score, torch.tensor(-math.inf, **f64)).argmax())
    else:  # nearest to the window in log cost, then the most probable
        miss = torch.maximum(torch.log(lo / cost), torch.log(cost / hi)).tolist()
        end = min(range(len(miss)), key=lambda t: (miss[t], -float(score[t])))
    chosen = [argmax(a) for a in alphas]
    path, t, i = [space.n], end, space.n
    while i:
        j, t_prev, head, blk = labels[i][2][t]
        chosen[edge_slot[j, i]] = head
        for k, c in blocks[i][2][blk]:
            chosen[k] = c
        path.append(j)
        i, t = j, t_prev
    return arch_file(space, chosen, path[::-1]), chosen


def random_arch_params(space, generator, scale=1.0):
    """Random alpha (one vector per mixed layer) and path probabilities p = softmax(beta / T) (Eq. 3)."""
    alphas = [scale * torch.randn(len(s.candidates), generator=generator, dtype=torch.float64) for s in space.slots]
    beta = scale * torch.randn(len(space.edges), generator=generator, dtype=torch.float64)
    return alphas, path_probs(beta, space)


def derive_supernet(net):
    """derive() on the current parameters of a SuperNet."""
    return derive(net.space, [a.detach().cpu() for a in net.alphas()], net.path_probs().detach().cpu())


def decisiveness(space, weights, p, path):
    """How firmly alpha and beta have decided the derived network: the mean p_ij along the path
    over the blocks that have a choice (more than one outgoing connection), and the mean weight w
    of the chosen candidate over the layers with a choice. Uniform parameters give 1/choices."""
    p = {e: float(v) for e, v in zip(space.edges, p)}
    outs = {i: b - a for i, (a, b) in enumerate(space.out_edge_ranges)}
    on_path = [p[i, j] for i, j in zip(path, path[1:]) if outs[i] > 1]
    chosen = [max(float(v) for v in w) for w in weights if len(w) > 1]
    return {"p_path": sum(on_path) / max(len(on_path), 1), "w_chosen": sum(chosen) / max(len(chosen), 1)}


def main():
    ap = Parser(__doc__)
    ap.add_argument("--space", default="toy", help=f"search space ({', '.join(SPACES)}; default toy)")
    ap.add_argument("--input-size", type=int, default=224, help="input image size (default 224)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random alpha and beta (default 0)")
    ap.add_argument("--json", action="store_true", help="print the derived arch file as JSON")
    args = ap.parse_args()
    space = get_space(args.space, args.input_size)
    if not 0 <= args.seed < 2**63:
        ap.error(f"--seed must be between 0 and {2**63 - 1}")
    alphas, p = random_arch_params(space, torch.Generator().manual_seed(args.seed))
    arch = derive(space, alphas, p)
    if args.json:
        print(json.dumps(arch, indent=1))
        return
    print(f"Viterbi path through the blocks: {' -> '.join(f'B_{i}' for i in arch['path'])}")
    print(arch_text(arch))
    print(f"FLOPs {sum(op_flops(s) for s in arch_signatures(arch)) / 1e6:.1f}M")


if __name__ == "__main__":
    run(main)
