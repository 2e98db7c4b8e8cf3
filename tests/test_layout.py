"""The layout that shows the paper: its modules (supernet.py, cost.py, viterbi.py) import only torch, numpy, the
standard library and each other, never the run machinery (machinery/) or the studies (studies/)."""
import ast
import os
import sys

from conftest import ROOT

PAPER = ("supernet", "cost", "viterbi")


def imported(path):
    """Every top-level module name a file imports, at any depth of its code (a late import counts too)."""
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add((node.module or "").split(".")[0] if node.level == 0 else ".")
    return names


def test_the_papers_modules_import_none_of_the_machinery():
    allowed = set(sys.stdlib_module_names) | {"torch", "numpy"} | set(PAPER)
    for name in PAPER:
        foreign = imported(os.path.join(ROOT, name + ".py")) - allowed
        assert not foreign, f"{name}.py imports {sorted(foreign)}"


def test_the_rule_is_checked_for_real(tmp_path):
    """imported() sees a machinery import wherever it stands, so the test above can fail."""
    f = tmp_path / "m.py"
    f.write_text("import torch\n\ndef main():\n    from machinery.cli import run_cli\n    import studies.bench\n")
    assert imported(str(f)) == {"torch", "machinery", "studies"}
