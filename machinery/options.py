"""The search's command line and what it resolves before a run: flags and their ranges, presets, the paper's
per-space defaults (search.DEFAULTS, passed in), the cost table, the data and the checks that refuse a run
before anything is written. search.py and the random-search baseline (studies/random_search.py) share it.
"""
import argparse
import os
import sys

import latency
from cost import CostModel, check_table, flops_table
from machinery import cli, runtime
from machinery.cli import SEED, ArgumentParser, UsageError, integer, number
from machinery.data import load_data
from supernet import LIMITS, SPACES, get_space

# --preset laptop: the whole pipeline on Fashion-MNIST on a 2-core CPU in about 18 minutes: the `mini` space
# (supernet.py) at 28 px, 9,600 images per split, 11 epochs of which 5 weights-only. A preset is flags, read as
# if written before the given ones (which win). Where it departs from the paper the README says why ("How the laptop
# preset departs from the paper"); the main ones: an architecture learning rate ~30x the paper's, as this search
# makes ~900 architecture steps, not ~7,400; a weight learning rate of 0.1 at batch 64 for ~1,700 weight steps;
# and lambda 0.03, not 0.15, as at 0.15 the cost term alone decides every choice on Fashion-MNIST.
PRESETS = {"laptop": ["--space", "mini", "--data", "fashion-mnist", "--subset", "9600", "--epochs", "11",
                      "--warmup-epochs", "5", "--batch-size", "64", "--lr", "0.1", "--arch-lr", "1e-2", "--lam", "0.03"]}
# how the walkthrough (and Table 1 at laptop scale) retrains the derived network
RETRAIN_PRESETS = {"laptop": ["--epochs", "5", "--batch-size", "128", "--lr", "0.1", "--subset", "24000"]}


def search_parser(defaults, description=None, add_help=True):
    """search.py's flags, each with its range; `defaults` (search.DEFAULTS) is only named in the help here."""
    ap = ArgumentParser(description, add_help=add_help)
    ap.add_argument("--preset", choices=list(PRESETS),
                    help="laptop: search the 'mini' space on Fashion-MNIST, retrain the result and evaluate it on "
                         "the test set, all on a CPU in about 18 minutes (flags given override its settings)")
    ap.add_argument("--space", default="mbv2", help=f"search space: {', '.join(SPACES)} (default mbv2)")
    ap.add_argument("--data", default="fashion-mnist",
                    help="fashion-mnist (default), fake, or an ImageFolder root with train/<class>/*")
    ap.add_argument("--out", default=None, help="output folder (default runs/search-SPACE, or runs/PRESET)")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    ap.add_argument("--seed", type=SEED, default=0, help="seed of data order, sampling and init (default 0)")
    ap.add_argument("--input-size", type=integer(*LIMITS["input_size"]), default=None,
                    help="image size the space is built for (default 224 ImageFolder, 28 Fashion-MNIST, 32 fake)")
    ap.add_argument("--subset", type=integer(1), default=None, help="use the first N images of each split")
    ap.add_argument("--classes", type=integer(*LIMITS["num_classes"]), default=100,
                    help="ImageFolder: classes drawn for the search (default 100)")
    ap.add_argument("--connect", type=integer(*LIMITS["connect"]), default=None,
                    help="connection number M (default: the space's; Table 5)")
    ap.add_argument("--cost", choices=["flops", "latency"], default=None,
                    help="cost of Eq. 8: latency (the default with --lut, and for mbv2 on CUDA; without --lut the "
                         "run measures its own table on its device into OUT/latency_table.json) or flops (the "
                         "default otherwise, and for resnet, Sec. 4.1)")
    ap.add_argument("--lut", help="latency table from latency.py (any class count and input channels)")
    ap.add_argument("--estimator", choices=["chained", "local"], default="chained",
                    help="chained (Eq. 6-7, default) or local (Eq. 9, Table 7 ablation)")
    ap.add_argument("--eval-from", type=integer(1), default=None,
                    help="evaluate the super network from this epoch on; keeps arch_best.json (default: the first "
                         "search epoch)")
    ap.add_argument("--log-every", type=number(0, low_open=True), default=5.0,
                    help="seconds between progress lines (default 5)")
    ap.add_argument("--sample-path", action="store_true",
                    help="not in the paper: every weight step runs one path drawn from p (a walk B_0 -> B_n) instead "
                         "of every block mixed by Eq. 4, so each block learns to work fed by one predecessor, as in "
                         "the derived network")
    ap.add_argument("--target-flops", type=parse_flops, metavar="F",
                    help="not in the paper, which sets lambda by hand: steer the search to a derived network of F "
                         "FLOPs (e.g. 9M) within 10%%, in place of Eq. 8's lambda (README, 'Asking for a cost'). "
                         "The random search draws its samples within 5%% of F")
    ap.add_argument("--target-latency", type=number(0, 1e6, low_open=True), metavar="MS",
                    help="as --target-flops, for a latency search (--cost latency, implied): the derived network's "
                         "latency by the table, in ms")
    ap.set_defaults(random=None)  # the random-search baseline's (studies/random_search.py)
    h = ap.add_argument_group("schedule and optimisers (defaults: the paper's, per space)")

    def default_help(key, what):
        return f"{what} (default: " + ", ".join(f"{s} {defaults[s][key]}" for s in defaults) + ")"

    def flag(name, kind, what, **kw):
        h.add_argument(name, type=kind, help=default_help(name[2:].replace("-", "_"), what), **kw)

    flag("--epochs", integer(1, 100_000), "total epochs")
    flag("--warmup-epochs", integer(0), "weights-only epochs (stage 1)")
    flag("--batch-size", integer(1, 10**6), "global batch size")
    flag("--lr", number(0, 10, low_open=True), "SGD learning rate, cosine per step")
    flag("--lr-min", number(0, 10), "final learning rate")
    flag("--momentum", number(0, 0.999), "SGD momentum")
    flag("--weight-decay", number(0, 1), "SGD weight decay")
    flag("--label-smoothing", number(0, 0.99), "label smoothing")
    flag("--arch-lr", number(0, 1, low_open=True), "Adam learning rate for alpha, beta")
    flag("--arch-betas", number(0, 0.9999), "Adam betas", nargs=2)
    flag("--arch-weight-decay", number(0, 1), "Adam weight decay")
    flag("--lam", number(0, 100), "lambda of Eq. 8")
    flag("--tau", number(1, 1e12, low_open=True), "tau of Eq. 8 (cost in ms or MFLOPs)")
    runtime.add_device_args(ap)
    return ap


