"""The paper's comparisons that drive the method rather than belong to it, each a subcommand.

  random      The random-search baseline (Sec. 4.4, Table 1 "Random Search"): K architectures drawn
              uniformly from the space (a random path, a random candidate per layer) within 5% of a
              FLOPs target, each trained briefly with the search's recipe, the best by validation
              accuracy kept as OUT/arch.json. Takes search.py's flags and --random K --target-flops F.
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

    python studies.py random --space mbv2 --data /path/to/imagenet --gpus 4 --random 15 --epochs 5 --target-flops 361M
    python studies.py table1 --seeds 0 1 2 --random 3 [--out runs/table1]
    python studies.py estimation --space mbv2 --samples 1500 [--seed S] [--csv points.csv]
"""
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import cli
import retrain
import runtime
import search
from cli import ArgumentParser, UsageError, run_cli, save_json_atomic, save_text_atomic
from cost import CostModel, arch_cost, flops_table
from data import load_data
from draw import scatter_svg
from supernet import SPACES, get_space, load_arch
from viterbi import derive, random_arch_params, save_arch_params

PRESET = "laptop"


def run_search(seed, out, log_every):
    """The laptop walkthrough for one seed (search, retrain, test); its summary.json, resuming if cut off."""
    folder = os.path.join(out, f"search-seed{seed}")
    summary = os.path.join(folder, "summary.json")
    if os.path.exists(os.path.join(folder, cli.SETTINGS)):  # a run of another recipe must not enter the table
        want = search.run_config(search.parse_args(["--preset", PRESET, "--seed", str(seed), "--out", folder]))
        cli.same_config(cli.read_settings(folder), want, folder, "; move it away or use another --out")
    if not os.path.exists(summary):
        resume = ["--resume"] if cli.has_run(folder) else []
        search.main(["--preset", PRESET, "--seed", str(seed), "--out", folder, "--log-every", str(log_every)] + resume)
    with open(summary) as f:
        return folder, json.load(f)


