"""P5's five task families in evaluate.py (`--task p5`; ../shared/spec/p5.md §1, §3): one file per template,
written by the P5 corpus builder, each evaluated by its family's protocol; a results table puts each family's seen
and unseen templates one above the other, as P5's and RecSysLLM's tables do.

    python evaluate.py --checkpoint CKPT --benchmark BENCH --task p5 --out OUT [--templates 1-6,1-10,2-3,2-13]

Input: BENCH/p5/<template>_<split>.jsonl, one record a line. Every record: "user", "family" (rating | sequential |
explanation | review | direct), "template" ("2-3"), "seen" (bool), "prompt", "target_text"; and by family:
    rating (1-6, 1-10) and review rating (4-2, 4-4)   "target_rating"
    sequential                                       "target_item_id", "history_item_ids"
    direct, candidates in the prompt (5-5 .. 5-8)    "target_item_id", "candidates" (ids, the target among them),
                                                     "candidate_texts" (each as the prompt renders it)
    direct, yes/no (5-1 .. 5-4)                      "target_item_id", "candidates", "candidate_prompts" (one per
                                                     candidate), "yes", "no" (the answers as trained)
    explanation, review summarization (4-1, 4-3)     "target_text" only

How each is scored:
- rating: evaluate.py's rating task, `rating.decoding` sample | greedy | expected (default values for P5: the 41
  one-decimal strings "1.0" .. "5.0" of P5's training targets, p5.md §1.2), RMSE / MAE, P5's 1.0-4.9 filter
  beside when `rating.p5_filter`.
- sequential: beam search (next_item's settings) ranked by cumulative log-prob; `p5.item_match` exact_id: an output
  counts as the item whose id it is (P5's parsing: an output that is not an id is dropped, "item_12" reads as
  "12"), grounding: next_item's embedding + FAISS grounding on BENCH/catalog.jsonl (title-rendered items). Lists
  are de-duplicated keeping the first occurrence (P5 keeps the last: a dict overwrite, evaluation.md §6), HR/NDCG@5/10.
- direct: within each user's candidates, HR@1/5/10, NDCG@5/10 (evaluation/metrics.py candidate_ranking_metrics).
  Candidate prompts: the log-likelihood of each candidate text (+ EOS) after the prompt, all candidates of a prompt
  in one batched pass (evaluation/scoring.py); the length-normalised ranking beside. Yes/no prompts: P(yes) against
  P(no) at the answer's first token (evaluation/text_tasks.py yes_no_scores), the user's prompts sorted by it.
- explanation: greedy generation, BLEU-4 and ROUGE-1/2/L as P5 computes them (evaluation/text_metrics.py);
  review summarization: the same with BLEU-2.
--limit and --sample apply to each template file.

A blank-infilling model (`--objective infill`, docs/recsysllm.md) answers each prompt as a [gMASK] span: the prompt,
its entities the builder's (the record's "entities"), + [gMASK] + [START], the answer closed by [END]; generation
and scoring use the dynamic position mechanism with the catalog's texts as the entity pool
(evaluation/infill_prompts.py). Yes/no prompts compare P(yes) and P(no) at the span's first token.
"""
import dataclasses
import pathlib
import re
import time

from data.formats.evalfiles import p5_files, p5_record_kind, read_p5_examples, sample_examples
from data.formats.tokenizer import EOS
from evaluation.config import P5_RATING_FORMAT
from evaluation.generate import GenerationConfig, run_generation
from evaluation.metrics import CANDIDATE_KEYS, candidate_ranking_metrics, dedupe_keep_first, ranking_metrics
from evaluation.scoring import rank_candidates_by_likelihood, score_continuations
from evaluation.text_metrics import text_generation_metrics
from evaluation.text_tasks import answer_token, evaluate_text, yes_no_scores

