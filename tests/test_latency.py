"""Latency lookup tables (Sec. 3.3, supplement A.1): measuring, checking, resuming, the --arch comparison.

Timings on a shared CPU are noisy, so nothing here asserts a latency value beyond being a
non-negative finite number; everything is measured on the toy space at 32 px, batch 2.
"""
import datetime
import json
import math
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
import torch.nn.functional as F

import cost
import latency
import supernet
import viterbi
from conftest import run_here
from machinery import cli

SETTINGS = dict(batch_size=2, warmup=1, repeats=2)
CLI = ["--space", "toy", "--input-size", "32", "--device", "cpu", "--batch-size", "2", "--warmup", "1",
       "--repeats", "2", "--progress", "0.5"]


@pytest.fixture(scope="module")
def toy():
    return supernet.get_space("toy", 32)


@pytest.fixture(scope="module")
def lut(toy, tmp_path_factory):
    """The toy space's table measured in this process with one thread, as the CLIs below run (OMP_NUM_THREADS=1)."""
    threads = torch.get_num_threads()
    path = str(tmp_path_factory.mktemp("lut") / "lut_toy.json")
    try:
        dev, name = latency.get_device("cpu", threads=1)
        latency.build_table(toy, dev, name, path, **SETTINGS)
    finally:
        torch.set_num_threads(threads)
    with open(path) as f:
        return path, json.load(f)


@pytest.fixture(scope="module")
def arch_file(toy, tmp_path_factory):
    """A derived toy arch (Sec. 3.4) from random alpha and beta."""
    g = torch.Generator().manual_seed(1)
    alphas = [torch.randn(len(s.candidates), generator=g) for s in toy.slots]
    beta = torch.randn(len(toy.edges), generator=g)
    p = torch.cat([F.softmax(beta[a:b], 0) for a, b in toy.out_edge_ranges])
    path = str(tmp_path_factory.mktemp("arch") / "arch.json")
    cli.save_json_atomic(viterbi.derive(toy, alphas, p), path)
    return path


@pytest.fixture(scope="module")
def clis(lut, arch_file, tmp_path_factory):
    """Every command-line run of this file, in this process, with the files they use."""
    d = tmp_path_factory.mktemp("cli")
    path, table = lut
    # resume: the table with five entries removed
    dropped = sorted(table["costs"])[::21][:5]
    partial = dict(table, costs={s: c for s, c in table["costs"].items() if s not in dropped})
    resumed = str(d / "resume.json")
    cli.save_json_atomic(partial, resumed)
    # refusal: a table measured at another batch size sits at --out
    other = str(d / "other.json")
    cli.save_json_atomic(dict(table, meta=dict(table["meta"], batch_size=4)), other)
    with open(other, "rb") as f:
        other_bytes = f.read()
    runs = run_here({
        "resume": ["latency.py", *CLI, "--out", resumed],
        "other": ["latency.py", *CLI, "--out", other],
        "arch_lut": ["latency.py", "--arch", arch_file, "--device", "cpu", "--batch-size", "2", "--warmup", "1",
                     "--repeats", "2", "--lut", path],
        "bad_space": ["latency.py", "--space", "nope", "--device", "cpu", "--out", str(d / "x.json")],
        "bad_cuda": ["latency.py", "--space", "toy", "--device", "cuda", "--out", str(d / "y.json")],
        "bad_arch": ["latency.py", "--arch", str(d / "missing.json"), "--device", "cpu"],
    })
    return runs, dict(dropped=dropped, resumed=resumed, other=other, other_bytes=other_bytes)


# ----------------------------------------------------------------------------------------
# The table

def test_table_has_every_signature(toy, lut):
    """Supplement A.1: a lookup table entry for every operation the super network can use."""
    _, table = lut
    assert table["metric"] == "latency_ms"
    sigs = cost.space_signatures(toy)
    assert set(table["costs"]) == set(sigs)
    for s in sigs:
        c = table["costs"][s]
        assert isinstance(c, float) and math.isfinite(c) and c >= 0, (s, c)
    meta = table["meta"]
    assert {k: meta[k] for k in ("space", "input_size", "in_channels", "num_classes", "connect")} == \
        dict(space="toy", input_size=32, in_channels=3, num_classes=1000, connect=toy.connect)
    assert (meta["batch_size"], meta["warmup"], meta["repeats"], meta["threads"]) == (2, 1, 2, 1)
    assert meta["device"].startswith("cpu") and meta["torch"] == torch.__version__
    datetime.datetime.fromisoformat(meta["measured"])


