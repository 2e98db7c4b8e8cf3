"""Ground truth for the laptop space: networks of the space trained stand-alone, each with several seeds, against
which a search and its super network are judged (the practice of Yu et al. 2020 and Zhang et al. 2020; the
baseline of Li & Talwalkar 2019).

The networks: --networks N drawn uniformly from the space (a random path, a random candidate per layer;
studies/random_search.py) and chosen to spread evenly over its FLOPs range (the pool's range cut into N equal
bins, the network nearest each bin's centre), plus the derived network of every --searched search folder, plus
(--peers K) random networks within 5% of each searched network's FLOPs where fewer than K spread ones are. Each is
trained from scratch with one recipe (retrain.Recipe: SGD, cosine, label smoothing) on the search's training split
for every --seeds seed (--workers W: W trainings at once) and read on the search's validation split and on the test
set. OUT/table.jsonl gets one record per network: the arch, its layer choices and path (to read it from a super
network), FLOPs, params, CPU latency (batch 1, median of 30), and the validation and test top-1 for each seed. A run
resumes where it stopped.
The agreement of the seeds (Kendall tau of their validation accuracies, with a bootstrap interval) is the noise
ceiling of any ranking against this table. Test accuracy is reported, never used to choose anything.
With --networks-of TABLE the random networks are instead --networks of that table's, trained again under this
recipe (is the table's recipe a fair judge? python -m studies audit --table OUT/table.jsonl --judge TABLE).
With --networks 0 only the searched networks and their peers are trained (the peers are drawn as any table draws
them, so these are the same networks as another table's peers of that search, as far as it drew them): into a copy
of a table of another recipe, run with that table's recipe, Table 1 under that recipe. With --searched-of TABLE the
searched networks are TABLE's records of the --searched runs, with its ids, where the search folders are gone.

    python -m studies ground_truth --out runs/ground_truth --networks 48 --seeds 0 1 --searched runs/laptop
    python -m studies ground_truth ... --searched runs/s0 runs/s1 runs/s2 --peers 8 --workers 2
    python -m studies ground_truth ... --networks 0 --searched-of TABLE --searched runs/s0 runs/s1 --peers 3
"""
import argparse
import json
import math
import multiprocessing
import os
import time

import torch

import latency
import nse
import retrain
from cost import arch_cost, flops_table
from machinery import cli, runtime
from machinery.cli import SEED, ArgumentParser, UsageError, integer, number
from machinery.data import load_data
from machinery.draw import load_arch_params
from studies.random_search import TOLERANCE, random_arch, random_archs_at_flops
from studies.stats import bootstrap_interval, kendall, quadratic
from supernet import count_params, get_space
from viterbi import argmax, derive

TABLE = "table.jsonl"


def spread_over_flops(space, n, pool, generator):
    """n architectures of `pool` uniform random draws, one nearest the centre of each of n equal bins of the pool's
    FLOPs range (no network twice): [(arch, choices, flops)]."""
    table, drawn = flops_table(space), []
    for _ in range(pool):
        alphas, p = random_arch(space, generator)
        arch = derive(space, alphas, p)
        drawn.append((arch, [argmax(a) for a in alphas], arch_cost(arch, table)))
    return [drawn[i] for i in nearest_bin_centres([d[2] for d in drawn], n)]


def nearest_bin_centres(flops, n):
    """Indices of n of `flops`, one nearest the centre of each of n equal bins of their range (none twice)."""
    low, high = min(flops), max(flops)
    chosen = []
    for k in range(n):
        centre = low + (k + 0.5) * (high - low) / n
        chosen.append(min((i for i in range(len(flops)) if i not in chosen), key=lambda i: abs(flops[i] - centre)))
    return chosen


def networks_of(path, n):
    """n random networks of another table spread over their FLOPs range as spread_over_flops spreads draws, to
    train again under this recipe (--networks-of: is the table's recipe a fair judge?), with their ids; in an
    order that covers the range early (bins in bit-reversed order: for n = 16, 0, 8, 4, 12, 2, ...), so that a
    stopped run has spanned it."""
    if not os.path.isfile(path):
        raise UsageError(f"--networks-of: no table at {path}")
    records = [r for r in cli.read_log(path) if r.get("kind") == "random"]
    if len(records) < n:
        raise UsageError(f"--networks-of: {path} has {len(records)} random networks, fewer than --networks {n}")
    chosen = nearest_bin_centres([r["flops"] for r in records], n)
    order = sorted(range(n), key=lambda k: _bit_reversed(k, n))
    return [("random", records[chosen[k]]["id"], records[chosen[k]]["arch"], records[chosen[k]]["choices"],
             records[chosen[k]]["flops"]) for k in order]


