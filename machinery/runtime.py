"""Devices, distribution and progress: the plumbing that search.py and retrain.py share.

This file exists so both programs launch and report the same way: one process per device (`--gpus N`
with NCCL, `--procs N` on the CPU with gloo, or under torchrun). Retraining a fixed network runs under
torch's DistributedDataParallel (data_parallel). The search averages its gradients with one explicit
all-reduce instead (average_gradients): every step trains either the weights or alpha and beta of a
different sampled sub-network, and DDP fixes the parameters it reduces when it wraps the model.
Either way rank 0's buffers (BN statistics) reach every rank, so all ranks hold identical parameters.

    python -m machinery.runtime     prints what this machine offers (devices, threads, backends)
"""
import ctypes
import math
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from machinery.cli import Terminated, UsageError, die_with_parent, integer, on_sigterm
from machinery.data import make_loader

# A super network runs hundreds of distinct convolution shapes (every candidate of every layer, forward and
# backward), more than oneDNN's default cache of 1,024 compiled CPU kernels holds, so without this it rebuilds
# kernels at every step (measured: ~45% of an mbv2 search step at 64 px, batch 32). Read by oneDNN when it
# first runs, so it must be set before any convolution; a value already in the environment wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")


def keep_freed_memory():
    """glibc's malloc hands a freed block of several MB back to the kernel (the top of its heap trimmed, or a
    mapping unmapped), so the next step's tensor of that size is paged in again, page by page. Keeping freed memory
    for reuse (blocks up to 32 MB from the heap, which is never trimmed) removed this: one mbv2-style layer
    (16 -> 96 -> 24 channels, 28x28, batch 32) timed 10.6 ms with 6,436 page faults a run, 2.2 ms with none; a
    training step of the walkthrough's network at batch 128 went from 3,000-5,500 faults to 400. A setting already
    in the environment (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_) wins; elsewhere than glibc, nothing."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest
    mallopt(m_trim_threshold, 2**31 - 1)  # a C int: never trim


keep_freed_memory()


def autocast(device, amp):
    """bf16 autocast on CUDA with --amp; a no-op context otherwise."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


@dataclass(frozen=True)
class Proc:
    """This process of the run: rank `rank` of `world` on `device`, with `workers` data-loading processes
    (--workers; default 4 on CUDA, none on the CPU, where the main process loads) and bf16 autocast with amp."""
    rank: int
    world: int
    device: torch.device
    workers: int
    amp: bool

    @property
    def main(self):
        return self.rank == 0

    def loader(self, dataset, batch_size, shuffle, epoch, seed, drop_last=True):
        """This process's batches of one epoch (data.make_loader), on its device in channels-last."""
        return make_loader(dataset, batch_size, shuffle, epoch, seed, self.rank, self.world, self.workers,
                           self.device, drop_last)

    def autocast(self):
        return autocast(self.device, self.amp)


def add_device_args(ap):
    g = ap.add_argument_group("devices and distribution")
    g.add_argument("--gpus", type=integer(0, 256), default=0,
                   help="train on N GPUs, one process each, NCCL (default 0: CPU)")
    g.add_argument("--procs", type=integer(1, 256), default=1, help="on the CPU: N processes with gloo (default 1)")
    g.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    g.add_argument("--workers", type=integer(0, 256), default=None,
                   help="data-loading workers per process (default 4 on CUDA, 0 on CPU)")
    g.add_argument("--check-sync", action="store_true",
                   help="verify that all ranks hold identical parameters (after every step or epoch; slow; for tests)")


def under_torchrun():
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def check_batch(args):
    """The global batch is split evenly over the processes."""
    if args.batch_size % (args.gpus or args.procs):
        raise UsageError(f"--batch-size {args.batch_size} must be divisible by the number of processes "
                         f"({args.gpus or args.procs})")


def check_batch_fits(batch_size, sizes):
    """Every split ({name: images}) must hold at least one batch, or its loader would make no step."""
    for name, n in sizes.items():
        if n < batch_size:
            raise UsageError(f"--batch-size {batch_size} is larger than the {name} ({n} images); lower it or "
                             "use more data")


