"""Latency lookup tables for the cost term of the search (Sec. 3.3, supplement A.1).

Supplement A.1: "we build a lookup table for every operation latency of the super network ...
We set the input shape as (3, 224, 224) with the batch size of 32". Every distinct operation
signature "op/c_in/c_out/stride/resolution" a space can use (cost.space_signatures: alignment
branches, basic-layer candidates with skip, the stem, B_0's fixed layer, the ending 1x1 convs,
the classifier) is built alone, in eval mode with affine BN as in the derived network, and
timed under torch.no_grad: `--warmup` untimed runs, then `--repeats` timed runs with the device
synchronised, of which the median counts (the arXiv text averages 2000 runs; a median needs far
fewer to be stable). Every operation is timed once in each of `--rounds` passes over them all,
and the table keeps the least of its medians in milliseconds (see in_rounds). The table has the
format of cost.py, so `search.py --cost latency --lut FILE` can use it.

    python latency.py --space mbv2 --device cuda --out lut.json      measure a table (resumable)
    python latency.py --arch FILE --device cuda [--lut lut.json]     whole network vs the table's sum

A table is saved every 20 operations: an interrupted run resumes when started again with the
same --out (and the same space, input size, M, batch size and device); a table measured with
other settings is never overwritten unless --force is given.
"""
import datetime
import json
import math
import os
import platform
import random
import statistics
import sys
import time

import torch

from cost import arch_cost, parse_signature, space_signatures, table_meta
from machinery import runtime
from machinery.cli import (ArgumentParser, UsageError, integer, load_arch, load_table, number, output_file, run_cli,
                           save_json_atomic)
from retrain import ArchNet
from supernet import SPACES, arch_signatures, get_space, init_weights, make_op

# the meta fields a resumed table must share with the run that continues it
SAME = ("space", "input_size", "in_channels", "num_classes", "connect", "batch_size", "device", "threads",
        "warmup", "repeats", "rounds")
SAVE_EVERY = 20  # timings between saves of a table being measured
ROUNDS = 3  # passes over all the operations by default (in_rounds)
RUN_TABLE = "latency_table.json"  # what a search with --cost latency and no --lut measures into its folder


# ----------------------------------------------------------------------------------------
# Timing one module

def get_device(name, threads=None):
    """torch.device for --device (cpu or cuda[:k]) and a name for the table's meta."""
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device '{name}' (use cpu or cuda)") from None
    if threads is not None:
        torch.set_num_threads(threads)
    if dev.type == "cpu":
        return dev, f"cpu {platform.processor() or platform.machine() or ''}".strip()
    if dev.type != "cuda":
        raise UsageError(f"device '{name}' is not supported (use cpu or cuda)")
    if not torch.cuda.is_available():
        raise UsageError("--device cuda, but torch sees no CUDA device here (use --device cpu)")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"no device {name}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    if dev.index is not None:
        torch.cuda.set_device(dev)  # the timing events go to the current device's stream
    torch.backends.cudnn.benchmark = True  # the fastest conv algorithm per shape, as in deployment
    return dev, torch.cuda.get_device_name(dev)


def time_ms(module, x, warmup, repeats):
    """Median wall time of module(x) in ms: `warmup` untimed runs, then `repeats` synchronised ones.
    CUDA: an event pair around each run, then a synchronise; CPU: time.perf_counter. A 4-D input and the module
    go to channels-last first, the memory format every network here runs in (search, retraining, evaluation):
    timed in the default contiguous format, oneDNN's 1x1 convolution of a 16-channel 28x28 map took 19x as long
    (8.2 ms against 0.43 ms at batch 32), which priced ops by a format the networks never run in."""
    if x.dim() == 4:
        module, x = module.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    cuda = x.device.type == "cuda"
    times = []
    with torch.no_grad():
        for _ in range(warmup):
            module(x)
        if cuda:
            torch.cuda.synchronize(x.device)
        for _ in range(repeats):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                module(x)
                end.record()
                torch.cuda.synchronize(x.device)
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                module(x)
                times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def in_rounds(items, time_one, rounds, so_far=None):
    """Time every item until it has `rounds` timings, in passes over all of them: pass r times each item that has
    fewer than r + 1. so_far: the timings each item already has (a resumed run), in the order of items. Yields
    (k, item, times) after each timing, the k-th of this call's sum(rounds - len(so_far[i])), where times is the
    item's list so far (complete at len == rounds).
    Why passes: on a shared machine a 2-thread run is slowed in episodes of seconds to minutes (the host slows
    one of the two cores, and every OpenMP barrier waits for it; the guest sees no load of its own). One network
    measured 7.3 ms outside them and 13-15 ms inside, while 1 thread stayed at 11.7-12.7 ms throughout. Timings
    of one item spread over the passes let the least of them (the caller's choice) stand for the device and not
    for whatever else the host ran."""
    times = [list(t) for t in so_far] if so_far is not None else [[] for _ in items]
    k = 0
    for r in range(rounds):
        for i, item in enumerate(items):
            if len(times[i]) <= r:
                times[i].append(time_one(item))
                k += 1
                yield k, item, times[i]