FAMILIES = ("rating", "sequential", "explanation", "review", "direct")
# the headline columns of the results table, by record kind (data/formats/evalfiles.py p5_record_kind: the review
# family's 4-2 / 4-4 are "rating", its summarization templates "review")
COLUMNS = {"rating": ("RMSE", "MAE"), "sequential": ("HR@5", "NDCG@5", "HR@10", "NDCG@10"),
           "direct_candidates": CANDIDATE_KEYS, "direct_yes_no": CANDIDATE_KEYS,
           "explanation": ("BLEU-4", "ROUGE-1", "ROUGE-2", "ROUGE-L"),
           "review": ("BLEU-2", "ROUGE-1", "ROUGE-2", "ROUGE-L")}
TEMPLATE_ID = re.compile(r"^[1-5Z]-\d+$")
P5_RATING_VALUES = [k / 10 for k in range(10, 51)]  # 1.0, 1.1, ..., 5.0: P5's 41 training classes (p5.md §1.2)


# ---------------------------------------------------------------------------------------------
# files


def template_files(benchmark, split: str, templates=None) -> dict:
    """{template id: path} of BENCH/p5/<template>_<split>.jsonl, in P5's order (1-1, 1-2, ..., 5-8); templates:
    only these (each must exist)."""
    folder = pathlib.Path(benchmark) / "p5"
    if not folder.is_dir():
        raise FileNotFoundError(f"no P5 template files: {folder} not found (build them with `python -m "
                                f"data.prepare.p5_tasks`)")
    found = {tid: path for (tid, s), path in p5_files(benchmark).items() if s == split and TEMPLATE_ID.match(tid)}
    if templates:
        bad = [t for t in templates if not TEMPLATE_ID.match(t)]
        if bad:
            raise ValueError(f"p5.templates: {bad} are not P5 template ids (like 2-3, 5-8)")
        missing = [t for t in templates if t not in found]
        if missing:
            raise FileNotFoundError(f"p5.templates: no file for {missing} in {folder} (split '{split}'; present: "
                                    f"{sorted(found, key=_order) or 'none'})")
        found = {t: found[t] for t in templates}
    if not found:
        raise FileNotFoundError(f"no P5 template files {folder}/<template>_{split}.jsonl")
    return {t: found[t] for t in sorted(found, key=_order)}


def _order(tid: str) -> tuple:
    family, number = tid.split("-")
    return (family, int(number))


def read_template_file(path: pathlib.Path, limit=None) -> tuple:
    """-> (records, kind). The format's reader checks each record's keys and candidate lists (file:line); here,
    what one template's file must agree on: its template id, family, kind, and targets among the candidates."""
    records = read_p5_examples(path, limit)
    tid = path.name.rsplit("_", 1)[0]
    kinds = set()
    for n, x in enumerate(records, start=1):
        where = f"{path}: record {n} (user {x['user']})"
        if x["family"] not in FAMILIES:
            raise ValueError(f"{where}: family {x['family']!r} is not one of {FAMILIES}")
        if x["template"] != tid:
            raise ValueError(f"{where}: template {x['template']!r} in the file of template {tid}")
        if x["family"] == "direct" and x["target_item_id"] not in x["candidates"]:
            raise ValueError(f"{where}: target_item_id {x['target_item_id']!r} is not among the candidates")
        kinds.add(p5_record_kind(x))
    if len(kinds) > 1:
        raise ValueError(f"{path}: records of several kinds {sorted(kinds)} in one template's file")
    return records, kinds.pop()


# ---------------------------------------------------------------------------------------------
# the families


