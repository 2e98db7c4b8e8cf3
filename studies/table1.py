"""Table 1 at laptop scale: DenseNAS against random search at equal cost (Sec. 4.4).

For every search seed, the laptop walkthrough (search.py --preset laptop --seed S) searches the `mini` space on
Fashion-MNIST and retrains its derived network; then --random R architectures are drawn uniformly from the same
space (a random path, a random candidate per layer) within 5% of that network's FLOPs, and each is retrained with
the same recipe and seed and tested on the same 10k test images. The report gives test top-1 as mean +- std over
the searched and over the random networks, every run in table1.json, and table1.svg (test accuracy against
FLOPs). Every run lives in its own folder under OUT and is resumable: an interrupted study continues when run again.

    python -m studies table1 --seeds 0 1 2 --random 3 [--out runs/table1]

With --table, Table 1 with its statistics from a ground-truth table (python -m studies ground_truth --searched ...
--peers K), where every network was trained with one recipe and several seeds: each searched network against the
table's random networks within 5% of its FLOPs, on the mean test top-1 over the seeds (the validation split's beside
it): its percentile among them, and one stratified permutation test over all searched networks (within each group
the 'searched' label could be any member: stats.matched_permutation_p). The same against only the peers no deeper
than it (depth: the layers of its blocks), as a network's depth alone ranks a short training's accuracies; and
each searched network's lead over a least-squares model of the random networks' accuracy, quadratic in log FLOPs
and depth, with a permutation test that refits the model for every relabelling (stats.adjusted_lead). And what the
judge can resolve: from the table's seed noise and its peers' spread, the chance that a searched network truly at
its peers' 50th, 75th or 90th percentile measures above their median, for each and for all at once
(stats.chance_above_median).
table1.svg: every network's accuracy against FLOPs with the random networks' Pareto front.

    python -m studies table1 --table studies/tables/ground-truth-laptop/table.jsonl --out runs/table1-truth
"""
import json
import math
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
from studies.audit import same_networks
from studies.ground_truth import flops_depth_design, match_run, record_depth
from studies.random_search import TOLERANCE, random_archs_at_flops
from studies.stats import adjusted_lead, chance_above_median, matched_permutation_p, percentile
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
    ap.add_argument("--table", help="instead: Table 1 with statistics from this ground-truth table.jsonl")
    ap.add_argument("--judge", metavar="TABLE",
                    help="with --table: each searched network's lead over the peers both tables hold (the same ids), "
                         "under TABLE's recipe beside this table's")
    ap.add_argument("--searched", nargs="+", metavar="RUN",
                    help="with --table: only these search runs' networks (default: every searched one); the others "
                         "are left out, not counted as random")
    args = ap.parse_args(argv)
    if args.table:
        return table1_from_truth(args.table, args.out, args.searched, args.judge)
    if args.searched or args.judge:
        raise UsageError("--searched and --judge go with --table")
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


# ----------------------------------------------------------------------------------------
# Table 1 from a ground-truth table: percentiles among random peers, a permutation test, the Pareto front



def mean_over_seeds(record, split):
    return statistics.fmean(record[split].values())


def pareto_front(points):
    """The (FLOPs, accuracy) points no other point beats in both (fewer FLOPs and higher accuracy), by FLOPs."""
    front, best = [], -math.inf
    for f, a in sorted(points, key=lambda q: (q[0], -q[1])):
        if a > best:
            front.append((f, a))
            best = a
    return front


def peers_of(searched, records):
    """A searched network's peers: the random networks of `records` within 5% of its FLOPs, in table order."""
    return [r for r in records if r["kind"] != "searched" and abs(r["flops"] - searched["flops"])
            <= TOLERANCE * searched["flops"]]


