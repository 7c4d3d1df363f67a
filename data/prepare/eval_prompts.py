"""Stage 3c: a benchmark's evaluation prompts (validation and test, both tasks) for a bucket of its users.

Per held-out example (data/prepare/recipe.py `heldout_examples`): history items without a title are left out
(counted); an untitled target takes the fallback title `eval.missing_title`; a prompt over
max_seq_len - eval.max_new_tokens tokens drops its oldest items, the fewest that make it fit
(evaluation.md §4). Rating prompts are written only when the source has ratings. With `eval.negatives` N, a
next-item example also lists N + 1 "candidates" (recipe.Negatives: P5's rule, a generator per user). Files:
`{task}_{split}.jsonl` (data/README.md "Evaluation files"), users in sorted order, as the merge
concatenates the buckets in order.
"""
import collections
import dataclasses
import json
import pathlib

from data.prepare import recipe, templates
from data.prepare.config import BuildConfig
from data.prepare.encoder import Encoder
from data.prepare.manifests import ManifestWriter


def fewest_dropped(enc: Encoder, examples: list, budget: int) -> list[int]:
    """For each (lines, make) of `examples`, where make(lines) -> (prompt, response): the fewest oldest lines
    to drop so that the prompt has at most `budget` tokens (all of them when nothing fits). Bisection on the
    token count, which only falls as lines are dropped; all examples step together, one `counts` call a step."""
    n_tokens = enc.counts([make(lines)[0] for lines, make in examples])
    # [lo, hi, i]: dropping lo lines leaves the prompt too long, dropping hi fits (or drops every line)
    cut = [[0, len(lines), i] for i, ((lines, _), n) in enumerate(zip(examples, n_tokens)) if n > budget]
    active = cut
    while active := [s for s in active if s[1] - s[0] > 1]:
        mids = [(lo + hi) // 2 for lo, hi, _ in active]
        prompts = [examples[i][1](examples[i][0][m:])[0] for (_, _, i), m in zip(active, mids)]
        for s, m, n in zip(active, mids, enc.counts(prompts)):
            s[0 if n > budget else 1] = m
    dropped = [0] * len(examples)
    for _, hi, i in cut:
        dropped[i] = hi
    return dropped


class EvalWriter:
    """The evaluation files of one bucket: {task}_{split}.jsonl, opened as examples come."""

    def __init__(self, out_dir: pathlib.Path):
        self.out_dir, self.files, self._handles = out_dir, {}, {}

    def write(self, record: dict) -> None:
        name = f"{record['task']}_{record['split']}.jsonl"
        if name not in self._handles:
            self._handles[name] = open(self.out_dir / name, "w", encoding="utf-8")
            self.files[name] = 0
        self._handles[name].write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
        self.files[name] += 1

    def close(self) -> dict:
        for f in self._handles.values():
            f.close()
        return dict(sorted(self.files.items()))


def write_prompts(d: templates.Domain, source: str, users: list, enc: Encoder, cfg: BuildConfig, writer: EvalWriter,
                  manifest: ManifestWriter | None, counts: collections.Counter,
                  negatives: recipe.Negatives | None = None) -> None:
    """The evaluation prompts of `users`: (user, full history, rating split of each interaction or None);
    `negatives`: over the source's catalog, for eval.negatives."""
    budget = cfg.max_seq_len - cfg.eval.max_new_tokens
    missing = cfg.eval.missing_title
    todo = []  # (example, titled history, extra fields, lines, make)
    for user, history, rating_split in users:
        lines: dict[tuple, str] = {}  # (id(interaction), form) -> its line: examples share most of their history

        def line(x, form):
            key = (id(x), form)
            if key not in lines:
                lines[key] = (templates.next_item_line(d, d.history, x) if form == "next_item"
                              else templates.rating_line(d, x))
            return lines[key]

        for h in recipe.heldout_examples(user, history, rating_split, max_titled=budget):
            if manifest:
                manifest.add("heldout", [h.target], task=h.task, split=h.split)
            titled = [x for x in h.history if x.item.title]
            counts["eval_history_items_without_title_dropped"] += (len(h.history) - len(titled)
                                                                   + h.cut_oldest - h.cut_titled)
            target = h.target
            if not target.item.title:
                counts[f"eval_{h.task}_targets_without_title"] += 1
                target = dataclasses.replace(target, item=dataclasses.replace(target.item, title=missing))
            if h.task == "next_item":
                target_text = templates.item_text(d, target.item)
                make = (lambda hist, r=target_text: (templates.wrap_prompt(templates.NEXT_ITEM_TASK, d, hist), r))
                extra = {"target_item_id": target.item.id, "target_text": target_text}
                if cfg.eval.negatives:  # the target at a seeded place among them, so that ties favour no one
                    rng = recipe.seeded_generator(cfg.seed, "negatives", source, user, h.split)
                    candidates = negatives.sample({x.item.id for x in history}, cfg.eval.negatives, rng)
                    candidates.insert(int(rng.integers(len(candidates) + 1)), target.item.id)
                    extra["candidates"] = candidates
            else:
                if d.rating is None or target.rating is None:
                    counts["eval_rating_examples_without_rating"] += 1
                    continue
                last = templates.rating_line(d, target, hide=True)
                response = templates.format_rating(target.rating, d.scale)
                make = (lambda hist, last=last, r=response:
                        (templates.wrap_prompt(templates.RATING_TASK, d, hist + [last]), r))
                extra = {"target_item_id": target.item.id, "target_rating": target.rating}
            todo.append((h, titled, extra, [line(x, h.task) for x in titled], make))
    dropped = fewest_dropped(enc, [(lines, make) for _, _, _, lines, make in todo], budget)
    for (h, titled, extra, lines, make), m in zip(todo, dropped):
        counts["eval_prompts_truncated"] += m + h.cut_oldest > 0
        prompt, response = make(lines[m:])
        dropped = m + h.cut_titled  # titled items left out, oldest first (cut_titled: never could fit)
        if h.task == "next_item":  # a blank-infilling model's prompt: the history as a pre-training document
            extra["document"] = "\n".join(templates.document_lines(d, [templates.pretrain_line(d, x)
                                                                       for x in titled[m:]]))
        writer.write({"task": h.task, "split": h.split, "source": source, "domain": d.name, "user": h.user,
                      "prompt": prompt, "response": response,
                      "history_item_ids": [x.item.id for x in titled[m:]], "history_items_dropped_oldest": dropped,
                      **extra})
