"""NSE's final networks against random networks of the whole pool at equal FLOPs, trained stand-alone (NSE Sec. 4
compares retrained networks; here at laptop scale, with the ground truth's recipe and statistics).

The networks: the final networks (final-*.json) of every --runs folder of nse.py: NSE's rounds, and, for a one-shot
search over the whole pool with the same budget, one round of nse.py with --k the pool's size. Each is trained
stand-alone (nse.FinalNetwork: every gate on) with the ground truth's recipe and --seeds; and so are --peers K
random architectures of the whole pool within 5% of each one's FLOPs: every layer holds a random number of ops
(0 to the macro's K, 1 to K in a reduction layer), drawn uniformly from the pool, which is the form of NSE's networks
(aggregation keeps at most K ops a layer). OUT/table.jsonl gets one record per network in the ground truth's format,
a final network as kind "searched" with its file as id, so Table 1's statistics read it; they are printed for each
run (percentile among its peers, the permutation test) into OUT/<run>/table1.json. Resumes where it stopped.

    python nse.py --preset laptop --out runs/nse-laptop
    python nse.py --preset laptop --k 13 --rounds 1 --out runs/nse-whole
    python -m studies nse_truth --runs runs/nse-laptop runs/nse-whole --peers 8 --workers 2 --out runs/nse-truth
"""
import glob
import json
import os
import random

import nse
from machinery.cli import ArgumentParser, UsageError, integer
from studies import ground_truth, table1
from studies.random_search import TOLERANCE


def random_network(macro, rng):
    """Each layer: a number of ops uniform in 0..K (1..K where C_in != C_out), drawn from the whole pool."""
    layers = []
    for c_in, c_out, _, _ in macro.layers():
        n = rng.randint(1 if c_in != c_out else 0, macro.k)
        layers.append(sorted(rng.sample(macro.pool, n)))
    return layers


def random_peers(macro, k, target, seed, max_draws=200_000):
    """k distinct random networks within 5% of target FLOPs, drawn from a generator of this seed."""
    if k == 0:
        return []
    rng, out, seen = random.Random(seed), [], set()
    for _ in range(max_draws):
        layers = random_network(macro, rng)
        key = json.dumps(layers)
        if key in seen:
            continue
        seen.add(key)
        flops = nse.network_flops(macro, layers)
        if abs(flops - target) <= TOLERANCE * target:
            out.append((layers, flops))
            if len(out) == k:
                return out
    raise UsageError(f"fewer than {k} random networks within {TOLERANCE:.0%} of {target / 1e6:.2f}M FLOPs in "
                     f"{max_draws} draws")


def final_networks(run, most=None):
    """[(id, arch)] of a run's final-*.json, the id the file's absolute path; with most, only that many, those read
    best on the shared weights (their one_shot_acc)."""
    files = sorted(glob.glob(os.path.join(run, "final-*.json")))
    if not files:
        raise UsageError(f"{run} holds no final-*.json (a finished nse.py run)")
    out = []
    for f in files:
        with open(f) as fh:
            arch = json.load(fh)
        if arch.get("nse") not in nse.MACROS or not isinstance(arch.get("layers"), list):
            raise UsageError(f"{f} is not an NSE final network")
        out.append((arch.get("one_shot_acc", 0.0), os.path.abspath(f),
                    {k: arch[k] for k in ("nse", "in_channels", "num_classes", "layers") if k in arch}))
    chosen = sorted(out, key=lambda o: -o[0])[:most] if most else out
    return [(name, arch) for _, name, arch in sorted(chosen, key=lambda o: o[1])]


def main(argv=None):
    ap = ArgumentParser(__doc__, prog="python -m studies nse_truth")
    ap.add_argument("--runs", nargs="+", required=True, metavar="RUN", help="nse.py output folders")
    ap.add_argument("--peers", type=integer(0, 1000), default=8, metavar="K",
                    help="random networks of the whole pool within 5%% of each final network's FLOPs (default 8)")
    ap.add_argument("--finals", type=integer(1, 1000), metavar="M",
                    help="of each run, the M final networks read best on the shared weights (default: all)")
    ap.add_argument("--out", default=os.path.join("runs", "nse-truth"), help="output folder (default runs/nse-truth)")
    ap.add_argument("--data", default="fashion-mnist", help="data (default fashion-mnist, the laptop preset's)")
    ap.add_argument("--input-size", type=integer(8, 1024), default=None, help="image size (default: the data's)")
    ground_truth.add_recipe_arguments(ap)
    args = ap.parse_args(argv)
    finals = {run: final_networks(run, args.finals) for run in args.runs}
    path, done = ground_truth.open_table(args)
    data = ground_truth.search_data(args)
    test = ground_truth.test_data(args, data.input_size)
    todo = []
    for run, nets in finals.items():
        for name, arch in nets:
            macro = nse.macro_of(arch)
            flops = nse.network_flops(macro, arch["layers"])
            todo.append(("searched", name, arch, flops, {"run": os.path.abspath(run)}))
            for i, (layers, f) in enumerate(random_peers(macro, args.peers, flops, int(flops))):
                todo.append(("random", f"peer-{int(flops)}-{i}", {**arch, "layers": layers}, f, {}))
    todo = [t for name, t in {t[1]: t for t in todo}.items() if name not in done]  # a peer of two finals: once
    print(f"{len(todo)} networks to train ({len(done)} done), {len(args.seeds)} seeds each; data {data.info}",
          flush=True)
    ground_truth.train_all(args, todo, done, path, data, test)
    for run, nets in finals.items():
        print(f"\n== {run} ==")
        table1.table1_from_truth(path, os.path.join(args.out, os.path.basename(os.path.normpath(run))),
                                 [name for name, _ in nets])


if __name__ == "__main__":
    from machinery.cli import run_cli
    run_cli(main)
