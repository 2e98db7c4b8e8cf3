"""studies/: the random-search baseline and Table 1 (searched against random networks at equal FLOPs), at a toy
scale here."""
import json
import math
import os
import statistics

import pytest
import torch
from hypothesis import given, settings, strategies as st

import search
from cost import arch_cost, flops_table
from machinery import options
from machinery.cli import load_arch
from retrain import profile
from studies import audit, ground_truth, random_search, selection, table1
import supernet
from studies.stats import kendall, loo_predictions, quadratic
from supernet import get_space
from test_learning import PLANTED
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
    ground_truth.main(argv[:-1] + [os.path.relpath(run)])  # the search named by another path: the same network
    with pytest.raises(ground_truth.UsageError, match="another recipe"):
        ground_truth.main(argv + ["--lr", "0.05"])
    # the audit reads each network from the super network as the search reads its derived one: with batch statistics
    # at the search's batch size, the searched network's reading is the log's last derived_val_acc, exactly
    audit.main(["--run", run, "--table", str(tmp_path / "gt" / "table.jsonl"), "--out", str(tmp_path / "audit"),
                "--batch-size", "32", "--calib", "64"])
    result = json.load(open(tmp_path / "audit" / "audit.json"))
    last = [json.loads(line) for line in open(f"{run}/search_log.jsonl")][-1]
    assert result["batch_stats"]["readings"][0] == last["derived_val_acc"]
    for mode in ("batch_stats", "recalibrated", "flops", "depth", "noise_ceiling"):
        assert set(result[mode]) >= {"kendall", "spearman", "top10_hit"}
    assert len(result["recalibrated"]["readings"]) == 4 and (tmp_path / "audit" / "audit.svg").exists()
    # --networks 0: the searched network and its peers alone, the peers in the window
    monkeypatch.setattr(ground_truth, "train_once", lambda *a: (50.0, 40.0))
    ground_truth.main(argv[2:8] + argv[10:] + ["--out", str(tmp_path / "only"), "--networks", "0", "--peers", "2"])
    only = [json.loads(line) for line in open(tmp_path / "only" / "table.jsonl")]
    assert [r["kind"] for r in only] == ["searched", "peer", "peer"] and only[0]["arch"] == rows[0]["arch"]
    assert all(abs(r["flops"] - rows[0]["flops"]) <= 0.05 * rows[0]["flops"] for r in only[1:])
    # --searched-of: the same searched network taken from a table's record of it (its folder not read, its id kept),
    # with the same peers: the table again under another recipe where the search folders are gone; the run named
    # twice is trained once
    only_table = str(tmp_path / "only" / "table.jsonl")
    again = argv[2:8] + argv[10:-2] + ["--networks", "0", "--peers", "2", "--lr", "0.05", "--searched-of", only_table]
    ground_truth.main(again + ["--out", str(tmp_path / "again"), "--searched", os.path.join("gone", "s"), run])
    other = [json.loads(line) for line in open(tmp_path / "again" / "table.jsonl")]
    assert [(r["id"], r["arch"]) for r in other] == [(r["id"], r["arch"]) for r in only]
    assert other[0]["recipe"]["lr"] == 0.05
    # refused in one line before OUT is made: no --searched, no such run in TABLE, a network of another space
    other[0]["arch"]["num_classes"] = 100
    (tmp_path / "other-space.jsonl").write_text(json.dumps(other[0]) + "\n")
    out = ["--out", str(tmp_path / "refused")]
    for bad, match in ((argv[2:8] + out + ["--searched-of", only_table], "name them with --searched"),
                       (again + out + ["--searched", "x"], "no searched network"),
                       (again[:-1] + [str(tmp_path / "other-space.jsonl")] + out + ["--searched", "s"], "100 classes")):
        with pytest.raises(ground_truth.UsageError, match=match):
            ground_truth.main(bad)
    assert not (tmp_path / "refused").exists()


def test_ground_truth_workers_train_as_this_process_does(tmp_path):
    """--workers 2 trains the seeds side by side in spawned processes; each record keeps its thread count, and training
    here on that many threads gives the same accuracies, to the bit."""
    argv = ["--space", "toy", "--data", "fake", "--input-size", "16", "--networks", "2", "--pool", "20",
            "--epochs", "1", "--subset", "64", "--batch-size", "32"]
    ground_truth.main(argv + ["--out", str(tmp_path / "pool"), "--workers", "2"])
    pooled = [json.loads(line) for line in open(tmp_path / "pool" / "table.jsonl")]
    threads = torch.get_num_threads()
    torch.set_num_threads(pooled[0]["threads"])
    try:
        ground_truth.main(argv + ["--out", str(tmp_path / "here")])
    finally:
        torch.set_num_threads(threads)
    here = [json.loads(line) for line in open(tmp_path / "here" / "table.jsonl")]
    assert [(r["id"], r["val"], r["test"]) for r in pooled] == [(r["id"], r["val"], r["test"]) for r in here]


