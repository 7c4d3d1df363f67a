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
    for build in ("data", "item-tokens/data"):
        assert json.loads((out / build / "audit.json").read_text())["ok"]
    for path in ("pretrain/model/config.yaml", "finetune/model/config.yaml", "finetune/hf/config.json",
                 "eval/next_item/predictions.jsonl", "eval/candidates/predictions.jsonl",
                 "eval/candidates-pretrained/predictions.jsonl", "eval/rating/metrics.json",
                 "eval/rating-expected/metrics.json", "eval/baselines/metrics.json"):
        assert (out / path).is_file(), path
        if not path.startswith("finetune/hf"):
            assert (out / "item-tokens" / path).is_file() or "baselines" in path, f"item-tokens/{path}"
    # the item-token build writes each item as one token: its catalog text is the token itself
    catalog = (out / "item-tokens/data/eval/movielens-100k/catalog.jsonl").read_text().splitlines()
    assert json.loads(catalog[0]) == {"item_id": "1", "text": "<movielens-100k#1>", "title_missing": False,
                                      "line": "<movielens-100k#1>"}
    table = (out / "results.md").read_text()
    for model in ("RecGPT text model (pre-train + fine-tune)", "item-token model (pre-train + fine-tune)"):
        for row in (f"| {model} |", f"| {model}, sampled (mean ± std over seeds) |",
                    f"| {model}, expected rating over the rating strings |",
                    f"Paired difference, {model} minus most popular within the candidates"):
            assert row in table, row
        assert table.count(f"| {model} |") == 2  # next item over the catalog, and within the candidates
    for model in ("RecGPT text model", "item-token model"):
        alone = f"{model}, pre-trained only, the candidate as the history document's next line"
        assert f"| {alone} |" in table and f"Paired difference, {alone} minus most popular" in table
    for row in ("| most popular (baseline) |", "| most popular within the candidates (baseline) |",
                "| global-mean (baseline) |", "| per-item-mean (baseline) |"):
        assert row in table, row
    assert "weights and logits identical = True" in run.stdout
