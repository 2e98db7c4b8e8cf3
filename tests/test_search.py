"""search.py: dropping-path sampling, the rebias of Eq. 10, a whole toy search, ranks in step,
exact resume, and refusals of bad input."""
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from conftest import ROOT, run_here
from test_data import make_folder
from machinery import cli
from machinery.cli import run_cli, save_json_atomic
from cost import CostModel, arch_cost, flops_table
from retrain import profile
import search
from search import rebias, sample_candidates
import supernet
import viterbi
from studies import random_search
from supernet import BasicLayer, get_space

TOY = ["search.py", "--space", "toy", "--data", "fake", "--subset", "64", "--batch-size", "32",
       "--input-size", "16", "--log-every", "100"]


def toy(**change):
    """TOY with some flags' values changed, e.g. toy(space="nope")."""
    argv = list(TOY)
    for key, value in change.items():
        argv[argv.index("--" + key.replace("_", "-")) + 1] = value
    return argv


def run(args):
    """A command line (`script.py ...` or `-m package ...`) in this process (conftest.run_here); one that starts
    processes of its own (--procs) as a real process."""
    if "--procs" in args:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, text=True, capture_output=True)
    script, argv = (args[1] + "/__main__.py", args[2:]) if args[0] == "-m" else (args[0], args[1:])
    return run_here({"run": [script, *argv]})["run"]


def snapshot(folder):
    """Name -> content hash of every file in folder: to prove a refused run wrote nothing."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                out[os.path.relpath(os.path.join(dirpath, f), folder)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 8).flatmap(lambda k: st.tuples(
    st.lists(st.floats(-5, 5), min_size=k, max_size=k),
    st.lists(st.floats(-5, 5), min_size=k, max_size=k),
    st.lists(st.integers(0, k - 1), min_size=2, max_size=2, unique=True))), st.sampled_from([1.0, 0.9, 0.5, 2.0]))
def test_rebias_keeps_unsampled_softmax_weights(case, t):
    """Eq. 10 (supplement A.3): after an update of any size, the rebias leaves every unsampled weight
    w = softmax(alpha / T) as it was, at any temperature T."""
    old, new, sample = case
    old, alpha = torch.tensor(old, dtype=torch.float64), torch.tensor(new, dtype=torch.float64)
    rebias([alpha], [old], {0: sample}, t)
    w_old, w_new = F.softmax(old / t, 0), F.softmax(alpha / t, 0)
    unsampled = [k for k in range(len(old)) if k not in sample]
    assert torch.allclose(w_new[unsampled], w_old[unsampled], rtol=1e-9, atol=1e-12)
    assert torch.isclose(w_new[sample].sum(), w_old[sample].sum(), rtol=1e-9)
    # the update itself survives within the sampled pair: their difference is the updated one
    assert torch.isclose(alpha[sample[0]] - alpha[sample[1]],
                         torch.tensor(new, dtype=torch.float64)[sample[0]] - torch.tensor(new, dtype=torch.float64)[sample[1]])


def test_sampling_follows_softmax_alpha():
    """Dropping-path (A.3): one candidate per layer is drawn with probability w = softmax(alpha / T)
    (here T = 0.9, the ResNet search's temperature)."""
    layer = BasicLayer(["skip"] * 5, 4, 4, 1, 8, temperature=0.9)
    layer.slot = 0
    with torch.no_grad():
        layer.alpha.copy_(torch.tensor([1.0, 0.0, -1.0, 2.0, 0.5]))
    net = SimpleNamespace(layers=[layer])
    g = torch.Generator().manual_seed(0)
    draws = 20000
    counts = torch.zeros(5)
    for _ in range(draws):
        counts[sample_candidates(net, 1, g)[0][0]] += 1
    p = F.softmax(layer.alpha.detach() / 0.9, 0)
    assert torch.all((counts / draws - p).abs() < 4 * torch.sqrt(p * (1 - p) / draws) + 1e-3)
    two = sample_candidates(net, 2, g)[0]
    assert len(set(two)) == 2  # two different candidates, without replacement


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_sampled_paths_are_paths_drawn_by_p(seed):
    """--sample-path: a walk B_0 -> B_n over the connections; a hop i -> j is taken with probability p_ij (Eq. 3),
    checked on the first hop's frequencies; with p near one-hot the walk is the Viterbi path."""
    net = supernet.SuperNet(get_space("toy", 16, 3, 10))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        net.beta.copy_(torch.randn(len(net.space.edges), generator=g))
    space, p = net.space, net.path_probs().detach()
    draws, first = 2000, {}
    for _ in range(draws):
        path = search.sample_path(net, g)
        assert path[0] == 0 and path[-1] == space.n and set(zip(path, path[1:])) <= set(space.edges)
        first[path[1]] = first.get(path[1], 0) + 1
    for k, (i, j) in enumerate(space.edges):
        if i == 0:
            q = p[k].item()
            assert abs(first.get(j, 0) / draws - q) < 4 * (q * (1 - q) / draws) ** 0.5 + 1e-3
    # p near one-hot: every block's largest beta ahead of its next by 50 (a fixed factor leaves near ties far from
    # one-hot: betas 0.001 apart, times 1000, give p = 0.73 and 0.27)
    with torch.no_grad():
        tops = [sorted(net.beta[a:b].tolist())[-2:] for a, b in space.out_edge_ranges if b - a > 1]
        net.beta.mul_(50 / min(high - low for low, high in tops))
    assert search.sample_path(net, g) == viterbi.derive_supernet(net)["path"]


def test_arch_step_at_temperature_mixes_and_rebiases_with_it():
    """The ResNet search's temperature (T = 0.9) reaches every part of search.arch_step: the sampled
    layer's forward mixes its two candidates by softmax(alpha[pair] / T), and after the step every
    unsampled candidate keeps its w = softmax(alpha / T) (Eq. 10 at T) while alpha has moved."""
    defn = dataclasses.replace(get_space("toy", 16, 3, 10).defn, temperature=0.9)
    space = supernet.Space(defn, 16, 3, 10)
    torch.manual_seed(0)
    net = supernet.SuperNet(space).train()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for a in net.arch_parameters():
            a.normal_(0, 1, generator=g)
    samples = sample_candidates(net, 2, g)
    layer = next(l for l in net.layers if len(l.ops) > 2)
    x = torch.randn(4, layer.c_in, layer.resolution, layer.resolution)
    s = samples[layer.slot]
    with torch.no_grad():
        w = F.softmax(layer.alpha[s] / 0.9, 0)
        assert torch.allclose(layer(x, s), sum(wi * layer.ops[o](x) for wi, o in zip(w, s)), atol=1e-5)
    before = [F.softmax(l.alpha.detach() / 0.9, 0) for l in net.layers]
    alphas0 = [l.alpha.detach().clone() for l in net.layers]
    search.set_trainable(net.weight_parameters(), False)
    opt = torch.optim.Adam(net.arch_parameters(), lr=0.1)
    objective = search.Objective(CostModel(space, flops_table(space)), 0.15, 15.0, 1e6)
    search.arch_step(net, opt, objective, torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,)), samples)
    moved = False
    for l, w0, a0 in zip(net.layers, before, alphas0):
        unsampled = [k for k in range(len(l.ops)) if k not in samples[l.slot]]
        assert torch.allclose(F.softmax(l.alpha.detach() / 0.9, 0)[unsampled], w0[unsampled], atol=1e-6)
        moved |= not torch.equal(l.alpha.detach(), a0)
    assert moved