def planted_supernet(sample_path, seed=0, steps=300):
    """A small super network trained in seconds on a learnable task (each class a colour of its own, plus noise) by
    search.weight_step, one sampled candidate per layer and, with sample_path, one sampled path per step (else every
    block, Eq. 4); and its validation batches."""
    torch.manual_seed(seed)
    net = supernet.SuperNet(supernet.Space(PLANTED, 8, 3, 10))  # two or three candidates a layer: trains in seconds
    g = torch.Generator().manual_seed(seed)
    colours = torch.randn(10, 3, 1, 1, generator=g)
    def batch(n):
        y = torch.randint(10, (n,), generator=g)
        return colours[y] + torch.randn(n, 3, 8, 8, generator=g), y
    opt = torch.optim.SGD(net.weight_parameters(), lr=0.2, momentum=0.9)
    criterion = torch.nn.CrossEntropyLoss()
    net.train()
    for _ in range(steps):
        x, y = batch(32)
        search.weight_step(net, opt, criterion, x, y, search.sample_candidates(net, 1, g),
                           path=search.sample_path(net, g) if sample_path else None)
    return net, [batch(128) for _ in range(8)], g


def on_path(space, path, slot):
    s = space.slots[slot]
    before = dict(zip(path[1:], path[:-1]))
    return s.block in before and (s.edge is None or s.edge[0] == before[s.block])


@pytest.mark.parametrize("sample_path", [False, True], ids=["eq4-weight-steps", "sampled-path-weight-steps"])
def test_audit_ranks_a_planted_space_and_fails_when_the_reading_ignores_the_network(sample_path):
    """A ranking regression caught in seconds. Planted truth: in a trained super network the first candidate of
    every layer is replaced by an untrained one (fresh random weights), so a network is worse the more of the layers
    on its path sit at it. The audit's reading (audit.read_network, both BN modes) must rank 24 networks by that
    share with Kendall tau above 0.25, its bootstrap interval above 0 and holding the estimate; readings of the wrong
    networks (choices shuffled among them) must not. The tau depends on the last bits of the training (one super
    network, 24 networks): over seeds 0-2 and both ways of training it ranged 0.33-0.74 on an AMD EPYC (this seed
    0.42 and 0.53; the 0.5 this test once asked for failed there), the shuffled readings' -0.58-0.09."""
    net, val, g = planted_supernet(sample_path)
    with torch.no_grad():
        for layer in (m for m in net.layers if len(m.ops) > 1):  # (a layer of one candidate has no choice)
            for p in layer.ops[0].parameters():
                p.normal_(0, 1, generator=g)
    space, records, truth = net.space, [], []
    for k in range(24):
        alphas, p = random_search.random_arch(space, g)
        path = derive(space, alphas, p)["path"]
        share = k / 23  # from no layer at the planted candidate to every one
        choices = [0 if len(a) == 1 or torch.rand((), generator=g) < share
                   else 1 + int(torch.randint(len(a) - 1, (), generator=g)) for a in alphas]
        slots = [s for s, a in enumerate(alphas) if len(a) > 1 and on_path(space, path, s)]
        records.append({"choices": choices, "path": path})
        truth.append(-sum(choices[s] == 0 for s in slots) / len(slots))
    for calib in (None, val[:2]):
        readings = [audit.read_network(net, r, val, calib) for r in records]
        figures = audit.ranking(readings, truth)["kendall"]
        assert figures["value"] > 0.25 and 0 < figures["interval"][0] <= figures["value"] <= figures["interval"][1]
    shuffled = [dict(r, choices=records[(k + 5) % 24]["choices"]) for k, r in enumerate(records)]
    assert kendall([audit.read_network(net, r, val) for r in shuffled], truth) < 0.25


