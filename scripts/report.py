"""Results tables (Markdown) from evaluate.py / evaluation.baselines outputs, and training-curve plots.

    python scripts/report.py --title "Beauty test, 1,000 users" \
        --model "(a) pre-train + SFT=out/beauty-mini/eval/finetune" --model "(b) SFT only=out/beauty-mini/eval/sft-only" \
        --baselines out/beauty-mini/eval/baselines --reference "RecGPT-7B-Instruct (paper)=.0364,.0236,.0527,.0288" \
        --curve "pre-train=out/beauty-mini/pretrain/metrics.jsonl" --plot docs/figures/beauty-mini.png

--model LABEL=DIR: an evaluate.py output folder (its metrics.json says the task); repeat a label to give one
model both tasks. --reference LABEL=HR@5,NDCG@5,HR@10,NDCG@10: quoted numbers (next item), shown as such.
--curve LABEL=metrics.jsonl (a training run's log): loss against tokens seen, one line per run, in --plot.
--compare: for the first two next-item models, evaluated on the same users, the difference (first - second) in
HR/NDCG@5/10 with a 95% paired bootstrap interval over users (2,000 resamples, seed 0).
"""
import argparse
import json
import pathlib
import random
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from evaluation.metrics import user_gains  # noqa: E402

NEXT_KEYS = ("HR@5", "NDCG@5", "HR@10", "NDCG@10")


def labelled(value: str) -> tuple:
    label, sep, rest = value.rpartition("=")
    if not sep or not label:
        raise SystemExit(f"expected LABEL=VALUE, got {value!r}")
    return label, rest


def load_json(path: pathlib.Path) -> dict:
    if not path.is_file():
        raise SystemExit(f"{path} not found (did the evaluation step run?)")
    return json.loads(path.read_text())


RATING_DECODING = {"sample": "sampled (mean ± std over seeds)", "greedy": "greedy",
                   "expected": "expected rating over the rating strings"}


def tables(models, baselines, references, title) -> str:
    next_rows, rating_rows = [], []
    for label, folder in models:
        m = load_json(pathlib.Path(folder) / "metrics.json")
        n = m["settings"]["n_examples"]
        if m["settings"]["task"] == "next_item":
            next_rows.append((label, [m["grounded"][k] for k in NEXT_KEYS], n))
            if "constrained" in m:  # evaluate.py --constrained: beams restricted to catalog titles
                next_rows.append((f"{label}, trie-constrained beams", [m["constrained"][k] for k in NEXT_KEYS], n))
        else:
            s = m["summary"]

            def cell(key):  # mean ± std over sampling seeds; one deterministic number (greedy, expected value)
                v = s[key]
                return f"{v['mean']:.4f}" + (f" ± {v['std']:.4f}" if v.get("std") is not None else "")
            decoding = m["settings"]["rating"].get("decoding", "sample")
            unparsable = f"{s['n_unparsable']['mean']:.1f}" if "n_unparsable" in s else "-"
            rating_rows.append((f"{label}, {RATING_DECODING[decoding]}", cell("RMSE"), cell("MAE"), unparsable, n))
    if baselines:
        b = load_json(pathlib.Path(baselines) / "metrics.json")
        if "next_item" in b:
            m = b["next_item"]["most_popular"]
            next_rows.append(("most popular (baseline)", [m[k] for k in NEXT_KEYS], m["n_users"]))
        for name, m in b.get("rating", {}).items():
            rating_rows.append((f"{name.replace('_', '-')} (baseline)", f"{m['RMSE']:.4f}", f"{m['MAE']:.4f}", "-", m["n"]))
    for label, numbers in references:
        values = [float(v) for v in numbers.split(",")]
        if len(values) != 4:
            raise SystemExit(f"--reference {label}: expected 4 numbers (HR@5,NDCG@5,HR@10,NDCG@10)")
        next_rows.append((label, values, "-"))
    out = [f"### {title}", ""] if title else []
    if next_rows:
        out += ["| next item | HR@5 | NDCG@5 | HR@10 | NDCG@10 | users |", "|---|---:|---:|---:|---:|---:|"]
        out += [f"| {label} | " + " | ".join(f"{v:.4f}" for v in values) + f" | {n} |" for label, values, n in next_rows]
        out.append("")
    if rating_rows:
        out += ["| rating | RMSE | MAE | unparsable (mean over seeds) | examples |", "|---|---:|---:|---:|---:|"]
        out += [f"| {label} | {rmse} | {mae} | {bad} | {n} |" for label, rmse, mae, bad, n in rating_rows]
        out.append("")
    return "\n".join(out)


