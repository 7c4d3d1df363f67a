"""How every command ends: an expected error is one clean line naming its culprit, and a non-zero exit.

    if __name__ == "__main__":
        sys.exit(cli.run(main))          # main(argv) -> an exit code, or anything else for 0

Expected errors are the ones a user can cause and fix: a bad config (ConfigError), bad input data (ValueError and its
kinds, with the file and line in the message), a missing or unreadable file, a full disk. They print
`error: <message>` on stderr and exit 1; with RECGPT_DEBUG=1 in the environment (or `--debug` on the command line)
the traceback is printed too. Anything else is a bug and keeps its traceback. `--take-over-lock` is read here too,
for every command (output/__init__.py). Under torchrun only rank 0 prints the
line (every rank raises the same error).
"""
import errno
import os
import sys

EXPECTED = (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError,
            UnicodeDecodeError)


class DiskFull(OSError):
    """No space left on the device that `path` is on."""

    def __init__(self, path, need: int = None, free: int = None):
        more = f" ({free / 1e9:.2f} GB free, {need / 1e9:.2f} GB needed)" if need is not None else ""
        super().__init__(errno.ENOSPC, f"no space left on the device of {path}{more}: free some space or write "
                                       f"elsewhere", str(path))


def describe(e: BaseException) -> str:
    """The one line a user sees for an expected error."""
    if isinstance(e, DiskFull):
        return e.strerror
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return f"no space left on the device writing {e.filename or 'the output'}: free some space or write elsewhere"
    if isinstance(e, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({e.reason} at byte {e.start})"
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.filename}: {e.strerror}"
    return str(e).strip() or type(e).__name__


def is_expected(e: BaseException) -> bool:
    return isinstance(e, EXPECTED) or (isinstance(e, OSError) and e.errno == errno.ENOSPC)


def run(main, argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("RECGPT_DEBUG", "") not in ("", "0")
    if "--take-over-lock" in argv:  # output/: take an output folder's lock from a holder this host cannot see
        os.environ["RECGPT_TAKE_OVER_LOCK"] = "1"
    argv = [a for a in argv if a not in ("--debug", "--take-over-lock")]
    try:
        code = main(argv)
    except Exception as e:  # noqa: BLE001  (sorted into expected errors, one line, and bugs, a traceback)
        if not is_expected(e) or debug:
            raise
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {describe(e)}", file=sys.stderr, flush=True)
        return 1
    return code if isinstance(code, int) and not isinstance(code, bool) else 0  # a main may return its results