def test_table1_from_a_ground_truth_table_gives_percentiles_a_permutation_test_and_the_front(tmp_path):
    """python -m studies table1 --table: each searched network against the random ones within 5% of its FLOPs (the
    others are not its peers), its percentile on the mean over seeds, the exact stratified permutation p, and the
    random networks' Pareto front, drawn with every point."""
    def rec(name, kind, flops, test, val, depth):  # depth: a head and depth - 1 basic layers in one block
        return {"id": name, "kind": kind, "flops": flops, "test": {"0": test[0], "1": test[1]},
                "val": {"0": val, "1": val}, "arch": {"blocks": [{"layers": ["mbconv_k3_e3"] * (depth - 1)}]}}
    rows = [rec("s-a", "searched", 10e6, (90, 92), 80, 3), rec("s-b", "searched", 5e6, (80, 80), 70, 2),
            rec("r1", "random", 10.4e6, (88, 88), 81, 2), rec("r2", "random", 9.6e6, (92, 93), 79, 4),
            rec("r3", "peer", 10.1e6, (85, 85), 78, 3), rec("far", "random", 11e6, (99, 99), 99, 1),
            rec("r4", "random", 5.1e6, (81, 83), 72, 5), rec("cheap", "random", 2e6, (70, 70), 60, 1)]
    path = tmp_path / "table.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = table1.main(["--table", str(path), "--out", str(tmp_path / "t1")])
    a, b = result["searched"]
    assert (a["peers"], b["peers"]) == (3, 1)  # 'far' is 10% away, 'cheap' far below
    assert a["test"]["percentile"] == 100 * 2 / 3 and a["test"]["peer_median"] == 88  # 91 beats 88 and 85, not 92.5
    assert b["test"]["percentile"] == 0 and a["val"]["percentile"] == 100 * 2 / 3
    # exact: 4 x 2 assignments, leads {1.875, -1.125, 3.375, -4.125} + {-1, 1}; observed 1.875 - 1 = 0.875, and
    # 0.875, 2.875, 2.375, 4.375 are at least that: 4 of 8
    assert math.isclose(result["test"]["permutation_p"], 4 / 8)
    assert result["test"]["above_median"] == 1 and result["test"]["compared"] == 2
    assert result["pareto_front"] == [(2e6, 70), (5.1e6, 82), (9.6e6, 92.5), (11e6, 99)]
    assert "adjusted" not in result["test"]  # 6 random networks: too few for a fit of 6 terms
    # against the peers no deeper: s-a (depth 3) against r1 and r3 (88, 85; r2 is deeper), s-b has none (r4 is deeper);
    # exact p: leads 3, 0, -3 around 88, observed 3: 1 of 3
    assert a["depth"] == 3 and sorted(a["peer_depths"]) == [2, 3, 4] and (a["peers_no_deeper"], b["peers_no_deeper"]) == (2, 0)
    assert result["test"]["no_deeper"] == {"mean_percentile": 100.0, "compared": 1, "permutation_p": 1 / 3}
    # the judge: per-network variance over the seeds (a - b)^2 / 2, mean 4.5 / 8; s-a's window alone has 3 peers
    # (88, 92.5, 85: variance 14.25), less the noise of a mean of two seeds
    judge = result["judge"]
    assert math.isclose(judge["noise_sd_one_seed"], 0.75)
    assert math.isclose(judge["true_sd"], math.sqrt(14.25 - 0.5625 / 2))
    assert sorted(judge["each_above"]) == [2, 4, 8] and all(len(v) == 2 for v in judge["each_above"][2].values())
    assert math.isclose(judge["all_above"][2][0.9], math.prod(judge["each_above"][2][0.9]))
    svg = (tmp_path / "t1" / "table1.svg").read_text()
    assert svg.count('id="point-random-') == 6 and svg.count('id="point-searched-') == 2 and "line-Pareto" in svg


def test_audit_compare_pairs_two_audits_by_network(tmp_path):
    """python -m studies audit --compare A B: tau of A's readings less B's on the networks both read, against the
    table's mean validation top-1; B read the networks in another order and one more."""
    table = tmp_path / "table.jsonl"
    truth = [70.0, 71.0, 72.0, 73.0, 74.0]
    table.write_text("".join(json.dumps({"id": f"n{k}", "val": {"0": t - 1, "1": t + 1}}) + "\n"
                             for k, t in enumerate(truth)))
    a = {"ids": [f"n{k}" for k in range(5)], "networks": 5, "table": str(table),
         "batch_stats": {"readings": truth}, "recalibrated": {"readings": truth[::-1]}}
    b = {"ids": ["x", "n4", "n3", "n2", "n1", "n0"], "networks": 6, "table": str(table),
         "batch_stats": {"readings": [0, 4, 3, 2, 1, 0]}, "recalibrated": {"readings": [0, 4, 3, 2, 1, 0]}}
    for name, obj in (("a.json", a), ("b.json", b)):
        (tmp_path / name).write_text(json.dumps(obj))
    audit.main(["--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--table", str(table), "--out",
                str(tmp_path / "out")])
    out = json.loads((tmp_path / "out" / "versus.json").read_text())
    assert out["networks"] == 5
    assert out["batch_stats"]["tau"] == 1.0 and out["batch_stats"]["other_tau"] == 1.0
    assert out["batch_stats"]["difference"] == 0.0
    assert out["recalibrated"]["tau"] == -1.0 and out["recalibrated"]["difference"] == -2.0


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10**6))
def test_depth_counts_the_layers_a_derived_network_runs(seed):
    """ground_truth.depth of a random network of `mini` is the number of its operations less the three every network
    has (stem, last conv, classifier), and None for an NSE architecture."""
    space = get_space("mini", 28, 1, 10)
    arch = derive(space, *random_search.random_arch(space, torch.Generator().manual_seed(seed)))
    assert ground_truth.depth(arch) == len(supernet.arch_ops(arch)) - 3
    assert ground_truth.depth({"nse": {}, "blocks": []}) is None