def op_latency(sig, act, dev, batch_size, warmup, repeats):
    """Latency of one signature: the op as the derived network builds it (affine BN, eval mode)."""
    op, c_in, c_out, stride, res = parse_signature(sig)
    m = make_op(op, c_in, c_out, stride, affine=True, act=act)
    init_weights(m)
    m.to(dev).eval()
    shape = (batch_size, c_in) if op == "linear" else (batch_size, c_in, res, res)  # linear: after pooling
    return time_ms(m, torch.randn(shape, device=dev), warmup, repeats)


# ----------------------------------------------------------------------------------------
# Measuring a table, resumably

def is_ms(t):
    """Whether a timing read back from a file is one: a finite number of milliseconds > 0."""
    return isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t > 0


def valid_timings(times, rounds):
    """Whether a resumed table's unfinished timings can be kept: fewer than `rounds` timings (is_ms)."""
    return isinstance(times, list) and len(times) < rounds and all(map(is_ms, times))


def slowest(costs, k=3):
    top = sorted(costs.items(), key=lambda kv: -kv[1])[:k]
    return ", ".join(f"{s} {c:.3f}ms" for s, c in top)


def measure(sigs, costs, act, dev, batch_size, warmup, repeats, rounds=1, save=None, every=5.0, partial=None):
    """Fill costs[sig] for every sig of `sigs` not in costs with the least of its medians over `rounds` passes
    (in_rounds). partial: {sig: timings so far} of ops not yet complete, resumed and kept up to date; save(costs,
    partial) every SAVE_EVERY timings. Prints a progress line every `every` seconds: the pass, timings done/total,
    timings/s, ETA and the slowest ops so far."""
    partial = {} if partial is None else partial
    todo = [s for s in sigs if s not in costs]
    random.Random(0).shuffle(todo)  # sorted, the widest ops come last and the ETA would run fast
    so_far = [partial.get(s, [])[:rounds] for s in todo]
    units = sum(rounds - len(t) for t in so_far)
    t0 = last = time.time()
    for k, s, times in in_rounds(todo, lambda s: op_latency(s, act, dev, batch_size, warmup, repeats), rounds,
                                 so_far):
        if len(times) == rounds:
            costs[s] = min(times)
            partial.pop(s, None)
        else:
            partial[s] = list(times)
        if save and k % SAVE_EVERY == 0:
            save(costs, partial)
        now = time.time()
        if now - last >= every or k == units:
            last, rate = now, k / max(now - t0, 1e-9)
            least = {s: costs[s] if s in costs else min(partial[s]) for s in sigs if s in costs or s in partial}
            print(f"[pass {len(times)}/{rounds}, {k}/{units} timings, {sum(s in costs for s in sigs)}/{len(sigs)} "
                  f"ops done] {rate:.1f} timings/s, ETA {runtime.fmt_time((units - k) / rate)}; "
                  f"slowest: {slowest(least)}", flush=True)
    if save:
        save(costs, partial)
    return costs


