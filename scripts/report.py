"""Results tables (Markdown) from evaluate.py / evaluation.baselines outputs, and training-curve plots.

    python scripts/report.py --title "Beauty test, 1,000 users" \
        --model "(a) pre-train + SFT=out/beauty-mini/eval/finetune" --model "(b) SFT only=out/beauty-mini/eval/sft-only" \
        --baselines out/beauty-mini/eval/baselines --reference "RecGPT-7B-Instruct (paper)=.0364,.0236,.0527,.0288" \
        --curve "pre-train=out/beauty-mini/pretrain/metrics.jsonl" --plot docs/figures/beauty-mini.png

--model LABEL=DIR: an evaluate.py output folder (its metrics.json says the task); repeat a label to give one
model both tasks. --reference LABEL=HR@5,NDCG@5,HR@10,NDCG@10: quoted numbers (next item), shown as such.
--curve LABEL=metrics.jsonl (a training run's log): loss against tokens seen, one line per run, in --plot.
--compare: for the first two next-item models, evaluated on the same users, the difference (first - second) in
HR/NDCG@5/10 with a 95% paired bootstrap interval over users (2,000 resamples, seed 0); and for each model that ranked
candidates (evaluate.py next_item.decoding=candidates), its difference from the most popular within the candidates.
"""
import argparse
import json
import pathlib
import random
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from evaluation.metrics import CANDIDATE_KEYS, rank_candidates, user_gains  # noqa: E402

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
    next_rows, candidate_rows, rating_rows = [], [], []
    for label, folder in models:
        m = load_json(pathlib.Path(folder) / "metrics.json")
        n = m["settings"]["n_examples"]
        if m["settings"]["task"] == "next_item" and "candidates" in m:  # next_item.decoding=candidates
            candidate_rows.append((label, [m["candidates"][k] for k in CANDIDATE_KEYS], n))
        elif m["settings"]["task"] == "next_item":
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
            if "most_popular_candidates" in b["next_item"]:
                m = b["next_item"]["most_popular_candidates"]
                candidate_rows.append(("most popular within the candidates (baseline)",
                                       [m[k] for k in CANDIDATE_KEYS], m["n_users"]))
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
    if candidate_rows:
        out += ["| next item, ranked within each user's candidates | " + " | ".join(CANDIDATE_KEYS) + " | users |",
                "|---|" + "---:|" * (len(CANDIDATE_KEYS) + 1)]
        out += [f"| {label} | " + " | ".join(f"{v:.4f}" for v in values) + f" | {n} |"
                for label, values, n in candidate_rows]
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


def candidate_gains(ranks: dict) -> dict:
    """user -> (HR@1, HR@5, NDCG@5, HR@10, NDCG@10) contributions of the target's rank within the candidates."""
    out = {}
    for user, rank in ranks.items():
        g = user_gains(rank, ks=(1, 5, 10))
        out[user] = tuple(g[k] for k in CANDIDATE_KEYS)
    return out


def candidate_ranks(folder) -> dict:
    """user -> the target's rank within its candidates, from evaluate.py's predictions (next_item.decoding=candidates),
    ranked as evaluate.py ranks them (summed log-probability, ties by list order)."""
    ranks = {}
    with open(pathlib.Path(folder) / "predictions.jsonl", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            ranks[r["user"]] = rank_candidates(r["candidates"], r["logprob"]).index(r["target_item_id"]) + 1
    return ranks


def paired_difference(label_a, a: dict, label_b, b: dict, keys, resamples: int = 2000, seed: int = 0) -> str:
    """The mean over users of a - b (user -> a tuple of per-user values, one per key), with a 95% paired bootstrap
    interval over users."""
    if set(a) != set(b):
        raise SystemExit(f"--compare: {label_a} and {label_b} were evaluated on different users")
    users = sorted(a)
    diffs = [[a[u][i] - b[u][i] for u in users] for i in range(len(keys))]
    rng = random.Random(seed)
    boots = [[] for _ in keys]
    for _ in range(resamples):
        idx = [rng.randrange(len(users)) for _ in users]
        for i in range(len(keys)):
            boots[i].append(sum(diffs[i][j] for j in idx) / len(users))
    cells = []
    for i in range(len(keys)):
        boot = sorted(boots[i])
        lo, hi = boot[int(0.025 * resamples)], boot[int(0.975 * resamples) - 1]
        cells.append(f"{sum(diffs[i]) / len(users):+.4f} [{lo:+.4f}, {hi:+.4f}]")
    return "\n".join([f"Paired difference, {label_a} minus {label_b} ({len(users)} users; 95% bootstrap interval):", "",
                      "| " + " | ".join(keys) + " |", "|" + "---:|" * len(keys), "| " + " | ".join(cells) + " |", ""])


def comparisons(models, baselines) -> list:
    """--compare: the first two next-item models (grounded ranks); every candidate-ranking model against the most
    popular within the candidates (when the baselines have its per-user ranks)."""
    out, grounded, candidates = [], [], []
    for label, folder in models:
        m = load_json(pathlib.Path(folder) / "metrics.json")
        if m["settings"]["task"] == "next_item":
            (candidates if "candidates" in m else grounded).append((label, folder))
    if len(grounded) >= 2:
        (label_a, a), (label_b, b) = grounded[:2]
        out.append(paired_difference(label_a, per_user_gains(a), label_b, per_user_gains(b), NEXT_KEYS))
    popular = (load_json(pathlib.Path(baselines) / "metrics.json").get("next_item", {})
               .get("most_popular_candidates", {}).get("ranks")) if baselines else None
    if candidates and popular:
        base = candidate_gains(popular)
        for label, folder in candidates:
            mine = candidate_gains(candidate_ranks(folder))
            out.append(paired_difference(label, mine, "most popular within the candidates",
                                         {u: base[u] for u in mine if u in base}, CANDIDATE_KEYS))
    if not out:
        raise SystemExit("--compare needs two next-item --model folders, or a candidate-ranking one and --baselines "
                         "with the candidates' ranks")
    return out


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
        print("\n".join(comparisons(args.model, args.baselines)))
    if args.curve:
        if not args.plot:
            raise SystemExit("--curve needs --plot PATH")
        plot(args.curve, args.plot)


if __name__ == "__main__":
    main()
