"""Evaluate a checkpoint on a prepared benchmark, the way RecGPT's Tables 2 and 3 do
(../shared/spec/evaluation.md; the code is in evaluation/).

    # sequential recommendation: 10 beams, 10 outputs, each grounded to its nearest catalog item
    python evaluate.py --checkpoint out/recgpt-7b --benchmark out/data/amazon-beauty/eval/amazon-beauty-2014 --task next_item \
        --out out/eval/beauty-next --batch-size 8 --device cuda --dtype bfloat16 [--constrained] [--sample 2000]
    # a 7B model on one GPU: batches sized by KV-cache positions (prompts x beams x length), not by a prompt count;
    # 40000 fits an A100-40GB, 110000 an 80 GB GPU (docs/evaluation_memory.md)
    python evaluate.py --checkpoint out/recgpt-7b --benchmark out/data/amazon-beauty/eval/amazon-beauty-2014 --task next_item \
        --out out/eval/beauty-next --device cuda --dtype bfloat16 --token-budget 40000
    # direct recommendation: each user's candidates (a build with eval.negatives: the target + 99 sampled items) ranked
    # by the likelihood of their catalog text after the next-item prompt; HR@1/5/10, NDCG@5/10
    python evaluate.py --checkpoint out/demo/finetune/model --benchmark out/demo/data/eval/movielens-100k --task next_item \
        --next_item.decoding=candidates --out out/eval/ml-candidates
    # the same candidates for a pre-trained (not instruction-tuned) model: each as the next line of the history document
    python evaluate.py --checkpoint out/demo/pretrain/model --benchmark out/demo/data/eval/movielens-100k --task next_item \
        --next_item.decoding=candidates --next_item.prompt=document --out out/eval/ml-candidates-pretrained
    # rating prediction: sampling (temperature 1.0, top-p 0.9, top-k 50), three seeds, mean +- std
    python evaluate.py --checkpoint out/recgpt-7b --benchmark out/data/movielens-100k/eval/movielens-100k --task rating \
        --out out/eval/ml-rating --seeds 0 1 2
    # rating as the expected value over the rating strings "1.0/5.0" .. "5.0/5.0" (no sampling; or greedy)
    python evaluate.py --checkpoint out/recgpt-7b --benchmark out/data/movielens-100k/eval/movielens-100k --task rating \
        --out out/eval/ml-rating-expected --rating.decoding=expected [--rating.p5_filter=true]
    # P5's five families, a file per template (BENCHMARK/p5/<template>_<split>.jsonl; evaluation/p5_tasks.py)
    python evaluate.py --checkpoint out/p5-model --benchmark BENCH --task p5 --out out/eval/p5 [--templates 2-3,2-13]
    # a blank-infilling model (RecSysLLM, docs/recsysllm.md): the same tasks, each answer a [gMASK] span
    python evaluate.py --checkpoint out/infill-model --benchmark BENCH --task p5 --objective infill --out out/eval/p5-infill
    # the same examples for the simple baselines (most popular, global / per-item mean rating)
    python -m evaluation.baselines --benchmark out/data/amazon-beauty/eval/amazon-beauty-2014 --sample 2000 --out out/eval/base
    # a YAML config (every key: evaluation/config.py) with flags and --section.key=value as overrides
    python evaluate.py configs/eval/demo-next-item.yaml --checkpoint=out/demo/finetune/model --sample 100

Config: evaluation/config.py, read like every config of the project (config/__init__.py): YAML file < flags and
`--section.key=value`; the resolved config is printed and saved as OUT/config.yaml and in metrics.json.

Input (written by `python -m data.prepare`: data/README.md "Evaluation files"):
    BENCHMARK/{task}_{split}.jsonl  one example a line: "user", "prompt", and "target_item_id" (next_item; and
                                    "candidates" for next_item.decoding=candidates) or "target_rating" (rating);
                                    other keys are carried along
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
import sys
import time

import torch

from config import cli, dump, save, to_dict
from data.formats.evalfiles import DEFAULT_RATING_SCALE, read_catalog, read_examples, read_train_stats, sample_examples
from data.formats.tokenizer import EOS
from evaluation.config import EvalConfig, load_eval_config
from evaluation.generate import GenerationConfig, run_generation
from evaluation.infill_prompts import catalog_lines, infill_form, infill_prompts
from output import OutputLock, staged_dir
from output.provenance import write_environment
from evaluation.metrics import CANDIDATE_KEYS, dedupe_keep_first, mean_std, ranking_metrics, rating_metrics

log = logging.getLogger("evaluate")


# evaluate.py's named flags: each sets one key of the config (evaluation/config.py), as `--key=value` does
FLAGS = [
    ("--checkpoint", "checkpoint", str, "our model folder, or a Hugging Face MPT folder (mosaicml/mpt-7b layout)"),
    ("--tokenizer", "tokenizer", str, "tokenizers JSON; default: CHECKPOINT/tokenizer.json"),
    ("--benchmark", "benchmark", str, "folder with {task}_{split}.jsonl (and catalog.jsonl for next_item)"),
    ("--task", "task", str, "next_item | rating | text | yes_no | p5 (P5's five families: BENCHMARK/p5/*.jsonl)"),
    ("--templates", "p5.templates", lambda s: [t.strip() for t in s.split(",") if t.strip()],
     "task p5: the templates to evaluate, e.g. 1-6,1-10,2-3,2-13; default: every file present"),
    ("--objective", "objective", str, "causal (default) | infill: a blank-infilling model (docs/recsysllm.md)"),
    ("--split", "split", str, "default: test"),
    ("--out", "out", str, "output folder"),
    ("--batch-size", "batch_size", int, "at most this many prompts per generate call (beams run together); default 8, "
     "or no bound with --token-budget"),
    ("--token-budget", "generate_token_budget", int, "KV-cache positions per generate call, prompts x beams x (longest "
     "prompt + max new tokens - 1), instead of a prompt count (a longer prompt runs alone); docs/evaluation_memory.md"),
    ("--device", "device", str, "default: cuda when available, else cpu"),
    ("--dtype", "dtype", str, "float32 | bfloat16 | float16; default: the checkpoint's"),
    ("--limit", "limit", int, "evaluate only the first N examples (a quick look)"),
    ("--sample", "sample", int, "a seeded random sample of N examples (the same N and --sample-seed give the same "
     "examples to every checkpoint and to evaluation.baselines)"),
    ("--sample-seed", "sample_seed", int, "default 0"),
    ("--max-new-tokens", "max_new_tokens", int, "default: 128 (next_item), 16 (rating), 64 (text)"),
    ("--num-beams", "next_item.num_beams", int, "default 10"),
    ("--num-return-sequences", "next_item.num_return_sequences", int, "default 10"),
    ("--length-penalty", "next_item.length_penalty", float, "0 (default): rank beams by cumulative log-prob"),
    ("--embedder", "next_item.embedder", str, "Sentence-Transformers name or local path"),
    ("--embedding-cache", "next_item.embedding_cache", str, "folder for catalog embeddings"),
    ("--temperature", "rating.temperature", float, "default 1.0"),
    ("--top-p", "rating.top_p", float, "default 0.9"),
    ("--top-k", "rating.top_k", int, "default 50"),
    ("--fallback-rating", "rating.fallback_rating", float, "prediction for unparsable outputs; default: the "
     "training split's mean rating (BENCHMARK/train_stats.json)"),
]


def parse_args(argv=None) -> EvalConfig:
    """`evaluate.py [CONFIG.yaml] [--flags] [--section.key=value]` -> the resolved EvalConfig."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter,
                                allow_abbrev=False, epilog="Any key of evaluation/config.py can also be set as "
                                "--section.key=value (e.g. --next_item.constrained=true, --rating.scale=[1,10]).")
    p.add_argument("config", nargs="?", help="a YAML file of evaluation/config.py's keys (optional)")
    for flag, dest, kind, help_text in FLAGS:
        p.add_argument(flag, dest=dest, type=kind, default=argparse.SUPPRESS, help=help_text)
    p.add_argument("--stop", dest="stop", action="append", default=argparse.SUPPRESS,
                   help="a stop string (repeatable); EOS always stops")
    p.add_argument("--constrained", dest="next_item.constrained", action="store_const", const=True,
                   default=argparse.SUPPRESS, help="also run trie-constrained beam search (next_item)")
    p.add_argument("--seeds", dest="rating.seeds", type=int, nargs="+", default=argparse.SUPPRESS,
                   help="sampling seeds (rating); default 0 1 2")
    p.add_argument("--rating-scale", dest="rating.scale", type=float, nargs=2, default=argparse.SUPPRESS,
                   metavar=("LOW", "HIGH"), help="default: the build's (train_stats.json)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    args, rest = p.parse_known_args(argv)
    flags = {k: v for k, v in vars(args).items() if k not in ("config", "dry_run")}
    cfg = load_eval_config(args.config, rest, flags)
    if args.dry_run:
        print(dump(cfg), end="")
        raise SystemExit(0)
    return cfg


def output_record(g, **more) -> dict:
    return {"text": g.text, "logprob": g.logprob, "score": g.score, "n_tokens": len(g.tokens),
            "finish_reason": g.finish_reason, **more}


# ---------------------------------------------------------------------------------------------
# the two tasks


def evaluate_next_item(cfg, model, tokenizer, examples) -> tuple:
    from evaluation.matching import CatalogIndex, load_embedder

    bench = pathlib.Path(cfg.benchmark)
    infill = cfg.objective == "infill"
    # an infilling model prompted with a document generates an item as a document line shows it (the catalog's
    # "line"); a causal one, or one prompted with the instruction, as the instruction response does ("text")
    document = cfg.next_item.prompt == "document" or (infill and infill_form(cfg) == "document")
    item_ids, texts = read_catalog(bench / "catalog.jsonl", "line" if document else "text")
    known = set(item_ids)
    absent = [x["target_item_id"] for x in examples if x["target_item_id"] not in known]
    if absent:
        raise ValueError(f"{len(absent)} target item(s) are not in {bench / 'catalog.jsonl'}, e.g. {absent[:3]}")
    if cfg.next_item.decoding == "candidates":
        return rank_next_item_candidates(cfg, model, tokenizer, examples, dict(zip(item_ids, texts)))
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens or 128, num_beams=cfg.next_item.num_beams,
                           num_return_sequences=cfg.next_item.num_return_sequences,
                           length_penalty=cfg.next_item.length_penalty, eos_token_id=tokenizer.token_to_id(EOS),
                           stop_strings=cfg.stop)
    infill_inputs = None
    if infill:
        prompts, pool, ids = infill_prompts(cfg, model, tokenizer, examples, texts)
        gen.eos_token_id = ids["end"]  # a span ends at [END]
        infill_inputs = (prompts, pool)
    started = time.time()
    generated = run_generation(model, tokenizer, examples, gen, cfg.batch_size, "beam search", infill=infill_inputs,
                               token_budget=cfg.generate_token_budget)
    seconds = time.time() - started
    index = CatalogIndex(item_ids, texts, load_embedder(cfg.next_item.embedder, cfg.device),
                         cache_dir=cfg.next_item.embedding_cache)

    predictions, ranked, ranked_norm = [], [], []
    n_outputs = n_exact = 0
    # the outputs of many users in one embedding call (CatalogIndex.nearest_lists), not one call per user
    grounded_lists = index.nearest_lists([[g.text for g in outs] for outs in generated])
    for x, outs, grounded in zip(examples, generated, grounded_lists):
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
                "embedder": cfg.next_item.embedder, "embedder_key": index.embedder.key, "objective": cfg.objective,
                "generation_seconds": seconds, "prompts_per_second": len(examples) / seconds},
    }
    for p, r in zip(predictions, ranked):
        p["rank"] = _rank(p["target_item_id"], r)

    if cfg.next_item.constrained:
        from evaluation.constrained import CatalogTrie

        def encode(batch):
            return [e.ids for e in tokenizer.encode_batch(batch, add_special_tokens=False)]

        trie = CatalogTrie.from_catalog(item_ids, texts, encode, gen.eos_token_id, model.config.vocab_size)
        started = time.time()
        constrained = run_generation(model, tokenizer, examples, gen, cfg.batch_size, "constrained beams", trie,
                                     infill=infill_inputs, token_budget=cfg.generate_token_budget)
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