def table1_from_truth(path, out, runs=None, judge_path=None):
    for flag, p in (("--table", path), ("--judge", judge_path)):
        if p is not None and not os.path.isfile(p):
            raise UsageError(f"{flag} {p} does not exist")
    records = cli.read_log(path)
    searched = [r for r in records if r["kind"] == "searched"]
    if runs:
        wanted = {match_run(r, [s["id"] for s in searched], path) for r in runs}
        searched = [r for r in searched if r["id"] in wanted]
    random = [r for r in records if r["kind"] != "searched"]
    if not searched or not random:
        raise UsageError(f"{path} needs searched and random networks (ground_truth --searched ... --peers K)")
    rows, groups, shallow_groups = [], {"test": [], "val": []}, {"test": [], "val": []}
    for s in searched:
        peers = peers_of(s, random)
        d, depths = record_depth(s), [record_depth(r) for r in peers]
        shallow = [r for r, e in zip(peers, depths) if d is not None and e is not None and e <= d]
        row = {"id": s["id"], "flops": s["flops"], "peers": len(peers), "depth": d, "peer_depths": depths,
               "peers_no_deeper": len(shallow)}
        for split in ("test", "val"):
            mine, theirs = mean_over_seeds(s, split), [mean_over_seeds(r, split) for r in peers]
            row[split] = {"searched": mine, "peer_median": statistics.median(theirs) if theirs else None,
                          "percentile": percentile(mine, theirs) if theirs else None}
            if theirs:
                groups[split].append([mine] + theirs)
            low = [mean_over_seeds(r, split) for r in shallow]
            row[split]["percentile_no_deeper"] = percentile(mine, low) if low else None
            if low:
                shallow_groups[split].append([mine] + low)
        rows.append(row)
    result = {"table": os.path.abspath(path), "tolerance": TOLERANCE, "searched": rows,
              "seeds": sorted(records[0]["test"])}
    for split in ("test", "val"):
        pct = [r[split]["percentile"] for r in rows if r[split]["percentile"] is not None]
        low = [r[split]["percentile_no_deeper"] for r in rows if r[split]["percentile_no_deeper"] is not None]
        result[split] = {"mean_percentile": statistics.fmean(pct) if pct else None,
                         "above_median": sum(p > 50 for p in pct), "compared": len(pct),
                         "permutation_p": matched_permutation_p(groups[split]) if groups[split] else None,
                         "no_deeper": {"mean_percentile": statistics.fmean(low) if low else None, "compared": len(low),
                                       "permutation_p": matched_permutation_p(shallow_groups[split])
                                       if shallow_groups[split] else None}}
    x = flops_depth_design(searched + random)
    if x is not None and len(random) >= 2 * x.shape[1]:  # at equal FLOPs and depth: the lead over a model of the
        for split in ("test", "val"):                      # random networks (a fit of 6 terms to some more of them)
            leads, mean, p = adjusted_lead(x, [mean_over_seeds(r, split) for r in searched + random],
                                           list(range(len(searched))))
            result[split]["adjusted"] = {"mean_lead": mean, "permutation_p": p}
            for row, lead in zip(rows, leads):
                row[split]["adjusted_lead"] = lead
    result["judge"] = judge_resolution(records, [g[1:] for g in groups["test"]])
    if judge_path is not None:
        other = cli.read_log(judge_path)
        same_networks(records, other, f"--judge {judge_path}")
        result["leads_under_both"] = leads_under_both(searched, random, {r["id"]: r for r in other})
    front = pareto_front([(r["flops"], mean_over_seeds(r, "test")) for r in random])
    result["pareto_front"] = front
    os.makedirs(out, exist_ok=True)
    cli.save_json_atomic(result, os.path.join(out, "table1.json"))
    series = {"random": ("#9e9e9e", [(r["flops"] / 1e6, mean_over_seeds(r, "test")) for r in random]),
              "searched": ("#d62728", [(r["flops"] / 1e6, mean_over_seeds(r, "test")) for r in searched])}
    lines = {"Pareto front (random)": ("#1f77b4", [(f / 1e6, a) for f, a in front])}
    cli.save_text_atomic(scatter_svg(series, "FLOPs (millions)", f"test top-1 (%), mean of {len(result['seeds'])} "
                                     "seeds", "searched networks against the ground truth's random ones", lines),
                         os.path.join(out, "table1.svg"))
    print(f"Table 1 from {path}: mean top-1 over seeds {', '.join(result['seeds'])}; peers: random networks within "
          f"{TOLERANCE:.0%} of the searched one's FLOPs")
    print(f"{'searched':<28} {'FLOPs':>7} {'peers':>5} {'test':>6} {'peer median':>11} {'pct':>5} {'val':>6} "
          f"{'peer median':>11} {'pct':>5} {'depth':>5} {'peers':>11} {'no deeper':>9} {'pct test':>8} {'lead':>6}")
    for r in rows:
        t, v = r["test"], r["val"]
        known = [d for d in r["peer_depths"] if d is not None]
        span = f"{min(known)}-{max(known)}" if known and r["depth"] is not None else "-"
        print(f"{r['id'][-28:]:<28} {r['flops'] / 1e6:6.2f}M {r['peers']:5d} {t['searched']:6.2f} "
              f"{fmt(t['peer_median']):>11} {fmt(t['percentile'], 0):>5} {v['searched']:6.2f} "
              f"{fmt(v['peer_median']):>11} {fmt(v['percentile'], 0):>5} {fmt(r['depth'], 0):>5} {span:>11} "
              f"{r['peers_no_deeper']:9d} {fmt(t['percentile_no_deeper'], 0):>8} {fmt(t.get('adjusted_lead')):>6}")
    for split in ("test", "val"):
        r, low = result[split], result[split]["no_deeper"]
        print(f"{split}: mean percentile {fmt(r['mean_percentile'], 1)}, percentile above 50 "
              f"{r['above_median']}/{r['compared']}, permutation p = {fmt_p(r['permutation_p'])}; among the peers "
              f"no deeper ({low['compared']} searched networks have some): mean percentile "
              f"{fmt(low['mean_percentile'], 1)}, permutation p = {fmt_p(low['permutation_p'])}")
        if "adjusted" in r:
            print(f"{split}: lead over a fit of the random networks in FLOPs and depth (quadratic): mean "
                  f"{r['adjusted']['mean_lead']:+.2f} points, permutation p = {fmt_p(r['adjusted']['permutation_p'])}")
    if judge_path is not None:
        both = result["leads_under_both"]
        print(f"lead (test) over the peers both tables hold, under --judge {judge_path} -> under this table:")
        for r in both["searched"]:
            print(f"  {r['id'][-28:]:<28} {r['peers']:2d} peers  {r['judge_lead']:+.2f} -> {r['lead']:+.2f}")
        if both["searched"]:
            print(f"  mean {both['mean_judge_lead']:+.2f} -> {both['mean_lead']:+.2f}; the lead fell for "
                  f"{both['fell']}/{len(both['searched'])}")
        else:
            print("  none: --judge holds none of these searched networks (by id) with a peer of it")
    judge = result["judge"]
    if judge is not None:
        print(f"what this table's recipe resolves (test): one training seed's noise sd "
              f"{judge['noise_sd_one_seed']:.2f} points, the peers' "
              f"true sd {judge['true_sd']:.2f}; a searched network truly at its peers' 50th / 75th / 90th percentile "
              "measures above their median (percentile above 50)")
        for k, by_q in judge["all_above"].items():
            each = list(judge["each_above"][k].values())
            print(f"  with {k} training seeds: each {', '.join(f'{min(v):.2f}-{max(v):.2f}' for v in each)}; all "
                  f"{len(each[0])} at once {' / '.join(f'{v:.3f}' for v in by_q.values())}; expected count "
                  f"{' / '.join(f'{sum(v):.1f}' for v in each)}")
    print(f"outputs: {os.path.join(out, 'table1.json')}, {os.path.join(out, 'table1.svg')}")
    return result


