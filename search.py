"""The two-stage DenseNAS search (Sec. 3.4; supplement A.1, A.3).

Stage 1 (--warmup-epochs): only the operation weights are trained; every step samples ONE
candidate per layer from softmax(alpha) (dropping-path). Stage 2: every epoch first updates
alpha and beta on the validation split (TWO sampled candidates per layer, loss = CE +
lambda * log_tau(cost) of Eq. 8, Adam, then the rebias of Eq. 10), then the weights on the
training split as in stage 1. After every epoch the architecture is derived (argmax alpha and
Viterbi, viterbi.py) into OUT/arch.json; a checkpoint makes every run resumable.

    python search.py --space toy --data fake --epochs 2 --warmup-epochs 1 --out runs/toy
    python search.py --space mbv2 --data /imagenet --gpus 4         # the paper's search
    python search.py --resume --out runs/toy                         # continue a run
"""
import argparse
import contextlib
import json
import math
import os
import sys
import time

import torch
import torch.nn as nn

import cli
import latency
import retrain
import runtime
from cli import ArgumentParser, UsageError, run_cli, save_json_atomic
from cost import CostModel, arch_cost, check_table, flops_table, load_table
from data import load_data
from supernet import SPACES, SuperNet, arch_text, get_space, load_arch
from viterbi import decisiveness, derive_supernet, draw_run, save_arch_params

# The paper's settings (supplement A.1, A.4; arXiv v1 for label smoothing); lambda and tau, which the paper does not
# give, are the authors' published code's; toy is ours, for tests.
PAPER = dict(lr=0.2, lr_min=1e-4, momentum=0.9, weight_decay=4e-5, label_smoothing=0.1,
             arch_lr=3e-4, arch_betas=(0.5, 0.999), arch_weight_decay=1e-3)
DEFAULTS = {
    "mbv2": dict(PAPER, epochs=150, warmup_epochs=50, batch_size=352, lam=0.15, tau=15.0),
    "resnet": dict(PAPER, epochs=70, warmup_epochs=10, batch_size=512, lam=0.2, tau=3500.0),
    "mini": dict(PAPER, epochs=10, warmup_epochs=4, batch_size=64, lam=0.15, tau=15.0),
    "toy": dict(PAPER, epochs=4, warmup_epochs=2, batch_size=64, lam=0.15, tau=15.0),
}
# --preset laptop: the whole pipeline on Fashion-MNIST on a 2-core CPU in about 13 minutes: the `mini` space
# (supernet.py) at 28 px, 9,600 images per split, 11 epochs of which 5 weights-only. A preset is flags, read as if
# written before the given ones (which win). Where it departs from the paper it says why in the README ("How the
# laptop preset departs from the paper"); the main ones: an architecture learning rate ~30x the paper's, as this
# search makes ~900 architecture steps, not ~7,400; a weight learning rate of 0.1 at batch 64 for ~1,700 weight
# steps; and lambda 0.03, not 0.15, as at 0.15 the cost term alone decides every choice on Fashion-MNIST.
PRESETS = {"laptop": ["--space", "mini", "--data", "fashion-mnist", "--subset", "9600", "--epochs", "11",
                      "--warmup-epochs", "5", "--batch-size", "64", "--lr", "0.1", "--arch-lr", "1e-2", "--lam", "0.03"]}
RETRAIN_PRESETS = {"laptop": ["--epochs", "5", "--batch-size", "128", "--lr", "0.1", "--subset", "24000"]}
IMAGENET_COMMAND = "python search.py --space mbv2 --data /path/to/imagenet --gpus 4"
# cost units of log_tau(cost) in Eq. 8: latency in ms (tau = 15), FLOPs in millions (tau = 3500)
UNITS = {"flops": 1e6, "latency_ms": 1.0}
LATENCY_TABLE = "latency_table.json"  # measured by the run when --cost latency has no --lut


# ----------------------------------------------------------------------------------------
# Dropping-path sampling and the rebias (supplement A.3)

def sample_candidates(net, k, generator):
    """{slot: k candidate indices drawn without replacement from w = softmax(alpha / T)} for every
    mixed layer (A.3: "according to the architecture weight distribution"). The generator is seeded
    identically on every rank, so all ranks sample the same sub-network."""
    samples = {}
    for layer in net.layers:
        probs = layer.weights().detach().float().cpu()
        samples[layer.slot] = torch.multinomial(probs, min(k, len(probs)), replacement=False,
                                                generator=generator).tolist()
    return samples