def _bit_reversed(k, n):
    """k's bits reversed over the bits n - 1 needs (k = 0, 1, 2, 3 of n = 16: 0, 8, 4, 12)."""
    width = max(1, (n - 1).bit_length())
    return int(format(k, f"0{width}b")[::-1], 2)


def peers(space, k, folders, networks, done):
    """Random networks within 5% of the FLOPs of each searched network named (folders; Table 1's comparison), so
    that each has at least k peers among the spread networks and these. Drawn from a generator seeded by the
    searched network's FLOPs, so a resumed run (or another table) draws the same ones; named peer-<FLOPs>-<i>. In
    turns: every searched network's first peer, then every one's second, ..., so that a stopped run has given each
    some."""
    table = flops_table(space)
    new = {n[1]: n[4] for n in networks if n[0] == "searched"}
    searched = [done[f]["flops"] if f in done else new[f] for f in folders]
    spread = [n[4] for n in networks if n[0] == "random"]
    each = []
    for f in dict.fromkeys(searched):  # searches of the same FLOPs share their peers (the same draws, the same ids)
        need = k - sum(abs(g - f) <= TOLERANCE * f for g in spread)
        draws = random_archs_at_flops(space, table, need, f, torch.Generator().manual_seed(int(f))) if need > 0 else []
        each.append([("peer", f"peer-{int(f)}-{i}", arch, [argmax(a) for a in alphas], flops)
                     for i, (arch, alphas, _, flops) in enumerate(draws)])
    return [group[i] for i in range(k) for group in each if i < len(group)]


def searched_network(folder, space):
    """The derived network of a search folder, with the layer choices (argmax alpha) it was derived with."""
    s, alphas, p = load_arch_params(os.path.join(folder, "arch_params.json"))
    if (s.name, s.input_size, s.num_classes) != (space.name, space.input_size, space.num_classes):
        raise UsageError(f"{folder} searched '{s.name}' at {s.input_size}px, not this table's '{space.name}' at "
                         f"{space.input_size}px")
    arch = derive(s, alphas, p)
    return arch, [argmax(a) for a in alphas], arch_cost(arch, flops_table(space))


def match_run(run, ids, path):
    """The table's id of a search run: its absolute path, or else the one id that ends in the same folders (the most
    of the run's path that any id ends in): a table made on another machine names runs by that machine's paths."""
    if os.path.abspath(run) in ids:
        return os.path.abspath(run)
    parts = os.path.normpath(run).split(os.sep)
    for k in range(len(parts), 0, -1):
        same = [i for i in ids if os.path.normpath(i).split(os.sep)[-k:] == parts[-k:]]
        if len(same) == 1:
            return same[0]
        if same:
            raise UsageError(f"{path} holds more than one searched network of {run}")
    raise UsageError(f"{path} holds no searched network of {run}")


def searched_of(path, runs, space):
    """The searched networks of the search runs `runs` as the table at `path` records them (--searched-of: trained
    again under another recipe where the run folders themselves are gone), matched as Table 1 matches runs, each
    once: [(id, arch, choices, flops)]."""
    records = {r["id"]: r for r in cli.read_log(path) if r.get("kind") == "searched"}
    chosen = dict.fromkeys(match_run(run, list(records), path) for run in runs)
    this = (space.name, space.input_size, space.in_channels, space.num_classes)
    for i in chosen:
        arch = records[i]["arch"]
        that = tuple(arch.get(k) for k in ("space", "input_size", "in_channels", "num_classes"))
        if that != this or "choices" not in records[i]:
            raise UsageError(f"--searched-of: {i} in {path} is not a network of this table's space ({that[0]} at "
                             f"{that[1]}px, {that[2]} channels, {that[3]} classes; here {this[0]} at {this[1]}px, "
                             f"{this[2]} channels, {this[3]} classes)")
    return [(i, records[i]["arch"], records[i]["choices"], records[i]["flops"]) for i in chosen]