def test_toy_search_derives_an_arch_whose_logged_cost_is_exact(tmp_path):
    """Sec. 3.4: 1 warm-up + 1 search epoch; the derived arch builds, profiles, and its logged cost is exact."""
    out = tmp_path / "run"
    r = run(TOY + ["--epochs", "2", "--warmup-epochs", "1", "--out", str(out)])
    assert r.returncode == 0, r.stderr
    arch = json.loads((out / "arch.json").read_text())
    log = [json.loads(line) for line in (out / "search_log.jsonl").read_text().splitlines()]
    assert [rec["stage"] for rec in log] == ["init", "warmup", "search"]  # init: the untrained guess
    assert "arch_loss" in log[2] and "val_acc" in log[2] and "val_acc" in log[0]
    space = get_space("toy", 16, 3, 10)
    exact = arch_cost(arch, flops_table(space))
    assert log[-1]["arch_cost"] == exact == profile(arch)["flops"]
    assert (out / "arch_best.json").exists() and (out / "checkpoint.pt").exists()
    assert "retrain.py --arch" in r.stdout


def test_toy_search_with_a_target_derives_a_network_within_ten_percent(tmp_path):
    """--target-flops: every epoch's derived network (arch.json, its logged cost) lies within 10% of the target, and
    the multiplier is logged; args.json records the target."""
    out = tmp_path / "run"
    r = run(TOY + ["--epochs", "3", "--warmup-epochs", "1", "--target-flops", "1.4M", "--out", str(out)])
    assert r.returncode == 0, r.stderr
    log = [json.loads(line) for line in (out / "search_log.jsonl").read_text().splitlines()]
    assert all(abs(rec["arch_cost"] / 1.4e6 - 1) <= 0.1 for rec in log[1:]) and "mu" in log[-1]
    assert arch_cost(json.loads((out / "arch.json").read_text()), flops_table(get_space("toy", 16, 3, 10))) == \
        log[-1]["arch_cost"]
    assert json.loads((out / "args.json").read_text())["target_flops"] == 1.4e6


