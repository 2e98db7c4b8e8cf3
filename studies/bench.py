"""How fast the search's steps run against the compute they must do (supplement A.3).

With dropping-path, a search step runs only a sampled sub-network of the super network: one
candidate per layer in a weight step, two in an architecture step. This benchmark times the two
steps exactly as search.py runs them (search.weight_step, search.arch_step, on the super network
in channels-last memory format, its depthwise convolutions supernet.DepthwiseConv2d) and compares
each with its *active-compute reference*: a plain network made of the same ops (a copy of their
modules, in PyTorch's default contiguous format, float32, plain eager, every convolution PyTorch's
stock nn.Conv2d and every ReLU6 in place, as torchvision's MobileNetV2 writes it) wired in the same
dense graph, with nothing else:

  weight step  super network: search.weight_step: one sampled candidate per layer, CE, backward, SGD.
               reference: stem, every routing block's sampled branch ops summed with fixed weights
               (Eq. 4 with p frozen), the sampled basic-layer ops, the classifier; CE, backward, an
               SGD step over its own parameters.
  arch step    super network: search.arch_step: two sampled candidates per layer, L = CE + lambda *
               log_tau(cost) priced over them (Eq. 8), backward to alpha and beta only (weights
               frozen), Adam step, then the rebias of Eq. 10.
               reference: the same sub-network with each layer's two candidates mixed by fixed
               weights; the weights are frozen and the mixing weights are leaves that require a
               gradient, so backward runs through the same activations; CE only, no optimiser.

Both see the same input and the same sampled candidates: a list of samples is drawn up front
(search.sample_candidates, seeded) and step i of both networks uses sample i. The two networks
take turns, and which goes first alternates, so machine noise hits both alike. Sampling itself
is timed apart (it is not in the step times). Before any timing, a few untimed steps run every
candidate once, so no timed step pays for choosing or building a kernel for a new op shape.
Targets: both steps at least 1.5x as fast as their reference (speed-up = reference time / super
network time, the median over steps of the two times on the same sample, paired), peak memory at
most 1.3x the reference's.

Peak memory is the largest number of bytes the step holds at once on top of what existed when
it began (parameters, buffers, optimiser state, the batch); gradients of the previous step are
released first. On CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus
memory_allocated at the start. On the CPU, which keeps no such counter: the same quantity from
the allocation and free records of PyTorch's CPU allocator, taken with torch.profiler
(profile_memory=True) and summed in time order; memory that does not go through the allocator
(e.g. library scratch buffers) is not seen. It is measured in separate, untimed steps on the
first --mem-steps samples; the figure is the largest of them.

    python -m studies.bench --space mbv2 --input-size 64 --batch-size 32 --device cpu
    python -m studies.bench --space mbv2 --device cuda --batch-size 64 --steps 50

The last line of stdout is one JSON object with every figure and the settings.
"""
import contextlib
import copy
import json
import math
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import latency
import search
from cost import CostModel, flops_table
from latency import get_device
from machinery import cli, runtime
from machinery.cli import SEED, ArgumentParser, UsageError, integer, load_arch, run_cli
from machinery.data import FAKE_SIZES
from retrain import ArchNet, sgd_steps
from search import DEFAULTS, UNITS, Objective, arch_step, sample_candidates, set_trainable, weight_step
from supernet import SPACES, SuperNet, add_all, get_space

TARGETS = {"speed-up": 1.5, "memory": 1.3}  # reference time / super network time at least; memory ratio at most


# ----------------------------------------------------------------------------------------
# The active-compute reference: the sampled sub-network and nothing else

class Mixed(nn.Module):
    """One layer of the sub-network: its sampled op modules, mixed by fixed weights when there are several."""

    def __init__(self, ops, weights):
        super().__init__()
        self.ops, self.weights = nn.ModuleList(ops), weights

    def forward(self, x):
        if len(self.ops) == 1:
            return self.ops[0](x)
        return add_all(w * op(x) for w, op in zip(self.weights, self.ops))