def test_check_table_accepts_own_space_only(toy, lut):
    """cost.check_table: the table fits its own space, not another input size or connection number M."""
    _, table = lut
    cost.check_table(table, toy)
    with pytest.raises(supernet.InvalidInput, match="input_size"):
        cost.check_table(table, supernet.get_space("toy", 28))
    with pytest.raises(supernet.InvalidInput, match="connect"):
        cost.check_table(table, supernet.get_space("toy", 32, connect=toy.connect - 1))


def test_table_fits_other_data_of_its_space(toy, lut):
    """A table measured for one data set drives the search on another of the same space and input size:
    the stem (other input channels) and the classifier (other class count) are priced from the table's
    own entries scaled by FLOPs; every other cost is the table's."""
    _, table = lut
    table = json.loads(json.dumps(table))
    other = supernet.get_space("toy", 32, 1, 4)
    stem, classifier = other.fixed_signatures(0)[0], other.fixed_signatures(other.n)[0]
    assert stem not in table["costs"] and classifier not in table["costs"]
    priced = cost.check_table(table, other)
    assert set(priced) == {stem, classifier}
    for sig, source in priced.items():
        assert math.isclose(table["costs"][sig], table["costs"][source] * cost.op_flops(sig) / cost.op_flops(source))
    assert cost.check_table(table, toy) == {}  # its own data: nothing to price
    with pytest.raises(supernet.InvalidInput, match="input_size"):
        cost.check_table(table, supernet.get_space("toy", 28, 1, 4))


def test_cost_model_on_latency_table(toy, lut):
    """Eq. 5-7 with the latency table: a finite positive chained estimate for uniform alpha and beta."""
    _, table = lut
    model = cost.CostModel(toy, table)
    alphas = [torch.zeros(len(s.candidates)) for s in toy.slots]
    p = torch.cat([F.softmax(torch.zeros(b - a), 0) for a, b in toy.out_edge_ranges])
    est = float(model(alphas, p))
    assert math.isfinite(est) and est > 0
    # at least the fixed operations every network has (stem, B_0's layer, classifier)
    fixed = sum(table["costs"][s] for j in (0, toy.n) for s in toy.fixed_signatures(j))
    assert est >= fixed


def test_other_meta_refused_in_process(toy, lut, tmp_path):
    """A table measured with other settings is not resumed; --force measures afresh over it."""
    _, table = lut
    out = str(tmp_path / "t.json")
    cli.save_json_atomic(dict(table, meta=dict(table["meta"], input_size=28)), out)
    dev, name = latency.get_device("cpu")
    with pytest.raises(supernet.InvalidInput, match="input_size"):
        latency.build_table(toy, dev, name, out, **SETTINGS)
    # a FLOPs table at --out is not a latency table either
    cli.save_json_atomic(cost.flops_table(toy), out)
    with pytest.raises(supernet.InvalidInput, match="metric"):
        latency.build_table(toy, dev, name, out, **SETTINGS)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        latency.build_table(toy, dev, name, out, batch_size=2, warmup=0, repeats=1, force=True)
    finally:
        torch.set_num_threads(threads)
    fresh = cli.load_table(out)
    assert fresh["metric"] == "latency_ms" and set(fresh["costs"]) == set(table["costs"])


def test_arch_table_must_match(lut, arch_file):
    """--arch --lut: the table's input size and batch size must be the arch's and the run's."""
    _, table = lut
    arch = cli.load_arch(arch_file)
    latency.check_arch_table(table, arch, 2, "t")
    with pytest.raises(supernet.InvalidInput, match="batch size"):
        latency.check_arch_table(table, arch, 32, "t")
    with pytest.raises(supernet.InvalidInput, match="input size"):
        latency.check_arch_table(table, dict(arch, input_size=28), 2, "t")
    with pytest.raises(supernet.InvalidInput, match="not a latency table"):
        latency.check_arch_table(dict(table, metric="flops"), arch, 2, "t")


# ----------------------------------------------------------------------------------------
# The command line

def test_resume_measures_only_missing(lut, clis):
    """A rerun on a table with missing entries measures those only and keeps the others as they were."""
    runs, f = clis
    r = runs["resume"]
    assert r.returncode == 0, r.stderr
    n = len(lut[1]["costs"])
    assert f"{n - 5} reused" in r.stdout and "measuring 5 " in r.stdout, r.stdout
    with open(f["resumed"]) as fh:
        table = json.load(fh)
    assert set(table["costs"]) == set(lut[1]["costs"])
    kept = [s for s in table["costs"] if s not in f["dropped"]]
    assert all(table["costs"][s] == lut[1]["costs"][s] for s in kept)
    assert all(table["costs"][s] >= 0 for s in f["dropped"])


def test_other_meta_refused_cli(clis):
    """A table measured at another batch size at --out: exit 2, one line, the file untouched."""
    runs, f = clis
    r = runs["other"]
    assert r.returncode == 2 and "batch_size" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    with open(f["other"], "rb") as fh:
        assert fh.read() == f["other_bytes"]