def test_two_ranks_hold_identical_parameters_after_every_step(tmp_path):
    """--procs 2 (gloo): both ranks sample the same candidates and end each step with identical weights, alpha,
    beta. On an ImageFolder with a latency table measured by the run: rank 0 alone writes the split and the
    table (one header line), and the other rank reads them after a barrier (a different split or table would
    make the ranks' gradients, hence their parameters, differ)."""
    folder = make_folder(tmp_path / "imgs", classes=3, per_class=30)
    out = tmp_path / "r"
    r = run(toy(data=folder, batch_size="16") + ["--epochs", "2", "--warmup-epochs", "1", "--procs", "2", "--check-sync",
                                "--cost", "latency", "--out", str(out)])
    assert r.returncode == 0, r.stderr
    assert "check-sync: all 2 ranks held identical weights, alpha and beta after each of" in r.stdout
    assert r.stdout.count("latency table of 'toy'") == 1 and (out / "split.json").exists()
    assert not [f for f in os.listdir(out) if ".tmp" in f]


def test_kill_and_resume_equals_the_uninterrupted_run(tmp_path):
    """A run killed (SIGKILL) mid-way and resumed ends bitwise equal to the uninterrupted run."""
    args = TOY + ["--epochs", "3", "--warmup-epochs", "1"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert run(args + ["--out", str(a)]).returncode == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, *args, "--out", str(b)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (b / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = torch.load(b / "checkpoint.pt", weights_only=False)["epoch"]
    assert first < 3, "the run finished before it could be killed"
    r = run(args + ["--out", str(b), "--resume"])
    assert r.returncode == 0, r.stderr
    assert f"resuming {b} at epoch {first + 1}/3" in r.stdout
    ca, cb = (torch.load(d / "checkpoint.pt", weights_only=False)["model"] for d in (a, b))
    arch_keys = [k for k in ca if k.endswith("alpha") or k == "beta"]
    assert arch_keys and all(torch.equal(ca[k], cb[k]) for k in ca)
    assert (a / "arch.json").read_bytes() == (b / "arch.json").read_bytes()
    la, lb = ([{k: v for k, v in json.loads(line).items() if k not in ("seconds", "train_img_s")}
               for line in (d / "search_log.jsonl").read_text().splitlines()] for d in (a, b))
    assert [rec["epoch"] for rec in lb] == [0, 1, 2, 3] and la == lb  # each epoch logged once, same figures


def test_bad_input_is_refused_in_one_line_and_writes_nothing(tmp_path, capsys):
    """Unknown space, missing data, one-class ImageFolder, corrupt or mismatched checkpoint,
    a table for another input size, --gpus beyond what is visible: exit 2, one line, OUT untouched."""
    done, fresh = tmp_path / "done", tmp_path / "fresh"
    assert run(TOY + ["--epochs", "1", "--warmup-epochs", "1", "--out", str(done)]).returncode == 0
    corrupt = tmp_path / "corrupt"
    shutil.copytree(done, corrupt)
    (corrupt / "checkpoint.pt").write_bytes(b"not a checkpoint")
    one_class = tmp_path / "folder"
    (one_class / "train" / "only").mkdir(parents=True)
    for k in range(3):
        Image.new("RGB", (8, 8), (k, k, k)).save(one_class / "train" / "only" / f"{k}.png")
    lut = tmp_path / "lut28.json"
    save_json_atomic(dict(flops_table(get_space("toy", 28, 3, 10)), metric="latency_ms"), lut)
    lut16 = tmp_path / "lut16.json"  # FLOPs read as milliseconds: the toy networks 'cost' ~1e6 ms
    save_json_atomic(dict(flops_table(get_space("toy", 16, 3, 10)), metric="latency_ms"), lut16)
    cases = {
        "space": (toy(space="nope"), fresh, "nope"),
        "data": (toy(data=str(tmp_path / "missing")), fresh, "missing"),
        "one_class": (toy(data=str(one_class)), fresh, "class"),
        "corrupt": (TOY + ["--resume"], corrupt, "corrupt"),
        "mismatch": (toy(input_size="20") + ["--resume"], done, "has --input-size 16"),
        "exists": (TOY, done, "--resume"),
        "lut": (TOY + ["--cost", "latency", "--lut", str(lut)], fresh, "input_size=28"),
        "gpus": (TOY + ["--gpus", "1"], fresh, "--gpus 1"),
        "flag": (TOY + ["--no-such-flag"], fresh, "--no-such-flag"),
        "two targets": (TOY + ["--target-flops", "1M", "--target-latency", "2"], fresh, "not both"),
        "other target": (TOY + ["--cost", "flops", "--target-latency", "2"], fresh, "--target-flops"),
        "flops out of reach": (TOY + ["--target-flops", "1G"], fresh, "no network of 'toy' comes within 10%"),
        "latency out of reach": (TOY + ["--lut", str(lut16), "--target-latency", "2"], fresh, "its networks cost"),
    }
    for name, (argv, out, says) in cases.items():
        before = snapshot(out)
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            run_cli(lambda: search.main(argv[1:] + ["--out", str(out)]))
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and says in err, (name, err)
        assert snapshot(out) == before, name
    assert not fresh.exists()




@pytest.mark.parametrize("metric", ["flops", "latency_ms"])
def test_a_target_is_refused_just_outside_the_spaces_reach(metric):
    """check_target at the edges: the 10% window reaching the dearest (cheapest) network is taken, one 5% short of
    it refused, on either flag; the other ranks exit with no line."""
    from machinery import options
    space = get_space("toy", 16, 3, 10)
    table = dict(flops_table(space), metric=metric)
    least, most = CostModel(space, table, skip_price=0).extremes()
    flag = "target_flops" if metric == "flops" else "target_latency"

    def check(target, quiet=False):
        args = SimpleNamespace(**({"target_flops": None, "target_latency": None} | {flag: target}))
        options.check_target(args, space, table, search.TARGET_TOLERANCE, quiet)
    for target in (most * 1.05, least * 0.95, (least + most) / 2):
        check(target)
    for target in (most * 1.16, least * 0.86):
        with pytest.raises(cli.UsageError, match="its networks cost"):
            check(target)
    with pytest.raises(SystemExit) as e:
        check(most * 1.16, quiet=True)
    assert e.value.code == 2


def test_settings_are_the_flags_after_a_presets_then_the_spaces_defaults(tmp_path):
    """A preset is flags written before the given ones (which win); what no flag sets is the paper's for the space
    (search.DEFAULTS); the random baseline's epochs default to 5 unless a preset or a flag says otherwise; --resume
    restores every setting of the run, a preset named again does not override them, a contradicting flag is
    refused."""
    laptop = search.parse_args(["--preset", "laptop"])
    assert (laptop.space, laptop.data, laptop.subset, laptop.epochs, laptop.warmup_epochs, laptop.batch_size) == \
        ("mini", "fashion-mnist", 9600, 11, 5, 64)
    assert (laptop.lr, laptop.arch_lr, laptop.lam, laptop.eval_from) == (0.1, 1e-2, 0.03, 6)
    assert (laptop.momentum, laptop.tau, laptop.lr_min) == (0.9, 15.0, 1e-4)  # the space's defaults
    assert laptop.out == os.path.join("runs", "laptop")
    short = search.parse_args(["--preset", "laptop", "--epochs", "3", "--warmup-epochs", "1", "--lam", "0.2"])
    assert (short.epochs, short.warmup_epochs, short.lam, short.eval_from, short.lr) == (3, 1, 0.2, 2, 0.1)
    resnet = search.parse_args(["--space", "resnet"])
    assert (resnet.epochs, resnet.warmup_epochs, resnet.lam, resnet.tau, resnet.batch_size) == \
        tuple(search.DEFAULTS["resnet"][k] for k in ("epochs", "warmup_epochs", "lam", "tau", "batch_size"))
    rnd = ["--random", "2", "--target-flops", "1M"]
    assert [(a.epochs, a.warmup_epochs, a.out) for a in (
        random_search.parse_args(rnd), random_search.parse_args(rnd + ["--preset", "laptop"]),
        random_search.parse_args(rnd + ["--preset", "laptop", "--epochs", "2"]))] == [
        (5, 0, os.path.join("runs", "random-mbv2")), (11, 0, os.path.join("runs", "laptop-random")),
        (2, 0, os.path.join("runs", "laptop-random"))]
    out = str(tmp_path / "run")
    os.makedirs(out)
    save_json_atomic(vars(short), os.path.join(out, "args.json"))
    for again in ([], ["--preset", "laptop"], ["--epochs", "3"]):
        back = search.parse_args(["--resume", "--out", out] + again)
        plain = json.loads(json.dumps(vars(short) | {"out": out}))  # as args.json holds them
        assert json.loads(json.dumps(vars(back))) == plain | {"resume": True}
    with pytest.raises(cli.UsageError, match="--epochs 3"):
        search.parse_args(["--resume", "--out", out, "--epochs", "4"])