def evaluate_p5(cfg, model, tokenizer, run_next_item, run_rating) -> tuple:
    """Every template file -> (predictions, metrics). run_next_item, run_rating: evaluate.py's next_item and rating
    tasks (sequential grounding and rating decoding reuse them as they are)."""
    per_template, predictions = {}, []
    for tid, path in template_files(cfg.benchmark, cfg.split, cfg.p5.templates).items():
        records, kind = read_template_file(path, cfg.limit)
        n_file = len(records)
        records = sample_examples(records, cfg.sample, cfg.sample_seed)
        started = time.time()
        preds, metrics = KINDS[kind](cfg, model, tokenizer, records, run_next_item, run_rating)
        seen = {bool(x["seen"]) for x in records}
        if len(seen) > 1:
            raise ValueError(f"{path}: records disagree on 'seen' for one template")
        per_template[tid] = {"family": records[0]["family"], "kind": kind, "seen": seen.pop(), "n": len(records),
                             "n_in_file": n_file, "seconds": time.time() - started, "metrics": metrics}
        for x, p in zip(records, preds):
            predictions.append({"template": tid, "user": x["user"], **p})
    return predictions, {"templates": per_template, "n_examples": sum(t["n"] for t in per_template.values())}


def _rating(cfg, model, tokenizer, records, run_next_item, run_rating):
    r = cfg.rating
    values = r.values if r.values is not None else P5_RATING_VALUES
    rating = dataclasses.replace(r, values=values, value_format=r.value_format or P5_RATING_FORMAT)
    examples = [{"user": x["user"], "prompt": x["prompt"], "target_rating": float(x["target_rating"]),
                 "entities": x.get("entities")} for x in records]
    preds, metrics = run_rating(dataclasses.replace(cfg, rating=rating), model, tokenizer, examples)
    headline = {key: metrics["summary"][key]["mean"] for key in metrics["summary"]}
    return [_without_user(p) for p in preds], {**headline, "details": metrics}


def _without_user(p: dict) -> dict:
    return {k: v for k, v in p.items() if k != "user"}


def _sequential(cfg, model, tokenizer, records, run_next_item, run_rating):
    mode = cfg.p5.item_match
    if mode == "auto":  # exact ids when the model is trained to write the id itself
        mode = "exact_id" if all(_as_id(x["target_text"]) == str(x["target_item_id"]) for x in records) \
            else "grounding"
    examples = [{"user": x["user"], "prompt": x["prompt"], "target_item_id": str(x["target_item_id"]),
                 "entities": x.get("entities")} for x in records]
    if mode == "grounding":  # (an infilling model answers the prompt: task p5 has no documents)
        preds, metrics = run_next_item(cfg, model, tokenizer, examples)
        return [_without_user(p) for p in preds], {**metrics["grounded"], "item_match": mode, "details": metrics}
    n = cfg.next_item
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens or 32, num_beams=n.num_beams,
                           num_return_sequences=n.num_return_sequences, length_penalty=n.length_penalty,
                           eos_token_id=tokenizer.token_to_id(EOS), pad_token_id=tokenizer.token_to_id(EOS),
                           stop_strings=tuple(cfg.stop))
    outputs = _generate(cfg, model, tokenizer, records, gen)
    numeric = all(x["target_item_id"].isdigit() for x in examples)
    known = {x["target_item_id"] for x in examples} | {str(i) for x in records for i in x["history_item_ids"]}
    preds, ranked, dropped = [], [], 0
    for x, outs in zip(examples, outputs):
        outs = sorted(outs, key=lambda g: -g.logprob)  # stable: ties keep beam order
        ranked.append(ranked_item_ids([g.text for g in outs], numeric, known))
        dropped += len(outs) - len([g for g in outs if _is_id(_as_id(g.text), numeric, known)])
        preds.append({"target_item_id": x["target_item_id"], "ranked_item_ids": ranked[-1],
                      "outputs": [{"text": g.text, "logprob": g.logprob} for g in outs]})
    metrics = ranking_metrics(ranked, [x["target_item_id"] for x in examples])
    return preds, {**metrics, "item_match": mode, "outputs_not_an_item_id": dropped}


def ranked_item_ids(texts, numeric: bool, known: set) -> list:
    """P5's exact-id parsing of outputs in rank order: each read as an item id (_as_id); one that is not an id is
    dropped (numeric ids: not all digits, as P5's int() parse; other ids: not a known id); repeats keep the first."""
    return dedupe_keep_first([i for i in map(_as_id, texts) if _is_id(i, numeric, known)])


