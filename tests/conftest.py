"""Shared set-up: the modules under test are flat files in the repository root."""
import contextlib
import importlib
import io
import os
import subprocess
import sys
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from machinery import cli  # noqa: E402 (after the path above)

# The tests use tiny tensors, where intra-op threads do not help; on a shared 2-core machine a
# second OpenMP thread that loses its core stalls every op (measured: 0.2 s -> 16 s for one pass).
torch.set_num_threads(1)


def invoke(script, argv):
    """A program as its command line runs it, in this process: its exit code (its output: capfd)."""
    module = importlib.import_module(script[:-3].replace("/", "."))  # studies/__main__.py: studies.__main__
    old = sys.argv
    sys.argv = [script] + argv
    try:
        cli.run_cli(lambda: module.main())
        return 0
    except SystemExit as e:  # as the interpreter ends: None is 0, a message goes to stderr with 1
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            return 1
        return e.code or 0
    finally:
        sys.argv = old


def run_here(commands):
    """{name: [script, arg, ...]} -> {name: CompletedProcess}: each command line run in this process, one after
    another (no torch import each), from wherever pytest runs: for command lines that need no process of their own. An exception that escapes is its traceback on stderr, exit 1."""
    results = {}
    for name, (script, *argv) in commands.items():
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = invoke(script, argv)
            except Exception:
                traceback.print_exc()
                code = 1
        results[name] = subprocess.CompletedProcess([script, *argv], code, out.getvalue(), err.getvalue())
    return results
