"""The ranking audit: does a search's super network rank the networks of its space as training them alone does?

Every network of a ground-truth table (python -m studies ground_truth) is read from the super network of a search
run, on its shared weights: only the blocks of its path, every layer at its candidate (SuperNet.forward with a
path and samples, Sec. 3.4), on the search's validation split. Twice: with batch statistics in BN, as the search
reads its super network (Search.evaluate), and with BN statistics recalibrated on --calib training images for that
network before reading (as SPOS and NSE do). Against the stand-alone validation accuracy (the mean over the
table's seeds) it reports Kendall tau, Spearman rho and the top-10% hit rate, each with a bootstrap 95% interval,
and tau within FLOPs strata; beside them three baselines: the noise ceiling (the seeds' agreement), ranking by
FLOPs alone and by depth alone (the layers of the blocks). A super network that ranks no better than counting FLOPs
or layers tells the search nothing. OUT/audit.json holds every figure and reading, OUT/audit.svg the one-shot
against the stand-alone accuracy. Without --run, the baselines alone (seconds) into OUT/baselines.json; with
--judge TABLE also that table's ranking, on the networks both tables hold: the same networks trained with another
recipe (ground_truth --networks-of), to see whether this table's recipe ranks them as a longer one does.
A fourth baseline fits the stand-alone accuracies by least squares, quadratic in log FLOPs and depth, each network
predicted from the others (leave-one-out): it tells how much of the table FLOPs and depth explain, against the
seeds' noise, and each reading is also ranked against what that fit leaves (does the super network know more of a
network than its FLOPs and depth?). --rescore AUDIT_JSON scores an earlier audit's readings again (seconds).

    python -m studies audit --run runs/laptop --table studies/tables/ground-truth-laptop/table.jsonl --out runs/audit
    python -m studies audit --table studies/tables/ground-truth-laptop/table.jsonl --out runs/baselines
    python -m studies audit --table runs/gt-long/table.jsonl --judge studies/tables/ground-truth-laptop/table.jsonl
"""
import math
import os
import statistics

import torch

from machinery import cli
from machinery.cli import ArgumentParser, UsageError, integer
from machinery.data import load_data, make_loader
from machinery.draw import scatter_svg
from studies.ground_truth import flops_depth_design, record_depth
from studies.stats import bootstrap_interval, kendall, loo_predictions, paired_difference, spearman, top_hit_rate
from supernet import SuperNet, bn_momentum, get_space


def load_run(run):
    """The super network of a search run (its last checkpoint) and the search's data, as the run had them."""
    settings = cli.read_settings(run)
    data = load_data(settings["data"], "search", settings["seed"], settings["input_size"], settings["subset"],
                     settings["classes"], split_file=os.path.join(run, cli.SPLIT), verify_images=False)
    space = get_space(settings["space"], data.input_size, data.in_channels, data.num_classes, settings["connect"])
    net = SuperNet(space, init=False)
    ck = cli.load_checkpoint(os.path.join(run, cli.CHECKPOINT))
    cli.load_states(ck if isinstance(ck, dict) else {}, {"model": net}, "super network")
    return net, data, settings


def open_run(run, records, table, batch_size, calib):
    """A run's super network (load_run) with the batches its readings use: the search's validation split, and the
    first `calib` images of its training split in a seeded order for BN recalibration; refuses `records` of another
    space than the run's."""
    net, data, settings = load_run(run)
    if any(len(r.get("choices", [])) != len(net.layers) for r in records):
        raise UsageError(f"{table} holds networks of another space than the run's '{settings['space']}'")
    val = list(make_loader(data.val, batch_size, False, 0, 0, drop_last=False))
    calib_batches = list(make_loader(data.train, batch_size, True, 0, settings["seed"]))[:math.ceil(calib / batch_size)]
    return net, val, calib_batches


def read_network(net, record, val_batches, calib_batches=None):
    """Top-1 (%) of one network of the space read from the super network on val_batches. calib_batches None: BN
    normalises with each batch's statistics (the search's reading); else its running statistics are first
    re-estimated on calib_batches for this network alone (a cumulative average), then used in eval mode."""
    samples = {slot: [c] for slot, c in enumerate(record["choices"])}
    net.train()
    with torch.no_grad(), bn_momentum(net, 0.0 if calib_batches is None else None) as bns:
        if calib_batches is not None:  # re-estimated as a cumulative average over the calibration batches
            for m in bns:
                m.reset_running_stats()
            for x, _ in calib_batches:
                net(x, samples, record["path"])
            net.eval()
        correct = total = 0
        for x, y in val_batches:
            correct += (net(x, samples, record["path"]).argmax(1) == y).sum().item()
            total += len(y)
    return 100.0 * correct / max(total, 1)


