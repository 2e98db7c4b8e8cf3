"""retrain.py on a derived toy arch (supplement A.1, "retraining"), and a toy search whose cost
term is a latency table measured on this CPU (Sec. 3.3).

Command lines run in this process where they need no process of their own (conftest.run_here)."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from conftest import ROOT, run_here
from cost import arch_cost
from machinery import runtime
from machinery.cli import load_table, save_json_atomic
from supernet import get_space
from viterbi import derive

FAKE = ["--data", "fake", "--subset", "160", "--batch-size", "16", "--lr", "0.05", "--log-every", "100"]
TOY_SEARCH = ["search.py", "--space", "toy", "--data", "fake", "--subset", "64", "--batch-size", "32",
              "--input-size", "16", "--log-every", "100", "--epochs", "2", "--warmup-epochs", "1"]
LAT = ["latency.py", "--space", "toy", "--input-size", "16", "--num-classes", "10", "--device", "cpu",
       "--batch-size", "2", "--warmup", "1", "--repeats", "2", "--threads", "1", "--progress", "100"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")


def start(argv):
    return subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc, timeout=240):
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def arch_file(tmp_path_factory):
    """A toy arch derived (Sec. 3.4) from random alpha and beta, for fake data (10 classes, 16 px)."""
    space = get_space("toy", 16, 3, 10)
    g = torch.Generator().manual_seed(3)
    alphas = [torch.randn(len(s.candidates), generator=g) for s in space.slots]
    beta = torch.randn(len(space.edges), generator=g)
    p = torch.cat([F.softmax(beta[a:b], 0) for a, b in space.out_edge_ranges])
    path = tmp_path_factory.mktemp("arch") / "arch.json"
    save_json_atomic(derive(space, alphas, p), str(path))
    return str(path)


@pytest.fixture(scope="module")
def runs(arch_file, tmp_path_factory):
    """Two-epoch retrains (one uninterrupted, one killed after its first checkpoint and resumed), a two-process
    one, and a toy latency table followed by a toy search that uses it. The killed run and the two-process one are
    real processes; the rest run in this process meanwhile (conftest.run_here)."""
    d = tmp_path_factory.mktemp("runs")
    retrain = ["retrain.py", "--arch", arch_file, "--epochs", "2"] + FAKE
    lut = str(d / "lut.json")
    killed = start(retrain + ["--out", str(d / "killed")])
    ddp = start(retrain + ["--out", str(d / "ddp"), "--procs", "2", "--check-sync"])
    ck = d / "killed" / "checkpoint.pt"
    deadline = time.time() + 200
    while not ck.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    killed_at = torch.load(ck, weights_only=False)["epoch"] if ck.exists() else None
    weights = ["retrain.py", "--arch", arch_file, "--weights", str(d / "whole" / "model.pt")]
    done = run_here({"whole": retrain + ["--out", str(d / "whole")],
                     "resumed": retrain + ["--out", str(d / "killed"), "--resume"],
                     "lat": LAT + ["--out", lut],
                     "search": TOY_SEARCH + ["--cost", "latency", "--lut", lut, "--out", str(d / "search")],
                     "other_size": TOY_SEARCH + ["--input-size", "20", "--cost", "latency", "--lut", lut,
                                                 "--out", str(d / "other")],
                     "evaluated": weights + ["--eval"] + FAKE,
                     "exported": weights + ["--export", str(d / "net.pt2")] + FAKE})
    return dict(d=d, lut=lut, killed_at=killed_at, ddp=finish(ddp), **done)


def test_retrain_runs_checkpoints_and_reports(runs):
    """Two epochs on fake data: a checkpoint and top-1/top-5 per epoch, model.pt and report.json at the end."""
    r, out = runs["whole"], runs["d"] / "whole"
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["epochs"] == 2 and [h["epoch"] for h in report["history"]] == [1, 2]
    assert 0 <= report["top1"] <= report["top5"] <= 100
    assert report["params"] > 0 and report["flops"] > 0
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == 2
    assert (out / "model.pt").exists() and not list(out.glob("*.tmp"))
    assert "img/s" in r.stdout and "ETA" in r.stdout


def test_killed_retrain_resumes_to_the_same_weights(runs):
    """SIGKILL after the first checkpoint, then --resume: the final weights and report equal the uninterrupted run's."""
    assert runs["killed_at"] == 1, "the run was not killed between its two epochs"
    r = runs["resumed"]
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout and "at epoch 2/2" in r.stdout
    a, b = (torch.load(runs["d"] / name / "model.pt", weights_only=True) for name in ("whole", "killed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = (json.loads((runs["d"] / name / "report.json").read_text()) for name in ("whole", "killed"))
    assert (ra["top1"], ra["top5"]) == (rb["top1"], rb["top5"])


def test_eval_only_reproduces_the_reported_accuracy(runs):
    """--eval --weights model.pt: the evaluation set's top-1/top-5 equal those in report.json."""
    r = runs["evaluated"]
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    report = json.loads((runs["d"] / "whole" / "report.json").read_text())
    assert (got["top1"], got["top5"]) == (report["top1"], report["top5"])


def test_exported_network_runs_without_this_code_and_computes_what_the_trained_one_does(runs, arch_file):
    """--export: a torch.export program that a Python with torch alone (isolated mode, away from this repository)
    loads and runs at any batch size, with the outputs of the trained network in eval mode."""
    from retrain import ArchNet
    r = runs["exported"]
    assert r.returncode == 0, r.stderr
    d = runs["d"]
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    torch.save(x, d / "x.pt")
    code = ("import importlib.util, torch; assert importlib.util.find_spec('retrain') is None; "
            "m = torch.export.load('net.pt2').module(); x = torch.load('x.pt'); "
            "torch.save({'5': m(x), '1': m(x[:1])}, 'y.pt')")
    run = subprocess.run([sys.executable, "-I", "-c", code], cwd=d, env=ENV, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    net = ArchNet(json.loads(open(arch_file).read()))
    net.load_state_dict(torch.load(d / "whole" / "model.pt", weights_only=True))
    with torch.no_grad():
        want = net.eval()(x)
    got = torch.load(d / "y.pt")
    assert torch.allclose(got["5"], want, rtol=1e-4, atol=1e-5) and torch.allclose(got["1"], want[:1], atol=1e-5)
    again = run_here({"again": ["retrain.py", "--arch", arch_file, "--weights", str(d / "whole" / "model.pt"),
                                "--export", str(d / "net.pt2")] + FAKE})["again"]
    assert again.returncode == 2 and "exists" in again.stderr and len(again.stderr.strip().splitlines()) == 1


def test_measured_latency_table_drives_a_toy_search(runs):
    """A CPU table of the toy space (every operation it uses) is the search's cost: the log's
    derived-arch cost is the table's sum over that arch, in milliseconds."""
    assert runs["lat"].returncode == 0, runs["lat"].stderr
    table = load_table(runs["lut"])
    assert table["metric"] == "latency_ms"
    r, out = runs["search"], runs["d"] / "search"
    assert r.returncode == 0, r.stderr
    log = [json.loads(line) for line in (out / "search_log.jsonl").read_text().splitlines()]
    arch = json.loads((out / "arch.json").read_text())
    assert log[-1]["metric"] == "latency_ms" and log[-1]["stage"] == "search"
    assert log[-1]["arch_cost"] == pytest.approx(arch_cost(arch, table)) and log[-1]["arch_cost"] > 0
    assert "cost latency_ms" in r.stdout


def test_table_for_another_input_size_is_refused(runs):
    """The 16 px table cannot price a 20 px search: one line, exit 2, nothing written."""
    r = runs["other_size"]
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "input_size" in r.stderr
    assert not (runs["d"] / "other").exists()


def test_two_rank_retraining_under_ddp_keeps_the_ranks_identical(runs):
    """--procs 2 (gloo): retraining runs under DistributedDataParallel, and after every epoch both ranks hold
    exactly rank 0's parameters and buffers (runtime.check_in_sync)."""
    r = runs["ddp"]
    assert r.returncode == 0, r.stderr
    assert "check-sync: all 2 ranks held identical weights after each of 2 epochs" in r.stdout


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 300), st.floats(1e-3, 1.0), st.floats(0.0, 1.0), st.integers(0, 300))
def test_cosine_schedule_is_the_closed_form_and_resumes_exactly(total, lr, frac, cut):
    """runtime.CosineLR gives lr_min + (lr - lr_min)(1 + cos(pi k / total)) / 2 at step k, ends at lr_min, and a
    schedule loaded from a state_dict saved at any step goes on with the very same learning rates."""
    lr_min = lr * frac
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    schedule, seen = runtime.CosineLR(opt, total, lr_min), []
    for k in range(total + 1):
        seen.append(opt.param_groups[0]["lr"])
        assert math.isclose(seen[-1], lr_min + (lr - lr_min) * (1 + math.cos(math.pi * k / total)) / 2,
                            rel_tol=1e-12, abs_tol=1e-15)
        if k == min(cut, total):
            state, opt_state = schedule.state_dict(), opt.state_dict()
        opt.step()
        schedule.step()
    assert math.isclose(seen[-1], lr_min, rel_tol=1e-12, abs_tol=1e-15)
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    resumed = runtime.CosineLR(opt2, total, lr_min)
    opt2.load_state_dict(opt_state)
    resumed.load_state_dict(state)
    for k in range(min(cut, total), total + 1):
        assert opt2.param_groups[0]["lr"] == seen[k]
        opt2.step()
        resumed.step()