def test_audit_without_a_run_gives_the_table_baselines(tmp_path, capsys):
    """python -m studies audit --table T (no --run): the noise ceiling, FLOPs and depth as rankings of the stand-alone
    accuracy, in seconds. Planted: accuracy falls with depth and does not follow FLOPs; a table without archs has no
    depth row; a missing table is one line."""
    def rec(k, flops, d):
        acc = 80.0 - d + 0.1 * k
        return {"id": f"n{k}", "flops": flops, "val": {"0": acc - 0.2, "1": acc + 0.2},
                "arch": {"blocks": [{"layers": ["skip"] * (d - 1)}]}}
    rows = [rec(k, f, d) for k, (f, d) in enumerate([(5e6, 4), (6e6, 2), (7e6, 5), (8e6, 1), (9e6, 3), (4e6, 6)])]
    table = tmp_path / "table.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = audit.main(["--table", str(table), "--out", str(tmp_path / "b")])
    assert result["depth"]["kendall"]["value"] == -1.0 and result["noise_ceiling"]["kendall"]["value"] == 1.0
    assert result["flops"]["kendall"]["value"] == kendall([r["flops"] for r in rows], [80.0 - d + 0.1 * k for k, d in
                                                                                        enumerate([4, 2, 5, 1, 3, 6])])
    assert "depth alone" in capsys.readouterr().out and (tmp_path / "b" / "baselines.json").exists()
    table.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "arch"}) + "\n" for r in rows))
    assert "depth" not in audit.main(["--table", str(table), "--out", str(tmp_path / "c")])
    with pytest.raises(audit.UsageError, match="does not exist"):
        audit.main(["--table", str(tmp_path / "none.jsonl")])
    assert "flops_and_depth" not in result  # 6 networks: too few for a fit of 6 terms


def test_audit_fit_in_flops_and_depth_explains_a_table_made_of_them(tmp_path):
    """The baseline 'FLOPs and depth (fit)': on a planted table whose accuracy is a quadratic in log FLOPs and depth
    plus seeds at -0.1, +0.2 and -0.1 around it, the leave-one-out fit ranks it perfectly and leaves no error; the
    seed noise is the variance of a mean of three seeds (0.03 / 3 = 0.01)."""
    rows = []
    for k in range(24):
        f, d = 1e6 * (1 + k % 5), 1 + (3 * k) % 7
        acc = 70 + 2 * math.log(f / 1e6) - 0.5 * d + 0.03 * d * d
        rows.append({"id": f"n{k}", "flops": f, "val": {"0": acc - 0.1, "1": acc + 0.2, "2": acc - 0.1},
                     "arch": {"blocks": [{"layers": ["skip"] * (d - 1)}]}})
    table = tmp_path / "table.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fit = audit.main(["--table", str(table), "--out", str(tmp_path / "b")])["flops_and_depth"]
    truth = [statistics.fmean(r["val"].values()) for r in rows]
    v = fit["variance"]
    assert fit["kendall"]["value"] == 1.0 and v["loo_mse"] < 1e-12 and math.isclose(v["seed_noise"], 0.01)
    assert math.isclose(v["total"], statistics.variance(truth)) and v["loo_noise_floor"] > 0.01
    assert math.isclose(v["explained_share"], 1 + v["loo_noise_floor"] / (v["total"] - 0.01))
    table.write_text("".join(json.dumps(r) + "\n" for r in rows[:16]))  # 16: a fit, but no variance shares
    assert "variance" not in audit.main(["--table", str(table), "--out", str(tmp_path / "c")])["flops_and_depth"]