def _is_id(text: str, numeric: bool, known: set) -> bool:
    return text.isdigit() if numeric else text in known


def _as_id(text: str) -> str:
    """An output read as an item id: stripped, P5's "item_" prefix dropped ("item_12" and "12" are item 12)."""
    text = text.strip()
    return text[len("item_"):] if text.startswith("item_") else text


def _infill(cfg, model, tokenizer, records) -> tuple:
    """A blank-infilling model's prompts for these records (task p5: each record's prompt + [gMASK]) -> (InfillPrompts,
    the entity trie, the infilling ids)."""
    from evaluation.infill_prompts import catalog_lines, infill_prompts

    return infill_prompts(cfg, model, tokenizer, records, catalog_lines(cfg.benchmark))


def _generate(cfg, model, tokenizer, records, gen) -> list:
    """Each record's prompt continued (infilling: its [gMASK] span, closed by [END]); outputs in the records'
    order."""
    infill = None
    if cfg.objective == "infill":
        spans, pool, ids = _infill(cfg, model, tokenizer, records)
        gen, infill = dataclasses.replace(gen, eos_token_id=ids["end"], pad_token_id=ids["end"]), (spans, pool)
    return run_generation(model, tokenizer, records, gen, cfg.batch_size, "generation", infill=infill,
                          token_budget=cfg.generate_token_budget)


def _direct_candidates(cfg, model, tokenizer, records, run_next_item, run_rating):
    """Each candidate text (+ EOS, as fine-tuning ends a response) scored after the prompt, a prompt's candidates
    together (evaluation/scoring.py rank_candidates_by_likelihood)."""
    eos = end = tokenizer.token_to_id(EOS)
    pool = None
    if cfg.objective == "infill":  # each candidate as the [gMASK] span, closed by [END]
        spans, pool, ids = _infill(cfg, model, tokenizer, records)
        prompts, end = spans, ids["end"]
    else:
        prompts = [e.ids for e in tokenizer.encode_batch([x["prompt"] for x in records], add_special_tokens=False)]
    return rank_candidates_by_likelihood(
        model, tokenizer, prompts, [[str(c) for c in x["candidates"]] for x in records],
        [x["candidate_texts"] for x in records], [str(x["target_item_id"]) for x in records], end, eos,
        cfg.score_token_budget, intra_trie=pool)


def _direct_yes_no(cfg, model, tokenizer, records, run_next_item, run_rating):
    """P5's 5-1 .. 5-4 protocol (p5.md §1.6): one prompt per candidate, P(yes) = softmax over the yes and no logits
    at the answer's first token, the user's candidates sorted by it."""
    answers = {(x["yes"], x["no"]) for x in records}
    if len(answers) > 1:
        raise ValueError(f"template {records[0]['template']}: the records spell the answers in {len(answers)} ways "
                         f"{sorted(answers)[:3]}; one (yes, no) pair per template is expected")
    yes, no = answers.pop()
    flat = [p for x in records for p in x["candidate_prompts"]]
    if cfg.objective == "infill":
        p_yes = _infill_yes_no(cfg, model, tokenizer, records, yes, no)
    else:
        p_yes = yes_no_scores(model, tokenizer, flat, cfg.batch_size, cfg.device, yes, no,
                              token_budget=cfg.generate_token_budget)
    scores, start = [], 0
    for x in records:
        scores.append(p_yes[start:start + len(x["candidate_prompts"])])
        start += len(x["candidate_prompts"])
    candidates = [[str(c) for c in x["candidates"]] for x in records]
    targets = [str(x["target_item_id"]) for x in records]
    metrics = candidate_ranking_metrics(candidates, scores, targets)
    metrics.update({"yes": yes, "no": no})
    preds = [{"target_item_id": t, "candidates": c, "p_yes": s} for t, c, s in zip(targets, candidates, scores)]
    return preds, metrics


