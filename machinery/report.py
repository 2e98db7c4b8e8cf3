"""What a finished search reports: the derived network's pictures and summary (finish), and at the end of the
laptop walkthrough (search.py --preset laptop) the derived network retrained and tested beside what shows that
the search learned (walkthrough_end, OUT/summary.json).
"""
import json
import os

import retrain
from machinery import cli, options
from machinery.draw import draw_search
from supernet import arch_text

IMAGENET_COMMAND = "python search.py --space mbv2 --data /path/to/imagenet --gpus 4"


def finish(args, space, p, arch):
    """The derived network's pictures and summary, and the command that retrains it."""
    draw_search(args.out, space, p, arch)
    prof = retrain.profile(arch)
    print("\nderived architecture (argmax alpha, Viterbi over p):")
    print(arch_text(arch))
    print(f"path {' -> '.join(f'B_{i}' for i in arch['path'])}; {prof['flops'] / 1e6:.2f}M FLOPs, "
          f"{prof['params'] / 1e6:.3f}M params")
    print(f"pictures: {os.path.join(args.out, 'arch.svg')}, {os.path.join(args.out, 'supernet.svg')}")
    print(f"retrain it:  python retrain.py --arch {os.path.join(args.out, 'arch.json')} --data {args.data}"
          + (f" --gpus {args.gpus}" if args.gpus else ""))


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
    print(f"\n== retraining the derived network ({' '.join(options.RETRAIN_PRESETS[args.preset])}) ==", flush=True)
    retrain.main(["--arch", arch_path, "--data", args.data, "--out", out, "--seed", str(args.seed),
                  "--log-every", str(args.log_every)] + options.RETRAIN_PRESETS[args.preset] + resume)
    report, arch = cli.read_json(os.path.join(out, "report.json"), "report"), cli.load_arch(arch_path)
    log = cli.read_log(os.path.join(args.out, cli.SEARCH_LOG))
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
    cli.save_json_atomic(summary, os.path.join(args.out, "summary.json"))
    print(f"outputs: {args.out}/ (summary.json, arch.json, arch.svg, supernet.svg, search_log.jsonl, retrain/)")
    command = IMAGENET_COMMAND
    if args.random:
        command = command.replace("search.py", "-m studies random") + " --random 15 --epochs 5 --target-flops 361M"
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