def rebias(alphas, old, samples, temperature=1.0):
    """Eq. 10: bias_s = T ln(sum_s exp(alpha_old / T) / sum_s exp(alpha_new / T)) is added to the
    updated sampled alphas, so w = softmax(alpha / T) of every unsampled candidate is unchanged (the
    supplement writes T = 1; the T keeps that true with a temperature). Adam's momentum and weight
    decay would also move the unsampled alphas; we hold those fixed."""
    t = temperature
    with torch.no_grad():
        for slot, (a, a_old) in enumerate(zip(alphas, old)):
            s = torch.tensor(samples[slot], device=a.device)
            keep = torch.ones_like(a, dtype=torch.bool)
            keep[s] = False
            a[keep] = a_old[keep]
            a[s] += t * (torch.logsumexp(a_old[s] / t, 0) - torch.logsumexp(a[s] / t, 0))


def set_trainable(params, flag):
    for p in params:
        p.requires_grad_(flag)


class Objective:
    """Eq. 8: L = CE + lambda * log_tau(cost). The cost is the chained estimate (Eq. 5-7, or the
    local one of Eq. 9) in the unit tau is given in (ms, or millions of FLOPs)."""

    def __init__(self, cost_model, lam, tau, unit=1.0, estimator="chained", label_smoothing=0.0):
        self.cost_model, self.lam, self.tau, self.unit, self.estimator = cost_model, lam, tau, unit, estimator
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def cost(self, net, samples=None):
        """The estimated cost of the super network; with samples, each layer priced over its sampled candidates."""
        return self.cost_model(net.alphas(), net.path_probs(), self.estimator, samples) / self.unit

    def __call__(self, logits, y, net, samples):
        cost = self.cost(net, samples)
        return self.criterion(logits.float(), y) + self.lam * torch.log(cost) / math.log(self.tau), cost


