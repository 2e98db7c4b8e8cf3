"""studies/: the random-search baseline and Table 1 (searched against random networks at equal FLOPs), at a toy
scale here."""
import json
import statistics

import pytest
import torch
from hypothesis import given, settings, strategies as st

import search
from cost import arch_cost, flops_table
from machinery import options
from machinery.cli import load_arch
from retrain import profile
from studies import audit, ground_truth, random_search, table1
from supernet import get_space
from test_search import TOY, run
from viterbi import derive


def test_table1_compares_searched_and_random_at_equal_flops(tmp_path, monkeypatch, capsys):
    """Two seeds, two random networks each: every random network lies within 5% of its seed's searched
    FLOPs, all are retrained with the same recipe, the means and stds are those of the runs, the plot
    has a point per run, and a second invocation reuses every finished run."""
    monkeypatch.setitem(options.PRESETS, "laptop", ["--space", "toy", "--data", "fake", "--subset", "64", "--epochs", "2",
                                                   "--warmup-epochs", "1", "--batch-size", "32", "--input-size", "16"])
    monkeypatch.setitem(options.RETRAIN_PRESETS, "laptop", ["--epochs", "1", "--batch-size", "32", "--subset", "64"])
    out = tmp_path / "t1"
    table1.main(["--seeds", "0", "1", "--random", "2", "--out", str(out), "--log-every", "100"])
    result = json.loads((out / "table1.json").read_text())
    runs = result["runs"]
    assert [r["kind"] for r in runs] == ["searched", "random", "random"] * 2
    table = flops_table(get_space("toy", 16, 3, 10))
    for seed in (0, 1):
        mine = [r for r in runs if r["seed"] == seed]
        target = mine[0]["flops"]
        assert target == arch_cost(load_arch(f"{mine[0]['folder']}/arch.json"), table)
        for r in mine[1:]:
            arch = load_arch(f"{r['folder']}/arch.json")
            assert abs(r["flops"] - target) <= 0.05 * target and r["flops"] == profile(arch)["flops"]
    for kind in ("searched", "random"):
        accs = [r["test_top1"] for r in runs if r["kind"] == kind]
        assert result[kind]["count"] == len(accs) == (2 if kind == "searched" else 4)
        assert result[kind]["mean"] == statistics.fmean(accs) and result[kind]["std"] == statistics.stdev(accs)
    svg = (out / "table1.svg").read_text()
    assert svg.count('id="point-searched-') == 2 and svg.count('id="point-random-') == 4
    capsys.readouterr()
    table1.main(["--seeds", "0", "1", "--random", "2", "--out", str(out)])
    again = capsys.readouterr().out
    assert "retraining" not in again and "epoch" not in again  # nothing ran twice
    assert json.loads((out / "table1.json").read_text())["runs"] == runs


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10**6), st.sampled_from(["toy", "mini"]))
def test_random_arch_is_what_derive_returns(seed, name):
    """Random search (Table 1): the one-hot alpha and p of a random draw derive (argmax + Viterbi) into
    exactly the drawn path and candidates; every step of the path is a connection of the space."""
    space = get_space(name, 32, 3, 10)
    alphas, p = random_search.random_arch(space, torch.Generator().manual_seed(seed))
    arch = derive(space, alphas, p)
    path, index = arch["path"], {e: k for k, e in enumerate(space.edges)}
    assert path[0] == 0 and path[-1] == space.n
    assert all((i, j) in index and p[index[i, j]] == 1.0 for i, j in zip(path, path[1:]))
    assert all(float(a.sum()) == 1.0 and a.max() == 1.0 for a in alphas)
    for (i, j), blk in zip(zip(path[:-2], path[1:-1]), arch["blocks"][1:]):
        slots = [(s, a) for s, a in zip(space.slots, alphas) if s.block == j]
        head = next(s.candidates[int(a.argmax())] for s, a in slots if s.edge == (i, j))
        layers = [s.candidates[int(a.argmax())] for s, a in slots if not s.edge]
        assert blk["head"] == head and blk["layers"] == [o for o in layers if o != "skip"]