def parse_search_args(ap, argv, defaults, before=(), random=False):
    """The settings of a search: the flags given, after a preset's (a preset is flags) and `before`; for those
    not given, the paper's per space (`defaults`, through set_defaults); with --resume, the run's own (its
    args.json); then what follows from them (the cost, --eval-from, --out). random: the random-search baseline."""
    argv = sys.argv[1:] if argv is None else list(argv)
    flags = list(before) + PRESETS.get(ap.parse_args(argv).preset, []) + argv
    space = ap.parse_args(flags).space
    if space not in defaults:
        raise UsageError(f"unknown space '{space}' (known: {', '.join(SPACES)})")
    ap.set_defaults(**defaults[space])
    args = ap.parse_args(flags)
    if args.resume:  # every setting comes back from the run in OUT; a flag may only agree with it
        args.out = default_out(args) if args.out is None else args.out
        cli.restore_settings(ap, argv, args, args.out)
    if random and not args.resume and (args.random is None or args.target_flops is None):
        raise UsageError("the random search needs --random K and --target-flops F (see --help)")
    if bool(args.random) != random:
        raise UsageError(f"{args.out} holds a random search: continue it with python -m studies random --resume "
                         f"--out {args.out}" if args.random else f"{args.out} holds a search, not a random search")
    if random:
        args.warmup_epochs = 0  # no super network: nothing to warm up
    if args.target_flops and args.target_latency:
        raise UsageError("give --target-flops or --target-latency, not both")
    if args.cost is None and args.target_latency:
        args.cost = "latency"
    if args.cost is None:  # Sec. 4.1: the MobileNetV2 space is searched on GPU latency, the ResNet space on FLOPs
        args.cost = "latency" if args.lut or (args.space == "mbv2" and not random and runtime.uses_cuda(args)) \
            else "flops"
    if args.cost == "flops" and args.lut:
        raise UsageError("--lut is a latency table; drop it or use --cost latency")
    if not random and (args.cost == "flops" and args.target_latency or args.cost == "latency" and args.target_flops):
        raise UsageError(f"a {args.cost} search steers to --target-{args.cost}, not to the other target")
    if args.warmup_epochs > args.epochs or args.lr_min > args.lr:
        raise UsageError("need --warmup-epochs <= --epochs and --lr-min <= --lr")
    runtime.check_batch(args)
    if args.eval_from is None:
        args.eval_from = args.warmup_epochs + 1
    if not args.resume:  # args.json records absolute paths, so the run resumes from any directory
        args.data, args.lut = cli.absolute_data(args.data), args.lut and os.path.abspath(args.lut)
    args.out = default_out(args) if args.out is None else args.out
    return args


def default_out(args):
    if args.preset:
        return os.path.join("runs", args.preset + ("-random" if args.random else ""))
    return os.path.join("runs", f"{'random' if args.random else 'search'}-{args.space}")