def weight_step(net, opt, criterion, x, y, samples, autocast=contextlib.nullcontext()):
    """One step on the operation weights (stage 1, and the weight half of stage 2): the sub-network
    of one sampled candidate per layer (dropping-path), cross-entropy, SGD. alpha and beta are frozen."""
    with autocast:
        logits = net(x, samples)
    loss = criterion(logits.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    runtime.average_gradients(p for g in opt.param_groups for p in g["params"])
    opt.step()
    return logits, loss


def arch_step(net, opt, objective, x, y, samples, autocast=contextlib.nullcontext()):
    """One architecture step (Sec. 3.4, A.3): two sampled candidates per layer mixed by the softmax
    over them, L of Eq. 8 priced over the same candidates, Adam on alpha and beta, then the rebias
    of Eq. 10. The operation weights are frozen."""
    alphas = net.alphas()
    old = [a.detach().clone() for a in alphas]
    with autocast:
        logits = net(x, samples)
    loss, cost = objective(logits, y, net, samples)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    runtime.average_gradients(net.arch_parameters())
    opt.step()
    rebias(alphas, old, samples, net.space.temperature)
    return logits, loss, cost


# ----------------------------------------------------------------------------------------
# The search of one process: the super network, its optimisers, Eq. 8, epoch by epoch

class Search:
    """One process's share of the search (Sec. 3.4): the super network (weights, alpha, beta), SGD on the
    weights and Adam on alpha and beta (supplement A.1), the objective of Eq. 8 with the cost table, and
    where the search stands (epochs done, weight steps taken, best validation accuracy): the checkpoint."""

    def __init__(self, proc, args, data, space, table):
        self.proc, self.args, self.data, self.table = proc, args, data, table
        torch.manual_seed(args.seed)
        # channels-last on every device: oneDNN's CPU kernels and cuDNN's both run faster in it
        self.net = SuperNet(space).to(proc.device, memory_format=torch.channels_last)
        self.w_opt = torch.optim.SGD(self.net.weight_parameters(), lr=args.lr, momentum=args.momentum,
                                     weight_decay=args.weight_decay)
        self.a_opt = torch.optim.Adam(self.net.arch_parameters(), lr=args.arch_lr, betas=tuple(args.arch_betas),
                                      weight_decay=args.arch_weight_decay)
        self.objective = Objective(CostModel(space, table), args.lam, args.tau, UNITS.get(table["metric"], 1.0),
                                   args.estimator, args.label_smoothing)
        self.epoch, self.weight_steps, self.best = 0, 0, None
        self.synced_steps = 0  # --check-sync: steps after which every rank was found identical

    def batches(self, half, epoch):
        """This process's batches of an epoch: the training split for the weights, the validation split for
        alpha and beta (A.1)."""
        a = self.args
        dataset, seed = (self.data.train, a.seed) if half == "weights" else (self.data.val, a.seed + 1)
        return self.proc.loader(dataset, a.batch_size, True, epoch, seed)

    def begin(self, half, epoch):
        """One half of an epoch ("weights" or "arch") begins: only its parameters train; its batches, the
        generator of its samples (the same on every rank) and its progress line."""
        weights = half == "weights"
        set_trainable(self.net.weight_parameters(), weights)  # the arch step needs no weight gradients
        set_trainable(self.net.arch_parameters(), not weights)
        self.net.train()
        loader = self.batches(half, epoch)
        g = torch.Generator().manual_seed(self.args.seed * 1000 + epoch + (0 if weights else 500))
        return loader, g, self.progress(half, len(loader), epoch)

    def run_epoch(self, epoch):
        """Stage 1 (epoch < --warmup-epochs): the weights alone; stage 2: alpha and beta, then the weights.
        Then, from --eval-from on, the super network's validation accuracy. Returns the epoch's log record."""
        a = self.args
        rec = {"epoch": epoch + 1, "stage": "warmup" if epoch < a.warmup_epochs else "search"}
        if rec["stage"] == "search":
            rec |= self.arch_epoch(epoch)
        rec |= self.weight_epoch(epoch)
        loss, acc = runtime.all_reduce_sum([rec["train_loss"], rec["train_acc"]], self.proc.device)
        rec["train_loss"], rec["train_acc"] = loss / self.proc.world, acc / self.proc.world
        if epoch + 1 >= a.eval_from:
            rec |= self.evaluate()
        self.epoch = epoch + 1
        return rec

    def weight_epoch(self, epoch):
        """Stage 1, and the weight half of stage 2: an epoch of weight_step on the training split."""
        a, net = self.args, self.net
        loader, g, bar = self.begin("weights", epoch)
        for x, y in loader:
            for group in self.w_opt.param_groups:  # cosine over every weight step of the search
                group["lr"] = runtime.cosine_lr(self.weight_steps, a.epochs * len(loader), a.lr, a.lr_min)
            logits, loss = weight_step(net, self.w_opt, self.objective.criterion, x, y, sample_candidates(net, 1, g),
                                       self.proc.autocast())
            self.after_step(loss, f"epoch {epoch + 1}, weight step {bar.step + 1}")
            self.weight_steps += 1
            bar.update(loss=loss.item(), acc=accuracy(logits, y))
        return {"train_" + k: v for k, v in bar.means().items()} | {"train_img_s": bar.images_per_s() * self.proc.world}

    def arch_epoch(self, epoch):
        """Stage 2's architecture half: an epoch of arch_step on the validation split."""
        net = self.net
        loader, g, bar = self.begin("arch", epoch)
        for x, y in loader:
            logits, loss, cost = arch_step(net, self.a_opt, self.objective, x, y, sample_candidates(net, 2, g),
                                           self.proc.autocast())
            self.after_step(loss, f"epoch {epoch + 1}, architecture step {bar.step + 1}")
            bar.update(loss=loss.item(), acc=accuracy(logits, y), cost=cost.item())
        return {"arch_" + k: v for k, v in bar.means().items()}

    def after_step(self, loss, where):
        cli.stop_unless_finite(loss.item(), where)
        runtime.broadcast_buffers(self.net)
        if self.args.check_sync:
            runtime.check_in_sync(self.net)
            self.synced_steps += 1

    def progress(self, half, steps, epoch):
        """The progress line of one half of an epoch; its ETA counts the steps of the epochs after it."""
        a = self.args
        train, val = len(self.batches("weights", 0)), len(self.batches("arch", 0))
        later = sum(train + (val if e >= a.warmup_epochs else 0) for e in range(epoch + 1, a.epochs))
        return runtime.Progress(f"[epoch {epoch + 1}/{a.epochs} {half}]", steps, a.batch_size, later,
                                every=a.log_every, enabled=self.proc.main)

    def evaluate(self):
        """Validation accuracy (%) of the super network read at its current decision, two ways, both on the
        shared weights: `val_acc` with every layer at its argmax candidate and every path weighted by p (Eq. 4),
        and `derived_val_acc` for the derived network alone (argmax alpha, only the blocks of the Viterbi path,
        Sec. 3.4). The second is usually lower while p is not one-hot: Eq. 4 normalises p over a block's
        outgoing paths, so a block on the path also takes input from blocks off it, which the derived network
        lacks; the paper retrains the derived network for this reason. BN normalises with batch statistics
        (momentum 0, so the running statistics are left as they are)."""
        net = self.net
        path, samples = derive_supernet(net)["path"], net.argmax_samples()
        bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.momentum = 0.0
        net.train()
        correct, total = [0, 0], 0
        with torch.no_grad():
            for x, y in self.proc.loader(self.data.val, self.args.batch_size, False, 0, self.args.seed,
                                         drop_last=False):
                with self.proc.autocast():
                    for k, p in enumerate((None, path)):
                        correct[k] += (net(x, samples, p).argmax(1) == y).sum().item()
                total += len(y)
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        *correct, total = runtime.all_reduce_sum(correct + [total], self.proc.device)
        return {"val_acc": 100.0 * correct[0] / max(total, 1), "derived_val_acc": 100.0 * correct[1] / max(total, 1)}

    def state(self):
        return {"config": run_config(self.args), "epoch": self.epoch, "global_step": self.weight_steps, "best": self.best,
                "model": self.net.state_dict(), "w_opt": self.w_opt.state_dict(), "a_opt": self.a_opt.state_dict(),
                "rng": torch.get_rng_state()}

    def load(self, ck):
        cli.load_states(ck, {"model": self.net, "w_opt": self.w_opt, "a_opt": self.a_opt}, "super network")
        self.epoch, self.weight_steps, self.best = ck["epoch"], ck["global_step"], ck["best"]


def accuracy(logits, y):
    return (logits.argmax(1) == y).float().mean().item() * 100


# ----------------------------------------------------------------------------------------
# The run: one worker per process, what it writes after every epoch

def search_worker(proc, args):
    data = runtime.main_first(lambda: load_data(args.data, "search", args.seed, args.input_size, args.subset,
                                                args.classes, split_file=split_path(args),
                                                verify_images=False))  # check_run verified them
    space = get_space(args.space, data.input_size, data.in_channels, data.num_classes, args.connect)
    s = Search(proc, args, data, space, resolve_table(args, space, proc.device, say=proc.main))
    ck_path, log_path = os.path.join(args.out, cli.CHECKPOINT), os.path.join(args.out, "search_log.jsonl")
    if args.resume and os.path.exists(ck_path):
        s.load(cli.load_checkpoint(ck_path))
        if proc.main:
            print(cli.resume_line(args.out, s.epoch, args.epochs), flush=True)
    if proc.main:
        print(f"search space '{args.space}': {len(space.blocks)} blocks, {len(space.edges)} connections, "
              f"{len(s.net.layers)} mixed layers; data {data.info}; {proc.world} process(es) on {proc.device}; "
              f"cost {s.table['metric']} ({args.estimator} estimator)", flush=True)
        keep_log_before(log_path, s.epoch if s.epoch else -1)
    if s.epoch == 0:  # the untrained super network's guess, as a baseline for what the search learns
        acc = s.evaluate()
        if proc.main:
            print(f"untrained super network: val acc {acc['val_acc']:.2f}%, derived network alone "
                  f"{acc['derived_val_acc']:.2f}% (chance {100 / space.num_classes:.1f}%)", flush=True)
            append_line(log_path, {"epoch": 0, "stage": "init", **acc})
    for epoch in range(s.epoch, args.epochs):
        t0 = time.time()
        torch.manual_seed(args.seed * 1000 + epoch)  # everything random in this epoch follows from here
        rec = s.run_epoch(epoch)
        if proc.main:
            end_of_epoch(s, rec, time.time() - t0, log_path)
            cli.save_atomic(s.state(), ck_path)
        runtime.barrier()
    if args.check_sync and proc.main:
        print(f"check-sync: all {proc.world} ranks held identical weights, alpha and beta after each of "
              f"{s.synced_steps} steps", flush=True)
    if proc.main:
        finish(args)


def resolve_table(args, space, device=None, say=True):
    """The cost table of Eq. 8: FLOPs; the --lut latency table; or, with --cost latency and no --lut (the
    default for mbv2 on CUDA, Sec. 4.1), a latency table measured on this run's device as supplement A.1
    does (batch 32), written once by rank 0 into OUT/latency_table.json and read by every rank after a
    barrier; a resumed run finds it complete and measures nothing. device None: only check what exists."""
    if args.cost == "flops":
        return flops_table(space)
    path = args.lut or os.path.join(args.out, LATENCY_TABLE)
    if not args.lut:
        if device is None and not os.path.exists(path):
            return None  # to be measured by the run
        if device is not None:  # OUT exists: the run has claimed it
            if runtime.rank() == 0:
                latency.build_table(space, *latency.get_device(str(device)), path, every=args.log_every)
            runtime.barrier()
    table = load_table(path)
    priced = check_table(table, space, f"latency table {path}")
    if say:
        for sig, source in priced.items():
            print(f"latency table: {sig} (this data set's) priced as {source} x their FLOPs ratio", flush=True)
    return table


def split_path(args):
    return os.path.join(args.out, "split.json")


def run_config(args):
    """What a checkpoint must agree with to be resumed."""
    keys = ("space", "data", "input_size", "subset", "classes", "connect", "seed", "epochs", "warmup_epochs",
            "batch_size", "cost", "lut", "estimator", "random", "target_flops", "lr", "lr_min", "momentum",
            "weight_decay", "label_smoothing", "arch_lr", "arch_betas", "arch_weight_decay", "lam", "tau", "gpus",
            "procs", "amp")
    return {k: json.loads(json.dumps(getattr(args, k))) for k in keys}  # plain values, as args.json holds them


def keep_log_before(path, last, key="epoch"):
    """On resume, drop log lines of epochs (samples) the checkpoint does not hold (a kill may fall between the two)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [ln for ln in f if ln.strip() and json.loads(ln)[key] <= last]
    cli.save_text_atomic("".join(lines), path)


def append_line(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def end_of_epoch(s, rec, seconds, log_path):
    """Derive the architecture, log the epoch, write arch.json (and arch_warmup.json after the last
    weights-only epoch, to show what the architecture steps changed)."""
    net, a, metric, unit = s.net, s.args, s.table["metric"], s.objective.unit
    arch = derive_supernet(net)
    p = net.path_probs().detach()
    with torch.no_grad():
        est = s.objective.cost(net).item() * unit
        weights = [layer.weights().cpu() for layer in net.layers]
    rec |= {"est_cost": est, "arch_cost": arch_cost(arch, s.table), "metric": metric,
            "path": arch["path"], "widths": [b["out"] for b in arch["blocks"]],
            **decisiveness(net.space, weights, p.cpu(), arch["path"]), "seconds": seconds}
    save_json_atomic(arch, os.path.join(a.out, "arch.json"))
    if rec["epoch"] == a.warmup_epochs:
        save_json_atomic(arch, os.path.join(a.out, "arch_warmup.json"))
    save_arch_params(net.space, net.alphas(), p, os.path.join(a.out, "arch_params.json"))
    if "val_acc" in rec and (s.best is None or rec["val_acc"] > s.best["val_acc"]):
        s.best = {"epoch": rec["epoch"], "val_acc": rec["val_acc"]}
        save_json_atomic(arch, os.path.join(a.out, "arch_best.json"))
    append_line(log_path, rec)
    val = (f" val acc {rec['val_acc']:.2f}% (derived network alone {rec['derived_val_acc']:.2f}%);"
           if "val_acc" in rec else "")
    print(f"epoch {rec['epoch']}/{a.epochs} ({rec['stage']}) {runtime.fmt_time(seconds)}: train loss "
          f"{rec['train_loss']:.3f} acc {rec['train_acc']:.2f}%;{val} p on path {rec['p_path']:.2f}, "
          f"w chosen {rec['w_chosen']:.2f}; estimated cost {est / unit:.3f}, derived {rec['arch_cost'] / unit:.3f} "
          f"({metric}{'/1e6' if unit != 1 else ''}); widths {rec['widths']}", flush=True)


def finish(a):
    """The derived network's summary, its pictures and the command that retrains it."""
    arch_path = os.path.join(a.out, "arch.json")
    arch = draw_run(a.out)  # arch.svg and supernet.svg
    prof = retrain.profile(arch)
    print("\nderived architecture (argmax alpha, Viterbi over p):")
    print(arch_text(arch))
    print(f"path {' -> '.join(f'B_{i}' for i in arch['path'])}; {prof['flops'] / 1e6:.2f}M FLOPs, "
          f"{prof['params'] / 1e6:.3f}M params")
    print(f"pictures: {os.path.join(a.out, 'arch.svg')}, {os.path.join(a.out, 'supernet.svg')}")
    print(f"retrain it:  python retrain.py --arch {arch_path} --data {a.data}"
          + (f" --gpus {a.gpus}" if a.gpus else ""))


# ----------------------------------------------------------------------------------------
# Command line

def parse_args(argv=None, random=False):
    """The search's settings: the flags given, after a preset's (a preset is flags); then, for those not set,
    the paper's per space (DEFAULTS); then what follows from them (the cost, --eval-from, --out).
    random=True adds the random-search baseline's (studies.py random, Table 1)."""
    ap = make_parser(random)
    argv = sys.argv[1:] if argv is None else list(argv)
    # the flags of a preset (and the random search's 5 epochs) come first: the ones given win over them
    args = ap.parse_args((["--epochs", "5"] if random else []) + PRESETS.get(ap.parse_args(argv).preset, []) + argv)
    if args.resume:  # every setting comes back from the run in OUT; a flag may only agree with it
        args.out = args.out or default_out(args)
        cli.restore_settings(args, ap.given(argv), args.out)
    if bool(args.random) != random:
        raise UsageError(f"{args.out} holds a random search: continue it with studies.py random --resume --out "
                         f"{args.out}" if args.random else f"{args.out} holds a search, not a random search")
    if random:
        if args.lut or args.cost == "latency":
            raise UsageError("the random search samples by FLOPs; drop --lut and --cost latency")
        args.warmup_epochs = 0  # no super network: nothing to warm up
    if args.space not in DEFAULTS:
        raise UsageError(f"unknown space '{args.space}' (known: {', '.join(SPACES)})")
    for k, v in DEFAULTS[args.space].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.cost is None:  # Sec. 4.1: the MobileNetV2 space is searched on GPU latency, the ResNet space on FLOPs
        args.cost = "latency" if args.lut or (args.space == "mbv2" and not args.random and runtime.uses_cuda(args)) \
            else "flops"
    if args.cost == "flops" and args.lut:
        raise UsageError("--lut is a latency table; drop it or use --cost latency")
    cli.check_ranges(args, RANGES)
    if args.warmup_epochs > args.epochs or args.lr_min > args.lr:
        raise UsageError("need --warmup-epochs <= --epochs and --lr-min <= --lr")
    runtime.check_batch(args)
    if args.eval_from is None:
        args.eval_from = args.warmup_epochs + 1
    args.out = args.out or default_out(args)
    return args


def make_parser(random):
    ap = ArgumentParser(__doc__)
    ap.add_argument("--preset", choices=list(PRESETS),
                    help="laptop: search the 'mini' space on Fashion-MNIST, retrain the result and evaluate it on "
                         "the test set, all on a CPU in about 13 minutes (flags given override its settings)")
    ap.add_argument("--space", default="mbv2", help=f"search space: {', '.join(SPACES)} (default mbv2)")
    ap.add_argument("--data", default="fashion-mnist",
                    help="fashion-mnist (default), fake, or an ImageFolder root with train/<class>/*")
    ap.add_argument("--out", default=None, help="output folder (default runs/search-SPACE; runs/random-SPACE for "
                                                 "studies.py random)")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    ap.add_argument("--seed", type=int, default=0, help="seed of data order, sampling and init (default 0)")
    ap.add_argument("--input-size", type=int, default=None,
                    help="image size the space is built for (default 224 ImageFolder, 28 Fashion-MNIST, 32 fake)")
    ap.add_argument("--subset", type=int, default=None, help="use the first N images of each split")
    ap.add_argument("--classes", type=int, default=100, help="ImageFolder: classes drawn for the search (default 100)")
    ap.add_argument("--connect", type=int, default=None, help="connection number M (default: the space's; Table 5)")
    ap.add_argument("--cost", choices=["flops", "latency"], default=None,
                    help="cost of Eq. 8: latency (the default with --lut, and for mbv2 on CUDA; without --lut the "
                         "run measures its own table on its device into OUT/latency_table.json) or flops (the "
                         "default otherwise, and for resnet, Sec. 4.1)")
    ap.add_argument("--lut", help="latency table from latency.py (any class count and input channels)")
    ap.add_argument("--estimator", choices=["chained", "local"], default="chained",
                    help="chained (Eq. 6-7, default) or local (Eq. 9, Table 7 ablation)")
    ap.add_argument("--eval-from", type=int, default=None,
                    help="evaluate the super network from this epoch on; keeps arch_best.json (default: first search epoch)")
    ap.set_defaults(random=None, target_flops=None)
    if random:
        r = ap.add_argument_group("random-search baseline (Table 1)")
        r.add_argument("--random", type=int, metavar="K", required=True,
                       help="instead of searching, train K uniformly sampled architectures within 5%% of "
                            "--target-flops for --epochs each (default 5) and keep the best by validation "
                            "accuracy (paper: 15)")
        r.add_argument("--target-flops", type=parse_flops, metavar="F", required=True,
                       help="FLOPs (multiply-accumulates) of the random samples, e.g. 361M (DenseNAS-C) or 3.6e8")
    ap.add_argument("--log-every", type=float, default=5.0, help="seconds between progress lines (default 5)")
    h = ap.add_argument_group("schedule and optimisers (defaults: the paper's, per space)")

    def default_help(key, what):
        return f"{what} (default: " + ", ".join(f"{s} {DEFAULTS[s][key]}" for s in DEFAULTS) + ")"

    h.add_argument("--epochs", type=int, help=default_help("epochs", "total epochs"))
    h.add_argument("--warmup-epochs", type=int, help=default_help("warmup_epochs", "weights-only epochs (stage 1)"))
    h.add_argument("--batch-size", type=int, help=default_help("batch_size", "global batch size"))
    h.add_argument("--lr", type=float, help=default_help("lr", "SGD learning rate, cosine per step"))
    h.add_argument("--lr-min", type=float, help=default_help("lr_min", "final learning rate"))
    h.add_argument("--momentum", type=float, help=default_help("momentum", "SGD momentum"))
    h.add_argument("--weight-decay", type=float, help=default_help("weight_decay", "SGD weight decay"))
    h.add_argument("--label-smoothing", type=float, help=default_help("label_smoothing", "label smoothing"))
    h.add_argument("--arch-lr", type=float, help=default_help("arch_lr", "Adam learning rate for alpha, beta"))
    h.add_argument("--arch-betas", type=float, nargs=2, help=default_help("arch_betas", "Adam betas"))
    h.add_argument("--arch-weight-decay", type=float, help=default_help("arch_weight_decay", "Adam weight decay"))
    h.add_argument("--lam", type=float, help=default_help("lam", "lambda of Eq. 8"))
    h.add_argument("--tau", type=float, help=default_help("tau", "tau of Eq. 8 (cost in ms or MFLOPs)"))
    runtime.add_device_args(ap)
    return ap


# what each number may be (low, high, low excluded); checked before any work
RANGES = {"seed": (0, 2**32 - 1, False), "input_size": (8, 1024, False), "subset": (1, None, False),
          "classes": (2, 100_000, False), "connect": (1, 64, False), "eval_from": (1, None, False),
          "log_every": (0, None, True), "random": (1, 10_000, False), "target_flops": (0, 1e13, True),
          "epochs": (1, 100_000, False), "warmup_epochs": (0, None, False), "batch_size": (1, 10**6, False),
          "lr": (0, 10, True), "lr_min": (0, 10, False), "momentum": (0, 0.999, False),
          "weight_decay": (0, 1, False), "label_smoothing": (0, 0.99, False), "arch_lr": (0, 1, True),
          "arch_betas": (0, 0.9999, False), "arch_weight_decay": (0, 1, False), "lam": (0, 100, False),
          "tau": (1, 1e12, True), **runtime.DEVICE_RANGES}


def default_out(args):
    if args.preset:
        return os.path.join("runs", args.preset + ("-random" if args.random else ""))
    return os.path.join("runs", f"{'random' if args.random else 'search'}-{args.space}")


def parse_flops(text):
    """'361M', '3.6e8', '12.5M', '1.2G' -> a number of FLOPs."""
    scale = {"K": 1e3, "M": 1e6, "G": 1e9}.get(text[-1:].upper(), 1.0)
    try:
        value = float(text[:-1] if scale != 1.0 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a FLOPs count (e.g. 361M or 3.6e8)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"FLOPs must be positive, not {text}")
    return value


def check_run(args):
    """Everything that can be refused is refused here, before anything is written to OUT."""
    runtime.check_devices(args)
    cli.check_folder(args.out, args.resume)
    data = load_data(args.data, "search", args.seed, args.input_size, args.subset, args.classes,
                     split_file=None)
    runtime.check_batch_fits(args.batch_size, {"train split": len(data.train), "val split": len(data.val)})
    space = get_space(args.space, data.input_size, data.in_channels, data.num_classes, args.connect)
    resolve_table(args, space, say=False)
    if args.cost == "flops" and args.space == "mbv2" and not args.random:
        print("cost: FLOPs, as no latency table is given (the paper searches this space on GPU latency, Sec. 4.1; "
              "on CUDA this search measures one, or pass --lut FILE or --cost latency)", flush=True)
    ck_path = os.path.join(args.out, cli.CHECKPOINT)
    if args.resume and os.path.exists(ck_path) and not args.random:
        ck = cli.load_checkpoint(ck_path)
        if not isinstance(ck, dict) or "config" not in ck:
            raise UsageError(f"{ck_path} is not a search checkpoint")
        cli.same_config(ck["config"], run_config(args), ck_path)
    return space


def start_run(args, worker):
    """Take OUT, record the run's settings (a resume keeps the record), run `worker` on every process, and
    for --preset retrain the result and sum up."""
    cli.begin_run(args)
    runtime.launch(worker, args)
    if args.preset:
        walkthrough_end(args)


def main(argv=None):
    args = parse_args(argv)
    check_run(args)
    start_run(args, search_worker)


def read_log(out):
    with open(os.path.join(out, "search_log.jsonl")) as f:
        return [json.loads(line) for line in f]


def search_evidence(out, log):
    """What shows that a finished search learned, read from its folder and log: the untrained guess and the
    derived network's accuracy on the shared weights (validation split), how firmly alpha and beta
    decided (p on the path, w of the chosen candidates), and the architecture derived after the last
    weights-only epoch beside the final one."""
    last = log[-1]
    ev = {"untrained_val_acc": next((r["val_acc"] for r in log if r["stage"] == "init"), None),
          "supernet_val_acc": last.get("val_acc"), "derived_val_acc": last.get("derived_val_acc"),
          "p_path": last["p_path"], "w_chosen": last["w_chosen"],
          "path": last["path"], "widths": last["widths"], "arch_cost": last["arch_cost"], "metric": last["metric"]}
    warm = [r for r in log if r["stage"] == "warmup"]
    if warm:
        with open(os.path.join(out, "arch_warmup.json")) as f, open(os.path.join(out, "arch.json")) as g:
            before, after = json.load(f), json.load(g)
        ev |= {"warmup_path": warm[-1]["path"], "warmup_widths": warm[-1]["widths"],
               "warmup_arch_cost": warm[-1]["arch_cost"], "changed_since_warmup": before != after}
    return ev


def walkthrough_end(args):
    """--preset: retrain the derived network, evaluate it on the test set, and sum up (OUT/summary.json)."""
    arch_path, out = os.path.join(args.out, "arch.json"), os.path.join(args.out, "retrain")
    resume = ["--resume"] if cli.has_run(out) else []
    print(f"\n== retraining the derived network ({' '.join(RETRAIN_PRESETS[args.preset])}) ==", flush=True)
    retrain.main(["--arch", arch_path, "--data", args.data, "--out", out, "--seed", str(args.seed),
                  "--log-every", str(args.log_every)] + RETRAIN_PRESETS[args.preset] + resume)
    report, arch = cli.read_json(os.path.join(out, "report.json"), "report"), load_arch(arch_path)
    log = read_log(args.out)
    searched = sum(r.get("seconds", 0.0) for r in log)  # from the log: a resumed run counts in full
    summary = {"seconds_search": searched, "seconds_retrain": report["wall_s"], "test_top1": report["top1"],
               "flops": report["flops"], "params": report["params"]}
    print("\n== summary ==")
    print(f"search: {searched / 60:.1f} min; retrain + test: {report['wall_s'] / 60:.1f} min")
    if not args.random:
        summary |= search_evidence(args.out, log)
        print_evidence(summary, arch["num_classes"])
    print(f"derived widths {[b['out'] for b in arch['blocks']]} (path {arch['path']}); "
          f"{report['flops'] / 1e6:.2f}M FLOPs, {report['params'] / 1e6:.3f}M params")
    print(f"retrained from scratch, test accuracy ({args.data}, its evaluation set): top-1 {report['top1']:.2f}%")
    save_json_atomic(summary, os.path.join(args.out, "summary.json"))
    print(f"outputs: {args.out}/ (summary.json, arch.json, arch.svg, supernet.svg, search_log.jsonl, retrain/)")
    command = IMAGENET_COMMAND
    if args.random:
        command = command.replace("search.py", "studies.py random") + " --random 15 --epochs 5 --target-flops 361M"
    print(f"the same search on ImageNet with 4 GPUs:  {command}")


def print_evidence(ev, num_classes):
    """search_evidence in words."""
    mm, unit = (1e6, "M FLOPs") if ev["metric"] == "flops" else (1.0, " ms")
    pct = {k: "not evaluated" if ev[k] is None else f"{ev[k]:.2f}%"
           for k in ("supernet_val_acc", "untrained_val_acc", "derived_val_acc")}
    print(f"super network at its decision (argmax alpha, paths weighted by p): {pct['supernet_val_acc']} on the "
          f"validation split (untrained: {pct['untrained_val_acc']}, chance {100 / num_classes:.1f}%); the "
          f"derived network alone on the shared weights: {pct['derived_val_acc']} (blocks off its path no longer "
          "feed it)")
    print(f"decisions: p along the path {ev['p_path']:.2f} where a block has a choice, w of the chosen "
          f"candidates {ev['w_chosen']:.2f} (uniform: 0.33-0.5)")
    if "changed_since_warmup" in ev:
        print(f"after warm-up (before any architecture step) the derived network was path {ev['warmup_path']}, "
              f"{ev['warmup_arch_cost'] / mm:.2f}{unit}; the search "
              + ("changed it" if ev["changed_since_warmup"] else "did NOT change it"))


if __name__ == "__main__":
    run_cli(main)
