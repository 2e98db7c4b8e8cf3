"""The paper's comparisons that drive the method rather than belong to it, each a subcommand.

  table1      Table 1 at laptop scale: DenseNAS against random search at equal cost (Sec. 4.4).
              For every search seed, the laptop walkthrough (search.py --preset laptop --seed S)
              searches the `mini` space on Fashion-MNIST and retrains its derived network; then
              --random R architectures are drawn uniformly from the same space (a random path, a
              random candidate per layer) within 5% of that network's FLOPs, and each is retrained
              with the same recipe and seed and tested on the same 10k test images. The report gives
              test top-1 as mean +- std over the searched and over the random networks, every run in
              table1.json, and table1.svg (test accuracy against FLOPs). Every run lives in its own
              folder under OUT and is resumable: an interrupted study continues when run again.
  estimation  Chained against local cost estimation (Sec. 4.5, Table 7, Fig. 6): random alpha and
              beta, each architecture derived (argmax + Viterbi), both estimates (Eq. 6-7, Eq. 9)
              against the derived network's real FLOPs: Pearson, Kendall tau-b, mean relative error.

They have a file of their own so that search.py reads as the paper's search and cost.py as its cost.

    python studies.py table1 --seeds 0 1 2 --random 3 [--out runs/table1]
    python studies.py estimation --space mbv2 --samples 1500 [--seed S] [--csv points.csv]
"""
import json
import os
import statistics
import time

import torch

import cli
import retrain
import runtime
import search
from cli import ArgumentParser, UsageError, run_cli, save_json_atomic, save_text_atomic
from cost import CostModel, arch_cost, flops_table
from draw import scatter_svg
from supernet import SPACES, get_space, load_arch
from viterbi import derive, random_arch_params

PRESET = "laptop"


def run_search(seed, out, log_every):
    """The laptop walkthrough for one seed (search, retrain, test); its summary.json, resuming if cut off."""
    folder = os.path.join(out, f"search-seed{seed}")
    summary = os.path.join(folder, "summary.json")
    if os.path.exists(os.path.join(folder, "args.json")):  # a run of another recipe must not enter the table
        with open(os.path.join(folder, "args.json")) as f:
            have = json.load(f)
        for k, v in search.PRESETS[PRESET].items():
            if k != "out" and have.get(k) != v:
                raise UsageError(f"{folder} was searched with {k}={have.get(k)!r}, the preset has {v!r}; "
                                 "move it away or use another --out")
    if not os.path.exists(summary):
        resume = ["--resume"] if cli.has_run(folder) else []
        search.main(["--preset", PRESET, "--seed", str(seed), "--out", folder, "--log-every", str(log_every)] + resume)
    with open(summary) as f:
        return folder, json.load(f)


def run_random(seed, k, arch, out, log_every):
    """Retrain random architecture k of a seed with the walkthrough's recipe; its report.json."""
    folder = os.path.join(out, f"random-seed{seed}-{k}")
    report = os.path.join(folder, "retrain", "report.json")
    if not os.path.exists(report):
        os.makedirs(folder, exist_ok=True)
        arch_path = os.path.join(folder, "arch.json")
        save_json_atomic(arch, arch_path)
        resume = ["--resume"] if cli.has_run(os.path.join(folder, "retrain")) else []
        print(f"\n== seed {seed}: retraining random architecture {k + 1} ({arch_path}) ==", flush=True)
        retrain.main(["--arch", arch_path, "--data", search.PRESETS[PRESET]["data"],
                      "--out", os.path.join(folder, "retrain"),
                      "--seed", str(seed), "--log-every", str(log_every)] + search.RETRAIN_PRESETS[PRESET] + resume)
    with open(report) as f:
        return json.load(f)


def mean_std(values):
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def estimation(args):
    """The estimation study's command: the table of Fig. 6's correlations, and every point in --csv."""
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


def main(argv=None):
    ap = ArgumentParser(__doc__)
    sub = ap.add_subparsers(dest="study", required=True, metavar="{table1,estimation}")
    t = sub.add_parser("table1", help="searched against random networks at equal FLOPs (Table 1)")
    t.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="search seeds (default 0 1 2)")
    t.add_argument("--random", type=int, default=3, metavar="R",
                   help="random architectures per seed, within 5%% of the searched one's FLOPs (default 3)")
    t.add_argument("--out", default=os.path.join("runs", "table1"), help="output folder (default runs/table1)")
    t.add_argument("--log-every", type=float, default=30.0, help="seconds between progress lines (default 30)")
    e = sub.add_parser("estimation", help="chained vs local cost estimation (Table 7, Fig. 6)")
    e.add_argument("--space", default="mbv2", help=f"search space ({', '.join(SPACES)}; default mbv2)")
    e.add_argument("--input-size", type=int, default=224, help="input image size (default 224)")
    e.add_argument("--num-classes", type=int, default=1000, help="classes (default 1000)")
    e.add_argument("--connect", type=int, default=None, help="connection number M (default: the space's)")
    e.add_argument("--samples", type=int, default=1500, help="random (alpha, beta) draws (default 1500, Fig. 6)")
    e.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    e.add_argument("--scale", type=float, default=1.0, help="alpha, beta ~ N(0, scale^2) (default 1)")
    e.add_argument("--csv", help="write every point (real, chained, local FLOPs) here")
    args = ap.parse_args(argv)
    if args.study == "estimation":
        cli.check_ranges(args, {"samples": (3, 10**6, False), "seed": (0, 2**32 - 1, False),
                                "scale": (0, 100, True)})
        if args.csv:
            cli.output_file(args.csv, "--csv")
        return estimation(args)
    table1(args)