def rank_next_item_candidates(cfg, model, tokenizer, examples, text_of: dict) -> tuple:
    """next_item.decoding=candidates: each example's candidates ranked by the likelihood of their catalog text after
    the instruction prompt (+ EOS), or of their document line after the history document (next_item.prompt)."""
    from evaluation.scoring import rank_candidates_by_likelihood

    where = f"{cfg.benchmark}/next_item_{cfg.split}.jsonl"
    for x in examples:
        cands = x.get("candidates")
        if not cands:
            raise ValueError(f"{where}: user {x['user']} has no 'candidates' (build the benchmark with eval.negatives)")
        if x["target_item_id"] not in cands or any(c not in text_of for c in cands):
            raise ValueError(f"{where}: user {x['user']}'s candidates must hold the target and only catalog items")
    eos = tokenizer.token_to_id(EOS)
    if cfg.next_item.prompt == "document":  # the next line of the user's history document; a line has no end token
        if any("document" not in x for x in examples):
            raise ValueError(f"{where}: next_item.prompt=document needs each example's 'document' (data.prepare "
                             f"writes it)")
        texts, end = [x["document"] + "\n" for x in examples], None
    else:
        texts, end = [x["prompt"] for x in examples], eos
    prompts = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    started = time.time()
    predictions, metrics = rank_candidates_by_likelihood(
        model, tokenizer, prompts, [x["candidates"] for x in examples],
        [[text_of[c] for c in x["candidates"]] for x in examples], [x["target_item_id"] for x in examples], end, eos,
        cfg.score_token_budget)
    for x, p in zip(examples, predictions):
        p["user"] = x["user"]
    metrics["log"] = {"scoring_seconds": time.time() - started, "candidates_per_user": len(examples[0]["candidates"])}
    return predictions, {"candidates": metrics}


