"""Evaluate a checkpoint on a prepared benchmark, the way RecGPT's Tables 2 and 3 do
(../shared/spec/evaluation.md; the code is in evaluation/).

    # sequential recommendation: 10 beams, 10 outputs, each grounded to its nearest catalog item
    python evaluate.py --checkpoint out/recgpt-7b --benchmark out/data/amazon-beauty/eval/amazon-beauty-2014 --task next_item \
        --out out/eval/beauty-next --batch-size 8 --device cuda --dtype bfloat16 [--constrained] [--sample 2000]
    # rating prediction: sampling (temperature 1.0, top-p 0.9, top-k 50), three seeds, mean +- std
    python evaluate.py --checkpoint out/recgpt-7b --benchmark out/data/movielens-100k/eval/movielens-100k --task rating \
        --out out/eval/ml-rating --seeds 0 1 2
    # the same examples for the simple baselines (most popular, global / per-item mean rating)
    python -m evaluation.baselines --benchmark out/data/amazon-beauty/eval/amazon-beauty-2014 --sample 2000 --out out/eval/base

Input (written by `python -m data.prepare`: data/README.md "Evaluation files"):
    BENCHMARK/{task}_{split}.jsonl  one example a line: "user", "prompt", and "target_item_id" (next_item)
                                    or "target_rating" (rating); other keys are carried along
    BENCHMARK/catalog.jsonl         {"item_id", "text"} per catalog item (next_item only)
    BENCHMARK/train_stats.json      the training split's mean rating: the default --fallback-rating
    CHECKPOINT/tokenizer.json       written beside every exported model by train.py / finetune.py
Output, in --out:
    predictions.jsonl   per example: the generated outputs with scores, grounded items and the rank
    metrics.json        metrics, settings and the logged edge cases (spec §6.7, §8)
    metrics.md          a Markdown table of the headline numbers

Choices (spec §5, §8): outputs are ranked by the cumulative log-prob of the generated tokens, EOS included
(--length-penalty 0, closest to RecGPT's vLLM setting); the length-normalised order is reported beside.
Grounded lists are de-duplicated (first occurrence kept), never padded, and items from the user's history
are not filtered out (spec §6.6).
Unparsable ratings predict --fallback-rating (default: the training split's mean rating) and stay in the
denominator; P5-style numbers that drop them are reported beside, with the count.
"""
import argparse
import json
import logging
import pathlib
import time

import torch
from tqdm import tqdm

from data.formats.evalfiles import REQUIRED_KEYS, read_catalog, read_examples, read_train_stats, sample_examples
from evaluation.generate import GenerationConfig, generate_text
from evaluation.metrics import dedupe_keep_first, mean_std, ranking_metrics, rating_metrics

log = logging.getLogger("evaluate")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="our model folder (model/checkpoint.py format)")
    p.add_argument("--tokenizer", help="tokenizers JSON; default: CHECKPOINT/tokenizer.json")
    p.add_argument("--benchmark", required=True, help="folder with {task}_{split}.jsonl and catalog.jsonl")
    p.add_argument("--task", required=True, choices=sorted(REQUIRED_KEYS))
    p.add_argument("--split", default="test")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generate call (beams run together)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="default: the checkpoint's dtype")
    p.add_argument("--limit", type=int, help="evaluate only the first N examples (a quick look)")
    p.add_argument("--sample", type=int, help="evaluate a seeded random sample of N examples (the same N and "
                   "--sample-seed give the same examples to every checkpoint and to evaluation.baselines)")
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, help="default: 128 (next_item), 16 (rating)")
    p.add_argument("--stop", action="append", default=[], help="a stop string (repeatable); EOS always stops")
    g = p.add_argument_group("next_item")
    g.add_argument("--num-beams", type=int, default=10)
    g.add_argument("--num-return-sequences", type=int, default=10)
    g.add_argument("--length-penalty", type=float, default=0.0,
                   help="0: keep and rank beams by cumulative log-prob (default); HF's default is 1.0")
    g.add_argument("--embedder", default="all-MiniLM-L6-v2", help="Sentence-Transformers name or local path")
    g.add_argument("--embedding-cache", default="out/embedding_cache", help="folder for catalog embeddings")
    g.add_argument("--constrained", action="store_true",
                   help="also run trie-constrained beam search and report it beside the grounded results")
    g = p.add_argument_group("rating")
    g.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-p", type=float, default=0.9)
    g.add_argument("--top-k", type=int, default=50)
    g.add_argument("--fallback-rating", type=float,
                   help="prediction for unparsable outputs; default: the training split's mean rating "
                   "(BENCHMARK/train_stats.json)")
    g.add_argument("--rating-scale", type=float, nargs=2, default=[1.0, 5.0], metavar=("LOW", "HIGH"))
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# generation in batches