def build_table(space, dev, device_name, out, batch_size=32, warmup=10, repeats=50, rounds=ROUNDS, force=False,
                every=5.0):
    """Measure the latency table of `space` into `out`, reusing the entries of a compatible table there.
    rounds None: the passes the table at `out` was begun with, or ROUNDS for a new one."""
    old = load_table(out) if os.path.exists(out) and not force else None
    old_meta = {"rounds": 1} | old["meta"] if old else {}  # tables from before passes had one
    rounds = rounds or old_meta.get("rounds", ROUNDS)
    meta = table_meta(space, device=device_name, torch=torch.__version__, batch_size=batch_size,
                      threads=torch.get_num_threads() if dev.type == "cpu" else None,
                      warmup=warmup, repeats=repeats, rounds=rounds)
    costs, partial = {}, {}
    if old:
        diff = [k for k in SAME if old_meta.get(k) != meta[k]]
        if old["metric"] != "latency_ms" or diff:
            what = "metric" if old["metric"] != "latency_ms" else diff[0]
            have = old["metric"] if what == "metric" else old_meta.get(what)
            want = "latency_ms" if what == "metric" else meta[what]
            raise UsageError(f"{out} holds a table with {what}={have}, not {want}; "
                             f"choose another --out or pass --force to overwrite it")
        costs = {s: float(c) for s, c in old["costs"].items()}  # load_table refused any but finite costs >= 0
        partial = {s: t for s, t in old.get("partial", {}).items() if s not in costs and valid_timings(t, rounds)}
    sigs = space_signatures(space)
    todo = sum(s not in costs for s in sigs)
    print(f"latency table of '{space.name}' at {space.input_size}px, M={space.connect}, batch {batch_size} "
          f"on {device_name}: {len(sigs)} operations, {len(sigs) - todo} reused from {out}, "
          f"measuring {todo} ({warmup} warm-up + {repeats} timed runs each, in {rounds} passes; "
          f"{sum(map(len, partial.values()))} timings of them reused)", flush=True)

    def save(c, part):  # the timings of unfinished ops ride along, so an interrupted table resumes mid-pass
        meta["measured"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        save_json_atomic({"metric": "latency_ms", "meta": meta, "costs": dict(sorted(c.items()))}
                         | ({"partial": dict(sorted(part.items()))} if part else {}), out)

    try:
        measure(sigs, costs, space.act, dev, batch_size, warmup, repeats, rounds, save, every, partial)
    except KeyboardInterrupt:  # keep what was measured; the same command resumes from it
        save(costs, partial)
        print(f"interrupted: saved {sum(s in costs for s in sigs)}/{len(sigs)} operations and "
              f"{sum(map(len, partial.values()))} timings of others to {out}; run the same command to resume",
              file=sys.stderr)
        sys.exit(130)
    return {"metric": "latency_ms", "meta": meta, "costs": costs}


def run_table(space, device, path, every=5.0):
    """The latency table of a search run with --cost latency and no --lut (the default for mbv2 on CUDA, Sec. 4.1),
    measured on the run's own device as supplement A.1 does (batch 32): rank 0 measures it into `path` (OUT/
    latency_table.json) while the other ranks wait at a barrier; a resumed run continues it with the passes it
    was begun with, or finds it complete and measures nothing."""
    if runtime.rank() == 0:
        build_table(space, *get_device(str(device)), path, rounds=None, every=every)
    runtime.barrier()


# ----------------------------------------------------------------------------------------
# A whole derived network against the table's prediction

def check_arch_table(table, arch, batch_size, path):
    meta = table["meta"]
    if table["metric"] != "latency_ms":
        raise UsageError(f"{path} is a {table['metric']} table, not a latency table (make one with latency.py)")
    if meta.get("input_size") != arch["input_size"]:
        raise UsageError(f"{path} was measured at input size {meta.get('input_size')}, "
                         f"the arch takes {arch['input_size']}")
    if meta.get("batch_size") != batch_size:
        raise UsageError(f"{path} was measured at batch size {meta.get('batch_size')}, "
                         f"not {batch_size} (pass --batch-size {meta.get('batch_size')})")


def compare_arch(arch, dev, device_name, batch_size, warmup, repeats, rounds=ROUNDS, table=None, every=5.0):
    """End-to-end latency of retrain.ArchNet(arch) beside cost.arch_cost (the sum of its ops' latencies): the
    least median of `rounds` timings back to back (one network has no other items to spread its rounds over;
    studies/fidelity.py times many networks in passes, as the table does)."""
    if table is None:  # the arch's own operations, measured now
        sigs = sorted(set(arch_signatures(arch)))
        print(f"measuring the arch's {len(sigs)} distinct operations at batch {batch_size} on {device_name}",
              flush=True)
        costs = measure(sigs, {}, SPACES[arch["space"]].act, dev, batch_size, warmup, repeats, rounds, every=every)
        table = {"metric": "latency_ms", "meta": {"batch_size": batch_size, "device": device_name}, "costs": costs}
    predicted = arch_cost(arch, table)
    net = ArchNet(arch).to(dev).eval()
    r = arch["input_size"]
    x = torch.randn(batch_size, arch["in_channels"], r, r, device=dev)
    measured = min(time_ms(net, x, warmup, repeats) for _ in range(rounds))
    return {"measured_ms": measured, "predicted_ms": predicted, "ratio": predicted / measured,
            "batch_size": batch_size, "device": device_name}


# ----------------------------------------------------------------------------------------

def main():
    ap = ArgumentParser(__doc__)
    ap.add_argument("--space", default=None, help=f"search space ({', '.join(SPACES)}; default mbv2)")
    ap.add_argument("--out", help="the table to write (JSON); an existing compatible one is resumed")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:k] (default cpu)")
    ap.add_argument("--batch-size", type=integer(1, 4096), default=32, help="batch size (default 32, supplement A.1)")
    ap.add_argument("--input-size", type=int, default=None, help="input image size (default 224)")
    ap.add_argument("--in-channels", type=int, default=None, help="input channels (default 3)")
    ap.add_argument("--num-classes", type=int, default=None, help="classes (default 1000)")
    ap.add_argument("--connect", type=int, default=None, help="connection number M (default: the space's)")
    ap.add_argument("--warmup", type=integer(0, 10**5), default=10, help="untimed runs before timing (default 10)")
    ap.add_argument("--repeats", type=integer(1, 10**5), default=50,
                    help="timed runs per operation, median kept (default 50; the arXiv text averages 2000)")
    ap.add_argument("--rounds", type=integer(1, 100), default=ROUNDS,
                    help=f"passes over all the operations, the least median kept (default {ROUNDS}): on a shared "
                         "machine the host's other load comes in episodes that one pass can fall into; with --arch, "
                         "timings of the network back to back")
    ap.add_argument("--threads", type=integer(1, 1024), default=None, help="torch CPU threads (default: torch's own)")
    ap.add_argument("--force", action="store_true", help="overwrite an --out table measured with other settings")
    ap.add_argument("--arch", help="time this derived network end to end and compare it with the table's sum")
    ap.add_argument("--lut", help="with --arch: the table that predicts it (default: measure its ops now)")
    ap.add_argument("--progress", type=number(0, low_open=True), default=5.0, help="seconds between progress lines (default 5)")
    args = ap.parse_args()
    return time_arch(args) if args.arch else measure_table(args)


