"""The two papers side by side (scripts/papers.sh, issue 14), shortened (PAPERS_QUICK=1: MovieLens-100K, 20 users'
multitask prompts, 2 training steps of 8 pairs, 3 evaluated users, one ablation of (b), (a) pre-trained on those 20
users' rows only, (c) from another training seed, (c) with the loss on the history titles too, (a) tuned for (c)'s
steps): every stage runs from real data, every output records its environment, the table has the arms, the
baselines and the paired differences, and rerunning the evaluation stage (for (a) and (b), one arm per objective)
reproduces the table exactly."""
import importlib.metadata
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import SHARED_DATA

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not (SHARED_DATA / "movielens-100k" / "u.data").is_file(),
                    reason=f"{SHARED_DATA / 'movielens-100k'} not found (the shared data)")
def test_papers_side_by_side_quick(tmp_path):
    out = tmp_path / "papers"
    env = {**os.environ, "PAPERS_QUICK": "1", "PAPERS_DATASETS": "movielens", "PAPERS_OUT": str(out),
           "PAPERS_ABLATIONS": "no-chrono",
           "PY": sys.executable, "RECGPT_SHARED_DATA": str(SHARED_DATA)}

    def run(*stage, **more_env):
        proc = subprocess.run(["bash", "scripts/papers.sh", *stage], cwd=ROOT, env={**env, **more_env},
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    log = run()
    assert "held out alike:" in log  # the pre-training rows and the prompts hold out the same interactions
    # every output says what produced it: the data builds, a training run and an evaluation
    for folder in ("data", "p5", "a-pretrain", "a", "eval/a"):
        produced = json.loads((out / "movielens" / folder / "environment.json").read_text())
        assert produced["packages"]["torch"] == importlib.metadata.version("torch") and produced["machine"]["cores"]
        if folder not in ("data", "p5"):  # the data builds never import torch; training and evaluation name its build
            assert produced["machine"]["torch_build"] == torch.__version__, folder
    # (a) pre-trained on the rows of the prompts' 20 users only: the same tokenizer, held-out interactions, steps
    cut = run("cut")
    assert "20 users of" in cut and "held out alike:" in cut
    stats = (out / "movielens" / "data-cut" / "stats.md").read_text()
    assert "'user_not_in_users_file': " in stats
    meta = {b: json.loads((out / "movielens" / b / "meta.json").read_text()) for b in ("data", "data-cut")}
    assert meta["data-cut"]["tokenizer"]["sha256"] == meta["data"]["tokenizer"]["sha256"]
    # (c) trained and evaluated again from training seed 2: another initialisation and data order, the same steps and
    # evaluated users
    run("seeds", PAPERS_ARMS="c", PAPERS_SEEDS="2")
    ml = out / "movielens"
    assert "seed: 2\n" in (ml / "c-s2" / "config.yaml").read_text()
    assert "seed: 1337\n" in (ml / "c" / "config.yaml").read_text()
    first = {arm: json.loads((ml / arm / "metrics.jsonl").read_text().splitlines()[0]) for arm in ("c", "c-s2")}
    assert first["c"]["step"] == first["c-s2"]["step"] == 1 and first["c"]["loss"] != first["c-s2"]["loss"]
    # (c) tuned with the loss on the history titles too: the same pairs (rebuilt with entity slots; the same tokens),
    # the same first step, with more loss tokens
    history = run("history")
    assert "the same tokens as" in history
    assert "prompt_loss_slots:\n  - purchase_history\n" in (ml / "c-history" / "config.yaml").read_text()
    first["c-history"] = json.loads((ml / "c-history" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["c-history"]["valid_tokens"] > first["c"]["valid_tokens"]
    # (a)'s pre-trained model tuned for (c)'s steps
    run("steps")
    c_steps = int(log.split("(c) instruction tuning alone, ")[1].split(" steps")[0])
    assert f"max_steps: {c_steps}\n" in (ml / "a-steps" / "config.yaml").read_text()
    assert len((ml / "a-steps" / "metrics.jsonl").read_text().splitlines()) == c_steps
    run("report")
    table = (out / "results.md").read_text()
    for row in ("| (a) RecGPT", "| (b) RecSysLLM", "| (c) instruction tuning alone", "| most popular (baseline)",
                "| per item mean (baseline)", "| 5-8 | ", "| 2-13 constrained | ", ", sampled (3 seeds, mean +- std) |",
                "| (b) with chronological spans off", "| most popular within the candidates (baseline) |",
                "| (a) pre-trained on the prompts' users' rows only |", " a-cut - a | a-cut - c |",
                "| (c) with the loss on the prompts' history titles too |", " c-history - a | c-history - c |",
                "| (a) tuned for as many steps as (c) (more tokens than the other arms) |",
                " a-steps - a | a-steps - c |",
                "| (c) instruction tuning alone, training seed 2 |",
                "| template | c-s2 - c |"):  # (a) and (b) have no seed-2 arm here, so no pair between arms at seed 2
        assert row in table, row
    assert (out / "papers-movielens-curves.png").stat().st_size > 0
    assert c_steps > 2  # (c) spends the pre-training tokens on more fine-tuning steps
    # deterministic: beams, constrained beams, candidate scores, the expected rating and seeded sampling. (a) and (b)
    # are evaluated again, one arm per objective ((c) decodes as (a) does), their folders replaced whole
    before = {arm: (out / "movielens" / "eval" / arm / "metrics.json").stat().st_mtime_ns for arm in ("a", "b-sampled")}
    run("eval", PAPERS_ARMS="a b")
    for arm, mtime in before.items():
        assert (out / "movielens" / "eval" / arm / "metrics.json").stat().st_mtime_ns != mtime, arm
    run("report")
    assert (out / "results.md").read_text() == table

    # a SASRec row (scripts/sasrec_baseline.py writes evaluate.py's metrics shape, ranking templates only): here (c)'s
    # own ranking results stand in for it, so its rows appear in the ranking tables only, and (c) - sasrec pairs each
    # user with themself: a difference of exactly 0
    sasrec = out / "movielens" / "eval" / "sasrec"
    shutil.copytree(out / "movielens" / "eval" / "c", sasrec)
    metrics = json.loads((sasrec / "metrics.json").read_text())
    metrics["templates"] = {t: r for t, r in metrics["templates"].items() if r["kind"] != "rating"}
    (sasrec / "metrics.json").write_text(json.dumps(metrics))
    table = run("report")
    rating, ranking = table.split("**Next item", 1)
    assert "| SASRec (RecBole; baseline) |" not in rating and "| SASRec (RecBole; baseline) |" in ranking

    def cells(first):  # the paired-differences row that starts with `first`, cell by cell
        line = next(line for line in table.splitlines() if line.startswith(f"| {first} |"))
        return [cell.strip(" |") for cell in line.split(" | ")]
    for template in ("2-3", "5-5", "5-8"):
        assert cells(template)[cells("template").index("c - sasrec")] == "+0.0000 [+0.0000, +0.0000]", template