def leads_under_both(searched, random, other, split="test"):
    """Each searched network's lead (its accuracy less its peers' mean, means over the seeds) over the peers that
    both this table and `other` (another recipe's table, {id: record}) hold, under each: does a lead under one judge
    hold under the other, over the same networks? Searched networks the other table lacks, or with no peer there,
    are left out."""
    def lead(s, peers):
        return mean_over_seeds(s, split) - statistics.fmean(mean_over_seeds(r, split) for r in peers)
    rows = []
    for s in searched:
        both = [r for r in peers_of(s, random) if r["id"] in other]
        if s["id"] in other and both:
            rows.append({"id": s["id"], "peers": len(both), "lead": lead(s, both),
                         "judge_lead": lead(other[s["id"]], [other[r["id"]] for r in both])})
    return {"split": split, "searched": rows,
            "mean_lead": statistics.fmean(r["lead"] for r in rows) if rows else None,
            "mean_judge_lead": statistics.fmean(r["judge_lead"] for r in rows) if rows else None,
            "fell": sum(r["lead"] < r["judge_lead"] for r in rows)}


def judge_resolution(records, windows, split="test", quantiles=(0.5, 0.75, 0.9), samples=20000):
    """How well the table's judge resolves a searched network's place among its peers (`windows`: each searched
    network's peers' accuracies on `split`, mean over the seeds): one training seed's noise sd (the pooled variance
    of a network's accuracy over the seeds), the peers' true sd (their measured variance within each window of 3 or
    more, pooled, less the noise of a mean over the seeds), and for each searched network the chance that one truly
    at quantile q of its peers measures above their median, with the table's number of seeds and with two and four
    times as many; 'all_above' multiplies them over the searched networks. None when the table has a single seed or
    no window with 3 peers."""
    seeds = len(records[0][split])
    wide = [w for w in windows if len(w) >= 3]
    if seeds < 2 or not wide:
        return None
    noise = statistics.fmean(statistics.variance(r[split].values()) for r in records)
    true_var = statistics.fmean(statistics.variance(w) for w in wide) - noise / seeds
    true_sd = math.sqrt(max(true_var, 0.0))
    each, every = {}, {}
    for k in (seeds, 2 * seeds, 4 * seeds):
        each[k] = {q: [chance_above_median(q, math.sqrt(noise / k), true_sd, len(w), samples) for w in windows]
                   for q in quantiles}
        every[k] = {q: math.prod(v) for q, v in each[k].items()}
    return {"split": split, "seeds": seeds, "noise_sd_one_seed": math.sqrt(noise), "true_sd": true_sd,
            "each_above": each, "all_above": every}


def fmt(v, digits=2):
    return "-" if v is None else f"{v:.{digits}f}"


def fmt_p(p):
    """A p-value: four decimals, or two significant digits below 0.001 (a sampled p is never below 1/(draws + 1))."""
    return "-" if p is None else f"{p:.4f}" if p >= 1e-3 else f"{p:.1e}"
