"""The README's GPU workflow (section "On GPUs and ImageNet"), run as written at toy scale on the CPU.

Each `python ...` line of the README's block is run in order, with only these changes: the toy space for
mbv2, the CPU for CUDA, no --gpus (for a search without --lut, --cost latency instead: what CUDA selects by
default), the data source, and flags that shrink the work (32 px, epochs, images, timing runs). Everything else,
latency.py's 1000-class default included, is the README's.
"""
import contextlib
import json
import os
import re
import shlex

import pytest
import torch

import latency
import search
from machinery import options, runtime
from conftest import ROOT, run_here
from cost import space_signatures
from supernet import get_space
from test_data import make_folder

SCALE = {"latency.py": ["--batch-size", "2", "--warmup", "1", "--repeats", "2"],
         "search.py": ["--epochs", "2", "--warmup-epochs", "1", "--subset", "32", "--batch-size", "8",
                       "--log-every", "60"],
         "retrain.py": ["--epochs", "1", "--subset", "32", "--batch-size", "8", "--log-every", "60"]}


def readme_gpu_commands():
    """The `python ...` lines of the README's GPU block, comments dropped."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    block = re.search(r"## On GPUs and ImageNet\s+```bash\n(.*?)```", text, re.S).group(1)
    return [shlex.split(line.split("#")[0]) for line in block.splitlines() if line.strip()]


def toy_scale(argv, data):
    """One README command at toy scale on the CPU (see the module docstring)."""
    assert argv[0] == "python", argv
    script, args, out = argv[1], argv[2:], []
    it = iter(args)
    for a in it:
        if a == "--gpus":
            next(it)
            if script == "search.py" and "--lut" not in args:
                out += ["--cost", "latency"]
        else:
            out.append({"mbv2": "toy", "cuda": "cpu", "/path/to/imagenet": data}.get(a, a))
    extra = SCALE.get(script, []) if "--eval" not in args else ["--subset", "32"]
    if script in ("latency.py", "search.py"):
        extra = extra + ["--input-size", "32"]
    return [script] + out + extra


def run_workflow(workdir, data):
    """Every README line in order, in `workdir` (its relative outputs land there), each program's main in this
    process as its command line runs it (tests/test_hostile.py runs the programs as real processes); the results."""
    os.makedirs(workdir, exist_ok=True)
    done = []
    with contextlib.chdir(workdir):
        for argv in readme_gpu_commands():
            cmd = toy_scale(argv, data)
            r = run_here({"step": cmd})["step"]
            done.append(r)
            assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return done


@pytest.fixture(scope="module")
def workflows(tmp_path_factory):
    root = tmp_path_factory.mktemp("workflow")
    folder = make_folder(root / "imagenet", classes=4, per_class=10, val_per_class=4)
    return {"fake": (root / "fake", run_workflow(root / "fake", "fake")),
            "folder": (root / "folder", run_workflow(root / "folder", folder))}


@pytest.mark.parametrize("source", ["fake", "folder"])
def test_readme_gpu_workflow_runs_as_written(workflows, source):
    """Search (measuring its own table), retrain, evaluate, export, then latency.py's default table and a search
    with it: every step exits 0, on 10 fake classes and on a 4-class ImageFolder."""
    workdir, runs = workflows[source]
    search_own, retrain, evaluate, export, table, search_lut = runs
    own = os.path.join(workdir, "runs", "mbv2")
    measured = json.load(open(os.path.join(own, latency.RUN_TABLE)))
    assert measured["metric"] == "latency_ms" and measured["meta"]["space"] == "toy"
    assert set(measured["costs"]) == set(space_signatures(get_space("toy", 32, 3, 10 if source == "fake" else 4)))
    log = [json.loads(line) for line in open(os.path.join(own, "search_log.jsonl"))]
    assert log[-1]["metric"] == "latency_ms" and log[-1]["arch_cost"] > 0
    assert os.path.exists(os.path.join(own, "retrain", "model.pt")) and '"top1"' in evaluate.stdout
    assert os.path.exists(os.path.join(workdir, "mbv2.pt2")) and "matches the trained network" in export.stdout
    # latency.py's defaults (1000 classes) fit the search's data: the classifier is priced, not refused
    assert json.load(open(os.path.join(workdir, "lut_mbv2.json")))["meta"]["num_classes"] == 1000
    classes = 10 if source == "fake" else 4
    assert f"linear/64/{classes}/1/1 (this data set's) priced as linear/64/1000/1/1" in search_lut.stdout
    assert json.load(open(os.path.join(workdir, "runs", "mbv2-lut", "arch.json")))["num_classes"] == classes


def test_resumed_search_does_not_measure_again(workflows, monkeypatch, capsys):
    """--resume reuses OUT/latency_table.json: options.cost_table measures nothing (timing an op would fail)."""
    workdir, _ = workflows["fake"]
    out = os.path.join(workdir, "runs", "mbv2")
    before = open(os.path.join(out, latency.RUN_TABLE)).read()
    monkeypatch.setattr("latency.op_latency", lambda *a: pytest.fail("measured an operation again"))
    args = search.parse_args(["--space", "toy", "--data", "fake", "--cost", "latency", "--out", out, "--resume"])
    table = options.cost_table(args, get_space("toy", 32, 3, 10), runtime.Proc(0, 1, torch.device("cpu"), 0, False))
    assert table["metric"] == "latency_ms" and "measuring 0" in capsys.readouterr().out
    assert json.loads(open(os.path.join(out, latency.RUN_TABLE)).read())["costs"] == json.loads(before)["costs"]


@pytest.mark.parametrize("space, cuda, lut, want", [
    ("mbv2", True, None, "latency"),    # the paper's default (Sec. 4.1), measured on the GPU
    ("mbv2", False, None, "flops"),     # no GPU and no table: FLOPs, said in one line
    ("mbv2", False, "t.json", "latency"),
    ("resnet", True, None, "flops"),    # the ResNet space is searched on FLOPs (Sec. 4.1)
    ("toy", True, None, "flops"),
])
def test_default_cost(monkeypatch, capsys, tmp_path, space, cuda, lut, want):
    """search.py picks latency for mbv2 on CUDA (measuring its table) or with a table, FLOPs otherwise; on a
    CPU without a table, mbv2's search says in one line that it optimises FLOPs. --cost flops opts out."""
    monkeypatch.setattr(runtime, "uses_cuda", lambda args: cuda)
    args = search.parse_args(["--space", space, "--data", "fake", "--batch-size", "32", "--out", str(tmp_path / "run")]
                             + (["--lut", lut] if lut else []))
    assert args.cost == want
    assert search.parse_args(["--space", space, "--cost", "flops"]).cost == "flops"
    if space == "mbv2" and not cuda and not lut:
        options.check_search(args)
        said = [line for line in capsys.readouterr().out.splitlines() if "FLOPs" in line]
        assert len(said) == 1 and "latency" in said[0]
        assert not os.path.exists(tmp_path / "run")  # nothing written before the run starts
