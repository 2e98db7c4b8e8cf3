"""studies.py table1: searched against random networks at equal FLOPs (Table 1), at a toy scale here."""
import json
import statistics

import search
import studies
from cost import arch_cost, flops_table
from retrain import profile
from supernet import get_space
from supernet import load_arch


def test_table1_compares_searched_and_random_at_equal_flops(tmp_path, monkeypatch, capsys):
    """Two seeds, two random networks each: every random network lies within 5% of its seed's searched
    FLOPs, all are retrained with the same recipe, the means and stds are those of the runs, the plot
    has a point per run, and a second invocation reuses every finished run."""
    monkeypatch.setitem(search.PRESETS, "laptop", dict(space="toy", data="fake", subset=64, epochs=2, warmup_epochs=1,
                                                       batch_size=32, input_size=16, out=str(tmp_path / "unused")))
    monkeypatch.setitem(search.RETRAIN_PRESETS, "laptop", ["--epochs", "1", "--batch-size", "32", "--subset", "64"])
    out = tmp_path / "t1"
    studies.main(["table1", "--seeds", "0", "1", "--random", "2", "--out", str(out), "--log-every", "100"])
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
    studies.main(["table1", "--seeds", "0", "1", "--random", "2", "--out", str(out)])
    again = capsys.readouterr().out
    assert "retraining" not in again and "epoch" not in again  # nothing ran twice
    assert json.loads((out / "table1.json").read_text())["runs"] == runs