def recorded_as(folder, arch, done):
    """The id of the record of `done` that is this search's derived network under another name (a table made
    elsewhere names its runs by that machine's paths): a searched record of the same arch whose id ends in the same
    folder name; None if there is none."""
    name, arch = os.path.basename(os.path.normpath(folder)), json.loads(json.dumps(arch))
    return next((i for i, r in done.items() if r.get("kind") == "searched" and r.get("arch") == arch
                 and os.path.basename(os.path.normpath(i)) == name), None)


def depth(arch):
    """The layers of a DenseNAS network that the search sets the number of (every block's head and basic layers;
    the stem, last conv and classifier are in every network); None for an architecture of NSE's evolved space."""
    return None if "nse" in arch else sum(1 + len(b["layers"]) for b in arch["blocks"])


def record_depth(record):
    """depth() of a table record's arch; None for a record without one."""
    return depth(record["arch"]) if "arch" in record else None


def flops_depth_design(records):
    """The design matrix of the fit in FLOPs and depth that the audit and Table 1 share: quadratic in log FLOPs and
    depth (6 terms); None if a record has no depth (an NSE architecture)."""
    depths = [record_depth(r) for r in records]
    return None if None in depths else quadratic([[math.log(r["flops"]) for r in records], depths])


def network(arch):
    """The stand-alone network of a record's arch: a DenseNAS arch file (retrain.ArchNet) or an architecture of
    NSE's evolved space (nse.FinalNetwork)."""
    return nse.FinalNetwork(arch) if "nse" in arch else retrain.ArchNet(arch)


def train_once(proc, arch, data, test, args, seed, name):
    """Validation and test top-1 of `arch` trained from scratch with the recipe in args and this seed."""
    torch.manual_seed(seed)
    net = network(arch).to(proc.device, memory_format=torch.channels_last)
    recipe = retrain.Recipe(proc, net, data.train, argparse.Namespace(**vars(args), seed=seed))
    for epoch in range(args.epochs):
        torch.manual_seed(seed * 1000 + epoch)
        recipe.train_epoch(net, epoch, f"[{name} seed {seed} epoch {epoch + 1}/{args.epochs}]", args.epochs - epoch - 1)
    return retrain.evaluate(proc, net, data.val, 256)[0], retrain.evaluate(proc, net, test, 256)[0]


# --workers W: W trainings at once, each in its own process on cores // W threads (two seeds of one network side by
# side). On a 2-core CPU two 1-thread trainings do more work together than one 2-thread training (studies.bench
# --retrain-workers measures it); the float sums then run in another order, so a record keeps its thread count.
_WORKER = {}


def _start_worker(args, threads):
    torch.set_num_threads(threads)
    data = search_data(args)
    _WORKER.update(args=args, proc=runtime.Proc(0, 1, torch.device("cpu"), 0, False), data=data,
                   test=test_data(args, data.input_size))


def _train_in_worker(arch, seed, name):
    w = _WORKER
    return train_once(w["proc"], arch, w["data"], w["test"], w["args"], seed, name)


def search_data(args):
    return load_data(args.data, "search", args.split_seed, args.input_size, args.subset)


def test_data(args, input_size):
    return load_data(args.data, "retrain", args.split_seed, input_size).val