def test_arch_compares_network_with_table(clis):
    """--arch --lut: the derived network timed end to end beside the sum of its operations' latencies."""
    r = clis[0]["arch_lut"]
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["measured_ms"] > 0 and res["predicted_ms"] > 0 and res["batch_size"] == 2
    assert math.isclose(res["ratio"], res["predicted_ms"] / res["measured_ms"])
    assert res["device"].startswith("cpu")


def test_arch_measures_its_own_ops(arch_file):
    """--arch without --lut: the prediction comes from the arch's own operations, measured on the spot."""
    arch = cli.load_arch(arch_file)
    threads = torch.get_num_threads()
    try:
        dev, name = latency.get_device("cpu", threads=1)
        res = latency.compare_arch(arch, dev, name, **SETTINGS)
    finally:
        torch.set_num_threads(threads)
    assert res["measured_ms"] > 0 and res["predicted_ms"] > 0
    assert math.isclose(res["ratio"], res["predicted_ms"] / res["measured_ms"])


@pytest.mark.parametrize("name", ["bad_space", "bad_cuda", "bad_arch"])
def test_bad_input_one_line(clis, name):
    """Unknown space, CUDA where there is none, a missing arch file: one line on stderr, exit code 2."""
    if name == "bad_cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = clis[0][name]
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not os.path.exists(r.args[-1]) or name == "bad_arch"


def test_fidelity_times_spread_and_given_networks_and_resumes(lut, arch_file, tmp_path, capsys):
    """python -m studies fidelity: every network (N spread over the FLOPs range and the arch files given) is timed
    in the table's rounds on its settings, the least median kept, and predicted by the table's sum; a rerun with
    the same OUT times none again, a stopped one takes only the timings it lacks; a FLOPs table is refused in one
    line."""
    from studies import fidelity
    path, table = lut
    out = tmp_path / "fid"
    threads = torch.get_num_threads()
    try:
        fidelity.main(["--lut", path, "--archs", "4", "--arch", arch_file, "--pool", "50", "--out", str(out)])
        first = (out / "fidelity.jsonl").read_text()
        fidelity.main(["--lut", path, "--archs", "4", "--arch", arch_file, "--pool", "50", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert (out / "fidelity.jsonl").read_text() == first and "5 timed already" in capsys.readouterr().out
    # stopped after 7 of its 15 timings: the rerun takes the 8 others and keeps the 7
    log = out / "timings.jsonl"
    kept = log.read_text().splitlines(keepends=True)[:7]
    log.write_text("".join(kept))
    (out / "fidelity.jsonl").unlink()
    taken = []
    real = fidelity.time_ms
    try:
        fidelity.time_ms = lambda *a: taken.append(real(*a)) or taken[-1]
        fidelity.main(["--lut", path, "--archs", "4", "--arch", arch_file, "--pool", "50", "--out", str(out)])
    finally:
        fidelity.time_ms = real
        torch.set_num_threads(threads)
    assert len(taken) == 8 and len(log.read_text().splitlines()) == 15
    again = {r["id"]: r["rounds_ms"] for r in cli.read_log(str(out / "fidelity.jsonl"))}
    for line in kept:
        t = json.loads(line)
        assert t["ms"] in again[t["id"]]
    records = cli.read_log(str(out / "fidelity.jsonl"))
    arch = json.loads(open(arch_file).read())
    assert [r["id"] for r in records] == [f"random-{k}" for k in range(4)] + [os.path.abspath(arch_file)]
    assert math.isclose(records[-1]["predicted_ms"], cost.arch_cost(arch, table))
    assert all(r["measured_ms"] > 0 for r in records) and len({r["flops"] for r in records}) >= 4
    assert all(len(r["rounds_ms"]) == table["meta"]["rounds"] == 3 and r["measured_ms"] == min(r["rounds_ms"])
               for r in records)
    res = json.loads((out / "fidelity.json").read_text())
    assert res["networks"] == 5 and -1 <= res["pearson"]["value"] <= 1 and res["mape_percent"] >= 0
    assert (out / "fidelity.svg").read_text().startswith("<svg")
    flops = tmp_path / "flops.json"
    cli.save_json_atomic(cost.flops_table(supernet.get_space("toy", 32)), str(flops))
    with pytest.raises(cli.UsageError, match="not a latency table"):
        fidelity.main(["--lut", str(flops), "--out", str(tmp_path / "f2")])


def test_timed_in_channels_last():
    """time_ms runs an op as the networks here run it: module and 4-D input in channels-last (oneDNN's speed
    depends on the format, 19x for a 1x1 convolution of a 16-channel map), a 2-D input as it is."""
    seen = []

    class Probe(torch.nn.Conv2d):
        def forward(self, x):
            seen.append((x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(),
                         self.weight.is_contiguous(memory_format=torch.channels_last)))
            return super().forward(x)
    assert latency.time_ms(Probe(3, 8, 3), torch.randn(2, 3, 8, 8), warmup=1, repeats=2) > 0
    assert seen == [(True, True)] * 3
    assert latency.time_ms(torch.nn.Linear(4, 2), torch.randn(2, 4), warmup=1, repeats=2) > 0


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 6), rounds=st.integers(1, 4), data=st.data())
def test_in_rounds_resumes_each_item_where_it_stopped(n, rounds, data):
    """With timings so far (a stopped run), in_rounds takes each item up to `rounds` timings, keeps what it had as
    their first, and still passes over all items: no item gets its (r+1)-th timing before every item has r."""
    had = [[float(-1 - j) for j in range(data.draw(st.integers(0, rounds)))] for _ in range(n)]
    counter = iter(range(10**6))
    got = [(item, list(times)) for _, item, times in latency.in_rounds(list(range(n)), lambda i: next(counter),
                                                                        rounds, had)]
    assert len(got) == sum(rounds - len(h) for h in had)
    final = {i: list(h) for i, h in enumerate(had)}
    for item, times in got:
        final[item] = times
    assert all(len(t) == rounds and t[:len(had[i])] == had[i] for i, t in final.items())
    assert [len(t) for _, t in got] == sorted(len(t) for _, t in got)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(0, 6), rounds=st.integers(1, 4), data=st.data())
