"""Table 1 at laptop scale: DenseNAS against random search at equal cost (Sec. 4.4).

For every search seed, the laptop walkthrough (search.py --preset laptop --seed S) searches the `mini` space on
Fashion-MNIST and retrains its derived network; then --random R architectures are drawn uniformly from the same
space (a random path, a random candidate per layer) within 5% of that network's FLOPs, and each is retrained with
the same recipe and seed and tested on the same 10k test images. The report gives test top-1 as mean +- std over
the searched and over the random networks, every run in table1.json, and table1.svg (test accuracy against
FLOPs). Every run lives in its own folder under OUT and is resumable: an interrupted study continues when run again.

    python -m studies table1 --seeds 0 1 2 --random 3 [--out runs/table1]
"""
import json
import os
import statistics
import time

import torch

import retrain
import search
from cost import flops_table
from machinery import cli, options, runtime
from machinery.cli import SEED, ArgumentParser, UsageError, integer, number
from machinery.draw import scatter_svg
from studies.random_search import random_archs_at_flops
from supernet import get_space

PRESET = "laptop"


def run_search(seed, out, log_every):
    """The laptop walkthrough for one seed (search, retrain, test); its summary.json, resuming if cut off."""
    folder = os.path.join(out, f"search-seed{seed}")
    summary = os.path.join(folder, "summary.json")
    if os.path.exists(os.path.join(folder, cli.SETTINGS)):  # a run of another recipe must not enter the table
        want = options.run_config(search.parse_args(["--preset", PRESET, "--seed", str(seed), "--out", folder]))
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
        cli.save_json_atomic(arch, arch_path)
        resume = ["--resume"] if cli.has_run(os.path.join(folder, "retrain")) else []
        print(f"\n== seed {seed}: retraining random architecture {k + 1} ({arch_path}) ==", flush=True)
        retrain.main(["--arch", arch_path, "--data", data,
                      "--out", os.path.join(folder, "retrain"),
                      "--seed", str(seed), "--log-every", str(log_every)] + options.RETRAIN_PRESETS[PRESET] + resume)
    with open(report) as f:
        return json.load(f)


def mean_std(values):
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main(argv=None):
    ap = ArgumentParser(__doc__, prog="python -m studies table1")
    ap.add_argument("--seeds", type=SEED, nargs="+", default=[0, 1, 2], help="search seeds (default 0 1 2)")
    ap.add_argument("--random", type=integer(1, 1000), default=3, metavar="R",
                    help="random architectures per seed, within 5%% of the searched one's FLOPs (default 3)")
    ap.add_argument("--out", default=os.path.join("runs", "table1"), help="output folder (default runs/table1)")
    ap.add_argument("--log-every", type=number(0, low_open=True), default=30.0,
                    help="seconds between progress lines (default 30)")
    args = ap.parse_args(argv)
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
        arch = cli.load_arch(os.path.join(folder, "arch.json"))
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
    cli.save_json_atomic(result, os.path.join(args.out, "table1.json"))
    series = {kind: (colour, [(r["flops"] / 1e6, r["test_top1"]) for r in rows if r["kind"] == kind])
              for kind, colour in (("random", "#9e9e9e"), ("searched", "#d62728"))}
    cli.save_text_atomic(scatter_svg(series, "FLOPs (millions)", "test top-1 (%)",
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