class Route(nn.Module):
    """A routing block of the sub-network: branch outputs weighted by fixed p_ij and summed (Eq. 4), then its layers."""

    def __init__(self, sources, branches, p, layers):
        super().__init__()
        self.sources, self.branches, self.p, self.layers = sources, nn.ModuleList(branches), p, nn.Sequential(*layers)

    def forward(self, outs):
        return self.layers(add_all(w * br(outs[i]) for w, br, i in zip(self.p, self.branches, self.sources)))


class Reference(nn.Module):
    """The network that runs exactly what net(x, samples) runs, reusing net's own op modules.

    Its constants are p = net.path_probs() and, per layer, w = softmax(alpha / T) over the sampled
    candidates (Eq. 2-4), frozen at construction, so with the same weights it computes the same
    logits as the super network. grad=True makes every constant a leaf that requires a gradient
    (the architecture step's backward pass); the constants are not parameters.
    """

    def __init__(self, net, samples, grad=False):
        super().__init__()
        with torch.no_grad():
            p = net.path_probs()
            mix = {layer.slot: layer.weights(samples[layer.slot]) for layer in net.layers}

        self.constants = []  # every fixed weight, in construction order

        def leaves(t):
            c = [v.clone().requires_grad_(grad) for v in t.unbind()]
            self.constants += c
            return c

        def mixed(layer):
            s = samples[layer.slot]
            return Mixed([layer.ops[k] for k in s], leaves(mix[layer.slot]) if len(s) > 1 else None)

        self.stem, self.classifier = net.stem, net.classifier
        self.blocks = nn.ModuleList(
            Route(blk.sources, [mixed(br) for br in blk.branches], leaves(p[idx]), [mixed(la) for la in blk.layers])
            for blk, idx in zip(net.blocks, net._in_edges))

    def forward(self, x):
        outs = [self.stem(x)]
        for blk in self.blocks:
            outs.append(blk(outs))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(outs[-1], 1), 1))


# ----------------------------------------------------------------------------------------
# The four steps