def batches_by_length(tokenizer, examples, batch_size):
    """Index batches of prompts of similar token length (less padding); results go back by index."""
    lengths = [len(e.ids) for e in tokenizer.encode_batch([x["prompt"] for x in examples], add_special_tokens=False)]
    order = sorted(range(len(examples)), key=lambda i: lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def run_generation(model, tokenizer, examples, cfg: GenerationConfig, batch_size, desc, constraint=None,
                   seed=None) -> list:
    outputs = [None] * len(examples)
    for b, idx in enumerate(tqdm(batches_by_length(tokenizer, examples, batch_size), desc=desc, unit="batch")):
        if seed is not None:  # one stream per batch, so batches do not replay the same draws
            cfg.seed = seed * 1_000_003 + b
        results = generate_text(model, tokenizer, [examples[i]["prompt"] for i in idx], cfg, constraint)
        for i, r in zip(idx, results):
            outputs[i] = r
    return outputs


def output_record(g, **more) -> dict:
    return {"text": g.text, "logprob": g.logprob, "score": g.score, "n_tokens": len(g.tokens),
            "finish_reason": g.finish_reason, **more}


# ---------------------------------------------------------------------------------------------
# the two tasks


def evaluate_next_item(args, model, tokenizer, examples) -> tuple:
    from evaluation.matching import CatalogIndex, load_embedder

    bench = pathlib.Path(args.benchmark)
    item_ids, texts = read_catalog(bench / "catalog.jsonl")
    known = set(item_ids)
    absent = [x["target_item_id"] for x in examples if x["target_item_id"] not in known]
    if absent:
        raise ValueError(f"{len(absent)} target item(s) are not in {bench / 'catalog.jsonl'}, e.g. {absent[:3]}")
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens or 128, num_beams=args.num_beams,
                           num_return_sequences=args.num_return_sequences, length_penalty=args.length_penalty,
                           eos_token_id=tokenizer.token_to_id("<|endoftext|>"), stop_strings=args.stop)
    started = time.time()
    generated = run_generation(model, tokenizer, examples, cfg, args.batch_size, "beam search")
    seconds = time.time() - started
    index = CatalogIndex(item_ids, texts, load_embedder(args.embedder, args.device),
                         cache_dir=args.embedding_cache)

    predictions, ranked, ranked_norm = [], [], []
    n_outputs = n_exact = 0
    for x, outs in zip(tqdm(examples, desc="grounding", unit="user"), generated):
        grounded = index.nearest([g.text for g in outs])
        n_outputs += len(outs)
        n_exact += sum(exact for _, _, exact in grounded)
        by_logprob = sorted(range(len(outs)), key=lambda j: -outs[j].logprob)  # stable: ties keep beam order
        by_length = sorted(range(len(outs)), key=lambda j: -outs[j].logprob / max(1, len(outs[j].tokens)))
        ranked.append(dedupe_keep_first([grounded[j][0] for j in by_logprob]))
        ranked_norm.append(dedupe_keep_first([grounded[j][0] for j in by_length]))
        predictions.append({"user": x["user"], "target_item_id": x["target_item_id"],
                            "ranked_item_ids": ranked[-1],
                            "outputs": [output_record(outs[j], item_id=grounded[j][0], similarity=grounded[j][1],
                                                      exact_match=grounded[j][2]) for j in by_logprob]})
    targets = [x["target_item_id"] for x in examples]
    text_of = dict(zip(item_ids, texts))
    text_count = {}
    for t in texts:
        text_count[t] = text_count.get(t, 0) + 1
    metrics = {
        "grounded": ranking_metrics(ranked, targets),
        "grounded_length_normalised_order": ranking_metrics(ranked_norm, targets),
        "log": {"outputs": n_outputs, "exact_catalog_match_share": n_exact / max(1, n_outputs),
                "targets_with_shared_catalog_text": sum(text_count[text_of[t]] > 1 for t in targets),
                "catalog_items": len(item_ids), "catalog_items_sharing_a_text": index.n_shared_text_items,
                "embedder": args.embedder, "embedder_key": index.embedder.key,
                "generation_seconds": seconds, "prompts_per_second": len(examples) / seconds},
    }
    for p, r in zip(predictions, ranked):
        p["rank"] = _rank(p["target_item_id"], r)

    if args.constrained:
        from evaluation.constrained import CatalogTrie

        def encode(batch):
            return [e.ids for e in tokenizer.encode_batch(batch, add_special_tokens=False)]

        trie = CatalogTrie.from_catalog(item_ids, texts, encode, cfg.eos_token_id, model.config.vocab_size)
        started = time.time()
        constrained = run_generation(model, tokenizer, examples, cfg, args.batch_size, "constrained beams", trie)
        seconds = time.time() - started
        ranked_c = []
        for p, outs in zip(predictions, constrained):
            order = sorted(range(len(outs)), key=lambda j: -outs[j].logprob)
            ranked_c.append(dedupe_keep_first([outs[j].extra["item_ids"][0] for j in order]))
            p["constrained"] = {"ranked_item_ids": ranked_c[-1], "rank": _rank(p["target_item_id"], ranked_c[-1]),
                                "outputs": [output_record(outs[j], item_ids=outs[j].extra["item_ids"]) for j in order]}
        metrics["constrained"] = ranking_metrics(ranked_c, targets)
        metrics["log"]["constrained_generation_seconds"] = seconds
    return predictions, metrics


