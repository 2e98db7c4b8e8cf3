"""How well does a latency table predict the device? (Sec. 3.3: the cost of Eq. 8 is a sum of table entries.)

Architectures of the table's space, spread evenly over its FLOPs range (--archs N, drawn uniformly as the
random search draws them), and any derived networks given (--arch, e.g. the searched ones), are each built as the
derived network (retrain.ArchNet, eval mode, affine BN) and timed end to end on the device the table was measured
on, with the table's own batch size, threads, warm-up, repeats and rounds (latency.in_rounds: every network timed
once in each pass over them all, the least of its medians kept, as the table keeps for each operation). Each is
compared with the table's prediction, the sum of its operations' entries (cost.arch_cost): Pearson r and Kendall
tau (with bootstrap 95% intervals), the mean absolute percentage error and the mean ratio predicted / measured.
OUT/timings.jsonl keeps every timing as it is taken (a rerun with the same OUT takes only the timings not yet
there, so a stopped run resumes mid-pass); once all are taken, OUT/fidelity.jsonl holds one record per network
(its medians in rounds_ms, the least in measured_ms), OUT/fidelity.json the figures, OUT/fidelity.svg the scatter.

    python latency.py --space mini --input-size 28 --in-channels 1 --num-classes 10 --threads 2 --out lut.json
    python -m studies fidelity --lut lut.json --archs 40 --arch runs/laptop/arch.json --out runs/fidelity
"""
import json
import os
import statistics
import time

import torch

from cost import arch_cost
from latency import check_arch_table, get_device, in_rounds, is_ms, time_ms
from machinery import cli, runtime
from machinery.cli import ArgumentParser, UsageError, integer
from machinery.draw import scatter_svg
from retrain import ArchNet
from studies.ground_truth import spread_over_flops
from studies.stats import bootstrap_interval, kendall, pearson
from supernet import arch_signatures, get_space

RECORDS = "fidelity.jsonl"  # one record per network, written when all are timed
TIMINGS = "timings.jsonl"  # every timing as it is taken ({"id", "ms"}), from which a stopped run resumes


def timings_so_far(path, log):
    """{network id: its timings so far}: the timings log, or for a folder from before it, the records' rounds."""
    times = {}
    if os.path.exists(log):
        for r in cli.read_log(log):
            if not isinstance(r.get("id"), str) or not is_ms(r.get("ms")):
                raise UsageError(f"{log}: a line is not a timing ({{'id': ..., 'ms': > 0}}); the log is damaged")
            times.setdefault(r["id"], []).append(r["ms"])
    elif os.path.exists(path):
        times = {r["id"]: r.get("rounds_ms", [r["measured_ms"]]) for r in cli.read_log(path)}
    return times


def networks(args, table):
    """[(id, arch)]: N spread over the space's FLOPs range, then the given arch files."""
    meta = table["meta"]
    space = get_space(meta["space"], meta["input_size"], meta["in_channels"], meta["num_classes"], meta["connect"])
    spread = spread_over_flops(space, args.archs, args.pool, torch.Generator().manual_seed(args.seed))
    out = [(f"random-{k}", arch) for k, (arch, _, _) in enumerate(spread)]
    for path in args.arch:
        arch = cli.load_arch(path)
        if arch["space"] != meta["space"]:
            raise UsageError(f"{path} is a network of '{arch['space']}', the table prices '{meta['space']}'")
        check_arch_table(table, arch, meta["batch_size"], args.lut)
        missing = [s for s in arch_signatures(arch) if s not in table["costs"]]
        if missing:
            raise UsageError(f"{args.lut} lacks {missing[0]}, an operation of {path}")
        out.append((os.path.abspath(path), arch))
    return out


def summary(records):
    pred, meas = [r["predicted_ms"] for r in records], [r["measured_ms"] for r in records]
    out = {"networks": len(records)}
    for name, fn in (("pearson", pearson), ("kendall", kendall)):
        out[name] = {"value": fn(pred, meas), "interval": bootstrap_interval(fn, pred, meas)}
    out["mape_percent"] = 100 * statistics.fmean(abs(p - m) / m for p, m in zip(pred, meas))
    out["mean_ratio"] = statistics.fmean(p / m for p, m in zip(pred, meas))
    return out


