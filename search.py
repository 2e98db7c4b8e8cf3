"""The two-stage DenseNAS search (Sec. 3.4; supplement A.1, A.3).

Stage 1 (--warmup-epochs): only the operation weights are trained; every step samples ONE
candidate per layer from softmax(alpha) (dropping-path). Stage 2: every epoch first updates
alpha and beta on the validation split (TWO sampled candidates per layer, loss = CE +
lambda * log_tau(cost) of Eq. 8, Adam, then the rebias of Eq. 10), then the weights on the
training split as in stage 1. After every epoch the architecture is derived (argmax alpha and
Viterbi, viterbi.py) into OUT/arch.json; a checkpoint makes every run resumable.

    python search.py --preset laptop                                 the walkthrough on a CPU
    python search.py --space mbv2 --data /path/to/imagenet --gpus 4  the paper's search
    python search.py --resume --out runs/laptop                      continue a run
"""
import contextlib
import math
import os
import time

import torch
import torch.nn as nn

from cost import CostModel, arch_cost
from machinery import cli, options, runtime
from machinery.draw import save_arch_params
from machinery.report import finish, walkthrough_end
from supernet import SuperNet, bn_momentum
from viterbi import decisiveness, derive_supernet, derive_within

# The paper's settings (supplement A.1, A.4; arXiv v1 for label smoothing); lambda and tau, which the paper does not
# give, are the authors' published code's; `mini` (the laptop walkthrough) and `toy` (tests) are ours.
PAPER = dict(lr=0.2, lr_min=1e-4, momentum=0.9, weight_decay=4e-5, label_smoothing=0.1,
             arch_lr=3e-4, arch_betas=(0.5, 0.999), arch_weight_decay=1e-3)
DEFAULTS = {
    "mbv2": dict(PAPER, epochs=150, warmup_epochs=50, batch_size=352, lam=0.15, tau=15.0),
    "resnet": dict(PAPER, epochs=70, warmup_epochs=10, batch_size=512, lam=0.2, tau=3500.0),
    "mini": dict(PAPER, epochs=10, warmup_epochs=4, batch_size=64, lam=0.15, tau=15.0),
    "toy": dict(PAPER, epochs=4, warmup_epochs=2, batch_size=64, lam=0.15, tau=15.0),
}
# cost units of log_tau(cost) in Eq. 8: latency in ms (tau = 15), FLOPs in millions (tau = 3500)
UNITS = {"flops": 1e6, "latency_ms": 1.0}


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


