"""The derived network: build it from an arch file, retrain it and evaluate it (supplement A.1).

Retraining follows the paper's recipe by default: SGD (momentum 0.9, weight decay 4e-5), cosine
learning rate from 0.5 to 1e-4, label smoothing 0.1, 240 epochs, batch 1024, the search's
augmentation. Top-1/top-5 on the evaluation set after every epoch, a checkpoint every epoch.

    python retrain.py --arch FILE --profile                        params and FLOPs (last line: JSON)
    python retrain.py --arch FILE --data fashion-mnist --epochs 10 --batch-size 128 --lr 0.1
    python retrain.py --arch FILE --data /imagenet --gpus 8        the paper's retraining
    python retrain.py --arch FILE --weights OUT/model.pt --eval --data ...
    python retrain.py --arch FILE --weights OUT/model.pt --export net.pt2    the network, to run without this code
"""
import json
import os
import time
import warnings

import torch
import torch.nn as nn

from cost import arch_cost, count_flops
from machinery import cli, runtime
from machinery.cli import (SEED, ArgumentParser, UsageError, integer, load_arch, load_table, number, run_cli,
                           save_json_atomic)
from machinery.data import load_data
from supernet import SPACES, arch_ops, arch_text, count_params, init_weights, make_op


class ArchNet(nn.Module):
    """The stand-alone network of an arch file: every operation of viterbi.arch_ops in order,
    with affine BN and He initialisation, then global average pooling and the classifier."""

    def __init__(self, arch):
        super().__init__()
        act = SPACES[arch["space"]].act  # stem and last conv: ReLU6 for mbv2 and toy, ReLU for resnet
        *body, (_, c_in, c_out, _, _) = arch_ops(arch)
        self.features = nn.Sequential(*(make_op(o, ci, co, s, affine=True, act=act) for o, ci, co, s, _ in body))
        self.classifier = nn.Linear(c_in, c_out)
        init_weights(self)

    def forward(self, x):
        x = self.features(x)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def profile(arch):
    net = ArchNet(arch)
    return {"params": count_params(net.parameters()),
            "flops": count_flops(net, (arch["in_channels"], arch["input_size"], arch["input_size"]))}


# ----------------------------------------------------------------------------------------
# Training and evaluation

def evaluate(proc, net, dataset, batch_size):
    """Top-1 and top-5 accuracy (%) over the dataset, this process's share of it, summed over ranks."""
    net.eval()
    top1 = top5 = total = 0
    with torch.no_grad():
        for x, y in proc.loader(dataset, batch_size, False, 0, 0, drop_last=False):  # in order: no seed at play
            with proc.autocast():
                logits = net(x).float()
            k = min(5, logits.shape[1])
            hit = logits.topk(k, 1).indices == y[:, None]
            top1 += hit[:, 0].sum().item()
            top5 += hit.any(1).sum().item()
            total += len(y)
    top1, top5, total = runtime.all_reduce_sum([top1, top5, total], proc.device)
    return 100.0 * top1 / max(total, 1), 100.0 * top5 / max(total, 1)


def sgd_steps(net, batches, opt, criterion, schedule, autocast, bar):
    """SGD on a stand-alone network over `batches`, the learning-rate `schedule` (None: constant) stepped after
    every step."""
    net.train()
    for x, y in batches:
        with autocast:
            logits = net(x)
        loss = criterion(logits.float(), y)
        cli.stop_unless_finite(loss.item(), f"step {bar.step + 1} of {bar.name}")
        opt.zero_grad(set_to_none=True)
        loss.backward()  # under DDP (runtime.data_parallel) the gradients are averaged over the ranks here
        opt.step()
        if schedule is not None:
            schedule.step()
        bar.update(loss=loss.item(), acc=(logits.argmax(1) == y).float().mean().item() * 100)