def time_arch(args):
    """--arch: the derived network end to end against the table's sum (--lut, or its ops measured now)."""
    given = [n for n in ("space", "out", "input_size", "in_channels", "num_classes", "connect")
             if getattr(args, n) is not None] + (["force"] if args.force else [])
    if given:
        raise UsageError(f"--arch takes its space and shapes from the arch file; drop "
                         f"{', '.join('--' + n.replace('_', '-') for n in given)}")
    arch = load_arch(args.arch)
    table = None
    if args.lut:
        table = load_table(args.lut)
        check_arch_table(table, arch, args.batch_size, args.lut)
    dev, device_name = get_device(args.device, args.threads)
    if table is not None and table["meta"].get("device") != device_name:
        print(f"note: {args.lut} was measured on {table['meta'].get('device')}, this run is on {device_name}")
    res = compare_arch(arch, dev, device_name, args.batch_size, args.warmup, args.repeats, args.rounds, table,
                       args.progress)
    print(f"{args.arch}: measured {res['measured_ms']:.3f} ms end to end, the table predicts "
          f"{res['predicted_ms']:.3f} ms (sum of {len(arch_signatures(arch))} operations), "
          f"ratio {res['ratio']:.3f}")
    print(json.dumps(res))


def measure_table(args):
    """--out: the latency table of a space, measured on --device (resumed from a compatible table there)."""
    if args.lut:
        raise UsageError("--lut goes with --arch; to measure a table, name it with --out")
    if not args.out:
        raise UsageError("name the table to write with --out FILE (or compare a network with --arch FILE)")
    output_file(args.out, "--out", force=True)  # an existing table is resumed or refused by build_table
    space = get_space(args.space or "mbv2", args.input_size or 224, args.in_channels or 3,
                      args.num_classes or 1000, args.connect)
    dev, device_name = get_device(args.device, args.threads)
    t0 = time.time()
    table = build_table(space, dev, device_name, args.out, args.batch_size, args.warmup, args.repeats,
                        args.rounds, args.force, args.progress)
    print(f"wrote {args.out}: {len(table['costs'])} operations in {time.time() - t0:.1f}s; "
          f"slowest: {slowest(table['costs'])}")


if __name__ == "__main__":
    run_cli(main)