def sample_path(net, generator):
    """A path B_0 -> B_n drawn as a walk over the connections, from each block to one of the next M with
    probability p_ij (Eq. 3). Not in the paper (--sample-path): a weight step on one path trains every block as the
    derived network and the readings use it, fed by its predecessor alone, not by the p-weighted sum of Eq. 4."""
    p, space = net.path_probs().detach().float().cpu(), net.space
    outgoing = {space.edges[a][0]: range(a, b) for a, b in space.out_edge_ranges}  # B_i's connections in p
    path = [0]
    while path[-1] != space.n:
        out = outgoing[path[-1]]
        path.append(space.edges[out[torch.multinomial(p[out.start:out.stop], 1, generator=generator).item()]][1])
    return path


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
    local one of Eq. 9) in the unit tau is given in (ms, or millions of FLOPs).

    With a target cost (--target-flops, --target-latency; not in the paper, which sets lambda by hand) the cost
    term is mu * log(cost / target), and after every architecture step (steer) mu follows e = log(estimate / target),
    the chained estimate of the whole super network: mu = TARGET_GAIN * e + TARGET_RATE * (the sum of e so far).
    The sum is dual ascent on a Lagrange multiplier: it grows while the super network is estimated to cost more than
    the target and falls (below zero if need be, so that cost is rewarded) while it costs less; the proportional
    part damps the overshoot that the sum alone gives under Adam. The derivation then keeps to the target
    (viterbi.derive_within)."""

    def __init__(self, cost_model, lam, tau, unit=1.0, estimator="chained", label_smoothing=0.0, target=None):
        self.cost_model, self.lam, self.tau, self.unit, self.estimator = cost_model, lam, tau, unit, estimator
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.target, self.mu, self.integral = target, 0.0, 0.0  # target: in the objective's unit, like the cost

    def cost(self, net, samples=None):
        """The estimated cost of the super network; with samples, each layer priced over its sampled candidates."""
        return self.cost_model(net.alphas(), net.path_probs(), self.estimator, samples) / self.unit

    def __call__(self, logits, y, net, samples):
        cost = self.cost(net, samples)
        if self.target is None:
            term = self.lam * torch.log(cost) / math.log(self.tau)
        else:
            term = self.mu * torch.log(cost / self.target)
        return self.criterion(logits.float(), y) + term, cost

    def steer(self, net):
        """mu from the chained estimate of the whole super network (every candidate, Eq. 5-7)."""
        with torch.no_grad():
            e = math.log(self.cost(net).item() / self.target)
        self.integral += e
        self.mu = TARGET_GAIN * e + TARGET_RATE * self.integral


# --target-*: the derived network lies within 10% of the target
TARGET_TOLERANCE = 0.1
# mu per unit of log(estimate / target), and per unit of its sum over the architecture steps so far: an estimate 10%
# off the target gives mu = 0.2 at once, and 0.04 more every 20 steps (Eq. 8's laptop setting is mu = 0.011)
TARGET_GAIN, TARGET_RATE = 2.0, 0.02


def weight_step(net, opt, criterion, x, y, samples, autocast=contextlib.nullcontext(), path=None):
    """One step on the operation weights (stage 1, and the weight half of stage 2): the sub-network
    of one sampled candidate per layer (dropping-path), cross-entropy, SGD. alpha and beta are frozen.
    path: None (every block, Eq. 4), or one sampled path (sample_path) whose blocks alone run."""
    with autocast:
        logits = net(x, samples, path)
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
        # cosine over every weight step of the search (supplement A.1)
        self.w_schedule = runtime.CosineLR(self.w_opt, args.epochs * len(self.batches("weights", 0)), args.lr_min)
        unit = UNITS.get(table["metric"], 1.0)
        target = args.target_flops if table["metric"] == "flops" else args.target_latency
        self.objective = Objective(CostModel(space, table), args.lam, args.tau, unit, args.estimator,
                                   args.label_smoothing, target and target / unit)
        self.prices = target and CostModel(space, table, skip_price=0)  # a derived network's cost (skips removed)
        self.epoch, self.weight_steps, self.best = 0, 0, None
        self.synced_steps = 0  # --check-sync: steps after which every rank was found identical

    def batches(self, half, epoch):
        """This process's batches of an epoch: the training split for the weights, the validation split for
        alpha and beta (A.1)."""
        args = self.args
        dataset, seed = (self.data.train, args.seed) if half == "weights" else (self.data.val, args.seed + 1)
        return self.proc.loader(dataset, args.batch_size, True, epoch, seed)

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
        rec = {"epoch": epoch + 1, "stage": "warmup" if epoch < self.args.warmup_epochs else "search"}
        if rec["stage"] == "search":
            rec |= self.arch_epoch(epoch)
        rec |= self.weight_epoch(epoch)
        loss, acc = runtime.all_reduce_sum([rec["train_loss"], rec["train_acc"]], self.proc.device)
        rec["train_loss"], rec["train_acc"] = loss / self.proc.world, acc / self.proc.world
        if epoch + 1 >= self.args.eval_from:
            rec |= self.evaluate()
        self.epoch = epoch + 1
        return rec

    def weight_epoch(self, epoch):
        """Stage 1, and the weight half of stage 2: an epoch of weight_step on the training split."""
        net = self.net
        loader, g, bar = self.begin("weights", epoch)
        for x, y in loader:
            samples = sample_candidates(net, 1, g)
            path = sample_path(net, g) if self.args.sample_path else None
            logits, loss = weight_step(net, self.w_opt, self.objective.criterion, x, y, samples, self.proc.autocast(),
                                       path)
            self.w_schedule.step()
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
            if self.objective.target is not None:  # every rank holds the same alpha and beta, so the same mu
                self.objective.steer(net)
            bar.update(loss=loss.item(), acc=accuracy(logits, y), cost=cost.item())
        rec = {"arch_" + k: v for k, v in bar.means().items()}
        return rec | ({"mu": self.objective.mu} if self.objective.target is not None else {})

    def derive(self):
        """The derived network (Sec. 3.4) and its candidates as samples ({slot: [index]}): argmax alpha and
        Algorithm 1; with a target, the most probable network within TARGET_TOLERANCE of it (not in the paper)."""
        net = self.net
        if self.objective.target is None:
            return derive_supernet(net), net.argmax_samples()
        target = self.objective.target * self.objective.unit
        arch, chosen = derive_within(net.space, [a.detach().cpu() for a in net.alphas()],
                                     net.path_probs().detach().cpu(), self.prices,
                                     target * (1 - TARGET_TOLERANCE), target * (1 + TARGET_TOLERANCE))
        return arch, {k: [c] for k, c in enumerate(chosen)}

    def after_step(self, loss, where):
        cli.stop_unless_finite(loss.item(), where)
        runtime.broadcast_buffers(self.net)
        if self.args.check_sync:
            runtime.check_in_sync(self.net)
            self.synced_steps += 1

    def progress(self, half, steps, epoch):
        """The progress line of one half of an epoch; its ETA counts the steps of the epochs after it."""
        args = self.args
        train, val = len(self.batches("weights", 0)), len(self.batches("arch", 0))
        later = sum(train + (val if e >= args.warmup_epochs else 0) for e in range(epoch + 1, args.epochs))
        return runtime.Progress(f"[epoch {epoch + 1}/{args.epochs} {half}]", steps, args.batch_size, later,
                                every=args.log_every, enabled=self.proc.main)

    def evaluate(self):
        """Validation accuracy (%) of the super network read at its current decision, two ways, both on the
        shared weights: `val_acc` with every layer at its argmax candidate and every path weighted by p (Eq. 4),
        and `derived_val_acc` for the derived network alone (argmax alpha, only the blocks of the Viterbi path,
        Sec. 3.4). The second is usually lower while p is not one-hot: Eq. 4 normalises p over a block's
        outgoing paths, so a block on the path also takes input from blocks off it, which the derived network
        lacks; the paper retrains the derived network for this reason. BN normalises with batch statistics
        (momentum 0, so the running statistics are left as they are)."""
        net = self.net
        arch, samples = self.derive()
        path = arch["path"]
        net.train()
        correct, total = [0, 0], 0
        with torch.no_grad(), bn_momentum(net, 0.0):
            for x, y in self.proc.loader(self.data.val, self.args.batch_size, False, 0, self.args.seed,
                                         drop_last=False):
                with self.proc.autocast():
                    for k, p in enumerate((None, path)):
                        correct[k] += (net(x, samples, p).argmax(1) == y).sum().item()
                total += len(y)
        *correct, total = runtime.all_reduce_sum(correct + [total], self.proc.device)
        return {"val_acc": 100.0 * correct[0] / max(total, 1), "derived_val_acc": 100.0 * correct[1] / max(total, 1)}

    def state(self):
        return {"config": options.run_config(self.args), "epoch": self.epoch, "global_step": self.weight_steps,
                "best": self.best, "model": self.net.state_dict(), "w_opt": self.w_opt.state_dict(),
                "w_schedule": self.w_schedule.state_dict(), "a_opt": self.a_opt.state_dict(),
                "rng": torch.get_rng_state(), "mu": self.objective.mu,
                "integral": self.objective.integral}

    def load(self, ck):
        ck = {"mu": 0.0, "integral": 0.0} | ck if isinstance(ck, dict) else ck  # older: a fixed lambda, no mu
        self.epoch, self.weight_steps, self.best, self.objective.mu, self.objective.integral = cli.load_states(
            ck, {"model": self.net, "w_opt": self.w_opt, "w_schedule": self.w_schedule, "a_opt": self.a_opt},
            "super network", {"epoch": int, "global_step": int, "best": (dict, type(None)), "mu": float,
                              "integral": float})


def accuracy(logits, y):
    return (logits.argmax(1) == y).float().mean().item() * 100


# ----------------------------------------------------------------------------------------
# One process's search, and what it writes after every epoch

def search_worker(proc, args):
    data = options.search_data(args)
    space = options.search_space(args, data)
    table = options.cost_table(args, space, proc)
    options.check_target(args, space, table, TARGET_TOLERANCE, quiet=not proc.main)  # a table it measured: only now
    search = Search(proc, args, data, space, table)
    ck_path, log_path = os.path.join(args.out, cli.CHECKPOINT), os.path.join(args.out, cli.SEARCH_LOG)
    if args.resume and os.path.exists(ck_path):
        search.load(cli.load_checkpoint(ck_path))
        if proc.main:
            print(cli.resume_line(args.out, search.epoch, args.epochs), flush=True)
    if proc.main:
        print(f"search space '{args.space}': {len(space.blocks)} blocks, {len(space.edges)} connections, "
              f"{len(search.net.layers)} mixed layers; data {data.info}; {proc.world} process(es) on {proc.device}; "
              f"cost {search.table['metric']} ({args.estimator} estimator)", flush=True)
        cli.keep_log_before(log_path, search.epoch if search.epoch else -1)
    if search.epoch == 0:  # the untrained super network's guess, as a baseline for what the search learns
        acc = search.evaluate()
        if proc.main:
            print(f"untrained super network: val acc {acc['val_acc']:.2f}%, derived network alone "
                  f"{acc['derived_val_acc']:.2f}% (chance {100 / space.num_classes:.1f}%)", flush=True)
            cli.append_line(log_path, {"epoch": 0, "stage": "init", **acc})
    for epoch in range(search.epoch, args.epochs):
        t0 = time.time()
        torch.manual_seed(args.seed * 1000 + epoch)  # everything random in this epoch follows from here
        rec = search.run_epoch(epoch)
        if proc.main:
            end_of_epoch(search, rec, time.time() - t0, log_path)
            cli.save_atomic(search.state(), ck_path)
        runtime.barrier()
    if args.check_sync and proc.main:
        print(f"check-sync: all {proc.world} ranks held identical weights, alpha and beta after each of "
              f"{search.synced_steps} steps", flush=True)
    if proc.main:
        finish(args, space, search.net.path_probs().detach().cpu(), search.derive()[0])


def end_of_epoch(search, rec, seconds, log_path):
    """Derive the architecture, log the epoch, write arch.json (and arch_warmup.json after the last
    weights-only epoch, to show what the architecture steps changed)."""
    net, args, metric, unit = search.net, search.args, search.table["metric"], search.objective.unit
    arch = search.derive()[0]
    p = net.path_probs().detach()
    with torch.no_grad():
        est = search.objective.cost(net).item() * unit
        weights = [layer.weights().cpu() for layer in net.layers]
    rec |= {"est_cost": est, "arch_cost": arch_cost(arch, search.table), "metric": metric,
            "path": arch["path"], "widths": [b["out"] for b in arch["blocks"]],
            **decisiveness(net.space, weights, p.cpu(), arch["path"]), "seconds": seconds}
    cli.save_json_atomic(arch, os.path.join(args.out, "arch.json"))
    if rec["epoch"] == args.warmup_epochs:
        cli.save_json_atomic(arch, os.path.join(args.out, "arch_warmup.json"))
    save_arch_params(net.space, net.alphas(), p, os.path.join(args.out, "arch_params.json"))
    if "val_acc" in rec and (search.best is None or rec["val_acc"] > search.best["val_acc"]):
        search.best = {"epoch": rec["epoch"], "val_acc": rec["val_acc"]}
        cli.save_json_atomic(arch, os.path.join(args.out, "arch_best.json"))
    cli.append_line(log_path, rec)
    val = (f" val acc {rec['val_acc']:.2f}% (derived network alone {rec['derived_val_acc']:.2f}%);"
           if "val_acc" in rec else "")
    print(f"epoch {rec['epoch']}/{args.epochs} ({rec['stage']}) {runtime.fmt_time(seconds)}: train loss "
          f"{rec['train_loss']:.3f} acc {rec['train_acc']:.2f}%;{val} p on path {rec['p_path']:.2f}, "
          f"w chosen {rec['w_chosen']:.2f}; estimated cost {est / unit:.3f}, derived {rec['arch_cost'] / unit:.3f} "
          f"({metric}{'/1e6' if unit != 1 else ''}){steering(search.objective, rec)}; widths {rec['widths']}", flush=True)


def steering(objective, rec):
    """The progress line's account of the target steering (--target-*), if any."""
    if objective.target is None:
        return ""
    return f", target {objective.target:.3f} (mu {rec['mu']:.3f})" if "mu" in rec else f", target {objective.target:.3f}"


def parse_args(argv=None):
    """The flags given, after a preset's; the paper's settings per space for the rest; with --resume, the run's own
    (machinery/options.py)."""
    return options.parse_search_args(options.search_parser(DEFAULTS, __doc__), argv, DEFAULTS)


def main(argv=None):
    """Everything that can be refused is refused before OUT is written; then every process searches, and with
    --preset the derived network is retrained and tested (machinery/report.py)."""
    args = parse_args(argv)
    options.check_search(args, TARGET_TOLERANCE)
    cli.begin_run(args)
    runtime.launch(search_worker, args)
    if args.preset:
        walkthrough_end(args)


if __name__ == "__main__":
    cli.run_cli(main)