def run_config(args):
    """What a checkpoint must agree with to be resumed."""
    keys = ("space", "data", "input_size", "subset", "classes", "connect", "seed", "epochs", "warmup_epochs",
            "batch_size", "cost", "lut", "estimator", "random", "target_flops", "target_latency", "lr", "lr_min", "momentum",
            "weight_decay", "label_smoothing", "arch_lr", "arch_betas", "arch_weight_decay", "lam", "tau", "gpus",
            "procs", "amp", "sample_path")
    return {k: cli.plain(getattr(args, k)) for k in keys}  # plain values, as args.json holds them


def search_data(args, before_run=False):
    """The search's training and validation splits (supplement A.1). Before the run (before_run) the images are
    verified and nothing is written; in the run, rank 0 first writes an ImageFolder's split into OUT."""
    if before_run:
        return load_data(args.data, "search", args.seed, args.input_size, args.subset, args.classes, split_file=None)
    return runtime.main_first(lambda: load_data(args.data, "search", args.seed, args.input_size, args.subset,
                                                args.classes, split_file=os.path.join(args.out, cli.SPLIT),
                                                verify_images=False))


def search_space(args, data):
    return get_space(args.space, data.input_size, data.in_channels, data.num_classes, args.connect)


def cost_table(args, space, proc=None):
    """The cost table of Eq. 8: FLOPs; the --lut latency table; or, with --cost latency and no --lut, the table the
    run measures on its own device (latency.run_table). proc None (before the run): check only what exists."""
    if args.cost == "flops":
        return flops_table(space)
    path = args.lut or os.path.join(args.out, latency.RUN_TABLE)
    if not args.lut:
        if proc is None and not os.path.exists(path):
            return None  # to be measured by the run
        if proc is not None:
            latency.run_table(space, proc.device, path, args.log_every)
    table = cli.load_table(path)
    priced = check_table(table, space, f"latency table {path}")
    for sig, source in priced.items() if proc is not None and proc.main else ():
        print(f"latency table: {sig} (this data set's) priced as {source} x their FLOPs ratio", flush=True)
    return table


def check_target(args, space, table, tolerance, quiet=False):
    """Refuse a --target-* whose window (target within `tolerance`) lies outside the range of what the space's
    networks cost by `table`, from the cheapest to the dearest (a window inside it may still fall in a gap between
    two networks: the derivation then takes the nearest). quiet: exit 2 without the line (the other ranks)."""
    target = args.target_flops if table["metric"] == "flops" else args.target_latency
    if not target:
        return
    least, most = CostModel(space, table, skip_price=0).extremes()
    if target * (1 + tolerance) < least or target * (1 - tolerance) > most:
        if quiet:
            raise SystemExit(2)
        if table["metric"] == "flops":
            given, reach = f"--target-flops {target / 1e6:g}M", f"{least / 1e6:.2f}-{most / 1e6:.2f}M FLOPs"
        else:
            given, reach = f"--target-latency {target:g}", f"{least:.2f}-{most:.2f} ms"
        raise UsageError(f"{given}: no network of '{space.name}' comes within {tolerance:.0%} of it; by this cost "
                         f"table its networks cost {reach}")


def check_search(args, tolerance=None):
    """Everything that can be refused is refused here, before anything is written to OUT. Returns the space.
    tolerance: the derivation's window around --target-* (search.py), refused if out of the space's reach."""
    runtime.check_devices(args)
    cli.check_folder(args.out, args.resume)
    data = search_data(args, before_run=True)
    runtime.check_batch_fits(args.batch_size, {"train split": len(data.train), "val split": len(data.val)})
    space = search_space(args, data)
    table = cost_table(args, space)
    if table is not None and tolerance is not None:
        check_target(args, space, table, tolerance)
    if args.cost == "flops" and args.space == "mbv2" and not args.random:
        print("cost: FLOPs, as no latency table is given (the paper searches this space on GPU latency, Sec. 4.1; "
              "on CUDA this search measures one, or pass --lut FILE or --cost latency)", flush=True)
    ck_path = os.path.join(args.out, cli.CHECKPOINT)
    if args.resume and os.path.exists(ck_path) and not args.random:
        cli.same_config(cli.checkpoint_config(ck_path, "a search"), run_config(args), ck_path)
    return space


def parse_flops(text):
    """An argparse type: '361M', '3.6e8', '12.5M', '1.2G' -> a number of FLOPs, more than 0 and at most 1e13."""
    scale = {"K": 1e3, "M": 1e6, "G": 1e9}.get(text[-1:].upper(), 1.0)
    try:
        value = float(text[:-1] if scale != 1.0 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a FLOPs count (e.g. 361M or 3.6e8)") from None
    return number(0, 1e13, low_open=True)(value)