def _rank(target, ranked):
    return ranked.index(target) + 1 if target in ranked else None  # lists are already de-duplicated


def evaluate_rating(cfg, model, tokenizer, examples) -> tuple:
    r = cfg.rating
    if r.fallback_rating is None or r.scale is None:  # from the data build: the training split's mean (spec §8)
        try:
            stats = read_train_stats(cfg.benchmark)
        except FileNotFoundError as e:
            if r.fallback_rating is None:
                raise ValueError(f"--fallback-rating is required when the benchmark has no training statistics: "
                                 f"{e}") from None
            stats = {"rating_scale": list(DEFAULT_RATING_SCALE)}
        r.fallback_rating = stats["mean_rating"] if r.fallback_rating is None else r.fallback_rating
        r.scale = stats["rating_scale"] if r.scale is None else r.scale
        if r.fallback_rating is None:
            raise ValueError(f"--fallback-rating is required: {cfg.benchmark}/train_stats.json has no rated "
                             f"interaction")
    if r.decoding == "expected":  # no generation: the distribution over the rating strings (evaluation/scoring.py)
        from evaluation.scoring import evaluate_rating_over_set

        return evaluate_rating_over_set(cfg, model, tokenizer, examples)
    sampling = r.decoding == "sample"  # else greedy: one deterministic run
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens or 16, do_sample=sampling, temperature=r.temperature,
                           top_p=r.top_p, top_k=r.top_k, eos_token_id=tokenizer.token_to_id(EOS), stop_strings=cfg.stop)
    infill_inputs = None
    if cfg.objective == "infill":  # the catalog's lines are the entity pool, as in training
        prompts, pool, ids = infill_prompts(cfg, model, tokenizer, examples, catalog_lines(cfg.benchmark))
        gen.eos_token_id = ids["end"]  # a span ends at [END]
        infill_inputs = (prompts, pool)
    targets = [float(x["target_rating"]) for x in examples]
    predictions = [{"user": x["user"], "target_item_id": x.get("target_item_id"), "target_rating": t, "outputs": {}}
                   for x, t in zip(examples, targets)]
    per_seed = {}
    for seed in cfg.rating.seeds if sampling else ["greedy"]:
        outs = run_generation(model, tokenizer, examples, gen, cfg.batch_size, f"sampling seed {seed}" if sampling
                              else "greedy", seed=seed if sampling else None, infill=infill_inputs,
                              token_budget=cfg.generate_token_budget)
        texts = [o[0].text for o in outs]
        per_seed[seed] = rating_metrics(texts, targets, cfg.rating.fallback_rating, tuple(cfg.rating.scale),
                                        p5_filter=r.p5_filter)
        for p, o in zip(predictions, outs):
            p["outputs"][str(seed)] = output_record(o[0])
    summary = {}
    p5_keys = ("RMSE_p5_filter", "MAE_p5_filter", "n_p5_kept") if r.p5_filter else ()
    for key in ("RMSE", "MAE", "RMSE_parsed_only", "MAE_parsed_only", "n_unparsable") + p5_keys:
        mean, std = mean_std([m[key] for m in per_seed.values()])
        summary[key] = {"mean": mean, "std": std}
    return predictions, {"summary": summary, "per_seed": {str(s): m for s, m in per_seed.items()}}