def test_in_rounds_passes_over_all_items(n, rounds, data):
    """in_rounds times item i once per pass, all items in each pass before the next, and each yield carries that
    item's timings so far: the spread in time that lets the least median stand for the device."""
    values = data.draw(st.lists(st.floats(0, 100), min_size=n * rounds, max_size=n * rounds))
    feed = iter(values)
    got = [(k, item, list(times)) for k, item, times in latency.in_rounds(list(range(n)), lambda i: next(feed), rounds)]
    assert [k for k, _, _ in got] == list(range(1, n * rounds + 1))
    assert [item for _, item, _ in got] == list(range(n)) * rounds
    for r in range(rounds):
        for i in range(n):
            assert got[r * n + i][2] == [values[q * n + i] for q in range(r + 1)]


def test_table_keeps_the_least_median_of_its_rounds(toy, monkeypatch, tmp_path):
    """build_table: every op timed once per round, the table holds the least; an episode of load in one round
    (here the second, 10x slower) leaves no trace."""
    calls = {}

    def scripted(sig, *a):
        calls[sig] = calls.get(sig, 0) + 1
        return {1: 2.0, 2: 20.0, 3: 2.5}[calls[sig]]
    monkeypatch.setattr(latency, "op_latency", scripted)
    dev, name = latency.get_device("cpu")
    out = str(tmp_path / "t.json")
    table = latency.build_table(toy, dev, name, out, **SETTINGS)
    assert set(calls.values()) == {3} and set(table["costs"].values()) == {2.0}
    assert cli.load_table(out)["meta"]["rounds"] == 3


def test_a_table_stopped_mid_pass_resumes_with_its_timings(toy, monkeypatch, tmp_path):
    """Interrupted in its second pass, build_table saves the finished ops and the timings of the others; the same
    command takes only what is missing (3 timings per op in all) and keeps each op's least; a table begun with
    other passes is refused, not relabelled."""
    calls, total, n = {}, [0], len(latency.space_signatures(toy))

    def scripted(sig, *a):
        total[0] += 1
        if total[0] == n + 20:
            raise KeyboardInterrupt
        calls[sig] = calls.get(sig, 0) + 1
        return {1: 3.0, 2: 1.0, 3: 2.0}[calls[sig]]
    monkeypatch.setattr(latency, "op_latency", scripted)
    dev, name = latency.get_device("cpu")
    out = str(tmp_path / "t.json")
    with pytest.raises(SystemExit) as e:
        latency.build_table(toy, dev, name, out, **SETTINGS)
    assert e.value.code == 130
    saved = json.loads(open(out).read())
    assert saved["costs"] == {} and sum(map(len, saved["partial"].values())) == n + 19
    table = latency.build_table(toy, dev, name, out, **SETTINGS)
    assert set(calls.values()) == {3} and set(table["costs"].values()) == {1.0}
    assert "partial" not in json.loads(open(out).read())
    with pytest.raises(cli.UsageError, match="rounds=3, not 1"):
        latency.build_table(toy, dev, name, out, rounds=1, **SETTINGS)
