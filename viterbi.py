"""Deriving the final architecture (Sec. 3.4): argmax alpha per layer and the Viterbi algorithm
over the path probabilities (supplement A.2, Algorithm 1), into an arch file (supernet.py says
what it holds); and the pictures and parameters a search leaves beside it.

    python viterbi.py --arch FILE [--svg OUT.svg]     summarise (and draw) an arch file
    python viterbi.py --run SEARCH_FOLDER             draw arch.svg and supernet.svg of a search
    python viterbi.py --space toy [--seed S] [--svg A.svg] [--supernet-svg S.svg]
                                                      derive an arch from random alpha, beta
"""
import os

import torch

from cli import (ArgumentParser, UsageError, check_ranges, output_file, read_json, run_cli, save_json_atomic,
                 save_text_atomic)
from cost import op_flops
from draw import arch_svg, supernet_svg
from supernet import SPACES, arch_signatures, arch_text, get_space, load_arch, path_probs


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
    A chosen skip removes its layer; every kept block connects only to the next.
    """
    p = {e: float(v) for e, v in zip(space.edges, p)}
    path = viterbi(p, space.n)
    choice = {}  # ("edge", i, j) -> the branch's op; ("layer", j, l) -> basic layer l of B_j
    for slot, a in zip(space.slots, alphas):
        key = ("edge", *slot.edge) if slot.edge else ("layer", slot.block, slot.layer)
        choice[key] = slot.candidates[argmax(a)]
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


# ----------------------------------------------------------------------------------------
# What a search writes beside the arch file

def save_arch_params(space, alphas, p, path):
    """alpha and p of a search, with what rebuilds its space: what `--run` draws the super network from."""
    save_json_atomic({"space": space.name, "input_size": space.input_size, "in_channels": space.in_channels,
                      "num_classes": space.num_classes, "connect": space.connect,
                      "alphas": [[float(v) for v in a] for a in alphas], "p": [float(v) for v in p]}, path)


def load_arch_params(path):
    d = read_json(path, "arch params (search.py writes them after every epoch)")
    try:
        space = get_space(d["space"], d["input_size"], d["in_channels"], d["num_classes"], d["connect"])
        alphas, p = d["alphas"], d["p"]
    except (KeyError, TypeError):
        raise UsageError(f"{path} is not an arch_params.json written by search.py") from None
    if len(alphas) != len(space.slots) or len(p) != len(space.edges):
        raise UsageError(f"{path} does not match its space '{space.name}'")
    return space, alphas, p


def draw_run(folder):
    """arch.svg and supernet.svg of a search folder, from its arch_params.json."""
    space, alphas, p = load_arch_params(os.path.join(folder, "arch_params.json"))
    arch = derive(space, alphas, p)
    save_text_atomic(arch_svg(arch), os.path.join(folder, "arch.svg"))
    save_text_atomic(supernet_svg(space, p, arch["path"]), os.path.join(folder, "supernet.svg"))
    return arch


def main():
    ap = ArgumentParser(__doc__)
    ap.add_argument("--arch", help="an arch file to summarise (and draw, with --svg)")
    ap.add_argument("--run", help="a search folder: derive from its arch_params.json, write arch.svg and supernet.svg")
    ap.add_argument("--space", default="toy", help=f"else derive from random alpha, beta in this space "
                                                   f"({', '.join(SPACES)}; default toy)")
    ap.add_argument("--input-size", type=int, default=224, help="input size for --space (default 224)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random alpha and beta (default 0)")
    ap.add_argument("--out", help="write the derived arch file here")
    ap.add_argument("--svg", help="draw the architecture (Fig. 4 style) to this SVG file")
    ap.add_argument("--supernet-svg", help="draw the super network with p and the Viterbi path (not with --arch)")
    args = ap.parse_args()
    check_ranges(args, {"seed": (0, 2**32 - 1, False)})
    for path, what in ((args.out, "--out"), (args.svg, "--svg"), (args.supernet_svg, "--supernet-svg")):
        if path:
            output_file(path, what)
    if args.run and not os.path.isdir(args.run):
        raise UsageError(f"--run {args.run} is not a folder")
    space = None
    if args.run:
        arch = draw_run(args.run)
        print(f"wrote {os.path.join(args.run, 'arch.svg')} and {os.path.join(args.run, 'supernet.svg')}")
    elif args.arch:
        if args.supernet_svg:
            raise UsageError("--supernet-svg needs the search's parameters: use --run FOLDER or --space")
        arch = load_arch(args.arch)
    else:
        space = get_space(args.space, args.input_size)
        alphas, p = random_arch_params(space, torch.Generator().manual_seed(args.seed))
        arch = derive(space, alphas, p)
    if "path" in arch:
        print(f"Viterbi path through the blocks: {' -> '.join(f'B_{i}' for i in arch['path'])}")
    print(arch_text(arch))
    print(f"FLOPs {sum(op_flops(s) for s in arch_signatures(arch)) / 1e6:.1f}M")
    if args.out:
        save_json_atomic(arch, args.out)
    if args.svg:
        save_text_atomic(arch_svg(arch), args.svg)
    if args.supernet_svg and space is not None:
        save_text_atomic(supernet_svg(space, p, arch["path"]), args.supernet_svg)


if __name__ == "__main__":
    run_cli(main)
