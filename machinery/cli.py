"""What every program shares at its edges, so that each refuses bad input the same way.

A refusal is one line and exit code 2 (UsageError, ArgumentParser, run_cli; the paper's modules raise
supernet.InvalidInput, which is printed the same way); numbers are checked for range and finiteness as
argparse reads them (the type callables `integer` and `number`); a file given by the user is read only if
it is a regular file, and a checkpoint only as tensors and plain values (read_json, load_checkpoint,
load_arch, load_table); every file is written through a temp file and a rename (save_json_atomic,
save_atomic); and a run folder belongs to one live run (claim_folder). Ctrl-C ends a program with one line
and exit code 130, SIGTERM with one line and exit code 143.
"""
import argparse
import ctypes
import errno
import fcntl
import json
import math
import os
import pickle
import re
import signal
import stat
import sys

import torch

from cost import check_costs
from supernet import InvalidInput, Parser, check_arch, run


class UsageError(InvalidInput):
    """Bad input from the user: the programs print it as one line and exit with code 2."""


class ArgumentParser(Parser):
    """supernet.Parser (a usage error is one line, exit code 2); a value refused by a type callable below is
    said as "--flag must be ...", and `given` tells which flags the command line wrote."""

    def error(self, message):
        super().error(re.sub(r"^argument (-\S+?)(/\S+)?: (?=must be)", r"\1 ", message))

    def given(self, argv=None):
        """The destinations of the flags written on the command line (not their defaults)."""
        quiet = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
        for a in self._actions:
            if isinstance(a, argparse._StoreTrueAction):
                quiet.add_argument(*a.option_strings, dest=a.dest, action="store_true")
            elif a.option_strings and not isinstance(a, argparse._HelpAction):
                quiet.add_argument(*a.option_strings, dest=a.dest, nargs=a.nargs)
        known, _ = quiet.parse_known_args(argv)
        return set(vars(known))


class Terminated(KeyboardInterrupt):
    """SIGTERM (what a cluster scheduler sends before it kills), raised where the program is, as Ctrl-C is."""


def on_sigterm(signum, frame):
    raise Terminated


def run_cli(main):
    """Run a program: a UsageError is one line and exit 2; Ctrl-C one line and exit 130, SIGTERM one line and exit
    143; a failed write (a full disk, a lost folder) one line and exit 1; memory that cannot be had, one line."""
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        run(main)  # supernet.run: InvalidInput (and so UsageError) is one line and exit 2
    except Terminated:
        print("terminated (SIGTERM): what was saved is kept (a run continues with --resume)", file=sys.stderr)
        sys.exit(143)
    except KeyboardInterrupt:
        print("interrupted: what was saved is kept (a run continues with --resume)", file=sys.stderr)
        sys.exit(130)
    except (RuntimeError, MemoryError) as e:  # the allocators': torch.OutOfMemoryError, CPU's RuntimeError
        if not (isinstance(e, (torch.OutOfMemoryError, MemoryError)) or "can't allocate memory" in str(e)):
            raise
        print(f"error: out of memory ({(str(e) or type(e).__name__).splitlines()[0][:200]}); a smaller "
              "--batch-size or --input-size may fit", file=sys.stderr)
        sys.exit(1)
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except OSError as e:
        print(f"error: {e.strerror or e} ({e.filename or 'a file'}); nothing half-written was kept", file=sys.stderr)
        sys.exit(1)


# ----------------------------------------------------------------------------------------
# Numbers

def ranged(kind, low=None, high=None, low_open=False):
    """An argparse type: a `kind` (int or float) that is finite and lies in [low, high] (low excluded with
    low_open). It also takes a value already parsed, as --resume restores from args.json."""
    what = "an integer" if kind is int else "a finite number"
    bounds = " and ".join(x for x in ("" if low is None else f"{'>' if low_open else '>='} {low}",
                                      "" if high is None else f"<= {high}") if x)

    def parse(text):
        try:
            value = kind(text) if isinstance(text, str) else text
        except ValueError:
            value = None
        bad = (not isinstance(value, (int, float)) or isinstance(value, bool)
               or (kind is int and isinstance(value, float)) or not math.isfinite(value)
               or (low is not None and (value <= low if low_open else value < low))
               or (high is not None and value > high))
        if bad:
            raise argparse.ArgumentTypeError(f"must be {what} {bounds}, got {text}".replace("  ", " "))
        return value
    parse.__name__, parse.ranged = kind.__name__, True
    return parse


