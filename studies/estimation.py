"""Chained against local cost estimation (Sec. 4.5, Table 7, Fig. 6): random alpha and beta, each architecture
derived (argmax + Viterbi), both estimates (Eq. 6-7, Eq. 9) against the derived network's real FLOPs: Pearson,
Kendall tau-b, mean relative error.

    python -m studies estimation --space mbv2 --samples 1500 [--seed S] [--csv points.csv]
"""
import json

import torch

from cost import CostModel, arch_cost, flops_table
from machinery.cli import SEED, ArgumentParser, integer, number, output_file, save_text_atomic
from studies.stats import kendall, pearson
from supernet import SPACES, get_space
from viterbi import derive, random_arch_params


def estimation_experiment(space, samples, seed=0, scale=1.0):
    """Draw random alpha and beta, derive each architecture (argmax + Viterbi) and compare the
    chained (Eq. 6-7) and local (Eq. 9) FLOPs estimates with the derived network's real FLOPs."""
    table = flops_table(space)
    model = CostModel(space, table, skip_price=0)
    g = torch.Generator().manual_seed(seed)
    points = []
    with torch.no_grad():
        for _ in range(samples):
            alphas, p = random_arch_params(space, g, scale)
            real = arch_cost(derive(space, alphas, p), table)
            points.append((real, model(alphas, p).item(), model(alphas, p, "local").item()))
    real = [r for r, _, _ in points]
    result = {"samples": samples}
    for k, name in ((1, "chained"), (2, "local")):
        pred = [pt[k] for pt in points]
        result[name] = {"pearson": pearson(pred, real), "kendall": kendall(pred, real),
                        "mean_rel_error": sum(abs(q - r) / r for q, r in zip(pred, real)) / samples}
    return result, points


def main(argv=None):
    """The table of Fig. 6's correlations, and every point in --csv."""
    ap = ArgumentParser(__doc__, prog="python -m studies estimation")
    ap.add_argument("--space", default="mbv2", help=f"search space ({', '.join(SPACES)}; default mbv2)")
    ap.add_argument("--input-size", type=int, default=224, help="input image size (default 224)")
    ap.add_argument("--num-classes", type=int, default=1000, help="classes (default 1000)")
    ap.add_argument("--connect", type=int, default=None, help="connection number M (default: the space's)")
    ap.add_argument("--samples", type=integer(3, 10**6), default=1500,
                    help="random (alpha, beta) draws (default 1500, Fig. 6)")
    ap.add_argument("--seed", type=SEED, default=0, help="seed of the draws (default 0)")
    ap.add_argument("--scale", type=number(0, 100, low_open=True), default=1.0,
                    help="alpha, beta ~ N(0, scale^2) (default 1)")
    ap.add_argument("--csv", help="write every point (real, chained, local FLOPs) here")
    ap.add_argument("--force", action="store_true", help="overwrite an existing --csv file")
    args = ap.parse_args(argv)
    if args.csv:
        output_file(args.csv, "--csv", args.force)
    space = get_space(args.space, args.input_size, 3, args.num_classes, args.connect)
    result, points = estimation_experiment(space, args.samples, args.seed, args.scale)
    if args.csv:
        save_text_atomic("real_flops,chained_flops,local_flops\n"
                         + "".join(f"{r:.0f},{c:.1f},{l:.1f}\n" for r, c, l in points), args.csv)
    real = [r for r, _, _ in points]
    print(f"{args.samples} random (alpha, beta) in '{space.name}' at {space.input_size}px; real FLOPs of the "
          f"derived archs {min(real) / 1e6:.1f}M .. {max(real) / 1e6:.1f}M")
    print(f"{'estimator':<10} {'pearson':>8} {'kendall':>8} {'mean rel. error':>16}")
    for name in ("chained", "local"):
        r = result[name]
        print(f"{name:<10} {r['pearson']:8.3f} {r['kendall']:8.3f} {100 * r['mean_rel_error']:15.1f}%")
    print(json.dumps(result))
