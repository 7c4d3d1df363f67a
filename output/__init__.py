"""How every command writes an output folder: one writer at a time (a lock), and nothing half-written in sight
(write into a temporary sibling, rename it into place when complete).

    with OutputLock(out_dir, "train.py"):               # a second writer stops, naming the holder
        with staged_dir(out_dir / "model") as tmp:      # write into tmp; on success it replaces model/ whole
            ...

The lock is a file beside the folder, `<folder>.lock`, created atomically (O_EXCL) and holding the holder's host,
PID, start time and command. A second writer stops with a message naming them. A lock whose holder is provably gone
(this host, PID not running: a kill -9) is taken over with a message, so that the same command resumes; a lock
held on another host cannot be checked from here and is taken over only when asked (`--take-over-lock` on the
command line, or RECGPT_TAKE_OVER_LOCK=1).

A staged folder is `<name>.partial-<host>-<pid>`: a reader never sees it, a crash leaves it to be removed by the next
writer, and the rename is atomic on one filesystem (the old folder, when there is one, is moved aside first and
deleted after the new one is in place).
"""
import contextlib
import datetime
import json
import os
import pathlib
import shutil
import socket
import sys

TAKE_OVER_ENV = "RECGPT_TAKE_OVER_LOCK"


class OutputLocked(ValueError):
    """Another writer holds the output folder (a ValueError, so a command prints it as one line)."""


def _holder_text(info: dict) -> str:
    return (f"{info.get('command', '?')} (host {info.get('host', '?')}, PID {info.get('pid', '?')}, started "
            f"{info.get('started', '?')})")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user's process
    return True


class OutputLock:
    """Exclusive writer of `folder` for the lifetime of the `with` block (the lock file is `<folder>.lock`)."""

    def __init__(self, folder, command: str):
        self.folder = pathlib.Path(folder)
        self.path = self.folder.with_name(self.folder.name + ".lock")
        self.info = {"host": socket.gethostname(), "pid": os.getpid(), "command": command,
                     "started": datetime.datetime.now().isoformat(timespec="seconds")}
        self.held = False

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_or_refuse()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.info, f)
            self.held = True
            return self
        raise OutputLocked(f"{self.path}: could not take the lock")

    def _take_over_or_refuse(self) -> None:
        try:
            held = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            held = {}
        same_host = held.get("host") == self.info["host"]
        if same_host and held.get("pid") == self.info["pid"]:
            raise OutputLocked(f"{self.folder} is already locked by this process")
        stale = same_host and isinstance(held.get("pid"), int) and not _alive(held["pid"])
        if stale or os.environ.get(TAKE_OVER_ENV, "") not in ("", "0"):
            why = "which is no longer running" if stale else "as asked (--take-over-lock)"
            print(f"taking over the lock of {self.folder} from {_holder_text(held)}, {why}", file=sys.stderr,
                  flush=True)
            self.path.unlink(missing_ok=True)
            return
        raise OutputLocked(f"{self.folder} is being written by {_holder_text(held)}: wait for it, or use another "
                           f"output folder" + ("" if same_host else " (on another host: if it is gone, run again "
                                                                     "with --take-over-lock)"))

    def __exit__(self, *exc):
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
        return False


def partial_dir(final) -> pathlib.Path:
    final = pathlib.Path(final)
    return final.with_name(f"{final.name}.partial-{socket.gethostname()}-{os.getpid()}")


def remove_partials(final) -> None:
    """Folders a crashed writer of `final` left behind (only the lock holder calls this)."""
    final = pathlib.Path(final)
    for p in final.parent.glob(f"{final.name}.partial-*"):
        shutil.rmtree(p, ignore_errors=True)


def replace_dir(tmp, final) -> None:
    """Put the complete folder `tmp` in place of `final` (which may exist): never a mix of both."""
    tmp, final = pathlib.Path(tmp), pathlib.Path(final)
    old = final.with_name(f"{final.name}.old-{socket.gethostname()}-{os.getpid()}")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(final):
    """Yield an empty temporary sibling of `final`; when the block ends without an error it replaces `final`."""
    final = pathlib.Path(final)
    remove_partials(final)
    tmp = partial_dir(final)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, final)
