"""Every command written in the README, docs/, data/README.md and the comments of configs/ is checked, so the docs
cannot rot:
- train.py, finetune.py, evaluate.py and `python -m data.prepare` run with --dry-run: the config file must exist
  and every key of the command line must be valid (the resolved config is printed, nothing is built or trained);
  `torchrun ... train.py ...` is checked as `python train.py ...`;
- `python -m training.memory ...` runs (it is arithmetic on the config);
- any other `python -m MODULE` / `python scripts/X.py` runs with --help (after its subcommand, if any), and every
  --flag the documented command uses must appear in that help;
- shell scripts must exist and pass `bash -n`.
Placeholders (`<a download>`, `[--optional ...]`, CONFIG, OLD) are skipped or stand for a dummy path.
"""
import contextlib
import io
import pathlib
import re
import runpy
import shlex
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
DOCS = ["README.md", "data/README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
CONFIGS = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml"))
STARTS = re.compile(r"(python3? |\.venv/bin/python |torchrun |bash scripts/|scripts/\S+\.(sh|py)\b)")
DRY_RUN = {"train.py", "finetune.py", "evaluate.py", "data.prepare", "data.prepare.own_files",  # have --dry-run
           "data.prepare.p5_tasks"}
RUN = {"training.memory"}  # cheap enough to run as they are
PLACEHOLDER = re.compile(r"<[^<>]*>|\bCONFIG\b|\bOLD\b|\[[^\[\]]*\]")


def documented_commands(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line number, command) of every command in a Markdown file's code (fenced or indented) or a YAML comment."""
    lines = path.read_text().splitlines()
    out, fenced, i = [], False, 0
    while i < len(lines):
        raw = lines[i]
        if raw.lstrip().startswith("```"):
            fenced = not fenced
            i += 1
            continue
        text = raw
        if path.suffix == ".yaml":
            if not raw.lstrip().startswith("#"):
                i += 1
                continue
            text = raw.lstrip()[1:]
        elif not (fenced or raw.startswith("    ") or i < 3):  # the README's first lines are its two commands
            i += 1
            continue
        text = text.strip()
        start = i
        while text.endswith("\\") and i + 1 < len(lines):  # continuation lines
            i += 1
            nxt = lines[i].lstrip()
            text = text[:-1].rstrip() + " " + (nxt[1:].strip() if path.suffix == ".yaml" and nxt.startswith("#") else nxt)
        if STARTS.match(text):
            out.append((start + 1, text))
        i += 1
    return out


def words(command: str) -> list[str]:
    command = re.sub(r"\s#\s.*$", "", command)  # a trailing comment
    command = PLACEHOLDER.sub(lambda m: "" if m.group(0).startswith("[") else "/nonexistent/placeholder", command)
    parts = shlex.split(command.split(" && ")[0].split(" | ")[0])
    if parts[0] == "torchrun":  # torchrun [--opts] script.py args -> python script.py args
        script = next(j for j, w in enumerate(parts) if w.endswith(".py"))
        parts = ["python", *parts[script:]]
    return parts


def run_python(argv: list[str]) -> tuple[int, str]:
    """Run `python argv...` in this process (runpy, as the command line would) -> (exit code, output)."""
    buffer = io.StringIO()
    old_argv = sys.argv
    code = 0
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            if argv[0] == "-m":
                sys.argv = [argv[1], *argv[2:]]
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            else:
                sys.argv = list(argv)
                runpy.run_path(str(REPO / argv[0]), run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, int) and e.code is not None:
            buffer.write(str(e.code))
    except Exception as e:  # noqa: BLE001  (any failure is the command's, reported with its message)
        code = 1
        buffer.write(f"{type(e).__name__}: {e}")
    finally:
        sys.argv = old_argv
    return code, buffer.getvalue()


def check(command: str) -> str:
    """'' when the documented command is sound, else why not."""
    parts = words(command)
    if parts[0] == "bash" or parts[0].startswith("scripts/") and parts[0].endswith(".sh"):
        script = REPO / (parts[1] if parts[0] == "bash" else parts[0])
        if not script.is_file():
            return f"{script.relative_to(REPO)} does not exist"
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        return proc.stderr if proc.returncode else ""
    argv = parts[1:]
    name = argv[1] if argv[0] == "-m" else argv[0]
    if not (argv[0] == "-m" or (REPO / name).is_file()):
        return f"{name} does not exist"
    if name in DRY_RUN and not any("/nonexistent/placeholder" in w for w in argv):
        code, out = run_python(argv + ["--dry-run"])
    elif name in RUN:
        code, out = run_python(argv)
    else:
        head = argv[:2] if argv[0] == "-m" else argv[:1]
        rest = argv[len(head):]
        sub = [rest[0]] if rest and not rest[0].startswith("-") and "/" not in rest[0] and "." not in rest[0] else []
        code, out = run_python(head + sub + ["--help"])
        if code == 0:
            missing = [w.split("=")[0] for w in rest if w.startswith("--") and w.split("=")[0] not in out]
            if missing:
                return f"{' '.join(head + sub)} --help does not list {missing}"
    return "" if code == 0 else f"exit {code}: {out.strip()[-800:]}"


ALL = [(f"{doc}:{line}", cmd) for doc in DOCS + CONFIGS for line, cmd in documented_commands(REPO / doc)]


def test_the_docs_have_commands():
    assert len(ALL) > 40, ALL
    assert {c.split()[0] for _, c in ALL} >= {"python", "bash", "torchrun"}


@pytest.mark.parametrize("where, command", ALL, ids=[w for w, _ in ALL])
def test_documented_command(where, command):
    problem = check(command)
    assert not problem, f"{where}: `{command}`: {problem}"


@pytest.mark.parametrize("command, why", [
    ("python train.py configs/train/no-such-config.yaml", "not found"),
    ("python finetune.py configs/train/tiny-finetune.yaml --optim.learning_rate=1", "unknown key 'optim.learning_rate'"),
    ("python -m data.prepare configs/data/movielens-100k.yaml --max_seq_lenn=3", "unknown key 'max_seq_lenn'"),
    ("python evaluate.py --checkpoint x --benchmark y --task ranking --out z", "must be one of"),
    ("python -m attention.benchmark --no-such-flag 3", "does not list ['--no-such-flag']"),
    ("python -m data.prepare.no_such_module --x", "exit 1"),
    ("bash scripts/no_such_script.sh", "does not exist"),
])
def test_a_broken_command_is_caught(command, why):
    assert why in check(command)


def test_commands_are_found_in_code_blocks_and_yaml_comments(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("text python not-a-command\n\n```bash\npython train.py a.yaml \\\n  --b=1   # why\n```\n\n"
                  "    python -m data.prepare c.yaml\n")
    assert documented_commands(md) == [(4, "python train.py a.yaml --b=1   # why"), (8, "python -m data.prepare c.yaml")]
    yaml = tmp_path / "x.yaml"
    yaml.write_text("# RecGPT\n#   torchrun --nproc_per_node 8 train.py configs/x.yaml\nrun: {}\n")
    assert [words(c) for _, c in documented_commands(yaml)] == [["python", "train.py", "configs/x.yaml"]]