class Recipe:
    """How a stand-alone network trains (args: batch, epochs, lr, lr_min, momentum, weight decay, label smoothing,
    seed): SGD with a cosine learning rate per step over all epochs (supplement A.1)."""

    def __init__(self, proc, net, dataset, args):
        self.proc, self.net, self.dataset, self.args = proc, net, dataset, args
        self.opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum,
                                   weight_decay=args.weight_decay)
        steps = args.epochs * len(self.batches(0))
        self.schedule = runtime.CosineLR(self.opt, steps, args.lr_min)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

    def batches(self, epoch):
        return self.proc.loader(self.dataset, self.args.batch_size, True, epoch, self.args.seed)

    def train_epoch(self, trained, epoch, name, epochs_after):
        """One epoch on this process's batches; `trained` is the net, or the net under DDP. Returns its Progress."""
        loader = self.batches(epoch)
        bar = runtime.Progress(name, len(loader), self.args.batch_size, epochs_after * len(loader),
                               every=self.args.log_every, enabled=self.proc.main)
        sgd_steps(trained, loader, self.opt, self.criterion, self.schedule, self.proc.autocast(), bar)
        runtime.broadcast_buffers(self.net)  # DDP sends rank 0's BN statistics before each forward; after the last, now
        return bar

    def state(self):
        return {"opt": self.opt.state_dict(), "schedule": self.schedule.state_dict()}


def retrain_worker(proc, args):
    arch = load_arch(args.arch)
    data = load_data(args.data, "retrain", args.seed, arch["input_size"], args.subset,
                     verify_images=False)  # main() verified them before launching
    torch.manual_seed(args.seed)
    net = ArchNet(arch).to(proc.device, memory_format=torch.channels_last)  # faster on oneDNN and cuDNN alike
    if args.weights:
        cli.load_states({"model": load_weights(args.weights)}, {"model": net}, f"network ({args.arch})")
    if args.eval:
        top1, top5 = evaluate(proc, net, data.val, args.batch_size)
        if proc.main:
            print(json.dumps({"top1": top1, "top5": top5}))
    if args.weights:
        if args.export and proc.main:
            export(net, arch, args.export)
        return
    recipe = Recipe(proc, net, data.train, args)
    ck_path = os.path.join(args.out, cli.CHECKPOINT)
    start, history = 0, []
    if args.resume and os.path.exists(ck_path):
        ck = cli.load_checkpoint(ck_path)
        start, history = cli.load_states(ck, {"model": net, "opt": recipe.opt, "schedule": recipe.schedule},
                                         "network", {"epoch": int, "history": list})
        if proc.main:
            print(cli.resume_line(args.out, start, args.epochs), flush=True)
    trained = runtime.data_parallel(net, proc.device)  # after a resume's load: every rank starts from rank 0's state
    if proc.main:
        print(arch_text(arch))
        print(f"data {data.info}; {proc.world} process(es) on {proc.device}", flush=True)
    for epoch in range(start, args.epochs):
        torch.manual_seed(args.seed * 1000 + epoch)
        t0 = time.time()
        bar = recipe.train_epoch(trained, epoch, f"[epoch {epoch + 1}/{args.epochs}]", args.epochs - epoch - 1)
        top1, top5 = evaluate(proc, net, data.val, args.batch_size)  # the module itself: no collectives per batch
        if args.check_sync:
            runtime.check_in_sync(net)
        history.append({"epoch": epoch + 1, "train_loss": bar.means()["loss"], "top1": top1, "top5": top5,
                        "img_s": bar.images_per_s() * proc.world, "seconds": time.time() - t0})
        if proc.main:
            print(f"epoch {epoch + 1}/{args.epochs} {runtime.fmt_time(history[-1]['seconds'])}: train loss "
                  f"{history[-1]['train_loss']:.3f}, top-1 {top1:.2f}%, top-5 {top5:.2f}%", flush=True)
            cli.save_atomic({"config": retrain_config(args), "epoch": epoch + 1, "history": history,
                             "model": net.state_dict(), **recipe.state()}, ck_path)
        runtime.barrier()
    if proc.main and args.check_sync:
        print(f"check-sync: all {proc.world} ranks held identical weights after each of {args.epochs - start} epochs")
    if proc.main:
        write_report(args, arch, net, history, data.info)
        if args.export:
            export(net, arch, args.export)