def evaluate_text_task(cfg, model, tokenizer, examples) -> tuple:
    """Your own prompt/response test pairs (data/prepare/own_files.py): greedy generation, exact match."""
    from evaluation.text_tasks import evaluate_text

    return evaluate_text(model, tokenizer, examples, cfg.batch_size, cfg.max_new_tokens or 64, cfg.stop,
                         token_budget=cfg.generate_token_budget)


def evaluate_yes_no_task(cfg, model, tokenizer, examples) -> tuple:
    """Yes/no test pairs: P(yes) against P(no) after the prompt, accuracy and AUC."""
    from evaluation.text_tasks import evaluate_yes_no

    answers = pathlib.Path(cfg.benchmark) / "yes_no_answers.json"
    spelled = json.loads(answers.read_text()) if answers.is_file() else {"yes": "Yes", "no": "No"}
    cfg.yes_no.yes = cfg.yes_no.yes or spelled["yes"]
    cfg.yes_no.no = cfg.yes_no.no or spelled["no"]
    return evaluate_yes_no(model, tokenizer, examples, cfg.batch_size, cfg.device, cfg.yes_no.yes, cfg.yes_no.no,
                           token_budget=cfg.generate_token_budget)


TASKS = {"next_item": evaluate_next_item, "rating": evaluate_rating, "text": evaluate_text_task,
         "yes_no": evaluate_yes_no_task}


