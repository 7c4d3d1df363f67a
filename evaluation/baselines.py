"""Simple baselines on a prepared benchmark, scored by the same metric code as the models:

    python -m evaluation.baselines --benchmark out/data/beauty-mini/eval/amazon-beauty-2014 --out out/eval/baselines \
        [--split test] [--sample 1000 | --next-item-sample 200 --rating-sample 300] [--sample-seed 0]

- next item, most popular: every user gets the same 10 items, the most frequent in the training split
  (ties: smaller item id first); HR/NDCG@5/10 as in evaluate.py. Where the examples list candidates (a build with
  eval.negatives), also the most popular within each user's candidates (HR@1/5/10, NDCG@5/10).
- rating, global mean: every prediction is the training split's mean rating.
- rating, per-item mean: the item's mean training rating, the global mean for an item never rated in training.
- P5's template files (BENCHMARK/p5/, python -m data.prepare.p5_tasks), each as evaluate.py --task p5 scores it:
  rating templates by the global and per-item means; sequential by most popular; direct (candidates and yes/no)
  by most popular within each user's 100 candidates (training interactions; ties by item id, since P5's yes/no
  lists put the positive first); explanation and review have no baseline here.
Training statistics come from BENCHMARK/train_stats.json (every training interaction: validation/test of both
tasks removed, untitled items included). With a sample size, the examples are those evaluate.py picks with the
same --sample/--sample-seed for that task.
"""
import argparse
import json
import pathlib
import sys

from config import cli
from data.formats.evalfiles import (DEFAULT_RATING_SCALE, item_id_order, read_examples, read_train_stats,
                                    sample_examples)
from evaluation.metrics import (CANDIDATE_KEYS, candidate_ranking_metrics, rank_candidates, ranking_metrics,
                                rating_metrics)


def most_popular(stats: dict, k: int = 10) -> list:
    """The k items with the most training interactions, ties broken by item id."""
    return sorted(stats["items"], key=lambda i: (-stats["items"][i][0], item_id_order(i)))[:k]


def per_item_mean(stats: dict, item_id: str) -> float:
    count, rated, total = stats["items"].get(item_id, (0, 0, 0.0))
    return total / rated if rated else stats["mean_rating"]


def run(benchmark, split="test", samples=None, sample_seed=0, scale=None) -> dict:
    """samples: {"next_item": n or None, "rating": n or None}; None = every example. scale: (low, high) that
    predictions are clipped to; default: the build's (train_stats.json)."""
    samples = samples or {}
    bench = pathlib.Path(benchmark)
    stats = read_train_stats(bench)
    scale = tuple(scale or stats["rating_scale"] or DEFAULT_RATING_SCALE)  # a build without ratings has none
    results = {}
    path = bench / f"next_item_{split}.jsonl"
    if path.is_file():
        examples = sample_examples(read_examples(path, "next_item"), samples.get("next_item"), sample_seed)
        top = most_popular(stats)
        results["next_item"] = {"most_popular": ranking_metrics([top] * len(examples),
                                                                [x["target_item_id"] for x in examples]),
                                "most_popular_items": top}
        if examples and "candidates" in examples[0]:  # a build with eval.negatives
            results["next_item"]["most_popular_candidates"] = popular_within_candidates(stats, examples, ranks=True)
    path = bench / f"rating_{split}.jsonl"
    if path.is_file() and stats["mean_rating"] is not None:
        examples = sample_examples(read_examples(path, "rating"), samples.get("rating"), sample_seed)
        targets = [float(x["target_rating"]) for x in examples]
        glob = stats["mean_rating"]
        predictions = {"global_mean": [glob] * len(examples),
                       "per_item_mean": [per_item_mean(stats, x["target_item_id"]) for x in examples]}
        results["rating"] = {name: rating_metrics([repr(p) for p in preds], targets, glob, tuple(scale))
                             for name, preds in predictions.items()}
    if (bench / "p5").is_dir():
        results["p5"] = p5_baselines(bench, stats, split, samples.get("p5"), sample_seed, scale)
    if not results:
        raise FileNotFoundError(f"{bench}: neither next_item_{split}.jsonl nor a rated rating_{split}.jsonl")
    return results


def popular_within_candidates(stats: dict, records: list, ranks: bool = False) -> dict:
    """Each user's candidates ranked by their training interactions. Ties are broken by item id, not by the list's
    order: P5's yes/no lists put the positive first. ranks: also each user's rank of the target ("ranks", for paired
    comparisons with a model: scripts/report.py --compare)."""
    popularity = {i: c[0] for i, c in stats["items"].items()}
    candidates = [sorted((str(c) for c in x["candidates"]), key=item_id_order) for x in records]
    scores = [[popularity.get(c, 0) for c in cands] for cands in candidates]
    targets = [str(x["target_item_id"]) for x in records]
    out = candidate_ranking_metrics(candidates, scores, targets)
    if ranks:
        out["ranks"] = {x["user"]: rank_candidates(c, s).index(t) + 1
                        for x, c, s, t in zip(records, candidates, scores, targets)}
    return out