def _infill_yes_no(cfg, model, tokenizer, records, yes: str, no: str) -> list:
    """P(yes) / (P(yes) + P(no)) at the first token of each candidate prompt's [gMASK] span (the answers' first
    tokens, encoded alone as fine-tuning encoded the responses)."""
    import math

    first = [[answer_token(tokenizer, a)] for a in (yes, no)]
    if first[0] == first[1]:
        raise ValueError(f"the answers {yes!r} and {no!r} start with the same token: they cannot be told apart")
    flat = [{"user": x["user"], "prompt": p, "entities": e}
            for x in records for p, e in zip(x["candidate_prompts"], x.get("candidate_entities") or
                                             [None] * len(x["candidate_prompts"]))]
    spans, pool, _ = _infill(cfg, model, tokenizer, flat)
    scores = score_continuations(model, spans, [first] * len(spans), pad_token_id=tokenizer.token_to_id(EOS),
                                 token_budget=cfg.score_token_budget, intra_trie=pool)
    return [1.0 / (1.0 + math.exp(n.logprob - y.logprob)) for y, n in scores]


def _text(bleu_order):
    def run(cfg, model, tokenizer, records, run_next_item, run_rating):
        examples = [{"id": n, "prompt": x["prompt"], "target_text": x["target_text"]} for n, x in enumerate(records)]
        if cfg.objective == "infill":  # greedy [gMASK] spans
            gen = GenerationConfig(max_new_tokens=cfg.p5.max_new_tokens_text, stop_strings=tuple(cfg.stop))
            outs = _generate(cfg, model, tokenizer, records, gen)
            preds = [{"target_text": x["target_text"], "text": o[0].text, "finish_reason": o[0].finish_reason}
                     for x, o in zip(examples, outs)]
        else:
            preds, _ = evaluate_text(model, tokenizer, examples, cfg.batch_size, cfg.p5.max_new_tokens_text,
                                     cfg.stop, token_budget=cfg.generate_token_budget)
        texts = [p["text"] for p in preds]
        metrics = text_generation_metrics(texts, [x["target_text"] for x in records], bleu_orders=(bleu_order,))
        return [{"target_text": p["target_text"], "text": p["text"], "finish_reason": p["finish_reason"]}
                for p in preds], metrics
    return run


KINDS = {"rating": _rating, "sequential": _sequential, "direct_candidates": _direct_candidates,
         "direct_yes_no": _direct_yes_no, "explanation": _text(4), "review": _text(2)}


# ---------------------------------------------------------------------------------------------
# the results table


def results_table(metrics: dict) -> str:
    """Per family and kind, one table: a row per template, seen templates first, then the unseen ones."""
    templates = metrics["templates"]
    groups = {}
    for tid, t in templates.items():
        groups.setdefault((FAMILIES.index(t["family"]), t["kind"]), []).append(tid)
    parts = []
    for (_, kind), tids in sorted(groups.items()):
        family = templates[tids[0]]["family"]
        title = {"review": "review summarization", "direct_yes_no": "direct (yes/no, ranked by P(yes))",
                 "direct_candidates": "direct (candidates ranked by likelihood)"}.get(kind, family)
        if family == "review" and kind == "rating":
            title = "review (rating from review)"
        columns = COLUMNS[kind]
        lines = [f"**{title}**", "", "| template | prompt set | n | " + " | ".join(columns) + " |",
                 "|---|---|---:|" + "---:|" * len(columns)]
        for tid in sorted(tids, key=lambda t: (not templates[t]["seen"], _order(t))):
            t = templates[tid]
            values = [_cell(t["metrics"].get(c)) for c in columns]
            lines.append(f"| {tid} | {'seen' if t['seen'] else 'unseen'} | {t['n']} | " + " | ".join(values) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _cell(x) -> str:
    return "n/a" if x is None or x != x else f"{x:.4f}"