# ---------------------------------------------------------------------------------------------
# reports


def candidates_table(m: dict) -> str:
    lines = ["| candidates ranked by | " + " | ".join(CANDIDATE_KEYS) + " |", "|---|" + "---:|" * len(CANDIDATE_KEYS)]
    for name, row in (("summed log-probability", m), ("mean log-probability per token", m["length_normalised"])):
        lines.append(f"| {name} | " + " | ".join(f"{row[k]:.4f}" for k in CANDIDATE_KEYS) + " |")
    return "\n".join(lines)


def markdown_table(cfg, metrics, n_examples) -> str:
    head = f"Benchmark `{cfg.benchmark}`, task `{cfg.task}`, split `{cfg.split}`, {n_examples} examples, " \
           f"checkpoint `{cfg.checkpoint}`.\n\n"
    if cfg.task == "next_item" and "candidates" in metrics:
        lines = [candidates_table(metrics["candidates"])]
    elif cfg.task == "next_item":
        rows = [("grounded (embedding + FAISS top-1)", metrics["grounded"]),
                ("grounded, length-normalised order", metrics["grounded_length_normalised_order"])]
        if "constrained" in metrics:
            rows.append(("trie-constrained beams", metrics["constrained"]))
        lines = ["| decoding | HR@5 | NDCG@5 | HR@10 | NDCG@10 | unique items/user |", "|---|---:|---:|---:|---:|---:|"]
        for name, m in rows:
            lines.append(f"| {name} | {m['HR@5']:.4f} | {m['NDCG@5']:.4f} | {m['HR@10']:.4f} | {m['NDCG@10']:.4f} "
                         f"| {m['mean_unique_items']:.2f} |")
    elif cfg.task == "p5":
        from evaluation.p5_tasks import results_table

        lines = [results_table(metrics)]
    elif cfg.task == "text":
        lines = ["| exact match | normalised match | n |", "|---:|---:|---:|",
                 f"| {metrics['exact_match']:.4f} | {metrics['normalised_match']:.4f} | {metrics['n']} |"]
    elif cfg.task == "yes_no":
        auc = "n/a (one class)" if metrics["auc"] is None else f"{metrics['auc']:.4f}"
        lines = ["| AUC | accuracy@0.5 | n | positives |", "|---:|---:|---:|---:|",
                 f"| {auc} | {metrics['accuracy']:.4f} | {metrics['n']} | {metrics['positives']} |",
                 f"\nP(yes) compares the first tokens of {metrics['yes']!r} and {metrics['no']!r}."]
    else:
        s = metrics["summary"]
        lines = ["| metric | mean | std |", "|---|---:|---:|"]
        for key in s:
            lines.append(f"| {key} | {_number(s[key]['mean'])} | {_number(s[key]['std'])} |")
        if cfg.rating.decoding == "sample":
            lines.append(f"\nSeeds {cfg.rating.seeds}; unparsable outputs predict {cfg.rating.fallback_rating} "
                         f"(primary rows).")
        else:
            lines.append(f"\nDecoding: {cfg.rating.decoding}" + (" (expected rating over the set " + ", ".join(
                metrics["rating_strings"]) + "; the most likely string's rating in the *_argmax rows)"
                if cfg.rating.decoding == "expected" else "") + ".")
    return head + "\n".join(lines) + "\n"


