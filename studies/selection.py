"""Selection at equal FLOPs: does the super network pick the better of networks that cost the same?

A derivation that reads candidate networks on the super network and keeps the best one (as SPOS selects, Guo et al.
2020) can beat random networks of the same cost only if, among networks of about the same FLOPs, the one-shot
reading points to the ones that train better alone. This study asks that of a ground-truth table without training
anything. For each search run: the candidates are the table's random networks within 5% of the FLOPs of the run's
searched network (Table 1's peers of it); each is read on the run's super network as the audit reads it (its path,
its candidates, on the shared weights; BN recalibrated on --calib training images, and with batch statistics); a
rule chooses one; the chosen network's stand-alone accuracy (mean over the table's seeds) is ranked among the other
candidates. Under the null that a rule knows nothing of stand-alone accuracy at equal FLOPs, the chosen network is
any candidate with equal chance: Table 1's stratified permutation test (stats.matched_permutation_p) over the runs,
one group per run, on test and on validation top-1. Three rules, ties to the first candidate in table order:

  recalibrated   the best one-shot validation top-1 with BN recalibrated (as SPOS and NSE read)
  batch_stats    the best one-shot validation top-1 with batch statistics (as the search reads)
  fewest_layers  the candidate with the fewest layers in its blocks (ground_truth.depth): reads nothing

Beside them each run's own searched network (argmax alpha + Viterbi, Algorithm 1) ranked among the same candidates.
Readings are kept in OUT/readings.jsonl, so a cut-off study resumes; OUT/selection.json holds every figure.

    python -m studies selection --table studies/tables/ground-truth-laptop/table.jsonl --runs runs/sp-s3 runs/sp-s4
"""
import os
import statistics

from machinery import cli
from machinery.cli import ArgumentParser, UsageError, integer
from studies.audit import open_run, read_network, read_table
from studies.ground_truth import flops_depth_design, match_run, record_depth
from studies.random_search import TOLERANCE
from studies.stats import adjusted_lead, kendall, matched_permutation_p, percentile
from studies.table1 import fmt_p, mean_over_seeds, peers_of

RULES = ("recalibrated", "batch_stats", "fewest_layers")


def finished_search(run):
    """Refuse a search folder whose search has not run all its epochs: its super network is not the one it derives."""
    settings = cli.read_settings(run)
    log = os.path.join(run, cli.SEARCH_LOG)
    done = max((r.get("epoch", 0) for r in cli.read_log(log)), default=0) if os.path.isfile(log) else 0
    if done < settings.get("epochs", 1) or not os.path.isfile(os.path.join(run, cli.CHECKPOINT)):
        raise UsageError(f"{run} is not a finished search ({done} of {settings.get('epochs')} epochs)")


def choose(rule, candidates, readings):
    """The index of the candidate a rule keeps; ties to the first."""
    if rule == "fewest_layers":
        return min(range(len(candidates)), key=lambda k: record_depth(candidates[k]))
    return max(range(len(candidates)), key=lambda k: readings[rule][k])


def read_candidates(run, candidates, done, log_path, table, calib, batch_size):
    """Both readings of every candidate on the run's super network; those in `done` (id -> readings) are not read
    again, new ones are appended to log_path as they come."""
    missing = [r for r in candidates if r["id"] not in done]
    if missing:
        net, val, calib_batches = open_run(run, missing, table, batch_size, calib)
        for k, r in enumerate(missing):
            reading = {"run": os.path.abspath(run), "id": r["id"],
                       "batch_stats": read_network(net, r, val), "recalibrated": read_network(net, r, val, calib_batches)}
            cli.append_line(log_path, reading)
            done[r["id"]] = reading
            print(f"  [{k + 1}/{len(missing)}] {r['id']}: one-shot {reading['recalibrated']:.2f}% (recalibrated), "
                  f"{reading['batch_stats']:.2f}% (batch statistics)", flush=True)
    return {rule: [done[r["id"]][rule] for r in candidates] for rule in ("batch_stats", "recalibrated")}


def select_run(searched, candidates, readings):
    """One run's row: for each rule the chosen candidate, its accuracy and its percentile among the others; the
    run's searched network among all candidates; the readings' tau with the truth among the candidates."""
    row = {"id": searched["id"], "flops": searched["flops"], "candidates": [r["id"] for r in candidates],
           "depths": [record_depth(r) for r in candidates], "readings": readings, "rules": {}}
    truth = {s: [mean_over_seeds(r, s) for r in candidates] for s in ("test", "val")}
    for rule in RULES:
        k = choose(rule, candidates, readings)
        others = {s: truth[s][:k] + truth[s][k + 1:] for s in truth}
        row["rules"][rule] = {"chosen": candidates[k]["id"], "index": k, "depth": record_depth(candidates[k]),
                              **{s: {"chosen": truth[s][k], "others_median": statistics.median(others[s]),
                                     "percentile": percentile(truth[s][k], others[s]),
                                     "group": [truth[s][k]] + others[s]} for s in truth}}
    row["searched"] = {s: {"value": mean_over_seeds(searched, s), "percentile": percentile(
        mean_over_seeds(searched, s), truth[s])} for s in truth}
    row["searched"]["depth"] = record_depth(searched)
    row["tau_among_candidates"] = {m: {s: kendall(readings[m], truth[s]) for s in truth} for m in readings}
    return row