class Trainer:
    """Trains (arch, seed) pairs: in this process (workers 1), or in a pool of spawned processes."""

    def __init__(self, args, data, test):
        self.args, self.data, self.test, self.pool = args, data, test, None
        self.threads = torch.get_num_threads()
        if args.workers > 1:
            self.threads = max(1, (os.cpu_count() or 1) // args.workers)
            self.pool = multiprocessing.get_context("spawn").Pool(args.workers, _start_worker, (args, self.threads))

    def train(self, arch, seeds, name):
        """{seed: (val top-1, test top-1)}."""
        if self.pool is None:
            proc = runtime.Proc(0, 1, torch.device("cpu"), 0, False)
            return {s: train_once(proc, arch, self.data, self.test, self.args, s, name) for s in seeds}
        jobs = {s: self.pool.apply_async(_train_in_worker, (arch, s, name)) for s in seeds}
        return {s: job.get() for s, job in jobs.items()}

    def close(self):
        if self.pool is not None:
            self.pool.terminate()  # also on Ctrl-C, SIGTERM or an error: no training left running
            self.pool.join()


def cpu_latency_ms(net, in_channels, size):
    return latency.time_ms(net.eval(), torch.randn(1, in_channels, size, size), warmup=5, repeats=30)


def train_all(args, todo, done, path, data, test):
    """Train every (kind, name, arch, flops, extra) of todo with every --seeds seed; one record each appended to
    path (extra: fields of its own) and to done."""
    t0 = time.time()
    trainer = Trainer(args, data, test)
    try:
        for k, (kind, name, arch, flops, extra) in enumerate(todo):
            accs = trainer.train(arch, args.seeds, name)
            net = network(arch)
            record = {"id": name, "kind": kind, "arch": arch, **extra, "flops": flops,
                      "params": count_params(net.parameters()),
                      "latency_ms": cpu_latency_ms(net, data.in_channels, data.input_size),
                      "val": {str(s): a[0] for s, a in accs.items()},
                      "test": {str(s): a[1] for s, a in accs.items()}, "recipe": recipe_of(args),
                      "threads": trainer.threads}
            cli.append_line(path, record)
            done[name] = record
            rate = (time.time() - t0) / (k + 1)
            print(f"{name}: {flops / 1e6:.2f}M FLOPs, val {[round(a[0], 2) for a in accs.values()]}, test "
                  f"{[round(a[1], 2) for a in accs.values()]}; {k + 1}/{len(todo)}, ETA "
                  f"{runtime.fmt_time(rate * (len(todo) - k - 1))}", flush=True)
    finally:
        trainer.close()


def recipe_of(args):
    return {k: getattr(args, k) for k in ("epochs", "subset", "batch_size", "lr", "lr_min", "momentum",
                                          "weight_decay", "label_smoothing", "seeds", "split_seed", "data")}


def open_table(args):
    """OUT/table.jsonl's path and its records so far ({id: record}); refused if they were made with another
    recipe."""
    recipe = recipe_of(args)
    if len(set(args.seeds)) != len(args.seeds):
        raise UsageError("the --seeds must be distinct")
    cli.claim_folder(args.out)
    path = os.path.join(args.out, TABLE)
    done = {r["id"]: r for r in cli.read_log(path)} if os.path.exists(path) else {}
    for r in done.values():
        if r.get("recipe") != recipe:
            raise UsageError(f"{path} was made with another recipe ({r.get('recipe')}); use another --out")
    return path, done


def add_recipe_arguments(ap):
    """The seeds, the data split, the one recipe of every network, --workers and --log-every."""
    ap.add_argument("--seeds", type=SEED, nargs="+", default=[0, 1], help="training seeds (default 0 1)")
    ap.add_argument("--split-seed", type=SEED, default=0, help="seed of the search's train/val split (default 0)")
    g = ap.add_argument_group("the recipe (one for every network)")
    g.add_argument("--epochs", type=integer(1, 1000), default=3, help="epochs (default 3)")
    g.add_argument("--subset", type=integer(1), default=9600, help="training images (default 9600)")
    g.add_argument("--batch-size", type=integer(1, 4096), default=128, help="batch size (default 128)")
    g.add_argument("--lr", type=number(0, 10, low_open=True), default=0.1, help="learning rate (default 0.1)")
    g.add_argument("--lr-min", type=number(0, 10), default=1e-4, help="final learning rate (default 1e-4)")
    g.add_argument("--momentum", type=number(0, 0.999), default=0.9, help="SGD momentum (default 0.9)")
    g.add_argument("--weight-decay", type=number(0, 1), default=4e-5, help="weight decay (default 4e-5)")
    g.add_argument("--label-smoothing", type=number(0, 0.99), default=0.1, help="label smoothing (default 0.1)")
    ap.add_argument("--workers", type=integer(1, 64), default=1, metavar="W",
                    help="trainings at once, each in its own process on cores/W threads (default 1: one at a time "
                         "in this process)")
    ap.add_argument("--log-every", type=number(0, low_open=True), default=30.0,
                    help="seconds between progress lines (default 30)")


def main(argv=None):
    ap = ArgumentParser(__doc__, prog="python -m studies ground_truth")
    ap.add_argument("--out", default=os.path.join("runs", "ground_truth"), help="output folder (default "
                                                                                  "runs/ground_truth)")
    ap.add_argument("--space", default="mini", help="search space (default mini, the laptop preset's)")
    ap.add_argument("--data", default="fashion-mnist", help="data (default fashion-mnist, the laptop preset's)")
    ap.add_argument("--input-size", type=integer(8, 1024), default=None, help="image size (default: the data's)")
    ap.add_argument("--networks", type=integer(0, 10_000), default=48,
                    help="random networks (default 48; 0: only the --searched networks and their --peers)")
    ap.add_argument("--pool", type=integer(2, 10**6), default=4000,
                    help="random draws the networks are chosen from (default 4000)")
    ap.add_argument("--networks-of", metavar="TABLE",
                    help="instead of new draws, --networks of this table's random networks spread over its FLOPs "
                         "range, with their ids: the same networks under another recipe, to check the table's recipe "
                         "as a judge (python -m studies audit --table THIS --judge TABLE)")
    ap.add_argument("--searched", nargs="*", default=[], help="search folders whose derived networks join the table "
                                                              "(with --searched-of: runs as TABLE names them)")
    ap.add_argument("--searched-of", metavar="TABLE",
                    help="take the --searched networks from this table's records of them (matched as table1 matches "
                         "runs), with their ids, instead of from the search folders: the same searched networks "
                         "under this recipe where the folders are gone")
    ap.add_argument("--peers", type=integer(0, 1000), default=0, metavar="K",
                    help="random networks within 5%% of each searched network's FLOPs, drawn where the spread ones "
                         "are fewer (Table 1: python -m studies table1 --table; default 0)")
    add_recipe_arguments(ap)
    args = ap.parse_args(argv)
    if args.networks == 1:
        raise UsageError("--networks: 0 (only the --searched networks and their --peers) or at least 2")
    if args.networks == 0 and (not args.searched or args.networks_of):
        raise UsageError("--networks 0 trains only the --searched networks (and their --peers): name some, and no "
                         "--networks-of")
    if args.searched_of and not args.searched:
        raise UsageError("--searched-of TABLE takes the --searched networks from TABLE: name them with --searched")
    if args.searched_of and not os.path.isfile(args.searched_of):  # refused before OUT is made
        raise UsageError(f"--searched-of: no table at {args.searched_of}")
    again = networks_of(args.networks_of, args.networks) if args.networks_of else None  # refused before OUT is made
    data = search_data(args)
    test = test_data(args, data.input_size)
    space = get_space(args.space, data.input_size, data.in_channels, data.num_classes)
    # --searched-of: the networks as another table records them, under its ids (refused before OUT is made too)
    recorded = searched_of(args.searched_of, args.searched, space) if args.searched_of else None
    path, done = open_table(args)
    if recorded is None:  # derived from the search folders; one already in the table needs its folder no more
        recorded = [(f, None, None, None) if f in done else (f, *searched_network(f, space))
                    for f in dict.fromkeys(args.searched)]
    networks, searched = [], []
    for name, arch, choices, flops in recorded:
        known = name if name in done else recorded_as(name, arch, done)
        if known is None:
            networks.append(("searched", name, arch, choices, flops))
        searched.append(known or name)
    if again is not None:
        networks += again
    elif args.networks:
        networks += [("random", f"random-{k}", *net) for k, net in enumerate(
            spread_over_flops(space, args.networks, args.pool, torch.Generator().manual_seed(args.split_seed)))]
    networks += peers(space, args.peers, searched, networks, done)
    todo = [(kind, name, arch, flops, {"path": arch["path"], "choices": choices})
            for kind, name, arch, choices, flops in networks if name not in done]
    print(f"{len(todo)} networks of '{space.name}' to train ({len(done)} done), {len(args.seeds)} seeds each; data "
          f"{data.info}", flush=True)
    train_all(args, todo, done, path, data, test)
    report(list(done.values()), args.seeds)


def report(records, seeds):
    """The noise ceiling: how well the seeds' validation accuracies agree."""
    if len(records) < 3 or len(seeds) < 2:
        return
    a, b = ([r["val"][str(s)] for r in records] for s in seeds[:2])
    lo, hi = bootstrap_interval(kendall, a, b)
    print(f"{len(records)} networks; Kendall tau between seeds {seeds[0]} and {seeds[1]} (validation): "
          f"{kendall(a, b):.3f} [{lo:.3f}, {hi:.3f}] (the noise ceiling)")