def test_table1_finds_a_run_in_a_table_made_elsewhere():
    """A committed table names its searched networks by the paths of the machine that made it: a run is matched by its
    absolute path, else by the one id ending in the most of its folders; none, or two, is refused."""
    ids = ["/elsewhere/runs/sp-s0", "/elsewhere/runs/sp-s1", "/a/x", "/b/x"]
    assert ground_truth.match_run("runs/sp-s1", ids, "t") == "/elsewhere/runs/sp-s1"
    assert ground_truth.match_run("/elsewhere/runs/sp-s0/", ids, "t") == "/elsewhere/runs/sp-s0"
    assert ground_truth.match_run("/a/x", ids, "t") == "/a/x"
    finals = ["/w/runs/a/final-0.json", "/w/runs/b/final-0.json"]
    assert ground_truth.match_run("runs/b/final-0.json", finals, "t") == finals[1]
    for bad in ("runs/x", "runs/sp-s2"):
        with pytest.raises(table1.UsageError):
            ground_truth.match_run(bad, ids, "t")


def test_audit_judge_ranks_one_table_by_another_on_the_networks_both_hold(tmp_path):
    """python -m studies audit --table LONG --judge SHORT: the same networks under two recipes; the short table's
    ranking of the long one is a row beside the baselines, on the networks both hold, in LONG's order. Planted: the
    short recipe ranks them backwards; a judge sharing fewer than 3 networks is one line."""
    def rec(k, acc):  # depth k % 3 + 1
        return {"id": f"n{k}", "flops": 1e6 * (k + 1), "val": {"0": acc, "1": acc + 0.1},
                "arch": {"blocks": [{"layers": ["skip"] * (k % 3)}]}}
    long_ = [rec(k, 70.0 + k) for k in range(6)]
    short = [rec(k, 80.0 - k) for k in (5, 3, 2, 1, 0)] + [rec(9, 50.0)]  # n4 missing, n9 only here
    for name, rows in (("long.jsonl", long_), ("short.jsonl", short)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = audit.main(["--table", str(tmp_path / "long.jsonl"), "--judge", str(tmp_path / "short.jsonl"),
                         "--out", str(tmp_path / "b")])
    assert result["networks"] == 5 and result["ids"] == ["n0", "n1", "n2", "n3", "n5"]
    assert result["judge"]["kendall"]["value"] == -1.0 and result["flops"]["kendall"]["value"] == 1.0
    # depths 1, 2, 3, 1, 3 against accuracies rising (here) and falling (the judge's): tau +t and -t, difference 2t
    t = kendall([1, 2, 3, 1, 3], [0, 1, 2, 3, 5])
    shift = result["depth"]["versus_judge"]
    assert t > 0 and math.isclose(shift["judge_tau"], -t) and math.isclose(shift["difference"], 2 * t)
    (tmp_path / "other.jsonl").write_text("".join(json.dumps(r | {"flops": 2 * r["flops"]}) + "\n" for r in short))
    with pytest.raises(audit.UsageError, match="another network"):  # the same ids, other networks
        audit.main(["--table", str(tmp_path / "long.jsonl"), "--judge", str(tmp_path / "other.jsonl")])
    (tmp_path / "few.jsonl").write_text("".join(json.dumps(r) + "\n" for r in short[:2] + [rec(7, 1.0)]))
    with pytest.raises(audit.UsageError, match="fewer than 3"):
        audit.main(["--table", str(tmp_path / "long.jsonl"), "--judge", str(tmp_path / "few.jsonl")])


def test_ground_truth_networks_of_trains_another_tables_networks_spread_and_coarse_first(tmp_path, monkeypatch):
    """ground_truth --networks-of TABLE --networks N: N of that table's random networks (not its searched or peer
    ones), one nearest each of N equal bins of their FLOPs range, keeping ids and archs, trained in an order that
    spans the range first (lowest bin, then the middle); too few is one line."""
    space = get_space("toy", 16, 3, 10)
    g = torch.Generator().manual_seed(0)
    rows = []
    for k in range(12):
        alphas, p = random_search.random_arch(space, g)
        arch = derive(space, alphas, p)
        rows.append({"id": f"random-{k}", "kind": "random" if k % 4 else "peer", "arch": arch,
                     "path": arch["path"], "choices": [0] * len(alphas), "flops": arch_cost(arch, flops_table(space))})
    table = tmp_path / "short.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    chosen = ground_truth.networks_of(str(table), 4)
    randoms = [r for r in rows if r["kind"] == "random"]
    flops = sorted(r["flops"] for r in randoms)
    picked = sorted(f for *_, f in chosen)
    width = (flops[-1] - flops[0]) / 4
    assert len({c[1] for c in chosen}) == 4 and all(c[1] in {r["id"] for r in randoms} for c in chosen)
    assert picked[0] <= flops[0] + width and picked[-1] >= flops[-1] - width
    assert chosen[0][4] == picked[0] and chosen[1][4] == picked[2]  # bins 0, 2, 1, 3
    by_id = {r["id"]: r for r in rows}
    assert all(c[2] == by_id[c[1]]["arch"] for c in chosen)
    trained = []
    monkeypatch.setattr(ground_truth, "train_once", lambda proc, arch, *a: trained.append(arch) or (50.0, 40.0))
    ground_truth.main(["--out", str(tmp_path / "long"), "--space", "toy", "--data", "fake", "--input-size", "16",
                       "--networks-of", str(table), "--networks", "4", "--epochs", "1", "--subset", "64"])
    out = [json.loads(line) for line in open(tmp_path / "long" / "table.jsonl")]
    assert [r["id"] for r in out] == [c[1] for c in chosen] and len(trained) == 8
    with pytest.raises(ground_truth.UsageError, match="fewer than --networks 10"):
        ground_truth.networks_of(str(table), 10)


def test_ground_truth_peers_in_turns_the_same_draws_for_any_k(tmp_path):
    """--peers K: each searched network's peers lie within 5% of its FLOPs and come in turns (every one's first, then
    every one's second), drawn so that a smaller K gives the first of the same networks (another table's peers are
    these); a spread network in the window counts as a peer; --networks 0 without --searched is one line."""
    space = get_space("toy", 16, 3, 10)
    g = torch.Generator().manual_seed(1)
    targets = sorted({arch_cost(derive(space, *random_search.random_arch(space, g)), flops_table(space))
                      for _ in range(20)})
    f1, f2 = targets[len(targets) // 3], targets[2 * len(targets) // 3]
    done = {"a": {"flops": f1}, "b": {"flops": f2}}
    three = ground_truth.peers(space, 3, ["a", "b"], [], done)
    assert [n[1] for n in three] == [f"peer-{int(f)}-{i}" for i in range(3) for f in (f1, f2)]
    assert all(abs(n[4] - f) <= 0.05 * f for n, f in zip(three, [f1, f2] * 3))
    two = ground_truth.peers(space, 2, ["a", "b"], [], done)
    assert [(n[1], n[2]) for n in two] == [(n[1], n[2]) for n in three[:4]]
    # each searched network's draws are its own, whichever others are named, in whatever order, trained or not
    alone = ground_truth.peers(space, 3, ["b"], [], done)
    assert [(n[1], n[2]) for n in alone] == [(n[1], n[2]) for n in three[1::2]]
    b_new = [("searched", "b", None, None, f2)]
    swapped = ground_truth.peers(space, 3, ["b", "a"], b_new, {"a": done["a"]})
    assert [(n[1], n[2]) for n in swapped[1::2]] == [(n[1], n[2]) for n in three[0::2]]
    assert [(n[1], n[2]) for n in swapped[0::2]] == [(n[1], n[2]) for n in three[1::2]]
    twins = ground_truth.peers(space, 2, ["a", "a2", "b"], [], done | {"a2": {"flops": f1}})
    assert [(n[1], n[2]) for n in twins] == [(n[1], n[2]) for n in two]  # the same FLOPs: the same peers, once
    spread = [("random", "random-0", None, None, f1)]
    assert [n[1] for n in ground_truth.peers(space, 2, ["a", "b"], spread, done)] == [n[1] for n in three[:4] if
                                                                                     n[1] != f"peer-{int(f1)}-1"]
    for argv in (["--networks", "0"], ["--networks", "0", "--searched", "r", "--networks-of", "t"], ["--networks", "1"]):
        with pytest.raises(ground_truth.UsageError, match="--networks"):
            ground_truth.main(["--out", str(tmp_path / "gt"), "--space", "toy", "--data", "fake"] + argv)
    assert not (tmp_path / "gt").exists()


def test_table1_lead_over_a_fit_in_flops_and_depth(tmp_path):
    """table1 --table: with enough random networks, each searched network's lead over a least-squares model of the
    random ones' accuracy (quadratic in log FLOPs and depth). Planted: the random networks lie on such a model, the
    searched ones 1 point above it on test (0 on validation)."""
    def rec(name, kind, f, d, extra):
        acc = 70 + 2 * math.log(f / 1e6) - 0.5 * d + 0.03 * d * d
        return {"id": name, "kind": kind, "flops": f, "test": {"0": acc + extra, "1": acc + extra},
                "val": {"0": acc, "1": acc}, "arch": {"blocks": [{"layers": ["skip"] * (d - 1)}]}}
    rows = [rec("s-a", "searched", 3e6, 2, 1.0), rec("s-b", "searched", 4.1e6, 5, 1.0)]
    rows += [rec(f"r{k}", "random", 1e6 * (1 + k % 5), 1 + (3 * k) % 7, 0.0) for k in range(14)]
    path = tmp_path / "table.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = table1.main(["--table", str(path), "--out", str(tmp_path / "t1")])
    assert all(math.isclose(r["test"]["adjusted_lead"], 1.0) and abs(r["val"]["adjusted_lead"]) < 1e-9
               for r in result["searched"])
    assert math.isclose(result["test"]["adjusted"]["mean_lead"], 1.0) and result["test"]["adjusted"]["permutation_p"] < 0.05
    assert result["val"]["adjusted"]["permutation_p"] > 0.5


def test_table1_judge_gives_the_lead_over_the_peers_both_tables_hold(tmp_path):
    """table1 --table LONG --judge SHORT: each searched network's lead over the peers both tables hold, under each.
    Planted: under SHORT the searched network leads its two shared peers by 2 points, under LONG by 0.5; a peer only
    LONG holds (at 100%) is left out of both, and a searched network SHORT lacks is left out."""
    def rec(name, kind, f, acc):
        return {"id": name, "kind": kind, "flops": f, "test": {"0": acc - 0.1, "1": acc + 0.1},
                "val": {"0": acc, "1": acc}, "arch": {"blocks": [{"layers": ["skip"] * 2}]}}
    long = [rec("s", "searched", 5e6, 86.5), rec("lone", "searched", 9e6, 80.0), rec("p0", "peer", 5.1e6, 85.0),
            rec("p1", "peer", 4.9e6, 87.0), rec("only-long", "random", 5e6, 100.0), rec("q", "peer", 9e6, 80.0)]
    short = [rec("s", "searched", 5e6, 81.0), rec("p0", "peer", 5.1e6, 78.0), rec("p1", "peer", 4.9e6, 80.0),
             rec("q", "peer", 9e6, 79.0)]
    for name, rows in (("long", long), ("short", short)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = table1.main(["--table", str(tmp_path / "long.jsonl"), "--judge", str(tmp_path / "short.jsonl"),
                          "--out", str(tmp_path / "t1")])
    both = result["leads_under_both"]
    assert [(r["id"], r["peers"]) for r in both["searched"]] == [("s", 2)]
    assert math.isclose(both["searched"][0]["judge_lead"], 2.0) and math.isclose(both["searched"][0]["lead"], 0.5)
    assert both["fell"] == 1 and math.isclose(both["mean_judge_lead"], 2.0) and math.isclose(both["mean_lead"], 0.5)
    short[1]["flops"] = 6e6  # another network under p0's id: refused
    (tmp_path / "short.jsonl").write_text("".join(json.dumps(r) + "\n" for r in short))
    with pytest.raises(table1.UsageError, match="names another network p0"):
        table1.main(["--table", str(tmp_path / "long.jsonl"), "--judge", str(tmp_path / "short.jsonl"),
                     "--out", str(tmp_path / "t1")])
    with pytest.raises(table1.UsageError, match="--judge"):
        table1.main(["--table", str(tmp_path / "long.jsonl"), "--judge", str(tmp_path / "nothing.jsonl")])
    with pytest.raises(table1.UsageError, match="go with --table"):
        table1.main(["--judge", str(tmp_path / "short.jsonl")])


def test_audit_rescore_scores_old_readings_against_a_table_and_beyond_flops_and_depth(tmp_path):
    """python -m studies audit --rescore A --table T: an audit's readings scored again on the networks T holds (one
    it read is not there), the same tau as ranking them directly, and tau against what the leave-one-out fit in
    FLOPs and depth leaves of the stand-alone accuracies; readings that are that remainder rank it perfectly."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for k in range(16):
        f, d = 1e6 * (1 + k % 5), 1 + (3 * k) % 7
        acc = 70 + 2 * math.log(f / 1e6) - 0.5 * d + float(torch.rand((), generator=g))
        rows.append({"id": f"n{k}", "flops": f, "val": {"0": acc - 0.1, "1": acc + 0.1},
                     "arch": {"blocks": [{"layers": ["skip"] * (d - 1)}]}})
    table = tmp_path / "table.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    truth = [statistics.fmean(r["val"].values()) for r in rows]
    x = quadratic([[math.log(r["flops"]) for r in rows], [1 + len(r["arch"]["blocks"][0]["layers"]) for r in rows]])
    left = [t - p for t, p in zip(truth, loo_predictions(x, truth)[0].tolist())]
    noise = torch.rand(16, generator=g).tolist()
    old = {"ids": ["gone"] + [r["id"] for r in rows], "networks": 17, "table": str(table),
           "batch_stats": {"readings": [0.0] + noise}, "recalibrated": {"readings": [0.0] + left}}
    (tmp_path / "old.json").write_text(json.dumps(old))
    result = audit.main(["--rescore", str(tmp_path / "old.json"), "--table", str(table), "--out", str(tmp_path / "r")])
    assert result["networks"] == 16 and result["ids"] == [r["id"] for r in rows]
    assert result["batch_stats"]["kendall"]["value"] == kendall(noise, truth)
    assert result["batch_stats"]["beyond_flops_and_depth"]["value"] == kendall(noise, left)
    assert result["recalibrated"]["beyond_flops_and_depth"]["value"] == 1.0
    assert (tmp_path / "r" / "audit.json").exists() and (tmp_path / "r" / "audit.svg").exists()


def test_selection_chooses_among_equal_flops_networks_and_tests_the_choice_against_chance(tmp_path, monkeypatch):
    """python -m studies selection: each run's candidates are the table's random networks within 5% of its searched
    network's FLOPs; a rule keeps one; its percentile among the others and the exact stratified permutation p.
    Planted readings: the recalibrated one is the stand-alone validation accuracy (it must keep each group's best:
    p = 1 / (4 x 3), the smallest the test can give), the batch-statistics one its negative (the worst: p = 1); the
    fewest-layers rule keeps the shallowest. Readings are logged and not read again when the study runs again; a
    search that has not run all its epochs is refused."""
    def rec(name, kind, flops, acc, depth):
        return {"id": name, "kind": kind, "flops": flops, "path": [0, 1], "choices": [0, 0],
                "test": {"0": acc + 1, "1": acc + 1}, "val": {"0": acc - 0.5, "1": acc + 0.5},
                "arch": {"blocks": [{"layers": ["skip"] * (depth - 1)}]}}
    rows = [rec("runs/a", "searched", 10e6, 80, 3), rec("runs/b", "searched", 5e6, 70, 3),
            rec("a1", "random", 10.2e6, 79, 4), rec("a2", "random", 9.8e6, 82, 5), rec("a3", "peer", 10e6, 78, 2),
            rec("a4", "random", 10.4e6, 81, 6), rec("b1", "random", 5.1e6, 71, 2), rec("b2", "peer", 4.9e6, 69, 3),
            rec("b3", "random", 5e6, 72, 4), rec("far", "random", 11e6, 99, 1)]
    table = tmp_path / "table.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    truth = {r["id"]: r["val"]["0"] + 0.5 for r in rows}
    for name in ("a", "b"):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        (run / "args.json").write_text(json.dumps({"epochs": 2}))
        (run / "checkpoint.pt").write_text("")
        (run / "search_log.jsonl").write_text('{"epoch": 0}\n{"epoch": 1}\n{"epoch": 2}\n')
    reads = []
    monkeypatch.setattr(selection, "open_run", lambda run, records, table, batch_size, calib: (None, [], [[]]))
    def read(net, record, val, calib=None):
        reads.append(record["id"])
        return truth[record["id"]] if calib is not None else -truth[record["id"]]
    monkeypatch.setattr(selection, "read_network", read)
    argv = ["--table", str(table), "--runs", str(tmp_path / "runs" / "a"), str(tmp_path / "runs" / "b"),
            "--out", str(tmp_path / "sel")]
    result = selection.main(argv)
    a, b = result["runs"]
    assert a["candidates"] == ["a1", "a2", "a3", "a4"] and b["candidates"] == ["b1", "b2", "b3"]  # not 'far'
    assert (a["rules"]["recalibrated"]["chosen"], b["rules"]["recalibrated"]["chosen"]) == ("a2", "b3")
    assert (a["rules"]["batch_stats"]["chosen"], b["rules"]["batch_stats"]["chosen"]) == ("a3", "b2")
    assert (a["rules"]["fewest_layers"]["chosen"], b["rules"]["fewest_layers"]["chosen"]) == ("a3", "b1")
    s = result["summary"]
    assert s["recalibrated"]["test"]["mean_percentile"] == 100 and math.isclose(s["recalibrated"]["test"]["permutation_p"], 1 / 12)
    assert s["batch_stats"]["val"]["mean_percentile"] == 0 and s["batch_stats"]["val"]["permutation_p"] == 1
    assert a["searched"]["test"]["percentile"] == 50 and a["tau_among_candidates"]["recalibrated"]["val"] == 1
    assert len(reads) == 14  # two readings of each of 7 candidates
    assert selection.main(argv)["summary"] == s and len(reads) == 14  # read again from readings.jsonl
    (tmp_path / "runs" / "b" / "search_log.jsonl").write_text('{"epoch": 0}\n{"epoch": 1}\n')
    with pytest.raises(ground_truth.UsageError, match="not a finished search"):
        selection.main(argv)
