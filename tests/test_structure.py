"""The rooms' import rules (data/README.md, ../shared/spec/style.md §5): the formats import nothing else of the
project; the trainer and the evaluator never import the corpus build; the model knows nothing of data, training or
evaluation; the config system (config/) and the output rules (output/) import nothing else of the project.
Checked on every import statement of the sources, including those inside functions."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROJECT = ("data", "model", "attention", "training", "evaluation", "train", "finetune", "evaluate", "config", "output")


def imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def files(*patterns: str) -> list[pathlib.Path]:
    return sorted(p for pattern in patterns for p in ROOT.glob(pattern))


def offending(paths, allowed) -> dict:
    bad = {}
    for p in paths:
        wrong = {n for n in imports(p) if n.split(".")[0] in PROJECT and not allowed(n)}
        if wrong:
            bad[str(p.relative_to(ROOT))] = sorted(wrong)
    return bad


@pytest.mark.parametrize("room, patterns, allowed", [
    ("formats", ["data/formats/*.py"], lambda n: n.startswith("data.formats")),
    ("trainer", ["training/*.py", "train.py", "finetune.py"], lambda n: not n.startswith("data.prepare")),
    ("evaluator", ["evaluation/*.py", "evaluate.py"], lambda n: not n.startswith("data.prepare")),
    ("model", ["model/*.py", "attention/*.py"], lambda n: n.split(".")[0] in ("model", "attention", "config", "output")),
    ("config", ["config/*.py"], lambda n: n.split(".")[0] == "config"),
    ("output", ["output/*.py"], lambda n: False),
])
def test_import_rules(room, patterns, allowed):
    paths = files(*patterns)
    assert paths, patterns
    assert offending(paths, allowed) == {}, f"{room} imports what it must not"


def test_the_rule_sees_imports_inside_functions(tmp_path):
    p = tmp_path / "x.py"
    p.write_text("import numpy\n\n\ndef f():\n    from data.prepare import plan\n    import data.prepare.audit\n")
    assert imports(p) == {"numpy", "data.prepare", "data.prepare.plan", "data.prepare.audit"}