def _number(x) -> str:
    return "n/a" if x is None or x != x else f"{x:.4f}"


def _no_nan(x):
    """NaN (e.g. parsed-only RMSE when nothing parsed) -> null, so metrics.json is strict JSON."""
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_no_nan(v) for v in x]
    return None if isinstance(x, float) and x != x else x


def main(argv=None):
    cfg = parse_args(argv)
    cfg.device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is not news
    from data.formats.tokenizer import load as load_tokenizer
    from model.checkpoint import load_model

    log.info("resolved config:\n%s", dump(cfg).rstrip())
    with OutputLock(cfg.out, "evaluate.py"):  # one writer of OUT; its files appear together at the end
        return evaluate(cfg, load_tokenizer, load_model)


def evaluate(cfg, load_tokenizer, load_model) -> dict:
    tok_path = pathlib.Path(cfg.tokenizer or pathlib.Path(cfg.checkpoint) / "tokenizer.json")
    tokenizer = load_tokenizer(tok_path)
    dtype = getattr(torch, cfg.dtype) if cfg.dtype else None
    context = {"max_seq_len": cfg.max_seq_len} if cfg.max_seq_len else {}  # ALiBi: no weight depends on it
    model = load_model(cfg.checkpoint, device=cfg.device, dtype=dtype, verify=cfg.verify, **context).eval()
    if cfg.max_seq_len:
        log.info("context: %d tokens (the evaluation's max_seq_len)", cfg.max_seq_len)
    n_tokens = tokenizer.get_vocab_size(with_added_tokens=True)
    if n_tokens > model.config.vocab_size:
        raise ValueError(f"{tok_path} has {n_tokens:,} tokens, more than the model's vocab_size "
                         f"{model.config.vocab_size:,} ({cfg.checkpoint}): a tokenizer of another model?")
    if cfg.task == "p5":  # P5's five families, a file per template: BENCHMARK/p5/<template>_<split>.jsonl
        from evaluation.p5_tasks import evaluate_p5

        predictions, metrics = evaluate_p5(cfg, model, tokenizer, evaluate_next_item, evaluate_rating)
        n_examples = metrics["n_examples"]
    else:
        examples = read_examples(pathlib.Path(cfg.benchmark) / f"{cfg.task}_{cfg.split}.jsonl", cfg.task, cfg.limit)
        n_file = len(examples)
        examples = sample_examples(examples, cfg.sample, cfg.sample_seed)
        log.info("%d of %d %s examples from %s", len(examples), n_file, cfg.task, cfg.benchmark)
        predictions, metrics = TASKS[cfg.task](cfg, model, tokenizer, examples)
        n_examples = len(examples)
    metrics["settings"] = to_dict(cfg)
    metrics["settings"]["n_examples"] = n_examples

    table = markdown_table(cfg, metrics, n_examples)
    with staged_dir(cfg.out) as out:  # written beside OUT, then renamed into place whole
        with open(out / "predictions.jsonl", "w", encoding="utf-8") as f:
            for p in predictions:
                f.write(json.dumps(p, ensure_ascii=False) + "\n")
        (out / "metrics.json").write_text(json.dumps(_no_nan(metrics), indent=2, allow_nan=False) + "\n")
        (out / "metrics.md").write_text(table)
        save(cfg, out / "config.yaml")
        write_environment(out)
    print(table)
    return metrics


if __name__ == "__main__":
    sys.exit(cli.run(main))