def table1(args):
    """The Table 1 study's command."""
    cli.check_ranges(args, {"random": (1, 1000, False), "seeds": (0, 2**32 - 1, False), "log_every": (0, None, True)})
    if len(set(args.seeds)) != len(args.seeds):
        raise UsageError("the --seeds must be distinct")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out} is a file, not a folder")
    cli.claim_folder(args.out)  # the study resumes in its folder, one live run at a time
    t0 = time.time()
    rows, skipped = [], []
    for seed in args.seeds:
        folder, summary = run_search(seed, args.out, args.log_every)
        arch = load_arch(os.path.join(folder, "arch.json"))
        rows.append({"kind": "searched", "seed": seed, "folder": folder, "flops": summary["flops"],
                     "params": summary["params"], "test_top1": summary["test_top1"],
                     "supernet_val_acc": summary.get("supernet_val_acc"), "path": arch["path"]})
        space = get_space(arch["space"], arch["input_size"], arch["in_channels"], arch["num_classes"])
        # the same draws on every run of the study: the seed picks them
        try:
            draws = search.draw_in_window(space, flops_table(space), args.random, summary["flops"],
                                          torch.Generator().manual_seed(seed))
        except UsageError as e:  # a searched network where random ones hardly ever fall: say so, go on
            print(f"seed {seed}: no random networks to compare: {e}", flush=True)
            skipped.append({"seed": seed, "reason": str(e)})
            continue
        for k, (rarch, _, _, flops) in enumerate(draws):
            report = run_random(seed, k, rarch, args.out, args.log_every)
            rows.append({"kind": "random", "seed": seed, "folder": os.path.join(args.out, f"random-seed{seed}-{k}"),
                         "flops": report["flops"], "params": report["params"], "test_top1": report["top1"],
                         "path": rarch["path"]})
    result = {"preset": PRESET, "seeds": args.seeds, "random_per_seed": args.random, "runs": rows,
              "seeds_without_random": skipped}
    for kind in ("searched", "random"):
        accs = [r["test_top1"] for r in rows if r["kind"] == kind]
        m, s = mean_std(accs)
        result[kind] = {"count": len(accs), "mean": m, "std": s}
    result["wall_s_this_invocation"] = time.time() - t0
    save_json_atomic(result, os.path.join(args.out, "table1.json"))
    series = {kind: (colour, [(r["flops"] / 1e6, r["test_top1"]) for r in rows if r["kind"] == kind])
              for kind, colour in (("random", "#9e9e9e"), ("searched", "#d62728"))}
    save_text_atomic(scatter_svg(series, "FLOPs (millions)", "test top-1 (%)",
                           "Table 1 at laptop scale: searched vs random at equal FLOPs"),
               os.path.join(args.out, "table1.svg"))
    print(f"\n== Table 1 at laptop scale ({len(args.seeds)} seeds, {args.random} random networks each) ==")
    print(f"{'':<10} {'count':>5} {'test top-1 (%)':>18}")
    for kind in ("searched", "random"):
        r = result[kind]
        print(f"{kind:<10} {r['count']:5d} {r['mean']:10.2f} +- {r['std']:.2f}")
    for r in rows:
        print(f"  {r['kind']:<8} seed {r['seed']} {r['flops'] / 1e6:6.2f}M FLOPs {r['test_top1']:6.2f}%  "
              f"path {r['path']}")
    print(f"this run took {runtime.fmt_time(result['wall_s_this_invocation'])}; "
          f"outputs: {os.path.join(args.out, 'table1.json')}, {os.path.join(args.out, 'table1.svg')}")


# ----------------------------------------------------------------------------------------
# The estimation experiment (Sec. 4.5, Fig. 6, Table 7)

def pearson(x, y):
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / (x.norm() * y.norm()))


def kendall(x, y):
    """Kendall's tau-b over all pairs."""
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    dx, dy = torch.sign(x[:, None] - x[None, :]), torch.sign(y[:, None] - y[None, :])
    concord = (dx * dy).sum() / 2
    nx, ny = (dx != 0).sum() / 2, (dy != 0).sum() / 2
    return float(concord / torch.sqrt(nx * ny))


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


if __name__ == "__main__":
    run_cli(main)
