"""Resumable stages: each stage of the build writes one folder under the work dir, complete or not at all.

A stage writes into `<dir>.tmp-<host>-<pid>/`, then records `done.json` (its fingerprint: a hash of everything
its output depends on) and renames the folder into place. A rerun reuses a folder whose fingerprint matches
and redoes one whose fingerprint differs (the config or an input changed), saying which; the `.tmp-` folders
of dead processes on this host are discarded. So a build killed at any moment and started again redoes
only the unfinished stages, and never mixes outputs of two configs; two processes that run the same stage
(a requeued Slurm task beside its first run) each write their own folder, and the first renamed wins.
"""
import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import pathlib
import shutil
import socket
import sys
from typing import Callable, Optional


def log(msg: str) -> None:
    """Progress of the build: one line on stderr (stdout is the command's result)."""
    print(msg, file=sys.stderr, flush=True)


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=_plain).encode()).hexdigest()[:20]


def _plain(value):
    """A config section (a dataclass) hashes as its values."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else str(value)


@functools.lru_cache(maxsize=None)
def code_fingerprint(*modules: str) -> str:
    """A hash of the source files of `modules` (e.g. "data.prepare.templates"): a stage's fingerprint includes
    the code that writes it, so that editing a template or a reader redoes what it changes."""
    h = hashlib.sha256()
    for name in sorted(modules):
        h.update(name.encode())
        h.update(pathlib.Path(importlib.util.find_spec(name).origin).read_bytes())
    return h.hexdigest()[:20]


def done_record(folder) -> Optional[dict]:
    path = pathlib.Path(folder) / "done.json"
    return json.loads(path.read_text()) if path.is_file() else None


def is_done(folder, fp: str) -> bool:
    record = done_record(folder)
    return record is not None and record.get("fingerprint") == fp


def run_stage(folder, fp: str, write: Callable[[pathlib.Path], Optional[dict]], what: str,
              announce: bool = True) -> dict:
    """Reuse `folder` if it was finished with fingerprint `fp`; else run write(tmp folder), mark it done and
    move it into place (saying so when it replaces an older one, if `announce`). Returns the done record (with
    what `write` returned under "result")."""
    folder = pathlib.Path(folder)
    record = done_record(folder)
    if record is not None and record.get("fingerprint") == fp:
        return record
    if record is not None or folder.exists():
        if announce:
            log(f"{what}: redoing it (its config or inputs changed since {folder} was written)")
        shutil.rmtree(folder)
    _discard_dead_writers(folder)
    tmp = folder.with_name(f"{folder.name}.tmp-{HOST}-{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        record = {"fingerprint": fp, "result": write(tmp)}
        (tmp / "done.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        tmp.rename(folder)
    except OSError:  # the folder is there: another process finished the same stage first
        shutil.rmtree(tmp, ignore_errors=True)
        if (done_record(folder) or {}).get("fingerprint") != fp:
            raise
        return done_record(folder)
    return record


HOST = socket.gethostname()


def _discard_dead_writers(folder: pathlib.Path) -> None:
    """Remove the `.tmp-` folders of `folder` left by processes of this host that no longer run."""
    for tmp in folder.parent.glob(f"{folder.name}.tmp-{HOST}-*") if folder.parent.is_dir() else []:
        try:
            os.kill(int(tmp.name.rsplit("-", 1)[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, PermissionError):
            pass


def input_stats(options: dict) -> list:
    """(path, size, mtime) of the files a reader's options name, and of the files directly inside the folders
    they name: an edited or replaced input changes the normalised source's fingerprint."""
    out = []
    for key, value in sorted(options.items()):
        if not isinstance(value, str):
            continue
        path = pathlib.Path(value)
        files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else []
        for f in files:
            st = f.stat()
            out.append((key, str(f), st.st_size, st.st_mtime_ns))
    return out