def per_user_gains(folder) -> dict:
    """user -> (HR@5, NDCG@5, HR@10, NDCG@10) contributions, from evaluate.py's predictions.jsonl."""
    gains = {}
    with open(pathlib.Path(folder) / "predictions.jsonl", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            g = user_gains(r["rank"])  # rank of the target in the grounded list; None = not in it
            gains[r["user"]] = tuple(g[k] for k in NEXT_KEYS)
    return gains


def paired_difference(models, resamples: int = 2000, seed: int = 0) -> str:
    (label_a, a), (label_b, b) = [(label, per_user_gains(folder)) for label, folder in models[:2]]
    if set(a) != set(b):
        raise SystemExit(f"--compare: {label_a} and {label_b} were evaluated on different users")
    users = sorted(a)
    diffs = [[a[u][i] - b[u][i] for u in users] for i in range(4)]
    rng = random.Random(seed)
    boots = [[] for _ in range(4)]
    for _ in range(resamples):
        idx = [rng.randrange(len(users)) for _ in users]
        for i in range(4):
            boots[i].append(sum(diffs[i][j] for j in idx) / len(users))
    cells = []
    for i in range(4):
        boot = sorted(boots[i])
        lo, hi = boot[int(0.025 * resamples)], boot[int(0.975 * resamples) - 1]
        cells.append(f"{sum(diffs[i]) / len(users):+.4f} [{lo:+.4f}, {hi:+.4f}]")
    return "\n".join([f"Paired difference, {label_a} minus {label_b} ({len(users)} users; 95% bootstrap interval):", "",
                      "| HR@5 | NDCG@5 | HR@10 | NDCG@10 |", "|---:|---:|---:|---:|", "| " + " | ".join(cells) + " |", ""])


def plot(curves, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, log in curves:
        records = [json.loads(line) for line in open(log) if line.strip()]
        records = [r for r in records if "loss" in r and "tokens_seen" in r]
        if not records:
            raise SystemExit(f"{log}: no training records (step, loss, tokens_seen)")
        ax.plot([r["tokens_seen"] / 1e6 for r in records], [r["loss"] for r in records], label=label, linewidth=1)
    ax.set_xlabel("tokens seen (millions; fine-tuning: prompt + response tokens)")
    ax.set_ylabel("training loss (nats / supervised token)")
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--title")
    p.add_argument("--model", action="append", default=[], type=labelled)
    p.add_argument("--baselines")
    p.add_argument("--reference", action="append", default=[], type=labelled)
    p.add_argument("--curve", action="append", default=[], type=labelled)
    p.add_argument("--plot", type=pathlib.Path)
    p.add_argument("--compare", action="store_true")
    args = p.parse_args(argv)
    if args.model or args.baselines or args.reference:
        print(tables(args.model, args.baselines, args.reference, args.title))
    if args.compare:
        next_models = [(label, folder) for label, folder in args.model
                       if load_json(pathlib.Path(folder) / "metrics.json")["settings"]["task"] == "next_item"]
        if len(next_models) < 2:
            raise SystemExit("--compare needs two next-item --model folders")
        print(paired_difference(next_models))
    if args.curve:
        if not args.plot:
            raise SystemExit("--curve needs --plot PATH")
        plot(args.curve, args.plot)


if __name__ == "__main__":
    main()