def p5_baselines(bench, stats: dict, split: str, sample, sample_seed: int, scale) -> dict:
    """{template: {"seen", "kind", baseline: metrics}} for each P5 template file with a baseline; the examples are
    those evaluate.py --task p5 scores with the same --sample/--sample-seed."""
    from evaluation.p5_tasks import read_template_file, template_files

    out = {}
    for tid, path in template_files(bench, split).items():
        records, kind = read_template_file(path)
        records = sample_examples(records, sample, sample_seed)
        row = {"seen": bool(records[0]["seen"]), "kind": kind, "n": len(records)}
        if kind == "rating" and stats["mean_rating"] is not None and all("item_id" in x for x in records):
            targets = [float(x["target_rating"]) for x in records]
            glob = stats["mean_rating"]
            for name, preds in (("global_mean", [glob] * len(records)),
                                ("per_item_mean", [per_item_mean(stats, x["item_id"]) for x in records])):
                row[name] = rating_metrics([repr(p) for p in preds], targets, glob, tuple(scale))
        elif kind == "sequential":
            row["most_popular"] = ranking_metrics([most_popular(stats)] * len(records),
                                                  [str(x["target_item_id"]) for x in records])
        elif kind.startswith("direct"):
            row["most_popular"] = popular_within_candidates(stats, records)
        else:
            continue
        out[tid] = row
    return out


def markdown(results: dict) -> str:
    lines = []
    if "next_item" in results:
        m = results["next_item"]["most_popular"]
        lines += ["| next item | HR@5 | NDCG@5 | HR@10 | NDCG@10 | users |", "|---|---:|---:|---:|---:|---:|",
                  f"| most popular | {m['HR@5']:.4f} | {m['NDCG@5']:.4f} | {m['HR@10']:.4f} | {m['NDCG@10']:.4f} "
                  f"| {m['n_users']} |", ""]
        if "most_popular_candidates" in results["next_item"]:
            m = results["next_item"]["most_popular_candidates"]
            lines += ["| next item within the candidates | HR@1 | HR@5 | NDCG@5 | HR@10 | NDCG@10 | users |",
                      "|---|---:|---:|---:|---:|---:|---:|",
                      "| most popular | " + " | ".join(f"{m[k]:.4f}" for k in CANDIDATE_KEYS) + f" | {m['n_users']} |",
                      ""]
    if "rating" in results:
        lines += ["| rating | RMSE | MAE | examples |", "|---|---:|---:|---:|"]
        lines += [f"| {name.replace('_', ' ')} | {m['RMSE']:.4f} | {m['MAE']:.4f} | {m['n']} |"
                  for name, m in results["rating"].items()]
    if "p5" in results:
        lines += ["", "| P5 template | seen | baseline | metrics | examples |", "|---|---|---|---|---:|"]
        for tid, row in results["p5"].items():
            for name in ("global_mean", "per_item_mean", "most_popular"):
                if name in row:
                    m = row[name]
                    keys = ("RMSE", "MAE") if "RMSE" in m else tuple(k for k in CANDIDATE_KEYS if k in m)
                    cells = ", ".join(f"{k} {m[k]:.4f}" for k in keys)
                    lines.append(f"| {tid} | {'seen' if row['seen'] else 'unseen'} | {name.replace('_', ' ')} | "
                                 f"{cells} | {row['n']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--benchmark", required=True, help="folder with {task}_{split}.jsonl and train_stats.json")
    p.add_argument("--split", default="test")
    p.add_argument("--sample", type=int, help="sample size for both tasks")
    p.add_argument("--next-item-sample", type=int, help="overrides --sample for next item")
    p.add_argument("--rating-sample", type=int, help="overrides --sample for rating")
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--rating-scale", type=float, nargs=2, help="default: the build's (train_stats.json)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    samples = {"next_item": args.next_item_sample or args.sample, "rating": args.rating_sample or args.sample,
               "p5": args.sample}
    results = run(args.benchmark, args.split, samples, args.sample_seed, args.rating_scale)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({**results, "settings": vars(args)}, indent=2) + "\n")
    table = markdown(results)
    (out / "metrics.md").write_text(table)
    print(table)
    return results


if __name__ == "__main__":
    sys.exit(cli.run(main))