def check_devices(args):
    if args.gpus and args.procs > 1:
        raise UsageError("--gpus and --procs exclude each other")
    if args.gpus and not under_torchrun():
        have = torch.cuda.device_count()
        if have < args.gpus:
            raise UsageError(f"--gpus {args.gpus} asked for, but {have} CUDA device(s) are visible")
    if args.amp and not uses_cuda(args):
        raise UsageError("--amp needs CUDA (--gpus N)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(worker, args):
    """Run worker(proc, args) in every process of the run (proc: a Proc)."""
    if under_torchrun():
        rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
        cuda = torch.cuda.is_available()
        return _worker(rank, world, local if cuda else None, args, worker, None)
    world = args.gpus or args.procs
    if world == 1:
        return _worker(0, 1, 0 if args.gpus else None, args, worker, None)
    port = free_port()
    try:
        mp.spawn(_spawned, args=(world, args, worker, port), nprocs=world, join=True)
    except mp.ProcessExitedException as e:  # a worker refused (its one line is printed) or was killed
        if e.exit_code == 130:
            raise KeyboardInterrupt from None  # Ctrl-C: run_cli says it in one line
        if e.exit_code in (143, -signal.SIGTERM):
            raise Terminated from None
        sys.exit(e.exit_code if e.exit_code and e.exit_code > 0 else 1)


def _spawned(rank, world, args, worker, port):
    die_with_parent()  # a worker never finishes a run on its own (nor writes beside a resumed one)
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        _worker(rank, world, rank if args.gpus else None, args, worker, port)
    except UsageError as e:  # one line, as run_cli prints it; spawn then stops the other workers
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except Terminated:  # SIGTERM, as Ctrl-C: the parent says it in one line
        sys.exit(143)
    except KeyboardInterrupt:  # Ctrl-C reaches every process; the parent says it in one line
        sys.exit(130)


def _worker(rank, world, gpu, args, worker, port):
    if gpu is not None:
        torch.cuda.set_device(gpu)
        torch.backends.cudnn.benchmark = True
        device = torch.device("cuda", gpu)
    else:
        device = torch.device("cpu")
    if world > 1:
        if port is not None:
            os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
        dist.init_process_group("nccl" if gpu is not None else "gloo", rank=rank, world_size=world)
        if gpu is None:  # share the cores between the processes instead of oversubscribing them
            torch.set_num_threads(max(1, torch.get_num_threads() // world))
    workers = args.workers if args.workers is not None else (4 if device.type == "cuda" else 0)
    try:
        return worker(Proc(rank, world, device, workers, args.amp), args)
    finally:
        if world > 1:
            dist.destroy_process_group()


def world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def uses_cuda(args):
    """Whether the run trains on CUDA: --gpus N, or torchrun on a machine with CUDA."""
    return bool(args.gpus) or (under_torchrun() and torch.cuda.is_available())


def main_first(fn):
    """fn() on rank 0, then on every other rank after a barrier: what rank 0 writes (a split), the others read."""
    if rank() == 0:
        out = fn()
        barrier()
        return out
    barrier()
    return fn()


def _collective_in_place(tensors, collective):
    """Run `collective` on one flat copy of `tensors` (one message, not one per tensor) and copy the result back."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    collective(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def data_parallel(model, device):
    """The model under DistributedDataParallel when there are several ranks (gradients averaged during
    backward, rank 0's buffers broadcast before each forward); the model itself on one process."""
    if world_size() == 1:
        return model
    # gradients as views of DDP's buckets: no copy, and channels-last grads need not match the buckets' strides
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)


def average_gradients(params):
    """All-reduce the gradients of `params` and divide by the world size, as DDP does."""
    if world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        _collective_in_place(grads, lambda flat: (dist.all_reduce(flat), flat.div_(world_size())))


def broadcast_buffers(model):
    """Copy rank 0's buffers (BN running statistics) to every rank, as DDP does before each forward."""
    if world_size() == 1:
        return
    _collective_in_place([b for b in model.buffers() if b.dtype.is_floating_point],
                         lambda flat: dist.broadcast(flat, 0))


def check_in_sync(model):
    """Raise unless every rank holds exactly rank 0's parameters and buffers (used by --check-sync)."""
    if world_size() == 1:
        return
    flat = torch.cat([t.detach().reshape(-1).double() for t in list(model.parameters()) + list(model.buffers())])
    ref = flat.clone()
    dist.broadcast(ref, 0)
    if not torch.equal(flat, ref):
        raise RuntimeError(f"rank {dist.get_rank()} diverged from rank 0")


def all_reduce_sum(values, device):
    """Sum a list of numbers over ranks."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def barrier():
    if world_size() > 1:
        dist.barrier()


class CosineLR(torch.optim.lr_scheduler.LRScheduler):
    """Cosine annealing of every group's learning rate from its initial value to lr_min over `total` steps (SGDR
    without restarts; supplement A.1), one scheduler step per optimiser step. torch's CosineAnnealingLR steps by a
    recursion whose rounding drifts from the closed form within a few steps; this is the closed form, so a run's
    numbers do not depend on how the schedule got to its step."""

    def __init__(self, optimizer, total, lr_min):
        self.total, self.lr_min = total, lr_min
        super().__init__(optimizer)

    def get_lr(self):
        t = min(self.last_epoch, self.total) / max(self.total, 1)
        return [self.lr_min + 0.5 * (lr - self.lr_min) * (1 + math.cos(math.pi * t)) for lr in self.base_lrs]


def fmt_time(s):
    s = int(s)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """A line every `every` seconds with step/steps, running metrics, images/s and ETA."""

    def __init__(self, name, steps, batch, remaining_after=0, every=5.0, enabled=True):
        self.name, self.steps, self.batch, self.after = name, steps, batch, remaining_after
        self.every, self.enabled = every, enabled
        self.start = self.last = time.time()
        self.sums, self.n, self.step = {}, 0, 0

    def update(self, **metrics):
        self.step += 1
        self.n += 1
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        now = time.time()
        if self.enabled and (now - self.last >= self.every or self.step == self.steps):
            self.last = now
            rate = self.step / (now - self.start)
            eta = (self.steps - self.step + self.after) / max(rate, 1e-9)
            shown = " ".join(f"{k} {v / self.n:.4g}" for k, v in self.sums.items())
            print(f"{self.name} {self.step}/{self.steps} {shown} {rate * self.batch:.0f} img/s ETA {fmt_time(eta)}",
                  flush=True)

    def means(self):
        return {k: v / max(self.n, 1) for k, v in self.sums.items()}

    def images_per_s(self):
        return self.step * self.batch / max(time.time() - self.start, 1e-9)


def main():
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"CUDA devices: {torch.cuda.device_count()}" + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
    print(f"backends: gloo {dist.is_gloo_available()}, nccl {dist.is_nccl_available()}")
    print(f"under torchrun: {under_torchrun()}")
    print("search.py and retrain.py take --gpus N (NCCL), --procs N (gloo, CPU), --amp, or run under torchrun")


if __name__ == "__main__":
    if "--help" in sys.argv or "-h" in sys.argv:
        print(__doc__)
    else:
        main()
