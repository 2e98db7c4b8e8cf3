"""The random-search baseline (Sec. 4.4, Table 1 "Random Search"): K architectures drawn uniformly from the
space (a random path, a random candidate per layer) within 5% of a FLOPs target, each trained briefly with the
search's recipe, the best by validation accuracy kept as OUT/arch.json. Takes search.py's flags and
--random K --target-flops F.

    python -m studies random --space mbv2 --data /path/to/imagenet --gpus 4 --random 15 --epochs 5 --target-flops 361M
"""
import os
import time

import torch
import torch.nn.functional as F

import retrain
import search
from cost import arch_cost, flops_table
from machinery import cli, options, runtime
from machinery.cli import ArgumentParser, UsageError, integer
from machinery.draw import save_arch_params
from machinery.report import finish, walkthrough_end
from viterbi import derive

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


TOLERANCE = 0.05  # Table 1's window: random networks within 5% of the searched network's FLOPs


def random_archs_at_flops(space, table, k, target, generator, tolerance=TOLERANCE, max_draws=20000):
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
    data = options.search_data(args)
    space = options.search_space(args, data)
    draws = random_archs_at_flops(space, flops_table(space), args.random, args.target_flops,
                                  torch.Generator().manual_seed(args.seed))
    state_path, log_path = os.path.join(args.out, RANDOM_STATE), os.path.join(args.out, cli.SEARCH_LOG)
    records = []
    if args.resume and os.path.exists(state_path):
        records = load_random_state(state_path)["records"]
    if proc.main:
        print(f"random search in '{args.space}': {args.random} architectures within 5% of "
              f"{args.target_flops / 1e6:.2f}M FLOPs, {args.epochs} epochs each; data {data.info}; {proc.world} "
              f"process(es) on {proc.device}", flush=True)
        if args.resume:
            print(cli.resume_line(args.out, len(records), args.random, "sample"), flush=True)
        cli.keep_log_before(log_path, len(records), key="sample")
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
                cli.save_json_atomic(arch, os.path.join(args.out, "arch.json"))
                save_arch_params(space, alphas, p, os.path.join(args.out, "arch_params.json"))
            cli.append_line(log_path, {key: v for key, v in rec.items() if key not in ("arch", "alphas", "p")})
            cli.save_json_atomic({"config": options.run_config(args), "records": records}, state_path)
            print(f"sample {k + 1}/{args.random} {runtime.fmt_time(rec['seconds'])}: {flops / 1e6:.2f}M FLOPs, widths "
                  f"{rec['widths']}, val acc {top1:.2f}% (best so far {best['val_acc']:.2f}%, sample {best['sample']})",
                  flush=True)
        runtime.barrier()
    if proc.main:
        best = max(records, key=lambda r: r["val_acc"])
        cli.save_json_atomic(best["arch"], os.path.join(args.out, "arch_best.json"))
        print(f"\nbest of {len(records)}: sample {best['sample']}, val acc {best['val_acc']:.2f}%")
        finish(args, space, best["p"], best["arch"])


def train_sample(proc, args, data, arch, k):
    """Random sample k trained from scratch for --epochs as retrain.py trains (the search's recipe); its
    validation top-1 and top-5."""
    torch.manual_seed(args.seed * 1000 + k)
    net = retrain.ArchNet(arch).to(proc.device, memory_format=torch.channels_last)
    recipe, trained = retrain.Recipe(proc, net, data.train, args), runtime.data_parallel(net, proc.device)
    for epoch in range(args.epochs):
        recipe.train_epoch(trained, epoch, f"[sample {k + 1}/{args.random} epoch {epoch + 1}/{args.epochs}]",
                           (args.random - k - 1) * args.epochs + args.epochs - epoch - 1)
    return retrain.evaluate(proc, net, data.val, args.batch_size)


def load_random_state(path):
    state = cli.read_json(path, "random-search record")
    if not (isinstance(state, dict) and "config" in state and isinstance(state.get("records"), list)):
        raise UsageError(f"{path} is not a random-search record (it may be corrupt)")
    return state


def parse_args(argv=None):
    """search.py's settings (space, data, recipe, devices; through parents=) and --random K --target-flops F."""
    ap = ArgumentParser(__doc__, prog="python -m studies random",
                        parents=[options.search_parser(search.DEFAULTS, add_help=False)])
    r = ap.add_argument_group("random-search baseline (Table 1)")
    r.add_argument("--random", type=integer(1, 10_000), metavar="K",
                   help="instead of searching, train K uniformly sampled architectures within 5%% of --target-flops "
                        "for --epochs each (default 5) and keep the best by validation accuracy (paper: 15)")
    # 5 epochs per sample (Sec. 4.4), a flag read before the given ones
    args = options.parse_search_args(ap, argv, search.DEFAULTS, before=["--epochs", "5"], random=True)
    if args.lut or args.cost == "latency" or args.target_latency:
        raise UsageError("the random search samples by FLOPs; drop --lut, --cost latency and --target-latency")
    return args


def main(argv=None):
    """`python -m studies random`: refuse what can be refused before OUT is written, then train the samples."""
    args = parse_args(argv)
    space = options.check_search(args)
    random_archs_at_flops(space, flops_table(space), args.random, args.target_flops,
                          torch.Generator().manual_seed(args.seed))  # refused now if the window is out of reach
    state = os.path.join(args.out, RANDOM_STATE)
    if args.resume and os.path.exists(state):
        cli.same_config(load_random_state(state)["config"], options.run_config(args), state)
    cli.begin_run(args)
    runtime.launch(random_search_worker, args)
    if args.preset:
        walkthrough_end(args)