def write_report(args, arch, net, history, info):
    """OUT/model.pt and OUT/report.json: the last epoch's accuracy, params, FLOPs (and table latency)."""
    cli.save_atomic(net.state_dict(), os.path.join(args.out, "model.pt"))
    prof = profile(arch)
    last = history[-1] if history else {}
    report = {"arch": args.arch, "data": args.data, "epochs": args.epochs, "top1": last.get("top1"),
              "top5": last.get("top5"), "params": prof["params"], "flops": prof["flops"],
              "wall_s": sum(h["seconds"] for h in history), "history": history}
    if args.latency_lut:
        report["latency_ms"] = arch_cost(arch, load_table(args.latency_lut))
    save_json_atomic(report, os.path.join(args.out, "report.json"))
    print(f"top-1 {report['top1']:.2f}%, top-5 {report['top5']:.2f}% on {info.get('val')} images; "
          f"{prof['flops'] / 1e6:.2f}M FLOPs, {prof['params'] / 1e6:.3f}M params; "
          f"report in {os.path.join(args.out, 'report.json')}")


def export(net, arch, path):
    """The trained network as a torch.export ExportedProgram (eval mode: BN with its running statistics; any batch
    size) saved to `path`: torch.export.load(path).module()(x) runs it with torch alone. torch.export, not
    TorchScript: it is PyTorch's maintained path to a self-contained graph (TorchScript is in maintenance), and the
    saved program holds the weights. The file is read back and checked against the network on a random batch."""
    net = net.eval().cpu()
    r = arch["input_size"]
    batch = torch.export.Dim("batch", min=1, max=65536)
    with torch.no_grad():
        program = torch.export.export(net, (torch.randn(2, arch["in_channels"], r, r),), dynamic_shapes=({0: batch},))

    def save(tmp):
        # a file object: torch.export warns of a path not ending in .pt2 (the temporary); and its own notes on how
        # it lays out the weights are not the user's concern
        with open(tmp, "wb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            torch.export.save(program, f)
    cli.write_atomic(path, save)
    x = torch.randn(3, arch["in_channels"], r, r, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = net(x), torch.export.load(path).module()(x)
    if not torch.allclose(want, got, rtol=1e-4, atol=1e-5):
        raise RuntimeError(f"the exported network in {path} computes other outputs than the trained one "
                           f"(largest difference {(want - got).abs().max().item():.3g})")
    print(f"exported to {path} (torch.export; load it with torch.export.load(path).module()); on a random batch it "
          f"matches the trained network to {(want - got).abs().max().item():.1g}")


def load_weights(path):
    """The weights of a trained network: model.pt, or the model in a retraining checkpoint."""
    obj = cli.load_checkpoint(path, "weights")
    obj = obj["model"] if isinstance(obj, dict) and "model" in obj else obj
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UsageError(f"weights {path} hold no network's weights (model.pt or a retraining checkpoint.pt)")
    return obj


def retrain_config(args):
    return {k: getattr(args, k) for k in ("arch", "data", "subset", "seed", "epochs", "batch_size")}


def parse_args(argv=None):
    ap = ArgumentParser(__doc__)
    ap.add_argument("--arch", help="arch file (JSON) written by search.py or by hand (needed unless --resume)")
    ap.add_argument("--profile", action="store_true", help="print params and FLOPs of the network and stop")
    ap.add_argument("--data", default="fashion-mnist",
                    help="fashion-mnist (default; evaluated on its 10k test set), fake, or an ImageFolder "
                         "root with train/ and val/")
    ap.add_argument("--out", default=None, help="output folder (default: runs/retrain-<arch file name>)")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    ap.add_argument("--eval", action="store_true", help="only evaluate --weights on the evaluation set")
    ap.add_argument("--weights", help="model.pt or checkpoint.pt: the trained network to evaluate (--eval) or export "
                                      "(--export); no training")
    ap.add_argument("--export", metavar="FILE", help="write the trained network (after training, or --weights) as a "
                                                     "torch.export program that runs without this code (.pt2)")
    ap.add_argument("--force", action="store_true", help="let --export overwrite an existing file")
    ap.add_argument("--seed", type=SEED, default=0, help="seed (default 0)")
    ap.add_argument("--subset", type=integer(1), default=None, help="use the first N images of each split")
    ap.add_argument("--epochs", type=integer(1, 100_000), default=240, help="epochs (default 240)")
    ap.add_argument("--batch-size", type=integer(1, 10**6), default=1024, help="global batch size (default 1024)")
    ap.add_argument("--lr", type=number(0, 10, low_open=True), default=0.5,
                    help="initial learning rate, cosine per step (default 0.5)")
    ap.add_argument("--lr-min", type=number(0, 10), default=1e-4, help="final learning rate (default 1e-4)")
    ap.add_argument("--momentum", type=number(0, 0.999), default=0.9, help="SGD momentum (default 0.9)")
    ap.add_argument("--weight-decay", type=number(0, 1), default=4e-5, help="weight decay (default 4e-5)")
    ap.add_argument("--label-smoothing", type=number(0, 0.99), default=0.1, help="label smoothing (default 0.1)")
    ap.add_argument("--latency-lut", help="latency table: report the arch's table latency in report.json")
    ap.add_argument("--log-every", type=number(0, low_open=True), default=5.0,
                    help="seconds between progress lines (default 5)")
    runtime.add_device_args(ap)
    args = ap.parse_args(argv)
    if args.resume:  # every setting comes back from the run in OUT; a flag may only agree with it
        if not args.out:
            raise UsageError("--resume needs --out RUN, the retraining to continue")
        cli.restore_settings(ap, argv, args, args.out)
    if not args.arch:
        raise UsageError("--arch FILE is needed (an arch file written by search.py or by hand)")
    if not args.resume:  # args.json records absolute paths, so the run resumes from any directory
        args.arch, args.data = os.path.abspath(args.arch), cli.absolute_data(args.data)
        args.latency_lut = args.latency_lut and os.path.abspath(args.latency_lut)
    if args.lr_min > args.lr:
        raise UsageError("need --lr-min <= --lr")
    return args


def main(argv=None):
    """Everything that can be refused is refused before the run starts (or OUT is written)."""
    args = parse_args(argv)
    arch = load_arch(args.arch)
    if args.profile:
        print(arch_text(arch))
        print(json.dumps(profile(arch)))
        return
    runtime.check_devices(args)
    runtime.check_batch(args)
    if args.eval and not args.weights:
        raise UsageError("--eval needs --weights FILE")
    if args.weights and not (args.eval or args.export):
        raise UsageError("--weights is for --eval or --export")
    if args.export:
        cli.output_file(args.export, "--export", args.force)
    if args.latency_lut:
        arch_cost(arch, load_table(args.latency_lut))  # a table that cannot price the arch is refused now
    data = load_data(args.data, "retrain", args.seed, arch["input_size"], args.subset)
    for key, have in (("in_channels", data.in_channels), ("num_classes", data.num_classes)):
        if arch[key] != have:
            raise UsageError(f"the arch has {key}={arch[key]} but the data has {have}")
    if args.weights:  # weights of another network are refused now
        cli.load_states({"model": load_weights(args.weights)}, {"model": ArchNet(arch)}, f"network ({args.arch})")
    else:
        runtime.check_batch_fits(args.batch_size, {"training set": len(data.train)})
        if args.out is None:
            args.out = os.path.join("runs", "retrain-" + os.path.splitext(os.path.basename(args.arch))[0])
        cli.check_folder(args.out, args.resume)
        ck_path = os.path.join(args.out, cli.CHECKPOINT)
        if args.resume and os.path.exists(ck_path):
            cli.same_config(cli.checkpoint_config(ck_path, "a retraining"), retrain_config(args), ck_path)
        cli.begin_run(args)
    runtime.launch(retrain_worker, args)


if __name__ == "__main__":
    run_cli(main)