class Bench:
    """The super network, its optimisers and Eq. 8 as search.Search holds them (channels-last), the
    reference's contiguous copy of it with its own momentum buffers, and one batch in both formats."""

    def __init__(self, space, device, batch_size, seed=0, amp=False):
        d = DEFAULTS.get(space.name, DEFAULTS["mbv2"])
        self.device = device
        # the super network's steps in bf16 autocast, as search.py --amp runs them; the reference stays float32
        self.autocast = lambda: runtime.autocast(device, amp)
        torch.manual_seed(seed)
        self.net = SuperNet(space).to(device, memory_format=torch.channels_last).train()  # as search.Search
        # the reference's modules: the same weights, contiguous, stock nn.Conv2d, in-place ReLU6
        self.ref_net = copy.deepcopy(self.net).to(memory_format=torch.contiguous_format)
        for m in self.ref_net.modules():
            if isinstance(m, nn.Conv2d):
                m.__class__ = nn.Conv2d
            elif isinstance(m, nn.ReLU6):
                m.inplace = True
        self.weights = self.net.weight_parameters()
        self.w_opt = torch.optim.SGD(self.weights, lr=d["lr"], momentum=d["momentum"], weight_decay=d["weight_decay"])
        self.ref_state = {}
        # every momentum buffer exists up front, as after the first steps of a real search (zeros
        # give exactly SGD's first-step buffer), so no step of either network pays for creating one
        for net, state in ((self.net, self.w_opt.state), (self.ref_net, self.ref_state)):
            for w in net.weight_parameters():
                state[w] = {"momentum_buffer": torch.zeros_like(w)}
        self.a_opt = torch.optim.Adam(self.net.arch_parameters(), lr=d["arch_lr"], betas=d["arch_betas"],
                                      weight_decay=d["arch_weight_decay"])
        self.objective = Objective(CostModel(space, flops_table(space)), d["lam"], d["tau"], UNITS["flops"],
                                   label_smoothing=d["label_smoothing"])
        g = torch.Generator().manual_seed(seed)
        r = space.input_size
        self.x = torch.randn(batch_size, space.in_channels, r, r, generator=g).to(device)
        self.x_cl = self.x.contiguous(memory_format=torch.channels_last)
        self.y = torch.randint(0, space.num_classes, (batch_size,), generator=g).to(device)

    def freeze(self, step):
        """Weights trainable and alpha, beta frozen for the weight step; the other way round for the arch step."""
        for net in (self.net, self.ref_net):
            set_trainable(net.weight_parameters(), step == "weight")
            set_trainable(net.arch_parameters(), step == "arch")

    def super_weight(self, samples):
        weight_step(self.net, self.w_opt, self.objective.criterion, self.x_cl, self.y, samples, self.autocast())

    def super_arch(self, samples):
        arch_step(self.net, self.a_opt, self.objective, self.x_cl, self.y, samples, self.autocast())

    def reference(self, step, samples):
        """The reference for one sample, and the function that runs its step."""
        ref = Reference(self.ref_net, samples, grad=step == "arch")
        if step == "arch":
            return ref, lambda: self.objective.criterion(ref(self.x), self.y).backward()
        g = self.w_opt.param_groups[0]
        opt = torch.optim.SGD(ref.parameters(), lr=g["lr"], momentum=g["momentum"], weight_decay=g["weight_decay"])
        opt.state = self.ref_state  # its own momentum buffers, made up front

        def run():
            loss = self.objective.criterion(ref(self.x), self.y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return ref, run


# ----------------------------------------------------------------------------------------
# Measuring

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    """Wall time of fn() in seconds, the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def peak_bytes(fn, device):
    """Peak memory of fn() above what is held when it starts (the module docstring says exactly what)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # the allocator's records (+bytes on allocation, -bytes on free); the public event list folds
    # them into the ops, so read the raw ones and sum them in time order
    records = sorted((e for e in prof.profiler.kineto_results.events()
                      if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU),
                     key=lambda e: e.start_ns())
    live = peak = 0
    for e in records:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def covering_samples(net, k):
    """k candidates per layer, in as few samples as run every candidate of every layer at least once."""
    n = max(len(layer.candidates) for layer in net.layers)
    return [{layer.slot: sorted({(i * k + t) % len(layer.candidates) for t in range(k)}) for layer in net.layers}
            for i in range(math.ceil(n / k))]


def measure(nets, step, samples, warmup, mem_steps):
    """Time `step` ("weight" or "arch") of the super network and of its reference, taking turns, and
    measure the peak memory of both on the first mem_steps samples after the warm-up."""
    nets.freeze(step)
    fn = nets.super_weight if step == "weight" else nets.super_arch
    # untimed steps that together run every candidate in both networks: the kernels of each op shape and
    # memory format are chosen (cudnn.benchmark) or built (oneDNN primitives) before any timing
    warm = covering_samples(nets.net, 1 if step == "weight" else 2)
    for k, s in enumerate(warm):
        seconds = timed(lambda: (fn(s), nets.reference(step, s)[1]()), nets.device)
        if seconds > 5:  # said, as a first GPU step can take minutes (README, "On GPUs and ImageNet")
            print(f"  warm-up of the {step} step, sample {k + 1}/{len(warm)}: {seconds:.1f} s", flush=True)
    times = {"super": [], "reference": []}
    for i, s in enumerate(samples):
        _, ref_fn = nets.reference(step, s)
        runs = [("super", lambda: fn(s)), ("reference", ref_fn)]
        for who, run in runs[::1 if i % 2 == 0 else -1]:
            t = timed(run, nets.device)
            if i >= warmup:
                times[who].append(t)
    mem = {"super": 0, "reference": 0}
    for s in samples[warmup:warmup + mem_steps]:
        _, ref_fn = nets.reference(step, s)
        for who, run in (("super", lambda: fn(s)), ("reference", ref_fn)):
            nets.net.zero_grad(set_to_none=True)
            nets.ref_net.zero_grad(set_to_none=True)
            mem[who] = max(mem[who], peak_bytes(run, nets.device))
    return times, mem


def figures(times, peak, batch_size):
    med, mean = statistics.median(times), statistics.fmean(times)
    return {"img_s": batch_size / med, "ms_median": 1e3 * med, "ms_mean": 1e3 * mean, "peak_bytes": peak}


# ----------------------------------------------------------------------------------------

def main(argv=None):
    ap = ArgumentParser(__doc__)
    ap.add_argument("--space", default="mbv2", help=f"search space ({', '.join(SPACES)}; default mbv2)")
    ap.add_argument("--input-size", type=int, default=None, help="input image size (default 64; 224 with --gpu-check)")
    ap.add_argument("--num-classes", type=int, default=1000, help="classes (default 1000)")
    ap.add_argument("--batch-size", type=integer(1, 4096), default=None,
                    help="images per step (default 32; 128 with --retrain-workers; with --gpu-check 88, the "
                         "paper's 352 over 4 GPUs)")
    ap.add_argument("--device", default=None, help="cpu or cuda[:k] (default cpu; cuda with --gpu-check)")
    ap.add_argument("--amp", action="store_true", help="the super network's steps in bf16 autocast on CUDA, as "
                                                       "search.py --amp (the reference stays float32)")
    ap.add_argument("--threads", type=integer(1, 1024), default=None, help="torch CPU threads (default: torch's own)")
    ap.add_argument("--steps", type=integer(1, 10**5), default=20, help="timed steps of each network per step kind (default 20)")
    ap.add_argument("--warmup", type=integer(0, 10**5), default=3, help="untimed steps before them (default 3)")
    ap.add_argument("--mem-steps", type=integer(1), default=2,
                    help="samples whose peak memory is measured, in extra untimed steps (default 2)")
    ap.add_argument("--seed", type=SEED, default=0, help="seed of the weights, the batch and the samples (default 0)")
    ap.add_argument("--retrain-workers", type=integer(2, 64), default=None, metavar="W",
                    help="instead: stand-alone training of --arch on the CPU, one training on all cores against W at "
                         "once on cores/W threads each (studies.ground_truth --workers), side by side")
    ap.add_argument("--rounds", type=integer(1, 1000), default=5,
                    help="--retrain-workers: rounds of the two, taking turns (default 5)")
    g = ap.add_argument_group("the GPU check (README, 'On GPUs and ImageNet')")
    g.add_argument("--gpu-check", action="store_true",
                   help="on one GPU, run the real paths at real sizes and print one JSON line: this benchmark at "
                        "224 px, batch 88, bf16 autocast; the latency table's build; --search-steps steps of "
                        "search.py on synthetic 224 px data with that table; the retraining step of --arch")
    g.add_argument("--search-steps", type=integer(1, 10**6), default=300, help="search steps of the check (default 300)")
    g.add_argument("--arch", default=os.path.join("examples", "mobilenetv2.json"),
                   help="the arch whose retraining step the check times (default examples/mobilenetv2.json)")
    g.add_argument("--retrain-batch", type=integer(1, 4096), default=128,
                   help="its per-GPU batch (default 128, the paper's 1024 over 8 GPUs)")
    args = ap.parse_args(argv)
    check = args.gpu_check
    if args.retrain_workers:
        args.batch_size = args.batch_size or 128  # retrain.py's laptop batch
        return retrain_workers(args)
    for key, value in (("device", "cuda" if check else "cpu"), ("input_size", 224 if check else 64),
                       ("batch_size", 88 if check else 32)):
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.amp = args.amp or check
    if args.mem_steps > args.steps:
        raise UsageError(f"--mem-steps {args.mem_steps} exceeds --steps {args.steps}")
    return gpu_check(args) if check else bench(args)


def bench(args):
    """The benchmark: both steps of the super network against their reference; returns the figures."""
    space = get_space(args.space, args.input_size, 3, args.num_classes)
    dev, device_name = get_device(args.device, args.threads)
    nets = Bench(space, dev, args.batch_size, args.seed, args.amp)

    # the samples of every step, drawn up front (dropping-path, supplement A.3); sampling is timed apart
    g = torch.Generator().manual_seed(args.seed)
    n = args.warmup + args.steps
    samples, sample_ms = {}, {}
    for step, k in (("weight", 1), ("arch", 2)):
        t0 = time.perf_counter()
        samples[step] = [sample_candidates(nets.net, k, g) for _ in range(n)]
        sample_ms[step] = 1e3 * (time.perf_counter() - t0) / n

    res = {"settings": {"space": space.name, "input_size": space.input_size, "batch_size": args.batch_size,
                        "num_classes": space.num_classes, "device": device_name, "torch": torch.__version__,
                        "threads": torch.get_num_threads(), "steps": args.steps, "warmup": args.warmup,
                        "mem_steps": args.mem_steps, "seed": args.seed, "amp": args.amp}}
    print(f"bench: space {space.name} at {space.input_size}px, batch {args.batch_size}, {device_name}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; {args.warmup} warm-up + {args.steps} "
          f"timed steps per network, taking turns")
    print(f"{'step':<7} {'network':<10} {'img/s':>9} {'ms median':>10} {'ms mean':>9} {'peak MiB':>9}")
    met = True
    for step in ("weight", "arch"):
        times, mem = measure(nets, step, samples[step], args.warmup, args.mem_steps)
        for who in ("super", "reference"):
            f = res[f"{step}_{who}"] = figures(times[who], mem[who], args.batch_size)
            print(f"{step:<7} {who:<10} {f['img_s']:9.1f} {f['ms_median']:10.2f} {f['ms_mean']:9.2f} "
                  f"{f['peak_bytes'] / 2**20:9.2f}")
        # the speed-up is paired: the median over steps of reference / super time on the same sample, run
        # back to back, so the spread of cost between samples and slow drifts of the machine cancel
        s, r = res[f"{step}_super"], res[f"{step}_reference"]
        speedup = statistics.median(c / a for a, c in zip(times["super"], times["reference"]))
        m_ratio = s["peak_bytes"] / max(r["peak_bytes"], 1)
        ok_t, ok_m = speedup >= TARGETS["speed-up"], m_ratio <= TARGETS["memory"]
        met &= ok_t and ok_m
        res[f"{step}_ratio"] = {"speedup": speedup, "speedup_of_medians": r["ms_median"] / s["ms_median"],
                                "memory": m_ratio, "speedup_target": TARGETS["speed-up"],
                                "memory_target": TARGETS["memory"], "met": ok_t and ok_m}
        verdict = {True: "met", False: "MISSED"}
        print(f"{step:<7} {'ratio':<10} speed-up {speedup:.3f}x (target >= {TARGETS['speed-up']}x: {verdict[ok_t]}; "
              f"ratio of medians {res[f'{step}_ratio']['speedup_of_medians']:.3f}x), "
              f"memory {m_ratio:.3f}x (target <= {TARGETS['memory']}x: {verdict[ok_m]})")
    res |= dropping_path_saving(nets, res["weight_super"]["peak_bytes"])
    res["sample_ms"] = sample_ms
    res["targets_met"] = met
    print(f"sampling (not in the step times): {sample_ms['weight']:.2f} ms per weight step, "
          f"{sample_ms['arch']:.2f} ms per arch step; all targets {'met' if met else 'NOT met'}")
    print(json.dumps(res))
    return res


def dropping_path_saving(nets, sampled_peak):
    """What dropping-path saves (supplement A.3): the peak memory of one step of the whole super network, every
    candidate of every layer mixed by softmax(alpha) (Eq. 2), forward and backward, against the sampled step's."""
    nets.freeze("weight")
    nets.w_opt.zero_grad(set_to_none=True)
    try:
        full = peak_bytes(lambda: nets.objective.criterion(nets.net(nets.x_cl), nets.y).backward(), nets.device)
    except torch.OutOfMemoryError:  # at 224 px the whole super network may not fit: that is the point of A.3
        full = float("inf")
    nets.w_opt.zero_grad(set_to_none=True)
    saving = full / max(sampled_peak, 1)
    print(f"without dropping-path (every candidate, Eq. 2; forward + backward): peak {full / 2**20:.2f} MiB, "
          f"{saving:.2f}x the sampled weight step's (inf: out of memory)")
    if full == float("inf"):
        return {"full_supernet_peak_bytes": None, "dropping_path_memory_saving": None}
    return {"full_supernet_peak_bytes": full, "dropping_path_memory_saving": saving}



# ----------------------------------------------------------------------------------------
# The GPU check: the real paths at real sizes, one JSON line

def search_epochs(steps, batch_size):
    """Epochs (half of them weights-only) of a search on fake data that make at least `steps` steps."""
    w, a = FAKE_SIZES[0] // batch_size, FAKE_SIZES[1] // batch_size  # weight and arch steps per epoch
    if w < 1 or a < 1:
        raise UsageError(f"--batch-size {batch_size} exceeds the fake data's splits {FAKE_SIZES}")
    epochs = 2
    while epochs * w + (epochs - epochs // 2) * a < steps:
        epochs += 1
    return epochs, epochs // 2, epochs * w + (epochs - epochs // 2) * a


def gpu_check(args):
    """This benchmark, the latency table of the space, a short search with that table and the retraining step
    of an arch, each on the device at the given sizes; prints one JSON object (stdout's only line)."""
    with contextlib.redirect_stdout(sys.stderr):  # progress on stderr; stdout holds the one JSON line
        out = check_parts(args)
    print(json.dumps(out))
    return out


def check_parts(args):
    t_start = time.time()
    dev, device_name = get_device(args.device, args.threads)
    cuda = dev.type == "cuda"
    out = {"device": device_name, "torch": torch.__version__, "space": args.space, "input_size": args.input_size,
           "batch_size": args.batch_size, "amp": args.amp and cuda, "channels_last": True}
    res = bench(args)
    out["bench"] = {step: {"super_img_s": res[f"{step}_super"]["img_s"],
                           "reference_img_s": res[f"{step}_reference"]["img_s"],
                           "speedup": res[f"{step}_ratio"]["speedup"],
                           "super_peak_MiB": res[f"{step}_super"]["peak_bytes"] / 2**20,
                           "reference_peak_MiB": res[f"{step}_reference"]["peak_bytes"] / 2**20}
                    for step in ("weight", "arch")}
    with tempfile.TemporaryDirectory() as tmp:
        # the latency table of the search below (supplement A.1: batch 32), built as search.py builds its own
        lut = os.path.join(tmp, "lut.json")
        space = get_space(args.space, args.input_size, 3, 10)  # fake data: 10 classes
        t0 = time.time()
        table = latency.build_table(space, dev, device_name, lut, every=30.0)
        out["latency_table"] = {"ops": len(table["costs"]), "wall_s": time.time() - t0}
        # search.py itself on synthetic data of the check's size: warm-up epochs, then alternating ones
        epochs, warm, steps = search_epochs(args.search_steps, args.batch_size)
        run = os.path.join(tmp, "search")
        t0 = time.time()
        search.main(["--space", args.space, "--data", "fake", "--input-size", str(args.input_size),
                     "--batch-size", str(args.batch_size), "--epochs", str(epochs), "--warmup-epochs", str(warm),
                     "--eval-from", str(epochs), "--lut", lut, "--out", run, "--log-every", "30"]
                    + (["--gpus", "1", "--amp"] if cuda else []))
        log = cli.read_log(os.path.join(run, cli.SEARCH_LOG))
        out["search"] = {"steps": steps, "epochs": epochs, "wall_s": time.time() - t0,
                         "epoch_s": sum(r["seconds"] for r in log if "seconds" in r),
                         "train_img_s": log[-1]["train_img_s"], "val_acc": log[-1].get("val_acc"),
                         "arch_cost_ms": log[-1]["arch_cost"], "widths": log[-1]["widths"]}
    out["retrain"] = retrain_step(load_arch(args.arch), dev, args.retrain_batch, args.amp and cuda, args.steps)
    out["wall_s"] = time.time() - t_start
    return out


def retrain_step(arch, dev, batch_size, amp, steps, barrier=None, memory=True):
    """img/s and peak memory of retrain.py's training step (retrain.sgd_steps) on the arch, synthetic batches; the
    timing starts when every party of `barrier` (if any) is warm."""
    torch.manual_seed(0)
    net = ArchNet(arch).to(dev, memory_format=torch.channels_last)
    r = arch["input_size"]
    batch = (torch.randn(batch_size, arch["in_channels"], r, r).to(dev, memory_format=torch.channels_last),
             torch.randint(0, arch["num_classes"], (batch_size,)).to(dev))  # on the device: the step alone
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=4e-5)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    autocast = runtime.autocast(dev, amp)

    def run(n):
        bar = runtime.Progress("retrain", n, batch_size, enabled=False)
        sgd_steps(net, [batch] * n, opt, criterion, None, autocast, bar)
    run(2)  # kernels chosen and momentum buffers made before timing
    if barrier is not None:
        barrier.wait()
    seconds = timed(lambda: run(steps), dev)
    return {"arch": arch.get("space"), "batch_size": batch_size, "img_s": steps * batch_size / seconds,
            "peak_MiB": peak_bytes(lambda: run(1), dev) / 2**20 if memory else None}


# ----------------------------------------------------------------------------------------
# Stand-alone training: one at a time on all cores, or W at once (studies.ground_truth --workers)

def _train_worker(arch, threads, batch_size, steps, barrier, results):
    torch.set_num_threads(threads)
    results.put(retrain_step(arch, torch.device("cpu"), batch_size, False, steps, barrier, memory=False)["img_s"])


def trainings_at_once(arch, workers, threads, batch_size, steps):
    """Summed img/s of `workers` spawned processes training `arch` together, each on `threads` threads; their
    timed steps start together (a barrier after each one's warm-up)."""
    ctx = torch.multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_train_worker, args=(arch, threads, batch_size, steps, barrier, results))
             for _ in range(workers)]
    for p in procs:
        p.start()
    rates = [results.get() for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"a training process exited with {p.exitcode}")
    return sum(rates)