def _rank(target, ranked):
    return ranked.index(target) + 1 if target in ranked else None  # lists are already de-duplicated


def evaluate_rating(args, model, tokenizer, examples) -> tuple:
    if args.fallback_rating is None:  # the training split's mean rating (spec §8), from the data build
        try:
            args.fallback_rating = read_train_stats(args.benchmark)["mean_rating"]
        except FileNotFoundError as e:
            raise ValueError(f"--fallback-rating is required when the benchmark has no training statistics: {e}") from None
        if args.fallback_rating is None:
            raise ValueError(f"--fallback-rating is required: {args.benchmark}/train_stats.json has no rated interaction")
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens or 16, do_sample=True, temperature=args.temperature,
                           top_p=args.top_p, top_k=args.top_k, eos_token_id=tokenizer.token_to_id("<|endoftext|>"),
                           stop_strings=args.stop)
    targets = [float(x["target_rating"]) for x in examples]
    predictions = [{"user": x["user"], "target_item_id": x.get("target_item_id"), "target_rating": t, "outputs": {}}
                   for x, t in zip(examples, targets)]
    per_seed = {}
    for seed in args.seeds:
        outs = run_generation(model, tokenizer, examples, cfg, args.batch_size, f"sampling seed {seed}", seed=seed)
        texts = [o[0].text for o in outs]
        per_seed[seed] = rating_metrics(texts, targets, args.fallback_rating, tuple(args.rating_scale))
        for p, o in zip(predictions, outs):
            p["outputs"][str(seed)] = output_record(o[0])
    summary = {}
    for key in ("RMSE", "MAE", "RMSE_parsed_only", "MAE_parsed_only", "n_unparsable"):
        mean, std = mean_std([m[key] for m in per_seed.values()])
        summary[key] = {"mean": mean, "std": std}
    return predictions, {"summary": summary, "per_seed": {str(s): m for s, m in per_seed.items()}}


# ---------------------------------------------------------------------------------------------
# reports


def markdown_table(args, metrics, n_examples) -> str:
    head = f"Benchmark `{args.benchmark}`, task `{args.task}`, split `{args.split}`, {n_examples} examples, " \
           f"checkpoint `{args.checkpoint}`.\n\n"
    if args.task == "next_item":
        rows = [("grounded (embedding + FAISS top-1)", metrics["grounded"]),
                ("grounded, length-normalised order", metrics["grounded_length_normalised_order"])]
        if "constrained" in metrics:
            rows.append(("trie-constrained beams", metrics["constrained"]))
        lines = ["| decoding | HR@5 | NDCG@5 | HR@10 | NDCG@10 | unique items/user |", "|---|---:|---:|---:|---:|---:|"]
        for name, m in rows:
            lines.append(f"| {name} | {m['HR@5']:.4f} | {m['NDCG@5']:.4f} | {m['HR@10']:.4f} | {m['NDCG@10']:.4f} "
                         f"| {m['mean_unique_items']:.2f} |")
    else:
        s = metrics["summary"]
        lines = ["| metric | mean | std |", "|---|---:|---:|"]
        for key in ("RMSE", "MAE", "RMSE_parsed_only", "MAE_parsed_only", "n_unparsable"):
            lines.append(f"| {key} | {s[key]['mean']:.4f} | {s[key]['std']:.4f} |")
        lines.append(f"\nSeeds {args.seeds}; unparsable outputs predict {args.fallback_rating} (primary rows).")
    return head + "\n".join(lines) + "\n"


def _no_nan(x):
    """NaN (e.g. parsed-only RMSE when nothing parsed) -> null, so metrics.json is strict JSON."""
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_no_nan(v) for v in x]
    return None if isinstance(x, float) and x != x else x


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is not news
    from data.formats.tokenizer import load as load_tokenizer
    from model.checkpoint import load_model

    tok_path = pathlib.Path(args.tokenizer or pathlib.Path(args.checkpoint) / "tokenizer.json")
    tokenizer = load_tokenizer(tok_path)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model = load_model(args.checkpoint, device=args.device, dtype=dtype).eval()
    examples = read_examples(pathlib.Path(args.benchmark) / f"{args.task}_{args.split}.jsonl", args.task, args.limit)
    n_file = len(examples)
    examples = sample_examples(examples, args.sample, args.sample_seed)
    log.info("%d of %d %s examples from %s", len(examples), n_file, args.task, args.benchmark)

    run = evaluate_next_item if args.task == "next_item" else evaluate_rating
    predictions, metrics = run(args, model, tokenizer, examples)
    metrics["settings"] = {k: v for k, v in vars(args).items()}
    metrics["settings"]["n_examples"] = len(examples)

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as f:
        for p in predictions:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    (out / "metrics.json").write_text(json.dumps(_no_nan(metrics), indent=2, allow_nan=False) + "\n")
    table = markdown_table(args, metrics, len(examples))
    (out / "metrics.md").write_text(table)
    print(table)
    return metrics


if __name__ == "__main__":
    main()