def run_random(seed, k, arch, data, out, log_every):
    """Retrain random architecture k of a seed with the walkthrough's recipe; its report.json."""
    folder = os.path.join(out, f"random-seed{seed}-{k}")
    report = os.path.join(folder, "retrain", "report.json")
    if not os.path.exists(report):
        os.makedirs(folder, exist_ok=True)
        arch_path = os.path.join(folder, "arch.json")
        save_json_atomic(arch, arch_path)
        resume = ["--resume"] if cli.has_run(os.path.join(folder, "retrain")) else []
        print(f"\n== seed {seed}: retraining random architecture {k + 1} ({arch_path}) ==", flush=True)
        retrain.main(["--arch", arch_path, "--data", data,
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
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["random"]:  # search.py's own parser, with the baseline's two flags
        return random_search(argv[1:])
    ap = ArgumentParser(__doc__)
    sub = ap.add_subparsers(dest="study", required=True, metavar="{table1,estimation,random}")
    sub.add_parser("random", help="the random-search baseline: search.py's flags and --random K --target-flops F "
                                  "(studies.py random --help)")
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
    data = search.parse_args(["--preset", PRESET, "--out", args.out]).data  # the random networks retrain on it
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
            draws = random_archs_at_flops(space, flops_table(space), args.random, summary["flops"],
                                          torch.Generator().manual_seed(seed))
        except UsageError as e:  # a searched network where random ones hardly ever fall: say so, go on
            print(f"seed {seed}: no random networks to compare: {e}", flush=True)
            skipped.append({"seed": seed, "reason": str(e)})
            continue
        for k, (rarch, _, _, flops) in enumerate(draws):
            report = run_random(seed, k, rarch, data, args.out, args.log_every)
            rows.append({"kind": "random", "seed": seed, "folder": os.path.join(args.out, f"random-seed{seed}-{k}"),
                         "flops": report["flops"], "params": report["params"], "test_top1": report["top1"],
                         "path": rarch["path"]})
    report_table1(args, rows, skipped, time.time() - t0)


def report_table1(args, rows, skipped, seconds):
    """table1.json (mean +- std of test top-1 over the searched and over the random networks, every run), table1.svg
    (test accuracy against FLOPs), and the table."""
    result = {"preset": PRESET, "seeds": args.seeds, "random_per_seed": args.random, "runs": rows,
              "seeds_without_random": skipped}
    for kind in ("searched", "random"):
        accs = [r["test_top1"] for r in rows if r["kind"] == kind]
        m, s = mean_std(accs)
        result[kind] = {"count": len(accs), "mean": m, "std": s}
    result["wall_s_this_invocation"] = seconds
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


# ----------------------------------------------------------------------------------------
# The random-search baseline (Sec. 4.4, Table 1 "Random Search")

RANDOM_STATE = "random_search.json"


def random_arch(space, generator):
    """One architecture drawn uniformly from the space: a path from B_0 to B_n that picks each next
    block uniformly among the current block's connections, and a uniform candidate for every layer.
    It is written as one-hot alpha and p, so derive() (argmax + Viterbi) returns exactly that arch."""
    def pick(k):
        return int(torch.randint(k, (), generator=generator))
    nxt = {}
    for a, b in space.out_edge_ranges:
        nxt[space.edges[a][0]] = range(a, b)
    p, i = torch.tensor([1.0 / (b - a) for a, b in space.out_edge_ranges for _ in range(a, b)]), 0
    while i != space.n:
        out = nxt[i]
        chosen = out[pick(len(out))]
        p[out.start:out.stop] = 0.0
        p[chosen] = 1.0
        i = space.edges[chosen][1]
    alphas = [F.one_hot(torch.tensor(pick(len(s.candidates))), len(s.candidates)).float() for s in space.slots]
    return alphas, p


def random_archs_at_flops(space, table, k, target, generator, tolerance=0.05, max_draws=20000):
    """k uniform random architectures whose FLOPs lie within `tolerance` of target (rejection sampling)."""
    kept, seen = [], []
    for _ in range(max_draws):
        alphas, p = random_arch(space, generator)
        arch = derive(space, alphas, p)
        flops = arch_cost(arch, table)
        seen.append(flops)
        if abs(flops - target) <= tolerance * target:
            kept.append((arch, alphas, p, flops))
            if len(kept) == k:
                return kept
    raise UsageError(f"only {len(kept)} of {max_draws} random architectures lie within {tolerance:.0%} of "
                     f"{target / 1e6:.2f}M FLOPs (drawn: {min(seen) / 1e6:.2f}M to {max(seen) / 1e6:.2f}M); "
                     "choose --target-flops in that range")


def random_search_worker(proc, args):
    """Train each of --random K sampled architectures for --epochs on the search's training split
    (the search's SGD recipe), evaluate it on the validation split, keep the best as OUT/arch.json.
    OUT/random_search.json records every finished sample, so a resumed run skips them."""
    data = runtime.main_first(lambda: load_data(args.data, "search", args.seed, args.input_size, args.subset,
                                                args.classes, split_file=search.split_path(args),
                                                verify_images=False))  # check_run verified them
    space = get_space(args.space, data.input_size, data.in_channels, data.num_classes, args.connect)
    draws = random_archs_at_flops(space, flops_table(space), args.random, args.target_flops,
                                  torch.Generator().manual_seed(args.seed))
    state_path, log_path = os.path.join(args.out, RANDOM_STATE), os.path.join(args.out, "search_log.jsonl")
    records = []
    if args.resume and os.path.exists(state_path):
        records = load_random_state(state_path)["records"]
    if proc.main:
        print(f"random search in '{args.space}': {args.random} architectures within 5% of "
              f"{args.target_flops / 1e6:.2f}M FLOPs, {args.epochs} epochs each; data {data.info}; {proc.world} "
              f"process(es) on {proc.device}" + (f"; resuming after {len(records)}" if records else ""), flush=True)
        search.keep_log_before(log_path, len(records), key="sample")
    for k in range(len(records), args.random):
        arch, alphas, p, flops = draws[k]
        t0 = time.time()
        top1, top5 = train_sample(proc, args, data, arch, k)
        rec = {"sample": k + 1, "stage": "random", "val_acc": top1, "val_top5": top5, "arch_cost": flops,
               "metric": "flops", "path": arch["path"], "widths": [b["out"] for b in arch["blocks"]],
               "seconds": time.time() - t0, "arch": arch, "alphas": [a.tolist() for a in alphas], "p": p.tolist()}
        records.append(rec)
        if proc.main:
            best = max(records, key=lambda r: r["val_acc"])
            if best is rec:
                save_json_atomic(arch, os.path.join(args.out, "arch.json"))
                save_arch_params(space, alphas, p, os.path.join(args.out, "arch_params.json"))
            search.append_line(log_path, {key: v for key, v in rec.items() if key not in ("arch", "alphas", "p")})
            save_json_atomic({"config": search.run_config(args), "records": records}, state_path)
            print(f"sample {k + 1}/{args.random} {runtime.fmt_time(rec['seconds'])}: {flops / 1e6:.2f}M FLOPs, widths "
                  f"{rec['widths']}, val acc {top1:.2f}% (best so far {best['val_acc']:.2f}%, sample {best['sample']})",
                  flush=True)
        runtime.barrier()
    if proc.main:
        best = max(records, key=lambda r: r["val_acc"])
        save_json_atomic(best["arch"], os.path.join(args.out, "arch_best.json"))
        print(f"\nbest of {len(records)}: sample {best['sample']}, val acc {best['val_acc']:.2f}%")
        search.finish(args)


def train_sample(proc, args, data, arch, k):
    """Random sample k trained from scratch for --epochs as retrain.py trains (the search's recipe); its
    validation top-1 and top-5."""
    torch.manual_seed(args.seed * 1000 + k)
    net = retrain.ArchNet(arch).to(proc.device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    step, trained = 0, runtime.data_parallel(net, proc.device)
    for epoch in range(args.epochs):
        step, _ = retrain.train_epoch(proc, net, trained, opt, data.train, args, epoch, step,
                                      f"[sample {k + 1}/{args.random} epoch {epoch + 1}/{args.epochs}]",
                                      (args.random - k - 1) * args.epochs + args.epochs - epoch - 1)
    return retrain.evaluate(proc, net, data.val, args.batch_size)


def load_random_state(path):
    state = cli.read_json(path, "random-search record")
    if not (isinstance(state, dict) and "config" in state and isinstance(state.get("records"), list)):
        raise UsageError(f"{path} is not a random-search record (it may be corrupt)")
    return state




def random_search(argv):
    """`studies.py random`: search.py's settings (space, data, recipe, devices) and --random K --target-flops F."""
    args = search.parse_args(argv, random=True)
    space = search.check_run(args)
    random_archs_at_flops(space, flops_table(space), args.random, args.target_flops,
                          torch.Generator().manual_seed(args.seed))  # refused now if the window is out of reach
    state = os.path.join(args.out, RANDOM_STATE)
    if args.resume and os.path.exists(state):
        cli.same_config(load_random_state(state)["config"], search.run_config(args), state)
    search.start_run(args, random_search_worker)

if __name__ == "__main__":
    run_cli(main)