def summarise(rows, records):
    """Per rule and split: the mean percentile, how many at a percentile above 50, the stratified permutation p, and
    the chosen networks' mean lead over a fit of the other random networks in FLOPs and depth."""
    random = [r for r in records if r["kind"] != "searched"]
    x = flops_depth_design(random)
    index = {r["id"]: k for k, r in enumerate(random)}
    out = {}
    for rule in RULES:
        out[rule], picks = {}, [row["rules"][rule] for row in rows]
        chosen = sorted({index[p["chosen"]] for p in picks})
        for s in ("test", "val"):
            pct = [p[s]["percentile"] for p in picks]
            out[rule][s] = {"mean_percentile": statistics.fmean(pct), "above_median": sum(q > 50 for q in pct),
                            "runs": len(pct), "permutation_p": matched_permutation_p([p[s]["group"] for p in picks])}
            if x is not None and len(random) - len(chosen) >= 2 * x.shape[1]:
                _, mean, p = adjusted_lead(x, [mean_over_seeds(r, s) for r in random], chosen)
                out[rule][s]["lead_over_fit"] = {"mean": mean, "permutation_p": p, "networks": len(chosen)}
    return out


def main(argv=None):
    ap = ArgumentParser(__doc__, prog="python -m studies selection")
    ap.add_argument("--table", required=True, help="a ground-truth table.jsonl holding the runs' searched networks "
                                                  "and random networks about their FLOPs (ground_truth --peers K)")
    ap.add_argument("--runs", nargs="+", required=True, metavar="RUN", help="search folders (args.json, checkpoint.pt)")
    ap.add_argument("--out", default=os.path.join("runs", "selection"), help="output folder (default runs/selection)")
    ap.add_argument("--calib", type=integer(1, 10**6), default=2048,
                    help="training images that recalibrate BN before each reading (default 2048, as the audit)")
    ap.add_argument("--batch-size", type=integer(1, 4096), default=256, help="batch size of the readings (default 256)")
    args = ap.parse_args(argv)
    records = read_table(args.table)
    searched = {r["id"]: r for r in records if r["kind"] == "searched"}
    runs = [(run, searched[match_run(run, list(searched), args.table)]) for run in args.runs]
    for run, _ in runs:
        finished_search(run)
    os.makedirs(args.out, exist_ok=True)
    log_path = os.path.join(args.out, "readings.jsonl")
    logged = cli.read_log(log_path) if os.path.exists(log_path) else []
    rows = []
    for run, s in runs:
        candidates = peers_of(s, records)
        if len(candidates) < 2:
            raise UsageError(f"{args.table} holds {len(candidates)} random networks within {TOLERANCE:.0%} of "
                             f"{s['id']}'s FLOPs; a choice needs at least 2")
        print(f"{run}: {len(candidates)} candidates within {TOLERANCE:.0%} of {s['flops'] / 1e6:.2f}M FLOPs", flush=True)
        done = {g["id"]: g for g in logged if g["run"] == os.path.abspath(run)}
        rows.append(select_run(s, candidates, read_candidates(run, candidates, done, log_path, args.table,
                                                              args.calib, args.batch_size)))
    result = {"table": os.path.abspath(args.table), "tolerance": TOLERANCE, "calib_images": args.calib,
              "runs": rows, "summary": summarise(rows, records)}
    cli.save_json_atomic(result, os.path.join(args.out, "selection.json"))
    report(result, os.path.join(args.out, "selection.json"))
    return result


def report(result, path):
    print(f"\n{'run':<24} {'cands':>5} {'depths':>7} " + " ".join(f"{r:>22}" for r in RULES) + f" {'searched':>14}")
    print(f"{'':<24} {'':>5} {'':>7} " + " ".join(f"{'depth test pct':>22}" for _ in RULES) + f" {'depth pct':>14}")
    for row in result["runs"]:
        known = [d for d in row["depths"] if d is not None]
        cells = [f"{p['depth']:>6} {p['test']['chosen']:6.2f} {p['test']['percentile']:5.0f}"
                 for p in (row["rules"][r] for r in RULES)]
        print(f"{row['id'][-24:]:<24} {len(row['candidates']):5d} {min(known):>3}-{max(known):<3} "
              + " ".join(f"{c:>22}" for c in cells)
              + f" {row['searched']['depth']:>6} {row['searched']['test']['percentile']:7.0f}")
    for rule, fig in result["summary"].items():
        for s in ("test", "val"):
            f = fig[s]
            lead = f.get("lead_over_fit")
            print(f"{rule:<14} {s:<4}: mean percentile {f['mean_percentile']:5.1f}, percentile above 50 "
                  f"{f['above_median']}/{f['runs']}, permutation p = {fmt_p(f['permutation_p'])}"
                  + (f"; lead over the fit in FLOPs and depth {lead['mean']:+.2f} (p = {fmt_p(lead['permutation_p'])})"
                     if lead else ""))
    print(f"output: {path}")
