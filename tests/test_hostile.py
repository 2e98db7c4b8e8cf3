"""Hostile input, interrupts and concurrent runs, across every program (a table of cases).

Each case is a command line, what it must do (exit code and a phrase of its one-line message, or a good
behaviour), and a check that nothing already written changed: a snapshot of every file the cases can reach
(finished runs, tables, arch files) is taken before and compared after. Most cases run in this process
(the programs' main functions under cli.run_cli, as their command lines run them); interrupts, kills and a
second live run use real processes.
"""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import retrain
import search
from conftest import ROOT, invoke
from machinery import cli
from studies import random_search
from test_data import make_folder

TOY = ["--space", "toy", "--data", "fake", "--subset", "64", "--batch-size", "32", "--input-size", "16",
       "--log-every", "100"]
RETRAIN = ["--data", "fake", "--subset", "64", "--batch-size", "32", "--log-every", "100"]


class Payload:
    """A pickle that runs a command when loaded without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def snapshot(root):
    """Every file under root (lock files aside) -> a hash of its content."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            path = os.path.join(dirpath, f)
            if f != cli.LOCK and os.path.isfile(path):
                with open(path, "rb") as fh:
                    out[os.path.relpath(path, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """What the cases must not damage: a finished search and retraining, a latency table, bad files."""
    w = tmp_path_factory.mktemp("world")
    search.main(TOY + ["--epochs", "1", "--warmup-epochs", "1", "--out", str(w / "done")])
    arch = str(w / "done" / "arch.json")
    retrain.main(["--arch", arch, "--epochs", "1", "--out", str(w / "retrained")] + RETRAIN)
    import latency
    dev, name = latency.get_device("cpu")
    from supernet import get_space
    latency.build_table(get_space("toy", 16, 3, 10), dev, name, str(w / "lut.json"), batch_size=2, warmup=0,
                        repeats=1)
    good = json.load(open(w / "lut.json"))
    first = sorted(good["costs"])[0]
    for name, value in (("negative", -6.0), ("nan", float("nan")), ("text", "fast"), ("zero", 0)):
        json.dump(dict(good, costs=dict(good["costs"], **{first: value})), open(w / f"lut_{name}.json", "w"))
    os.mkfifo(w / "fifo.json")
    (w / "a_file").write_text("not a folder")
    (w / "hand").mkdir()
    (w / "hand" / "arch.json").write_text(open(arch).read())
    wide = json.load(open(arch))
    wide["blocks"][-1]["out"] = 10**7
    json.dump(wide, open(w / "wide.json", "w"))
    torch.save({"model": Payload(w / "pwned")}, w / "payload.pt")
    (w / "with_payload").mkdir()
    for f in os.listdir(w / "done"):
        if os.path.isfile(w / "done" / f) and f != cli.LOCK:
            (w / "with_payload" / f).write_bytes((w / "done" / f).read_bytes())
    torch.save({"config": {}, "model": Payload(w / "pwned")}, w / "with_payload" / "checkpoint.pt")
    random_search.main(TOY + ["--random", "1", "--epochs", "1", "--target-flops", "0.8M",
                                     "--out", str(w / "random")])
    folder = make_folder(w / "imgs", classes=3, per_class=20)
    with open(os.path.join(folder, "train", "n01", "broken.JPEG"), "wb") as f:
        f.write(b"\xff\xd8 this is not a JPEG")
    # round two: damaged tables, files and runs, each a copy of a good one with one thing wrong
    for name, value in (("tiny", 1e-320), ("huge", 1e308)):
        json.dump(dict(good, costs=dict(good["costs"], **{first: value})), open(w / f"lut_{name}.json", "w"))
    (w / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (w / "random.pt").write_bytes(b"\x80" + bytes(range(256)) * 4)
    torch.save([1, 2, 3], w / "list.pt")
    other = dict(json.load(open(arch)), blocks=json.load(open(arch))["blocks"][:-1])
    other["last"] = {"out": 32}
    torch.save(retrain.ArchNet(other).state_dict(), w / "other_weights.pt")
    make_folder(w / "loop", classes=2, per_class=4)
    os.symlink(".", w / "loop" / "train" / "loop")
    settings = json.load(open(w / "done" / "args.json"))
    ck = cli.load_checkpoint(str(w / "done" / "checkpoint.pt"))
    for name, args_json, checkpoint in (("edited", dict(settings, lr="fast"), None), ("listed", [settings], None),
                                        ("ck_missing", settings, {k: v for k, v in ck.items() if k != "global_step"}),
                                        ("ck_wrong", settings, dict(ck, epoch="one"))):
        (w / name).mkdir()
        json.dump(args_json, open(w / name / "args.json", "w"))
        if checkpoint is not None:
            torch.save(checkpoint, w / name / "checkpoint.pt")
    return w


def cases(w):
    """(name, script, argv, exit code, phrase of the one-line message)."""
    done, arch = str(w / "done"), str(w / "done" / "arch.json")
    new = str(w / "new")
    s, r = ("search.py", TOY + ["--out", new]), ("retrain.py", ["--arch", arch, "--out", new] + RETRAIN)
    return [
        # 4: numbers, checked before any work
        ("lr nan", *s[:1], s[1] + ["--lr", "nan"], 2, "--lr must be"),
        ("lr negative", *s[:1], s[1] + ["--lr", "-1"], 2, "--lr must be"),
        ("lam negative", *s[:1], s[1] + ["--lam", "-1"], 2, "--lam must be"),
        ("tau 1", *s[:1], s[1] + ["--tau", "1"], 2, "--tau must be"),
        ("tau 0", *s[:1], s[1] + ["--tau", "0"], 2, "--tau must be"),
        ("arch betas", *s[:1], s[1] + ["--arch-betas", "1.5", "0.9"], 2, "--arch-betas must be"),
        ("label smoothing", *s[:1], s[1] + ["--label-smoothing", "2"], 2, "--label-smoothing must be"),
        ("huge seed", *s[:1], s[1] + ["--seed", str(2**70)], 2, "--seed must be"),
        ("procs 0", *s[:1], s[1] + ["--procs", "0"], 2, "--procs must be"),
        ("batch over data", "search.py", TOY[:6] + ["--batch-size", "4096"] + TOY[8:] + ["--out", new], 2,
         "larger than"),
        ("epochs 0", *s[:1], s[1] + ["--epochs", "0"], 2, "--epochs must be"),
        ("warm-up over epochs", *s[:1], s[1] + ["--epochs", "2", "--warmup-epochs", "5"], 2, "--warmup-epochs"),
        ("momentum", *s[:1], s[1] + ["--momentum", "1.5"], 2, "--momentum must be"),
        ("huge input", *s[:1], s[1] + ["--input-size", "100000"], 2, "--input-size must be"),
        ("classes 1", *s[:1], s[1] + ["--classes", "1"], 2, "--classes must be"),
        ("log every 0", *s[:1], s[1] + ["--log-every", "0"], 2, "--log-every must be"),
        ("retrain epochs 0", *r[:1], r[1] + ["--epochs", "0"], 2, "--epochs must be"),
        ("retrain lr nan", *r[:1], r[1] + ["--lr", "nan"], 2, "--lr must be"),
        ("retrain batch over data", "retrain.py", ["--arch", arch, "--out", new, "--data", "fake", "--subset", "8",
                                                   "--batch-size", "32"], 2, "larger than"),
        ("latency batch 0", "latency.py", ["--space", "toy", "--out", str(w / "t.json"), "--batch-size", "0"], 2,
         "--batch-size must be"),
        ("latency repeats", "latency.py", ["--space", "toy", "--out", str(w / "t.json"), "--repeats", "-1"], 2,
         "--repeats must be"),
        ("latency huge input", "latency.py", ["--space", "toy", "--out", str(w / "t.json"), "--input-size", "5000"],
         2, "input size"),
        ("estimation scale 0", "studies/__main__.py", ["estimation", "--space", "toy", "--samples", "10", "--scale", "0"], 2,
         "--scale must be"),
        ("estimation samples 2", "studies/__main__.py", ["estimation", "--space", "toy", "--samples", "2"], 2,
         "--samples must be"),
        ("bench batch 0", "studies/bench.py", ["--space", "toy", "--batch-size", "0"], 2, "--batch-size must be"),
        ("table1 random 0", "studies/__main__.py", ["table1", "--random", "0", "--out", str(w / "t1")], 2, "--random must be"),
        ("table1 same seeds", "studies/__main__.py", ["table1", "--seeds", "1", "1", "--out", str(w / "t1")], 2, "distinct"),
        ("cost unknown space", "cost.py", ["--space", "nope"], 2, "unknown space"),
        ("supernet classes 1", "supernet.py", ["--space", "toy", "--num-classes", "1"], 2, "class count"),
        ("supernet connect 0", "supernet.py", ["--space", "toy", "--connect", "0"], 2, "connection number"),
        ("arch too wide", "retrain.py", ["--arch", str(w / "wide.json"), "--profile"], 2, "width"),
        # 4: tables with costs that are not finite numbers >= 0
        ("table negative", *s[:1], s[1] + ["--lut", str(w / "lut_negative.json")], 2, "-6.0"),
        ("table nan", *s[:1], s[1] + ["--lut", str(w / "lut_nan.json")], 2, "nan"),
        ("table text", *s[:1], s[1] + ["--lut", str(w / "lut_text.json")], 2, "'fast'"),
        ("table zero", *s[:1], s[1] + ["--lut", str(w / "lut_zero.json")], 2, "is 0,"),
        ("data batch 0", "machinery/data.py", ["--data", "fake", "--batch-size", "0"], 2, "--batch-size must be"),
        # 1: untrusted files do not run code
        ("payload weights", "retrain.py", ["--arch", arch, "--eval", "--weights", str(w / "payload.pt")] + RETRAIN,
         2, "could run code"),
        ("payload resume", "search.py", TOY + ["--out", str(w / "with_payload"), "--resume"], 2, "could run code"),
        # 2, 3: folders and resume
        ("into a finished run", "search.py", TOY + ["--out", done], 2, "already holds"),
        ("random into a search", "studies/__main__.py", ["random"] + TOY + ["--random", "2", "--target-flops", "0.8M", "--out",
                                                                   done], 2, "already holds"),
        ("random without target", "studies/__main__.py", ["random"] + TOY + ["--random", "2", "--out", new], 2,
         "--target-flops"),
        ("random resumed as a search", "search.py", ["--resume", "--out", str(w / "random")], 2, "holds a random"),
        ("into a hand arch", "search.py", TOY + ["--out", str(w / "hand")], 2, "already holds arch.json"),
        ("retrain into a finished one", "retrain.py",
         ["--arch", arch, "--out", str(w / "retrained")] + RETRAIN, 2, "already holds"),
        ("resume nothing", "search.py", ["--resume", "--out", new], 2, "nothing to resume"),
        ("resume contradicted", "search.py", ["--resume", "--out", done, "--lr", "0.5"], 2, "has --lr"),
        ("retrain resume nothing", "retrain.py", ["--resume", "--out", new], 2, "nothing to resume"),
        ("retrain resume no out", "retrain.py", ["--resume"], 2, "needs --out"),
        # 5: files and folders where they should not be
        ("out is a file", "search.py", TOY + ["--out", str(w / "a_file")], 2, "is a file"),
        ("table is a pipe", *s[:1], s[1] + ["--lut", str(w / "fifo.json")], 2, "not a regular file"),
        ("table is a folder", *s[:1], s[1] + ["--lut", done], 2, "not a regular file"),
        ("arch is a pipe", "retrain.py", ["--arch", str(w / "fifo.json"), "--profile"], 2, "not a regular file"),
        ("corrupt image", "search.py", TOY[:2] + ["--data", str(w / "imgs")] + TOY[4:8] + ["--out", new], 2,
         "broken.JPEG"),
        ("latency out missing folder", "latency.py", ["--space", "toy", "--out", str(w / "no" / "t.json")], 2,
         "does not exist"),
        ("latency out is a folder", "latency.py", ["--space", "toy", "--out", done], 2, "is a folder"),
        ("csv into missing folder", "studies/__main__.py", ["estimation", "--space", "toy", "--samples", "10", "--csv",
                                                   str(w / "no" / "p.csv")], 2, "does not exist"),
        ("svg onto a folder", "machinery/draw.py", ["--arch", arch, "--svg", done], 2, "is a folder"),
        ("run is not a folder", "machinery/draw.py", ["--run", str(w / "a_file")], 2, "is not a folder"),
        # 7: smaller
        ("missing weights", "retrain.py", ["--arch", arch, "--eval", "--weights", str(w / "nope.pt")] + RETRAIN, 2,
         "does not exist"),
        # round two (hostile input, 85 more cases): 2, outputs follow one rule
        ("svg over a file", "machinery/draw.py", ["--arch", arch, "--svg", str(w / "a_file")], 2, "exists; pass --force"),
        ("csv over a file", "studies/__main__.py", ["estimation", "--space", "toy", "--samples", "10", "--csv",
                                                    str(w / "a_file")], 2, "exists; pass --force"),
        # 3: silently wrong data
        ("out empty", "search.py", TOY + ["--out", ""], 2, "--out must name a folder"),
        ("retrain out empty", "retrain.py", ["--arch", arch, "--out", ""] + RETRAIN, 2, "--out must name a folder"),
        ("class folder links back", "search.py", TOY[:2] + ["--data", str(w / "loop")] + TOY[4:8] + ["--out", new], 2,
         "which holds it"),
        # 4: resume on damage it can name
        ("args.json text for a number", "search.py", ["--resume", "--out", str(w / "edited")], 2, "--lr must be"),
        ("args.json a list", "search.py", ["--resume", "--out", str(w / "listed")], 2, "does not hold the settings"),
        ("checkpoint missing a key", "search.py", ["--resume", "--out", str(w / "ck_missing")], 2, "global_step"),
        ("checkpoint of wrong type", "search.py", ["--resume", "--out", str(w / "ck_wrong")], 2, "'epoch' holds str"),
        # 5: tracebacks where a line is promised
        ("table subnormal", *s[:1], s[1] + ["--lut", str(w / "lut_tiny.json")], 2, "1e-320"),
        ("table huge", *s[:1], s[1] + ["--lut", str(w / "lut_huge.json")], 2, "1e+308"),
        ("json nested deep", "retrain.py", ["--arch", str(w / "deep.json"), "--profile"], 2, "not valid JSON"),
        ("weights of another arch", "retrain.py", ["--arch", arch, "--eval", "--weights", str(w / "other_weights.pt")]
         + RETRAIN, 2, "does not match"),
        ("search checkpoint as weights", "retrain.py", ["--arch", arch, "--eval", "--weights",
                                                        str(w / "done" / "checkpoint.pt")] + RETRAIN, 2, "does not match"),
        ("a list as weights", "retrain.py", ["--arch", arch, "--eval", "--weights", str(w / "list.pt")] + RETRAIN, 2,
         "hold no network"),
        # 6: messages that say what is wrong
        ("random bytes as weights", "retrain.py", ["--arch", arch, "--eval", "--weights", str(w / "random.pt")]
         + RETRAIN, 2, "cannot be read"),
        ("a search resumed as a retraining", "retrain.py", ["--resume", "--out", done], 2,
         "holds a search, not a retraining"),
        ("a retraining resumed as a search", "search.py", ["--resume", "--out", str(w / "retrained")], 2,
         "holds a retraining, not a search"),
        ("random resumed by its hint", "studies/__main__.py", ["random", "--resume", "--out", str(w / "random")], 0,
         None),
        # good behaviour: a finished run resumed says so and changes nothing
        ("resume finished search", "search.py", ["--resume", "--out", done], 0, None),
        ("resume finished retrain", "retrain.py", ["--resume", "--out", str(w / "retrained")], 0, None),
    ]


def test_hostile_cases(world, capfd):
    """Every case: its exit code and one line naming the problem (or the good behaviour), nothing written
    before changed, no code run from a pickle, no folder created by a refused run."""
    table = cases(world)
    assert len(table) >= 40
    before = snapshot(world)
    failures = []
    for name, script, argv, code, says in table:
        capfd.readouterr()
        got = invoke(script, argv)
        out, err = capfd.readouterr()
        lines = err.strip().splitlines()
        if got != code:
            failures.append(f"{name}: exit {got}, wanted {code}: {err.strip()[-300:]}")
        elif code and (len(lines) != 1 or says not in lines[0]):
            failures.append(f"{name}: stderr {err.strip()[-300:]!r}, wanted one line with {says!r}")
        elif not code and "nothing to resume" not in out:
            failures.append(f"{name}: {out[-300:]!r}")
        if snapshot(world) != before:
            failures.append(f"{name}: changed files {set(snapshot(world).items()) ^ set(before.items())}")
            before = snapshot(world)
    assert not failures, "\n".join(failures)
    assert not (world / "pwned").exists(), "a pickle ran code"
    assert not (world / "new").exists(), "a refused run created its folder"


def run_proc(argv, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    return subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kw)


def wait_for(path, proc, seconds=120):
    deadline = time.time() + seconds
    while not os.path.exists(path) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert os.path.exists(path), proc.communicate()


def test_lock_parent_kill_resume_and_ctrl_c(tmp_path):
    """2, 6: a two-process search holds its folder (a second run there is refused); SIGKILL of its parent takes
    the workers with it (none finishes the run alone); the resume removes the temp file a killed save left
    and continues; Ctrl-C (SIGINT to the process group, as a terminal sends it) ends it with one line and
    exit 130, no traceback."""
    out = tmp_path / "run"
    first = run_proc(["search.py"] + TOY + ["--epochs", "40", "--warmup-epochs", "1", "--procs", "2",
                                            "--batch-size", "16", "--out", str(out)], start_new_session=True)
    wait_for(out / "checkpoint.pt", first)
    with pytest.raises(cli.UsageError, match="another run .pid"):  # what a second search.py there would hear
        cli.claim_folder(str(out))
    workers = [int(p) for p in os.listdir("/proc") if p.isdigit() and ppid(int(p)) == first.pid]
    assert len(workers) >= 2
    first.kill()
    first.communicate()
    deadline = time.time() + 20
    while any(alive(c) for c in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(alive(c) for c in workers)
    epoch = cli.load_checkpoint(str(out / "checkpoint.pt"))["epoch"]
    (out / "checkpoint.pt.tmp424242").write_bytes(b"half a checkpoint")
    # a terminal's Ctrl-C reaches a program that has SIGINT at its default; a test run started in the background of
    # a non-interactive shell inherits SIGINT ignored, so the child gets the default back, as from a terminal
    second = run_proc(["search.py", "--resume", "--out", str(out)], start_new_session=True,
                      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while cli.load_checkpoint(str(out / "checkpoint.pt"))["epoch"] <= epoch and time.time() < deadline \
            and second.poll() is None:
        time.sleep(0.1)
    assert not (out / "checkpoint.pt.tmp424242").exists()
    os.killpg(second.pid, signal.SIGINT)
    _, err = second.communicate(timeout=60)
    lines = err.strip().splitlines()
    assert second.returncode == 130 and "Traceback" not in err, err
    assert [line for line in lines if "interrupted" in line] == [lines[-1]]


def ppid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_full_disk_is_one_line_and_leaves_no_temp(tmp_path, capfd, monkeypatch):
    """6: a save that fails (the disk is full) ends the run with one line, exit 1, and no temp file; the
    checkpoint of the epoch before stays, and the resume continues from it."""
    out = tmp_path / "run"
    real_save, calls = torch.save, []

    def full_after_first(obj, path, *a, **kw):
        calls.append(path)
        if len(calls) > 1:
            open(path, "wb").write(b"partial")
            raise OSError(28, "No space left on device", str(path))
        return real_save(obj, path, *a, **kw)
    monkeypatch.setattr(cli.torch, "save", full_after_first)
    capfd.readouterr()
    code = invoke("search.py", TOY + ["--epochs", "3", "--warmup-epochs", "1", "--out", str(out)])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "No space left on device" in err[0]
    assert not [f for f in os.listdir(out) if ".tmp" in f]
    assert cli.load_checkpoint(str(out / "checkpoint.pt"))["epoch"] == 1


# ----------------------------------------------------------------------------------------
# Round two: a race, a log cut mid-line, a run moved between directories, real failed writes, memory, workers,
# SIGTERM

def test_a_finished_run_is_not_taken_by_a_run_that_was_still_checking(tmp_path, monkeypatch, capfd):
    """1: run B finds OUT empty and checks its data; meanwhile run A starts into OUT and finishes (a hook inside
    B's data check runs A, which makes the race deterministic). B must then refuse, leaving A's run whole."""
    out = str(tmp_path / "run")
    real, ran = search.options.search_data, []

    def data_check_with_a_run_a_inside(args, before_run=False):
        if before_run and not ran:
            ran.append(True)
            search.main(TOY + ["--epochs", "1", "--warmup-epochs", "1", "--out", out])  # run A, start to end
        return real(args, before_run)
    monkeypatch.setattr(search.options, "search_data", data_check_with_a_run_a_inside)
    capfd.readouterr()
    code = invoke("search.py", TOY + ["--epochs", "1", "--warmup-epochs", "1", "--seed", "3", "--out", out])
    err = capfd.readouterr().err.strip().splitlines()
    assert ran and code == 2 and len(err) == 1 and "already holds" in err[0]
    assert json.load(open(os.path.join(out, "args.json")))["seed"] == 0  # A's record, not B's
    assert len(cli.read_log(os.path.join(out, "search_log.jsonl"))) == 2  # A's untrained guess and its epoch


def test_a_log_line_cut_by_a_crash_is_dropped_and_other_damage_named(world, tmp_path, capfd):
    """4: the last line of search_log.jsonl cut during its append (the one write that is not atomic) does not stop
    --resume; a damaged line before the last is named in one line."""
    import shutil
    for cut_last in (True, False):
        run = tmp_path / f"run{cut_last}"
        shutil.copytree(world / "done", run, ignore=shutil.ignore_patterns(cli.LOCK))
        log = (run / "search_log.jsonl").read_text().splitlines(keepends=True)
        log = log + ['{"epoch": 2, "sta'] if cut_last else log[:1] + ['{"epoch": 1, "sta\n'] + log[1:]
        (run / "search_log.jsonl").write_text("".join(log))
        capfd.readouterr()
        code = invoke("search.py", ["--resume", "--out", str(run)])
        out, err = capfd.readouterr()
        if cut_last:
            assert code == 0 and "nothing to resume" in out
            assert (run / "search_log.jsonl").read_text() == (world / "done" / "search_log.jsonl").read_text()
        else:
            assert code == 2 and err.strip().count("\n") == 0 and "line 2 is not a JSON record" in err


def test_a_run_started_with_a_relative_data_folder_resumes_from_another_directory(tmp_path, monkeypatch):
    """4: args.json records --data as an absolute path."""
    make_folder(tmp_path / "imgs", classes=3, per_class=20)
    monkeypatch.chdir(tmp_path)
    argv = ["--space", "toy", "--data", "imgs", "--batch-size", "8", "--input-size", "16", "--log-every", "100",
            "--epochs", "2", "--warmup-epochs", "1"]
    with pytest.raises(SystemExit):  # stopped after its first epoch, as a kill would
        monkeypatch.setattr(search.Search, "run_epoch", stop_after_first(search.Search.run_epoch))
        search.main(argv + ["--out", str(tmp_path / "run")])
    monkeypatch.undo()
    os.makedirs(tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path / "elsewhere")
    search.main(["--resume", "--out", str(tmp_path / "run")])
    assert json.load(open(tmp_path / "run" / "args.json"))["data"] == str(tmp_path / "imgs")
    assert cli.load_checkpoint(str(tmp_path / "run" / "checkpoint.pt"))["epoch"] == 2


def stop_after_first(run_epoch):
    def run(self, epoch):
        if epoch == 1:
            raise SystemExit(1)
        return run_epoch(self, epoch)
    return run


def test_a_real_failed_write_during_a_checkpoint(tmp_path):
    """5: a file-size limit (RLIMIT_FSIZE, set in the child) makes writes fail as a full disk does: torch.save's
    zip writer then raises RuntimeError, which must still end the run in one line, exit 1, with no temp file."""
    import resource
    out = tmp_path / "run"

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
    proc = run_proc(["search.py"] + TOY + ["--epochs", "1", "--warmup-epochs", "1", "--out", str(out)],
                    preexec_fn=small_files)
    _, err = proc.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "writing failed" in lines[0], err
    assert not [f for f in os.listdir(out) if ".tmp" in f] and not (out / "checkpoint.pt").exists()


def test_memory_that_cannot_be_had_is_one_line(tmp_path, monkeypatch, capfd):
    """5: the allocator's RuntimeError (sizes within the checked limits can still need more memory than there is)."""
    def no_memory(self, *a, **kw):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 98765432100 bytes. Error code 12 (Cannot allocate memory)")
    monkeypatch.setattr(search.SuperNet, "forward", no_memory)
    capfd.readouterr()
    code = invoke("search.py", TOY + ["--epochs", "1", "--warmup-epochs", "1", "--out", str(tmp_path / "run")])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "out of memory" in err[0] and "--batch-size" in err[0]


def test_a_corrupt_image_found_by_a_loader_worker_is_one_line(tmp_path, capfd):
    """5: an image whose header reads but whose data is cut passes the check before training; the DataLoader
    worker that decodes it raises, and the error arrives as one line, not wrapped in the worker's traceback."""
    folder = make_folder(tmp_path / "imgs", classes=3, per_class=20)
    good = open(os.path.join(folder, "train", "n01", "img0.JPEG"), "rb").read()
    open(os.path.join(folder, "train", "n01", "img0.JPEG"), "wb").write(good[:len(good) // 2])
    capfd.readouterr()
    code = invoke("search.py", ["--space", "toy", "--data", folder, "--batch-size", "8", "--input-size", "16",
                                "--workers", "1", "--epochs", "1", "--warmup-epochs", "1", "--out", str(tmp_path / "run")])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "img0.JPEG cannot be decoded" in err[0], err


def test_sigterm_is_one_line_and_keeps_the_checkpoint(tmp_path):
    """6: SIGTERM (what a scheduler sends before it kills) ends a run as Ctrl-C does: one line, exit 143, the
    checkpoint of the last epoch kept, and --resume goes on from it."""
    out = tmp_path / "run"
    proc = run_proc(["search.py"] + TOY + ["--epochs", "40", "--warmup-epochs", "1", "--out", str(out)])
    wait_for(out / "checkpoint.pt", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    lines = err.strip().splitlines()
    assert proc.returncode == 143 and "Traceback" not in err and "terminated" in lines[-1], err
    assert cli.load_checkpoint(str(out / "checkpoint.pt"))["epoch"] >= 1