def ranking(predicted, truth):
    """tau, rho and the top-10% hit rate of `predicted` against `truth`, each with a bootstrap 95% interval."""
    out = {}
    for name, fn in (("kendall", kendall), ("spearman", spearman), ("top10_hit", top_hit_rate)):
        lo, hi = bootstrap_interval(fn, predicted, truth)
        out[name] = {"value": fn(predicted, truth), "interval": [lo, hi]}
    return out


def strata_tau(predicted, truth, flops, strata=4):
    """Kendall tau within each of `strata` equal-count FLOPs strata: how well a ranking separates networks of about
    the same cost, where FLOPs alone cannot."""
    order = sorted(range(len(flops)), key=lambda i: flops[i])
    taus = []
    for k in range(strata):
        idx = order[k * len(order) // strata:(k + 1) * len(order) // strata]
        if len(idx) >= 3:
            taus.append(kendall([predicted[i] for i in idx], [truth[i] for i in idx]))
    return taus


def main(argv=None):
    ap = ArgumentParser(__doc__, prog="python -m studies audit")
    ap.add_argument("--run", help="a search folder (its args.json and checkpoint.pt); without it, the table's "
                                  "baselines alone")
    ap.add_argument("--table", required=True, help="a ground-truth table.jsonl (python -m studies ground_truth)")
    ap.add_argument("--out", default=os.path.join("runs", "audit"), help="output folder (default runs/audit)")
    ap.add_argument("--calib", type=integer(1, 10**6), default=2048,
                    help="training images that recalibrate BN before each reading (default 2048)")
    ap.add_argument("--batch-size", type=integer(1, 4096), default=256, help="batch size of the readings (default 256)")
    ap.add_argument("--versus", metavar="AUDIT_JSON",
                    help="another search's audit.json: the difference of Kendall tau on the networks both read, with "
                         "a paired bootstrap interval (one change of the search against another)")
    ap.add_argument("--compare", nargs=2, metavar=("AUDIT_JSON", "OTHER_JSON"),
                    help="instead of reading a run: --versus for two audits made before (seconds; needs --table)")
    ap.add_argument("--judge", metavar="TABLE",
                    help="without --run: another table of the same networks (python -m studies ground_truth "
                         "--networks-of), trained with another recipe; the baselines on the networks both hold, and "
                         "that table's ranking beside them (does this table's recipe rank as the other does?)")
    ap.add_argument("--rescore", metavar="AUDIT_JSON",
                    help="instead of reading a run: an audit.json made before, scored again against --table from its "
                         "readings (seconds; the networks both hold)")
    args = ap.parse_args(argv)
    if args.compare:
        return compare(args)
    if args.rescore:
        if args.run or args.judge:
            raise UsageError("--rescore scores an audit made before: give it without --run and --judge")
        return rescore(args)
    if not args.run:
        return baselines_only(args)
    if args.judge:
        raise UsageError("--judge compares two tables' rankings: give it without --run")
    other = load_audit(args.versus, "--versus") if args.versus else None
    records = read_table(args.table)
    net, val, calib = open_run(args.run, records, args.table, args.batch_size, args.calib)
    truth, _ = stand_alone(records)
    readings = {"batch_stats": [], "recalibrated": []}
    for k, r in enumerate(records):
        readings["batch_stats"].append(read_network(net, r, val))
        readings["recalibrated"].append(read_network(net, r, val, calib))
        print(f"[{k + 1}/{len(records)}] {r['id']}: stand-alone {truth[k]:.2f}%, one-shot "
              f"{readings['batch_stats'][-1]:.2f}% (batch statistics), {readings['recalibrated'][-1]:.2f}% "
              "(recalibrated)", flush=True)
    result = {"run": os.path.abspath(args.run), "table": os.path.abspath(args.table),
              "calib_images": min(args.calib, len(calib) * args.batch_size), **score(records, readings)}
    if other is not None:
        result["versus"] = versus(result, other, truth, args.versus)
    write_audit(result, truth, args.out)


def score(records, readings):
    """Every figure of an audit: the baselines, and each mode's readings ranked against the stand-alone accuracies,
    within FLOPs strata, and against what a fit in FLOPs and depth leaves of them (does the super network know more
    of a network than its FLOPs and depth?); printed."""
    truth, seeds = stand_alone(records)
    flops = [r["flops"] for r in records]
    result = {"networks": len(records), "ids": [r["id"] for r in records], **baselines(records, truth, seeds)}
    fit = result.get("flops_and_depth", {}).get("predictions")
    left = None if fit is None else [t - f for t, f in zip(truth, fit)]  # what the fit leaves of the truth
    for mode, acc in readings.items():
        result[mode] = ranking(acc, truth) | {"strata_tau": strata_tau(acc, truth, flops), "readings": acc}
        if left is not None:
            lo, hi = bootstrap_interval(kendall, acc, left)
            result[mode]["beyond_flops_and_depth"] = {"value": kendall(acc, left), "interval": [lo, hi]}
    report(result, seeds)
    return result


def write_audit(result, truth, out):
    os.makedirs(out, exist_ok=True)
    cli.save_json_atomic(result, os.path.join(out, "audit.json"))
    series = {name: (colour, list(zip(truth, result[mode]["readings"]))) for name, mode, colour in
              (("batch statistics", "batch_stats", "#9e9e9e"), ("recalibrated BN", "recalibrated", "#d62728"))}
    cli.save_text_atomic(scatter_svg(series, "stand-alone validation top-1 (%)", "one-shot validation top-1 (%)",
                                     "the super network's reading against training alone"),
                         os.path.join(out, "audit.svg"))
    print(f"outputs: {os.path.join(out, 'audit.json')}, {os.path.join(out, 'audit.svg')}")


def same_networks(records, others, what):
    """Two tables name networks by id alone ('random-3' in any table): refuse ids that are other networks there."""
    flops = {r["id"]: r["flops"] for r in others}
    for r in records:
        if r["id"] in flops and not math.isclose(r["flops"], flops[r["id"]], rel_tol=1e-9):
            raise UsageError(f"{what} names another network {r['id']} ({flops[r['id']] / 1e6:.2f}M FLOPs, here "
                             f"{r['flops'] / 1e6:.2f}M)")


def rescore(args):
    """--rescore A: an audit made before scored again against --table, from its readings (seconds)."""
    audit = load_audit(args.rescore, "--rescore")
    by_id = {r["id"]: r for r in read_table(args.table)}
    keep = [k for k, i in enumerate(audit["ids"]) if i in by_id]
    if len(keep) < 3:
        raise UsageError(f"--rescore {args.rescore} read fewer than 3 of {args.table}'s networks")
    records = [by_id[audit["ids"][k]] for k in keep]
    if audit.get("table") and os.path.isfile(audit["table"]):
        same_networks(records, cli.read_log(audit["table"]), f"--rescore {args.rescore}'s table")
    readings = {m: [audit[m]["readings"][k] for k in keep] for m in ("batch_stats", "recalibrated")}
    result = {"rescored": os.path.abspath(args.rescore), "run": audit.get("run"), "table": os.path.abspath(args.table),
              **score(records, readings)}
    write_audit(result, stand_alone(records)[0], args.out)
    return result


def read_table(path):
    if not os.path.isfile(path):
        raise UsageError(f"--table {path} does not exist")
    records = cli.read_log(path)
    if len(records) < 3:
        raise UsageError(f"{path} holds {len(records)} networks; a ranking needs at least 3")
    return records


def baselines(records, truth, seeds, judge=None):
    """What a ranking must beat, against the stand-alone validation top-1 (truth, stand_alone's): one seed's ranking
    of the other (the noise ceiling), FLOPs alone, and depth alone (of DenseNAS networks), with tau within FLOPs
    strata for the last two; and `judge` (the same networks' accuracies under another recipe) if given."""
    flops = [r["flops"] for r in records]
    out = {"flops": ranking(flops, truth) | {"strata_tau": strata_tau(flops, truth, flops)}}
    if judge is not None:
        out["judge"] = ranking(judge, truth) | {"strata_tau": strata_tau(judge, truth, flops)}
    depths = [record_depth(r) for r in records]
    if None not in depths:
        out["depth"] = ranking(depths, truth) | {"strata_tau": strata_tau(depths, truth, flops)}
        x = flops_depth_design(records)
        fit, hat = loo_predictions(x, truth) if len(records) >= 2 * x.shape[1] else (None, None)
        # a fit of 6 terms needs some more networks than terms, and none outside the others' span (leverage ~1)
        if fit is not None and float(hat.max()) < 0.99:
            out["flops_and_depth"] = ranking(fit.tolist(), truth) | {
                "strata_tau": strata_tau(fit.tolist(), truth, flops),
                "predictions": fit.tolist()}
            if len(records) >= 4 * x.shape[1]:  # fewer: a few networks' leverage decides the noise part
                out["flops_and_depth"]["variance"] = variance_shares(records, truth, seeds, fit, hat)
        elif fit is not None:
            print("no fit in FLOPs and depth: a network's FLOPs and depth lie outside the others' span")
        if judge is not None:  # tau is symmetric: tau(this table, depth) - tau(the judge's, depth)
            diff, interval, share = paired_difference(kendall, truth, judge, depths)
            out["depth"]["versus_judge"] = {"judge_tau": kendall(depths, judge), "difference": diff,
                                            "interval": interval, "share_not_above_0": share}
    if len(seeds) >= 2:
        a, b = ([r["val"][s] for r in records] for s in seeds[:2])
        out["noise_ceiling"] = ranking(a, b)
    return out


def variance_shares(records, truth, seeds, fit, hat):
    """How much of the stand-alone accuracies a model in FLOPs and depth explains: their variance over networks, the
    part of it that is seed noise (the mean over networks of the seeds' variance, / the seeds: the variance of a
    mean of seeds), the mean squared error of the leave-one-out fit, the part of that error that noise alone would
    leave (noise x mean 1 / (1 - h): a left-out item's error carries its own noise and the fit's), and the share
    of the variance beyond noise that the fit explains, 1 - (error - its noise part) / (variance - noise)."""
    total = statistics.variance(truth)
    noise = statistics.fmean(statistics.variance([r["val"][s] for s in seeds]) for r in records) / len(seeds) \
        if len(seeds) >= 2 else math.nan
    mse = statistics.fmean((a - b) ** 2 for a, b in zip(truth, fit.tolist()))
    floor = noise * float((1 / (1 - hat)).mean())
    signal = total - noise  # none (or noise alone) beyond the seeds' noise: nothing to explain
    return {"total": total, "seed_noise": noise, "loo_mse": mse, "loo_noise_floor": floor,
            "explained_share": 1 - (mse - floor) / signal if signal > 0 else None}


def baselines_only(args):
    """No --run: the table's baselines alone."""
    records, judge = read_table(args.table), None
    if args.judge:
        judged = read_table(args.judge)
        other = dict(zip((r["id"] for r in judged), stand_alone(judged)[0]))
        records = [r for r in records if r["id"] in other]
        same_networks(records, judged, f"--judge {args.judge}")
        if len(records) < 3:
            raise UsageError(f"--judge {args.judge} holds fewer than 3 of {args.table}'s networks")
        judge = [other[r["id"]] for r in records]
    truth, seeds = stand_alone(records)
    result = {"table": os.path.abspath(args.table), "networks": len(records), "ids": [r["id"] for r in records],
              **({"judge_table": os.path.abspath(args.judge)} if args.judge else {}),
              **baselines(records, truth, seeds, judge)}
    report(result, seeds)
    os.makedirs(args.out, exist_ok=True)
    cli.save_json_atomic(result, os.path.join(args.out, "baselines.json"))
    print(f"output: {os.path.join(args.out, 'baselines.json')}")
    return result


def stand_alone(records):
    """The stand-alone validation top-1 of every network: the mean over the table's seeds."""
    seeds = sorted(records[0]["val"])
    return [sum(r["val"][s] for s in seeds) / len(seeds) for r in records], seeds


def compare(args):
    """--compare A B: A's Kendall tau against B's on the networks both read, against the table's truth."""
    records = read_table(args.table)
    truth, _ = stand_alone(records)
    by_id = dict(zip((r["id"] for r in records), truth))
    a = load_audit(args.compare[0], "--compare")
    missing = [i for i in a["ids"] if i not in by_id]
    if missing:
        raise UsageError(f"{args.compare[0]} read {missing[0]}, which {args.table} does not hold")
    result = {"ids": a["ids"], **{m: a[m] for m in ("batch_stats", "recalibrated")}}
    out = versus(result, load_audit(args.compare[1], "--compare"), [by_id[i] for i in a["ids"]], args.compare[1])
    os.makedirs(args.out, exist_ok=True)
    cli.save_json_atomic(out, os.path.join(args.out, "versus.json"))
    print(f"output: {os.path.join(args.out, 'versus.json')}")


def load_audit(path, flag):
    """An earlier audit.json (given by `flag`) and the ids of its networks (an audit before ids were recorded: its
    table's)."""
    audit = cli.read_json(path, flag)
    if not isinstance(audit, dict) or "recalibrated" not in audit:
        raise UsageError(f"{flag} {path} is not an audit.json of python -m studies audit")
    if "ids" not in audit:
        audit["ids"] = [r["id"] for r in cli.read_log(audit["table"])][:audit["networks"]]
    return audit


def versus(result, other, truth, path):
    """Kendall tau of this audit's readings less the other's, on the networks both read (paired bootstrap)."""
    mine = {i: k for k, i in enumerate(result["ids"])}
    common = [(mine[i], k) for k, i in enumerate(other["ids"]) if i in mine]
    if len(common) < 3:
        raise UsageError(f"--versus {path} read fewer than 3 of this table's networks")
    out = {"audit": os.path.abspath(path), "networks": len(common)}
    for mode in ("batch_stats", "recalibrated"):
        a = [result[mode]["readings"][m] for m, _ in common]
        b = [other[mode]["readings"][k] for _, k in common]
        diff, interval, share = paired_difference(kendall, a, b, [truth[m] for m, _ in common])
        out[mode] = {"tau": kendall(a, [truth[m] for m, _ in common]), "other_tau": kendall(b, [truth[m] for m, _ in
                                                                                                common]),
                     "difference": diff, "interval": interval, "share_not_above_0": share}
        print(f"versus {path} on {len(common)} common networks ({mode}): tau {out[mode]['tau']:.3f} against "
              f"{out[mode]['other_tau']:.3f}, difference {diff:+.3f} [{interval[0]:+.3f}, {interval[1]:+.3f}] "
              f"(paired bootstrap; not above 0 in {100 * share:.1f}% of resamples)")
    return out


def report(result, seeds):
    def fmt(r):
        return (f"{r['value']:6.3f} [{r['interval'][0]:.3f}, {r['interval'][1]:.3f}]"
                if not math.isnan(r["value"]) else "   n/a")
    rows = [("noise ceiling (seeds)", result.get("noise_ceiling")), ("FLOPs alone", result["flops"]),
            ("depth alone (layers)", result.get("depth")), ("FLOPs and depth (fit)", result.get("flops_and_depth")),
            ("the --judge table", result.get("judge")),
            ("one-shot, batch statistics", result.get("batch_stats")),
            ("one-shot, recalibrated BN", result.get("recalibrated"))]
    print(f"\n{result['networks']} networks; stand-alone: mean validation top-1 over seeds {', '.join(seeds)}")
    print(f"{'ranking by':<28} {'Kendall tau':>24} {'Spearman rho':>24} {'top-10% hit':>24}")
    for name, r in rows:
        if r is not None:
            print(f"{name:<28} {fmt(r['kendall']):>24} {fmt(r['spearman']):>24} {fmt(r['top10_hit']):>24}")
    for mode in ("flops", "depth", "flops_and_depth", "judge", "batch_stats", "recalibrated"):
        if mode in result:
            print(f"tau within FLOPs strata ({mode}): {[round(t, 3) for t in result[mode]['strata_tau']]}")
    for mode in ("batch_stats", "recalibrated"):
        if "beyond_flops_and_depth" in result.get(mode, {}):
            r = result[mode]["beyond_flops_and_depth"]
            print(f"tau against what the fit in FLOPs and depth leaves ({mode}): {fmt(r)}")
    if "variance" in result.get("flops_and_depth", {}):
        v = result["flops_and_depth"]["variance"]
        print(f"variance of the stand-alone accuracies over networks {v['total']:.3f}: seed noise {v['seed_noise']:.3f}"
              f", left by the fit in FLOPs and depth {v['loo_mse']:.3f} (leave-one-out; noise alone would leave "
              f"{v['loo_noise_floor']:.3f}): the fit explains "
              + (f"{100 * v['explained_share']:.0f}% of what is not noise" if v["explained_share"] is not None
                 else "- (no variance beyond the seeds' noise)"))
    if "versus_judge" in result.get("depth", {}):
        v = result["depth"]["versus_judge"]
        print(f"depth's tau here {result['depth']['kendall']['value']:.3f}, in the --judge table {v['judge_tau']:.3f}: "
              f"difference {v['difference']:+.3f} [{v['interval'][0]:+.3f}, {v['interval'][1]:+.3f}] (paired bootstrap; "
              f"not above 0 in {100 * v['share_not_above_0']:.1f}% of resamples)")