def test_random_search_keeps_the_flops_window_and_writes_the_best(tmp_path):
    """python -m studies random --random K --target-flops F: every sample lies within 5% of F; the best by validation accuracy
    is OUT/arch.json (with its pictures); a target no draw can reach is refused in one line."""
    space = get_space("toy", 16, 3, 10)
    g, table = torch.Generator().manual_seed(0), flops_table(space)
    target = sorted(arch_cost(derive(space, *random_search.random_arch(space, g)), table) for _ in range(50))[25]
    out = tmp_path / "rs"
    r = run(["-m", "studies", "random"] + TOY[1:] + ["--random", "3", "--target-flops", str(target), "--epochs", "1",
                                              "--out", str(out)])
    assert r.returncode == 0, r.stderr
    records = json.loads((out / "random_search.json").read_text())["records"]
    assert len(records) == 3 and len({json.dumps(rec["arch"]) for rec in records}) == 3
    for rec in records:
        assert abs(rec["arch_cost"] - target) <= 0.05 * target
        assert rec["arch_cost"] == arch_cost(rec["arch"], table) == profile(rec["arch"])["flops"]
    best = max(records, key=lambda rec: rec["val_acc"])
    arch = json.loads((out / "arch.json").read_text())
    assert arch == best["arch"] == json.loads((out / "arch_best.json").read_text())
    assert (out / "arch.svg").exists() and (out / "supernet.svg").exists()
    log = [json.loads(line) for line in (out / "search_log.jsonl").read_text().splitlines()]
    assert [rec["sample"] for rec in log] == [1, 2, 3]
    far = run(["-m", "studies", "random"] + TOY[1:] + ["--random", "3", "--target-flops", "1G", "--out",
                                                   str(tmp_path / "far")])
    assert far.returncode == 2 and len(far.stderr.strip().splitlines()) == 1 and "1000.00M" in far.stderr
    assert not (tmp_path / "far").exists()


def test_ground_truth_spreads_over_flops_records_every_seed_and_resumes(tmp_path, monkeypatch):
    """python -m studies ground_truth at toy size: the random networks are spread over the pool's FLOPs range (one
    nearest each bin's centre), every network gets both seeds' validation and test accuracy, the searched network
    joins with its layer choices, and a second run trains nothing; another recipe in the same folder is refused."""
    space = get_space("toy", 16, 3, 10)
    chosen = ground_truth.spread_over_flops(space, 4, 60, torch.Generator().manual_seed(0))
    flops = [f for _, _, f in chosen]
    g = torch.Generator().manual_seed(0)  # the same 60 draws
    pool = [arch_cost(derive(space, *random_search.random_arch(space, g)), flops_table(space)) for _ in range(60)]
    width = (max(pool) - min(pool)) / 4
    assert len({str(a) for a, _, _ in chosen}) == 4 and flops == sorted(flops)
    assert flops[0] <= min(pool) + width and flops[-1] >= max(pool) - width
    run = str(tmp_path / "s")
    search.main(TOY[1:] + ["--epochs", "2", "--warmup-epochs", "1", "--out", run])
    argv = ["--out", str(tmp_path / "gt"), "--space", "toy", "--data", "fake", "--input-size", "16", "--networks", "3",
            "--pool", "40", "--epochs", "1", "--subset", "64", "--batch-size", "32", "--searched", run]
    ground_truth.main(argv)
    rows = [json.loads(line) for line in open(tmp_path / "gt" / "table.jsonl")]
    assert [r["kind"] for r in rows] == ["searched", "random", "random", "random"]
    assert all(set(r["val"]) == set(r["test"]) == {"0", "1"} and r["latency_ms"] > 0 for r in rows)
    assert rows[0]["choices"] and rows[0]["path"] == load_arch(f"{run}/arch.json")["path"]
    monkeypatch.setattr(ground_truth, "train_once", lambda *a: pytest.fail("trained a network again"))
    ground_truth.main(argv)
    with pytest.raises(ground_truth.UsageError, match="another recipe"):
        ground_truth.main(argv + ["--lr", "0.05"])
    # the audit reads each network from the super network as the search reads its derived one: with batch statistics
    # at the search's batch size, the searched network's reading is the log's last derived_val_acc, exactly
    audit.main(["--run", run, "--table", str(tmp_path / "gt" / "table.jsonl"), "--out", str(tmp_path / "audit"),
                "--batch-size", "32", "--calib", "64"])
    result = json.load(open(tmp_path / "audit" / "audit.json"))
    last = [json.loads(line) for line in open(f"{run}/search_log.jsonl")][-1]
    assert result["batch_stats"]["readings"][0] == last["derived_val_acc"]
    for mode in ("batch_stats", "recalibrated", "flops", "noise_ceiling"):
        assert set(result[mode]) >= {"kendall", "spearman", "top10_hit"}
    assert len(result["recalibrated"]["readings"]) == 4 and (tmp_path / "audit" / "audit.svg").exists()