def main(argv=None):
    ap = ArgumentParser(__doc__, prog="python -m studies fidelity")
    ap.add_argument("--lut", required=True, help="a latency table (latency.py, or a latency search's own)")
    ap.add_argument("--archs", type=integer(0, 10**4), default=40,
                    help="random networks of the table's space, spread over its FLOPs range (default 40)")
    ap.add_argument("--arch", nargs="*", default=[], help="derived networks (arch files) to time as well")
    ap.add_argument("--pool", type=integer(1, 10**6), default=4000, help="random draws the spread is chosen from "
                                                                         "(default 4000)")
    ap.add_argument("--seed", type=integer(0, 2**63 - 1), default=0, help="seed of the random draws (default 0)")
    ap.add_argument("--rounds", type=integer(1, 100), default=None,
                    help="passes over all the networks, the least median kept (default: the table's own rounds)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:k]: the table's device (default cpu)")
    ap.add_argument("--out", default=os.path.join("runs", "fidelity"), help="output folder (default runs/fidelity)")
    ap.add_argument("--progress", type=float, default=30.0, help="seconds between progress lines (default 30)")
    args = ap.parse_args(argv)
    table = cli.load_table(args.lut)
    meta = table["meta"]
    if table["metric"] != "latency_ms" or "space" not in meta:
        raise UsageError(f"{args.lut} is not a latency table of a space (make one with latency.py --out)")
    if args.archs + len(args.arch) < 3:
        raise UsageError("a correlation needs at least 3 networks (--archs N, --arch FILES)")
    nets = networks(args, table)
    dev, device_name = get_device(args.device, meta.get("threads"))
    if device_name != meta["device"]:
        raise UsageError(f"{args.lut} was measured on {meta['device']}; this machine's device is {device_name}")
    os.makedirs(args.out, exist_ok=True)
    path, log = os.path.join(args.out, RECORDS), os.path.join(args.out, TIMINGS)
    rounds = args.rounds or meta.get("rounds", 1)
    so_far = timings_so_far(path, log)
    todo = [(i, a) for i, a in nets if len(so_far.get(i, [])) < rounds]
    print(f"{len(nets)} networks of '{meta['space']}' on {device_name} (batch {meta['batch_size']}, "
          f"{meta.get('threads')} threads, {meta['warmup']} warm-up + {meta['repeats']} timed runs, median; "
          f"{rounds} passes, least median); {len(nets) - len(todo)} timed already, "
          f"{sum(len(so_far.get(i, [])) for i, _ in todo)} timings of the others in {log}", flush=True)
    r_in = meta["input_size"]

    def time_one(item):
        net = ArchNet(item[1]).to(dev).eval()
        x = torch.randn(meta["batch_size"], item[1]["in_channels"], r_in, r_in, device=dev)
        return time_ms(net, x, meta["warmup"], meta["repeats"])

    t0 = last = time.time()
    begun = [so_far.get(i, []) for i, _ in todo]
    units = sum(rounds - len(t) for t in begun)
    for k, (nid, arch), times in in_rounds(todo, time_one, rounds, begun):
        cli.append_line(log, {"id": nid, "ms": times[-1]})  # every timing kept: a stopped run resumes mid-pass
        so_far[nid] = list(times)
        if time.time() - last >= args.progress or k == units:
            last, rate = time.time(), k / (time.time() - t0)
            print(f"[pass {len(times)}/{rounds}, {k}/{units} timings] {rate:.2f} timings/s, "
                  f"ETA {runtime.fmt_time((units - k) / rate)}; {nid}: predicted {arch_cost(arch, table):.2f} ms, "
                  f"measured {', '.join(f'{t:.2f}' for t in times)} ms", flush=True)
    records = [{"id": nid, "flops": arch_cost(arch, {"metric": "flops", "costs": {}}),
                "predicted_ms": arch_cost(arch, table), "measured_ms": min(so_far[nid][:rounds]),
                "rounds_ms": so_far[nid][:rounds]} for nid, arch in nets]
    cli.save_text_atomic("".join(json.dumps(r) + "\n" for r in records), path)
    result = {"lut": os.path.abspath(args.lut), "device": device_name, **summary(records)}
    cli.save_json_atomic(result, os.path.join(args.out, "fidelity.json"))
    fmt = "{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]".format
    print(f"{len(records)} networks: Pearson r {fmt(**result['pearson'])}, Kendall tau {fmt(**result['kendall'])}, "
          f"mean absolute error {result['mape_percent']:.1f}%, predicted / measured {result['mean_ratio']:.3f} "
          "on average")
    searched = [r for r in records if not r["id"].startswith("random-")]
    for r in searched:
        print(f"  {r['id']}: predicted {r['predicted_ms']:.2f} ms, measured {r['measured_ms']:.2f} ms")
    top = max(max(r["predicted_ms"], r["measured_ms"]) for r in records)
    series = {"random": ("#9e9e9e", [(r["measured_ms"], r["predicted_ms"]) for r in records if r not in searched]),
              "searched": ("#d62728", [(r["measured_ms"], r["predicted_ms"]) for r in searched])}
    cli.save_text_atomic(scatter_svg({k: v for k, v in series.items() if v[1]}, "measured end to end (ms)",
                                     "the table's sum (ms)", "latency table against the device",
                                     lines={"y = x": ("#1f77b4", [(0, 0), (top, top)])}),
                         os.path.join(args.out, "fidelity.svg"))
    print(f"outputs: {path}, {os.path.join(args.out, 'fidelity.json')}, {os.path.join(args.out, 'fidelity.svg')}")


if __name__ == "__main__":
    cli.run_cli(main)
