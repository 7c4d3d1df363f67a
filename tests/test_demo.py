"""The README's main command, shortened (DEMO_QUICK=1: a few training steps and test examples): every stage
runs on real MovieLens-100K and leaves the files and the results table that the full run leaves."""
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_main_command_quick(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "DEMO_SKIP_SETUP": "1", "DEMO_QUICK": "1", "DEMO_OUT": str(out), "PY": sys.executable}
    run = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert json.loads((out / "data" / "audit.json").read_text())["ok"]
    for path in ("pretrain/model/config.yaml", "finetune/model/config.yaml", "finetune/hf/config.json",
                 "eval/next_item/predictions.jsonl", "eval/rating/metrics.json", "eval/rating-expected/metrics.json",
                 "eval/baselines/metrics.json"):
        assert (out / path).is_file(), path
    table = (out / "results.md").read_text()
    for row in ("| demo model (pre-train + fine-tune) |", "| most popular (baseline) |", "| global-mean (baseline) |",
                "| per-item-mean (baseline) |", "| demo model (pre-train + fine-tune), sampled (mean ± std over seeds) |",
                "| demo model (pre-train + fine-tune), expected rating over the rating strings |"):
        assert row in table
    assert "weights and logits identical = True" in run.stdout