def integer(low=None, high=None):
    return ranged(int, low, high)


def number(low=None, high=None, low_open=False):
    return ranged(float, low, high, low_open)


SEED = integer(0, 2**32 - 1)


# ----------------------------------------------------------------------------------------
# Reading what the user gives

def regular_file(path, what):
    """Refuse a path that does not exist or is not a regular file (a folder, a named pipe, a device)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise UsageError(f"{what} {path} cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        raise UsageError(f"{what} {path} is not a regular file")


def read_json(path, what):
    """The JSON object in a regular file, or one line saying what is wrong with it."""
    regular_file(path, what)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: nested deeper than Python's stack
        raise UsageError(f"{what} {path} is not valid JSON ({type(e).__name__})") from None


def load_checkpoint(path, what="checkpoint"):
    """torch.load of tensors and plain values only (weights_only=True): a file that holds anything else could
    run code when unpickled, so it is refused, as is a file that is not a checkpoint."""
    regular_file(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" in str(e).lower():  # it names a function or class to call: the way a pickle runs code
            raise UsageError(f"{what} {path} holds objects other than tensors and plain values; refused, as "
                             "loading it could run code") from None
        raise UsageError(f"{what} {path} cannot be read (not a torch checkpoint); it is corrupt or not a "
                         f"{what}") from None
    except Exception as e:  # any unreadable file is the user's problem to hear about, in one line
        raise UsageError(f"{what} {path} cannot be read ({type(e).__name__}); it is corrupt or not a "
                         f"{what}") from None


def load_arch(path):
    """An arch file (supernet.py says what it holds), checked by supernet.check_arch."""
    arch = read_json(path, "arch file")
    if not isinstance(arch, dict):
        raise UsageError(f"arch file {path} does not hold a JSON object")
    check_arch(arch)
    return arch


def load_table(path):
    """A cost table file (cost.py says what it holds), checked by cost.check_costs."""
    table = read_json(path, "cost table")
    check_costs(table, path)
    return table


# ----------------------------------------------------------------------------------------
# Writing

def output_file(path, what, force=False):
    """Refuse an output path onto a folder, a special file or (unless force: the program's --force) an existing
    file, or into a folder that is missing or read-only. Every program's output flag follows this rule."""
    folder = os.path.dirname(os.path.abspath(path))
    if not path:
        raise UsageError(f"{what} must name a file")
    if os.path.isfile(path) and not force:
        raise UsageError(f"{what} {path} exists; pass --force to overwrite it, or choose another name")
    if os.path.isdir(path):
        raise UsageError(f"{what} {path} is a folder, not a file")
    if os.path.exists(path) and not os.path.isfile(path):
        raise UsageError(f"{what} {path} is not a regular file")
    if not os.path.isdir(folder):
        raise UsageError(f"{what} {path}: its folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{what} {path}: its folder {folder} is not writable")


def write_atomic(path, write):
    """write(tmp) then a rename onto path: a crash never leaves half a file, and a failed write leaves no temp."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_text_atomic(text, path):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    write_atomic(path, write)


def save_json_atomic(obj, path, indent=1):
    save_text_atomic(json.dumps(obj, indent=indent), path)


def save_atomic(obj, path):
    """torch.save through write_atomic. Its zip writer reports a failed write (a full disk) as RuntimeError: it is
    raised as the OSError it is."""
    def write(tmp):
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:
            raise OSError(errno.EIO, f"writing failed, the disk may be full ({str(e).splitlines()[0]})", path) from None
    write_atomic(path, write)


# ----------------------------------------------------------------------------------------
# The run folder: one live run at a time

SETTINGS = "args.json"  # a run's settings, written when it starts; --resume restores them
CHECKPOINT = "checkpoint.pt"
SEARCH_LOG = "search_log.jsonl"  # a search's record of every epoch (the random baseline's: of every sample)
SPLIT = "split.json"  # which ImageFolder images a search trains on and which it validates on
LOCK = ".lock"
_held = {}  # folder -> its open lock file: the lock lasts as long as this process


def stale_temp(name):
    return re.search(r"\.tmp\d+$", name) is not None


def has_run(out):
    """Whether OUT holds a run that --resume can continue."""
    return any(os.path.isfile(os.path.join(out, f)) for f in (SETTINGS, CHECKPOINT))


def require_run(out):
    if not has_run(out):
        raise UsageError(f"nothing to resume in {out}: it holds no {SETTINGS} of a run (start one without --resume)")


def check_folder(out, resume):
    """Before anything is written: OUT must be a folder (or not exist yet); a new run needs it empty (a folder
    holding anything, a finished run or someone's files, is not overwritten); --resume needs the run's
    settings there."""
    if not out:
        raise UsageError("--out must name a folder")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out} is a file, not a folder")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.exists(out) and not os.access(parent if os.path.isdir(parent) else "/", os.W_OK):
        raise UsageError(f"--out {out} cannot be created (its parent is missing or not writable)")
    if os.path.isdir(out) and not os.access(out, os.W_OK):
        raise UsageError(f"--out {out} is not writable")
    held = sorted(n for n in os.listdir(out) if n != LOCK and not stale_temp(n)) if os.path.isdir(out) else []
    if resume:
        require_run(out)
    elif held:
        raise UsageError(f"{out} already holds {', '.join(held[:3])}{' ...' if len(held) > 3 else ''}; continue "
                         "its run with --resume, or start this one elsewhere with --out")


def claim_folder(out):
    """Create OUT, take its lock (released when this process ends, however it ends), and remove temp files
    that a killed save left behind. A second live run into OUT is refused."""
    os.makedirs(out, exist_ok=True)
    key = os.path.realpath(out)
    if key in _held:  # this process holds it already (one program calling another's main, as tests do)
        return
    f = open(os.path.join(out, LOCK), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "a live process"
        f.close()
        raise UsageError(f"another run ({holder}) is using {out}") from None
    f.truncate(0)
    f.write(f"pid {os.getpid()}")
    f.flush()
    _held[key] = f
    for name in os.listdir(out):
        if stale_temp(name):
            os.remove(os.path.join(out, name))


KINDS = {"space": "a search", "arch": "a retraining"}  # the setting that only each kind of run records


def restore_settings(ap, argv, args, out, changeable=("resume", "out", "log_every", "workers", "check_sync")):
    """--resume: every setting of the run in OUT comes back from its args.json, each checked as its flag checks
    what is typed (a hand-edited file is refused in one line); a flag on the command line (argv) that contradicts
    it is refused (the ones in `changeable` only steer this process)."""
    require_run(out)
    if not os.path.isfile(os.path.join(out, SETTINGS)):
        return  # a run of an older version: its settings are the flags given, compared with its checkpoint
    saved, given, path = read_settings(out), ap.given(argv), os.path.join(out, SETTINGS)
    mine = next(k for k in KINDS if hasattr(args, k))
    if mine not in saved:
        held = next((what for k, what in KINDS.items() if k in saved), "no run this program knows")
        raise UsageError(f"{out} holds {held}, not {KINDS[mine]}")
    actions = {a.dest: a for a in ap._actions}
    for key, value in saved.items():
        if key in changeable or not hasattr(args, key):
            continue
        flag = "--" + key.replace("_", "-")
        if key in given and plain(getattr(args, key)) != value:
            raise UsageError(f"the run in {out} has {flag} {value}, this command says {plain(getattr(args, key))}; "
                             "drop the flag to resume it")
        try:
            if key in actions:  # (a setting without a flag, as the random baseline's in search.py, is not typed)
                check_setting(actions[key], value)
        except argparse.ArgumentTypeError as e:
            raise UsageError(f"{path}: {flag} {e}") from None
        setattr(args, key, value)


def check_setting(action, value):
    """A value from args.json, held to what its flag accepts on the command line (argparse.ArgumentTypeError)."""
    if value is None:
        return
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise argparse.ArgumentTypeError(f"must be true or false, got {value!r}")
        return
    values = value if action.nargs not in (None, "?") else [value]
    if action.nargs not in (None, "?") and not isinstance(value, list):
        raise argparse.ArgumentTypeError(f"must be a list, got {value!r}")
    if isinstance(action.nargs, int) and len(values) != action.nargs:
        raise argparse.ArgumentTypeError(f"must be {action.nargs} values, got {value!r}")
    for v in values:
        if getattr(action.type, "ranged", False):
            action.type(v)
        elif action.choices is not None and v not in action.choices:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(map(str, action.choices))}, got {v!r}")
        elif action.type in (None, str) and not isinstance(v, str):
            raise argparse.ArgumentTypeError(f"must be text, got {v!r}")
        elif action.type is not None and action.type is not str and not getattr(action.type, "ranged", False) \
                and not isinstance(v, (int, float)):
            raise argparse.ArgumentTypeError(f"must be a number, got {v!r}")


def absolute_data(data):
    """--data as a run records it: a folder as its absolute path, 'fake' and 'fashion-mnist' as they are."""
    return data if data in ("fake", "fashion-mnist") else os.path.abspath(data)


def plain(value):
    """A setting as args.json holds it (tuples become lists)."""
    return json.loads(json.dumps(value))


def read_log(path):
    """The records of a run's log (one JSON object a line). The last line alone may be cut short (a crash during
    its append, the one write that is not atomic): it is dropped; any other damage is refused in one line."""
    with open(path) as f:
        lines = [ln for ln in f if ln.strip()]
    records = []
    for k, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except (ValueError, RecursionError):
            if k < len(lines) - 1 or line.endswith("\n"):
                raise UsageError(f"{path}: line {k + 1} is not a JSON record; the log is damaged") from None
        if records and not isinstance(records[-1], dict):
            raise UsageError(f"{path}: line {k + 1} is not a JSON object; the log is damaged")
    return records


def keep_log_before(path, last, key="epoch"):
    """On resume, drop log lines of epochs (samples) the checkpoint does not hold (a kill may fall between the two)."""
    if not os.path.exists(path):
        return
    records = [r for r in read_log(path) if isinstance(r.get(key), int) and r[key] <= last]
    save_text_atomic("".join(json.dumps(r) + "\n" for r in records), path)


def append_line(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_settings(out):
    """The settings a run in OUT recorded when it started (its args.json)."""
    settings = read_json(os.path.join(out, SETTINGS), "run settings")
    if not isinstance(settings, dict):
        raise UsageError(f"{os.path.join(out, SETTINGS)} does not hold the settings of a run (a JSON object)")
    return settings


def begin_run(args):
    """Take OUT (claim_folder), look at it again under the lock (another run may have taken and filled it while
    this one checked its data: a finished run is never trained over), and record the run's settings there; a
    resumed run keeps its record."""
    claim_folder(args.out)
    check_folder(args.out, args.resume)
    if not args.resume:
        save_json_atomic(vars(args), os.path.join(args.out, SETTINGS))


def same_config(have, want, path, hint=""):
    """Refuse the settings `have` recorded in path (a checkpoint's, a run's args.json) where they differ from the
    run's (`want`): the file belongs to another run. A setting an older file does not record is not compared."""
    diff = [k for k in want if k in have and want[k] != have[k]]
    if diff:
        k = diff[0]
        raise UsageError(f"{path} was made with {k}={have.get(k)!r}, this run has {want[k]!r}{hint}")


def checkpoint_config(path, what):
    """The settings a run's checkpoint recorded (its 'config'), refused in one line if it holds none."""
    ck = load_checkpoint(path)
    if not isinstance(ck, dict) or not isinstance(ck.get("config"), dict):
        raise UsageError(f"{path} is not {what} checkpoint")
    return ck["config"]


def load_states(ck, parts, what, fields=None):
    """Load ck[key] into each {key: module or optimiser} of `parts` and return ck's `fields` ({key: type}, in
    order), each checked for its type; a checkpoint of another network, or a damaged one, is one line."""
    try:
        for key, obj in parts.items():
            obj.load_state_dict(ck[key])
        values = [ck[key] for key in fields or {}]
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as e:
        raise UsageError(f"checkpoint does not match this {what} ({type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0]})") from None
    for (key, kind), value in zip((fields or {}).items(), values):
        if not isinstance(value, kind) or isinstance(value, bool):
            raise UsageError(f"checkpoint: '{key}' holds {type(value).__name__}, not what this {what} wrote")
    return values


def resume_line(out, done, total, unit="epoch"):
    """The line a resumed run prints: where it goes on, or that it has nothing left to do."""
    if done >= total:
        return f"nothing to resume: {out} finished all {total} {unit}s"
    return f"resuming {out} at {unit} {done + 1}/{total}"


def stop_unless_finite(loss, where):
    """A loss that is NaN or infinite ends the run in one line; the checkpoint of the last good epoch is kept."""
    if not math.isfinite(loss):
        raise UsageError(f"the loss became {loss} at {where}; stopped, keeping the last checkpoint (a lower --lr "
                         "may help)")


def die_with_parent():
    """Linux: this process gets SIGKILL when its parent dies, so no worker finishes a run on its own."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the call
        os._exit(1)