def retrain_workers(args):
    """Stand-alone training of --arch at --batch-size: one training on every core, against --retrain-workers at once
    on cores/W threads each, taking turns (which goes first alternates); the median over --rounds of each and of the
    ratio of the two in one round. Every figure in a spawned process, so neither path runs in this one's state."""
    arch, cores = load_arch(args.arch), os.cpu_count() or 1
    w = args.retrain_workers
    ones, many, ratios = [], [], []
    for r in range(args.rounds):
        order = ("one", "many") if r % 2 == 0 else ("many", "one")
        got = {kind: trainings_at_once(arch, 1 if kind == "one" else w, cores if kind == "one" else max(1, cores // w),
                                       args.batch_size, args.steps) for kind in order}
        ones.append(got["one"])
        many.append(got["many"])
        ratios.append(got["many"] / got["one"])
        print(f"round {r + 1}/{args.rounds}: one training on {cores} threads {got['one']:.0f} img/s, {w} at once "
              f"{got['many']:.0f} img/s in all: x{ratios[-1]:.2f}", file=sys.stderr, flush=True)
    out = {"arch": os.path.abspath(args.arch), "batch_size": args.batch_size, "steps": args.steps, "cores": cores,
           "workers": w, "one_img_s": statistics.median(ones), "at_once_img_s": statistics.median(many),
           "speedup": statistics.median(ratios), "rounds": args.rounds}
    print(f"stand-alone training, batch {args.batch_size}: one at a time {out['one_img_s']:.0f} img/s, {w} at once "
          f"{out['at_once_img_s']:.0f} img/s: x{out['speedup']:.2f} (median of {args.rounds} paired rounds)")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    run_cli(main)
