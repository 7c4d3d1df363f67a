"""Build the RecGPT corpus: raw datasets -> packed pre-training shards, instruction data, benchmark
evaluation files, a leakage manifest and a Table-4 statistics report.

    python -m data.prepare --config configs/data/movielens-100k.yaml
    python -m data.prepare --config configs/data/amazon-beauty.yaml --max_seq_len=1024 --skip-bad
    # cluster: N independent jobs, then one merge
    python -m data.prepare --config configs/data/paper.yaml --shard 3/64
    python -m data.prepare --config configs/data/paper.yaml --merge

Each part i/N reads every source (splits and leakage removal need the whole dataset) but renders,
tokenizes and writes only every N-th user of the seeded user order; part 0 also writes the
evaluation files. Without --shard the run is part 0/1 and merges at once. Output layout and formats:
data/README.md. Same inputs + config -> byte-identical outputs (timings go to timings.json only).
"""
import argparse
import collections
import concurrent.futures
import contextlib
import dataclasses
import gc
import gzip
import json
import operator
import pathlib
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

from tqdm import tqdm

from data import config as config_lib
from data import recipe, templates
from data import tokenizer as tokenizer_lib
from data.chunking import Chunker
from data.instructions import InstructionWriter
from data.packed import FORMAT, FORMAT_VERSION, PackWriter
from data.records import BadLines, Item, item_id_order
from data.token_lines import LineSpans, joinable
from data.sources import get_reader


@dataclass
class SourcePlan:
    """One source after reading and the recipe; the same in every part."""
    cfg: dict
    domain: templates.Domain
    bad: BadLines
    ledger: recipe.Ledger
    table4: dict  # users, items, interactions (after cleaning; the whole dataset for a benchmark)
    pretrain: list  # histories in seeded user order
    finetune: list  # (user, history) in seeded user order
    heldout: list = field(default_factory=list)
    catalog: Optional[dict] = None
    users: frozenset = frozenset()
    train_stats: Optional[dict] = None  # benchmarks: per-item counts/ratings of the training split (baselines)


def build_plan(cfg: dict, s: dict, users_of: dict[str, frozenset]) -> SourcePlan:
    reader = get_reader(s["reader"])
    bad = BadLines(cfg["skip_bad"])
    ledger = recipe.Ledger()
    interactions = list(reader.read(bad=bad, **s["options"]))
    ledger.read = len(interactions)
    histories = recipe.group_histories(interactions)
    del interactions
    domain = templates.get_domain(s["domain"])
    seed, name = cfg["seed"], s["name"]
    for o in s["exclude_users_of"]:
        if o not in users_of:
            raise config_lib.ConfigError(f"source {name}: exclude_users_of {o!r} must name an earlier source")
    exclude = frozenset().union(*(users_of[o] for o in s["exclude_users_of"]))
    if s["benchmark"]:
        # P5 splits are defined on the full sequences, untitled items included (evaluation.md §1-2)
        table4 = {"users": len(histories), "items": len({x.item.id for h in histories.values() for x in h}),
                  "interactions": ledger.read}
        train, heldout, heldout_keys = recipe.benchmark_split(histories, seed, name, s["rating_split"])
        ledger.kept["heldout_validation_test"] = len(heldout_keys)
        train_stats = training_item_stats(train)
        train = {u: recipe.drop_untitled(h, ledger, "train_item_without_title") for u, h in train.items()}
        ledger.users_dropped["no_training_interaction_left"] = sum(1 for h in train.values() if not h)
        order = recipe.user_order([u for u, h in train.items() if h], seed, name)
        pretrain = [train[u] for u in order]
        ledger.kept["pretrain"] = sum(len(h) for h in pretrain)
        catalog = reader.catalog(bad=bad, **s["options"]) if hasattr(reader, "catalog") else \
            {x.item.id: x.item for h in histories.values() for x in h}
        # the same training interactions, so not a ledger destination of their own; never a held-out one
        finetune = [(u, train[u]) for u in order if len(train[u]) >= 2] if s["finetune_from_train"] else []
        plan = SourcePlan(s, domain, bad, ledger, table4, pretrain, finetune, heldout, catalog, frozenset(histories),
                          train_stats)
    else:
        cleaned = recipe.clean(histories, ledger, cfg["min_interactions"], exclude)
        pre_users, ft_users = recipe.split_users(cleaned, seed, name, cfg["finetune_fraction"])
        table4 = {"users": len(cleaned), "items": len({x.item.id for h in cleaned.values() for x in h}),
                  "interactions": sum(len(h) for h in cleaned.values())}
        ledger.kept["pretrain"] = sum(len(cleaned[u]) for u in pre_users)
        ledger.kept["finetune"] = sum(len(cleaned[u]) for u in ft_users)
        plan = SourcePlan(s, domain, bad, ledger, table4, [cleaned[u] for u in pre_users],
                          [(u, cleaned[u]) for u in ft_users], users=frozenset(histories))
    ledger.check()
    return plan


def training_item_stats(train: dict) -> dict:
    """What the simple baselines need from a benchmark's training split (every training interaction, untitled
    items included): per item [interactions, rated interactions, sum of ratings], and the global mean rating."""
    items = collections.defaultdict(lambda: [0, 0, 0.0])
    for h in train.values():
        for x in h:
            s = items[x.item.id]
            s[0] += 1
            if x.rating is not None:
                s[1] += 1
                s[2] += x.rating
    rated = sum(s[1] for s in items.values())
    return {"interactions": sum(s[0] for s in items.values()), "rated_interactions": rated,
            "mean_rating": sum(s[2] for s in items.values()) / rated if rated else None,
            "items": {i: items[i] for i in sorted(items)}}


@contextlib.contextmanager
def collector_paused():
    """Reading makes millions of long-lived objects and no reference cycles; Python's cyclic collector
    would walk all of them again each time their number grows (a quarter of MovieLens-100K's read time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def iter_plans(cfg: dict):
    users_of: dict[str, frozenset] = {}
    for s in cfg["sources"]:
        with collector_paused():
            plan = build_plan(cfg, s, users_of)
        users_of[s["name"]] = plan.users
        yield plan


# -- tokenizer ------------------------------------------------------------------------------------

def get_tokenizer(cfg: dict):
    tok_cfg = cfg["tokenizer"]
    if tok_cfg.get("path"):
        return tok_cfg["path"], tokenizer_lib.load(tok_cfg["path"])
    out = pathlib.Path(cfg["out_dir"]) / "tokenizer.json"
    spec_path = out.with_suffix(".spec.json")
    train = {"vocab_size": 4096, "max_documents": 20000, **tok_cfg["train"]}
    spec = json.dumps({"train": train, "seed": cfg["seed"], "sources": cfg["sources"],
                       "min_interactions": cfg["min_interactions"],
                       "finetune_fraction": cfg["finetune_fraction"]}, sort_keys=True)
    if out.is_file() and spec_path.is_file() and spec_path.read_text() == spec:
        return str(out), tokenizer_lib.load(out)  # cheap rerun: same corpus spec, same tokenizer
    texts = []
    for plan in iter_plans(cfg):  # the first max_documents pre-training documents, in build order
        texts += [templates.pretrain_document(plan.domain, h) for h in plan.pretrain[: train["max_documents"] - len(texts)]]
        if len(texts) >= train["max_documents"]:
            break  # the later sources are not read
    tmp = out.with_suffix(".tmp.json")
    tokenizer_lib.train_bpe(texts, train["vocab_size"], tmp)
    tmp.replace(out)
    spec_path.write_text(spec)
    return str(out), tokenizer_lib.load(out)


class Encoder:
    """Batch encoding on all cores (tokenizers' Rayon pool); no special tokens are added.

    `submit` encodes in a background thread (encode_batch releases the GIL), so that the Python work
    of the stages (rendering, chunking, writing) overlaps the encoding of the next batch; the results
    are the same as `encode`'s, only the timing differs."""

    def __init__(self, tok):
        self._encode_batch = getattr(tok, "encode_batch_fast", tok.encode_batch)
        self.eos_id = tok.token_to_id(tokenizer_lib.EOS)
        nl = tok.encode("\n", add_special_tokens=False).ids
        # cutting ids out of a whole text's ids (data/token_lines.py) needs a line-local tokenizer
        self.nl_id = nl[0] if tokenizer_lib.line_local(tok) and len(nl) == 1 else None
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode")

    def encode(self, texts: list[str]):
        # encode_batch_fast (tokenizers >= 0.20) leaves out the character offsets, which nothing here reads
        return self._encode_batch(texts, add_special_tokens=False) if texts else []

    def submit(self, texts: list[str]) -> concurrent.futures.Future:
        return self._pool.submit(self.encode, texts)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def ids(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.encode(texts)]

    def lengths(self, texts: list[str]) -> list[int]:
        return [len(e) for e in self.encode(texts)]  # len(Encoding) = len(ids), without building the list

    def cached_ids(self, texts: list[str], cache: dict) -> list[list[int]]:
        """ids of each text, encoding (in one batch) only the texts not yet in `cache`."""
        todo = list(dict.fromkeys(t for t in texts if t not in cache))
        if todo:
            cache.update(zip(todo, self.ids(todo)))
        return [cache[t] for t in texts]


class gzip_writer(gzip.GzipFile):
    """mtime=0 and no file name in the header, so the bytes depend on the content only. Level 1: the
    manifests are read once, by the audit; gzip's default level 9 costs 14x the CPU (0.25 s against
    0.017 s for MovieLens-100K's 3.3 MB manifest) for files 25% smaller."""

    def __init__(self, path):
        self._raw = open(path, "wb")
        super().__init__(filename="", mode="wb", fileobj=self._raw, mtime=0, compresslevel=1)

    def close(self):
        super().close()
        self._raw.close()


class background_gzip_writer:
    """A gzip_writer whose compression runs in a background thread (zlib releases the GIL): writes are
    collected and handed over in blocks, in order, so the file holds the same stream of bytes."""

    BLOCK = 1 << 18

    def __init__(self, path):
        self._gz = gzip_writer(path)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="gzip")
        self._buf: list[bytes] = []
        self._size = 0
        self._pending: list[concurrent.futures.Future] = []

    def write(self, data: bytes) -> None:
        self._buf.append(data)
        self._size += len(data)
        if self._size >= self.BLOCK:
            self._hand_over()

    def _hand_over(self) -> None:
        if self._buf:
            self._pending.append(self._pool.submit(self._gz.write, b"".join(self._buf)))
            for f in [f for f in self._pending if f.done()]:
                f.result()  # re-raises a write error
                self._pending.remove(f)
            self._buf, self._size = [], 0

    def close(self) -> None:
        self._hand_over()
        self._pool.submit(self._gz.close).result()
        self._pool.shutdown(wait=True)
        for f in self._pending:
            f.result()  # re-raises a write error


def batched(seq, n):
    for i in range(0, len(seq), n):
        yield seq[i: i + n]


def prefetched(blocks, start):
    """start(block) for every block, in order, each yielded after start() has been called for the
    next block: when start() renders a block and submits its encoding (Encoder.submit), the caller's
    work on block k overlaps the encoding of block k + 1."""
    pending = None
    for block in blocks:
        nxt = start(block)
        if pending is not None:
            yield pending
        pending = nxt
    if pending is not None:
        yield pending


# -- stages ---------------------------------------------------------------------------------------

def manifest_lines(source: str, history) -> bytes:
    """One "source<TAB>interaction key" line per interaction (data/README.md; the audit reads them)."""
    if not history:
        return b""
    return (f"{source}\t" + f"\n{source}\t".join([x.key for x in history]) + "\n").encode()


def find_runs(history, groups) -> list[Optional[tuple[int, int]]]:
    """For each group, (a, b) when it is history[a:b] itself (the same interaction objects, so no item
    was changed, e.g. a review cut to fit), else None. The chunker's groups are consecutive pieces of
    the history, so each is looked for where the previous one ended, and searched for only after a
    dropped item."""
    runs, a = [], 0
    for g in groups:
        if g and not (a < len(history) and history[a] is g[0]):
            a = next((i for i, x in enumerate(history) if x is g[0]), len(history))
        b = a + len(g)
        ok = g and b <= len(history) and all(map(operator.is_, g, history[a:b]))
        runs.append((a, b) if ok else None)
        a = b
    return runs


def write_pretrain(plan: SourcePlan, histories, enc: Encoder, limit: int, writer: PackWriter, manifest,
                   batch: int, counts: collections.Counter, keep_texts: Optional[list] = None) -> None:
    d, name = plan.domain, plan.cfg["name"]
    chunker = Chunker(enc.lengths, limit)
    head = templates.document_head(d)
    overhead = enc.lengths([head])[0]

    def render(groups):
        return [templates.pretrain_document(d, g) for g in groups]

    def emit(history, ids):
        writer.add(ids)
        counts["documents"] += 1
        counts["tokens"] += len(ids) + 1  # + EOS
        counts["interactions_in_documents"] += len(history)
        if manifest:
            manifest.write(manifest_lines(name, history))
        if keep_texts is not None:
            keep_texts.append((d, history))  # rendered by the benchmark, outside its timing

    def start(users):
        docs = render(users)
        return users, docs, enc.submit(docs)

    blocks = list(batched(histories, batch))
    for users, docs, encoded in tqdm(prefetched(blocks, start), total=len(blocks), desc=f"pretrain {name}",
                                     unit="batch", leave=False):
        for h, doc, e in zip(users, docs, encoded.result()):
            ids = e.ids
            if len(ids) < limit:
                emit(h, ids)
                continue
            # long history: a chunk of unchanged consecutive lines is cut out of the document's ids
            # (LineSpans), with the per-line counts for the chunker's estimate; anything else (a review
            # cut to fit, a tokenizer that is not line-local) is encoded once and cached
            spans = LineSpans.of(doc, ids, head, "", enc.nl_id, len(h))
            runs_in = (lambda groups: find_runs(h, groups)) if spans else (lambda groups: [None] * len(groups))
            cache: dict[str, list[int]] = {}

            def measure(groups):
                runs = runs_in(groups)
                encoded = iter(enc.cached_ids(render([g for g, r in zip(groups, runs) if r is None]), cache))
                return [spans.length(*r) if r else len(next(encoded)) for r in runs]

            groups = chunker.split(h, lambda x: templates.pretrain_line(d, x), overhead, measure,
                                   line_tokens=spans.line_tokens() if spans else None)
            for g, r in zip(groups, runs_in(groups)):
                emit(g, spans.join(*r) if r else enc.cached_ids(render([g]), cache)[0])
    counts.update(chunker.counts)
    counts["pretrain_users"] += len(histories)


def make_pairs(d: templates.Domain, group, counts: collections.Counter) -> list[tuple[str, str, str, dict]]:
    """(task, prompt, response, target info) of one history chunk (recgpt.md §5)."""
    if len(group) < 2:
        counts["chunks_too_short_for_pairs"] += 1
        return []
    pairs = []
    if d.rating is not None:
        if group[-2].rating is not None:
            prompt, response = templates.rating_pair(d, group[:-1])
            pairs.append(("rating", prompt, response, {"target_item_id": group[-2].item.id,
                                                       "target_rating": group[-2].rating}))
        else:
            counts["rating_pairs_skipped_no_rating"] += 1
    prompt, response = templates.next_item_pair(d, group[:-1], group[-1].item)
    pairs.append(("next_item", prompt, response, {"target_item_id": group[-1].item.id}))
    return pairs


TASKS = {"rating": templates.RATING_TASK, "next_item": templates.NEXT_ITEM_TASK}


class PairCutter:
    """The ids of the fine-tuning pairs (make_pairs) of runs of one long history, cut out of the whole
    history's two prompts (LineSpans) instead of encoding every candidate chunk's prompts: the next-item
    prompt of history[a:b] is the whole one's lines [a, b - 1); its rating prompt is the whole one's
    full lines [a, b - 2) and item b - 2's hidden-rating line, encoded alone. Only such lines and the
    responses are encoded, once (`encode` caches). A group that is not a run of the history, or a whole
    prompt that cannot be cut, is rendered and encoded."""

    def __init__(self, d: templates.Domain, history, whole_pairs, whole_ids, nl_id, encode):
        self.d, self.encode, self.history = d, encode, history
        self.spans = {task: LineSpans.of(prompt, ids, templates.prompt_head(TASKS[task], d), templates.PROMPT_TAIL,
                                         nl_id, len(history) - 1)
                      for (task, prompt, _, _), (ids, _) in zip(whole_pairs, whole_ids)}

    def line_tokens(self, line) -> Optional[list[int]]:
        """The chunker's per-item estimate, tokens of line(x) + 1, taken from the whole prompt whose lines
        are line(x) (the rating prompt's full lines where the domain has ratings, else the next-item
        prompt's); the few items it lacks are encoded. None: the chunker encodes every line."""
        task = "rating" if self.d.rating else "next_item"
        spans = self.spans.get(task)
        if spans is None:
            return None
        covered = spans.n - 1 if task == "rating" else spans.n  # the rating prompt's last line is hidden
        rest = self.encode([line(x) for x in self.history[covered:]])
        return spans.line_tokens()[:covered] + [len(ids) + 1 for ids in rest]

    def _pieces(self, g, r) -> list[tuple]:
        """Per pair of make_pairs(g): (spans, a, b, last line or None, response) to cut, or (None, prompt,
        response) to encode; r = (a, b) where g is history[a:b] itself (find_runs)."""
        d = self.d
        if r is not None and len(g) >= 2:
            (a, b), pieces = r, []
            if d.rating is not None and g[-2].rating is not None:
                hidden = templates.rating_line(d, g[-2], hide=True)
                if self.spans.get("rating") is None or not joinable(hidden):
                    pieces = None
                else:
                    pieces.append((self.spans["rating"], a, b - 2, hidden, templates.format_rating(g[-2].rating, d.scale)))
            if pieces is not None and self.spans.get("next_item") is not None:
                return pieces + [(self.spans["next_item"], a, b - 1, None, templates.item_text(d, g[-1].item))]
        return [(None, prompt, response) for _, prompt, response, _ in make_pairs(d, g, collections.Counter())]

    def pair_ids(self, groups) -> list[list[tuple[list[int], list[int]]]]:
        """(prompt ids, response ids) of each group's pairs, in make_pairs order."""
        pieces = [self._pieces(g, r) for g, r in zip(groups, find_runs(self.history, groups))]
        # what is encoded, in one batch: (last line, response) of a cut pair, (prompt, response) of the others
        texts = [t for ps in pieces for p in ps for t in p[-2:] if t is not None]
        ids = dict(zip(texts, self.encode(texts)))
        out = []
        for ps in pieces:
            pairs = []
            for spans, *rest in ps:
                if spans is None:
                    prompt, response = rest
                    pairs.append((ids[prompt], ids[response]))
                else:
                    a, b, last, response = rest
                    pairs.append((spans.join(a, b, ids[last] if last is not None else None), ids[response]))
            out.append(pairs)
        return out


def longest_pair(pair_ids) -> int:
    """What must stay under max_seq_len: the longest pair's prompt + response tokens."""
    return max((len(p) + len(r) for p, r in pair_ids), default=0)


def write_finetune(plan: SourcePlan, users, enc: Encoder, limit: int, writer: InstructionWriter, manifest,
                   counts: collections.Counter, batch: int = 256, keep_texts: Optional[list] = None) -> None:
    d, name = plan.domain, plan.cfg["name"]
    chunker = Chunker(enc.lengths, limit)
    line = (lambda x: templates.rating_line(d, x)) if d.rating else (lambda x: templates.next_item_line(d, d.history, x))
    overhead = max(enc.lengths([templates.wrap_prompt(t, d, []) for t in
                                (templates.RATING_TASK, templates.NEXT_ITEM_TASK)])) + 8
    cache: dict[str, list[int]] = {}  # text -> ids within a block: no text is encoded twice

    def encode(texts):
        return enc.cached_ids(texts, cache)

    bar = tqdm(total=len(users), desc=f"finetune {name}", unit="user", leave=False)
    for block in batched(users, batch):
        cache.clear()
        wholes = []  # the whole histories' pairs, encoded in one batch
        for _, history in block:
            whole_counts = collections.Counter()
            wholes.append((make_pairs(d, history, whole_counts), whole_counts))
        ids = iter(encode([t for pairs, _ in wholes for p in pairs for t in p[1:3]]))
        for (user, history), (pairs, whole_counts) in zip(block, wholes):
            pair_ids = [(next(ids), next(ids)) for _ in pairs]
            if longest_pair(pair_ids) < limit:
                chunks = [(history, pairs, pair_ids)]
                counts.update(whole_counts)
            else:
                cutter = PairCutter(d, history, pairs, pair_ids, enc.nl_id, encode)
                groups = chunker.split(history, line, overhead, lambda gs: [longest_pair(p) for p in cutter.pair_ids(gs)],
                                       line_tokens=cutter.line_tokens(line))
                chunks = [(g, make_pairs(d, g, counts), g_ids) for g, g_ids in zip(groups, cutter.pair_ids(groups))]
            for j, (g, g_pairs, g_ids) in enumerate(chunks):
                for (task, prompt, response, target), (prompt_ids, response_ids) in zip(g_pairs, g_ids):
                    record = {"task": task, "source": name, "domain": d.name, "user": user, "chunk": j,
                              "n_history": len(g) - 1, "prompt": prompt, "response": response, **target}
                    writer.add(record, prompt_ids, response_ids)
                    counts[f"pairs_{task}"] += 1
                    if keep_texts is not None:
                        keep_texts += [prompt, response]
                if manifest:
                    manifest.write(manifest_lines(name, g))
            bar.update()
    bar.close()
    counts.update(chunker.counts)
    counts["finetune_users"] += len(users)


def fit_prompts(enc: Encoder, todo, budget: int) -> list[tuple[str, str, int]]:
    """For each (build, history, (first, prompt, response, n_tokens), count) of `todo`, where the prompt
    is build(history[first:]) with n_tokens tokens: the fewest oldest history items to drop so that the
    prompt leaves `budget` tokens (evaluation.md §4) -> (prompt, response, items dropped). Found by
    bisection on the token count, which only falls as items are dropped, starting from what the given
    prompt tells: the answer is above `first` if it does not fit, at most `first` if it does.
    `count(m)`, where not None, is the count of build(history[m:])'s prompt (from the given prompt's
    spans); otherwise the candidates of all prompts are encoded together, one encode_batch call per
    bisection step."""
    out = [[prompt, response, first] for _, _, (first, prompt, response, _), _ in todo]
    # [lo, hi, ...]: dropping lo items leaves too many tokens (lo -1: none known), dropping hi fits (or
    # drops everything); the answer is hi once they meet
    state = [[first, len(history)] if n > budget else [-1, first] for _, history, (first, _, _, n), _ in todo]
    state = [s + [i, build, history, count] for i, (s, (build, history, _, count)) in enumerate(zip(state, todo))
             if s[1] - s[0] > 1]
    active = state
    while active:
        encode = []
        for s in active:
            mid = (s[0] + s[1]) // 2
            n = s[5](mid) if s[5] is not None else None
            if n is None:
                encode.append((s, mid, s[3](s[4][mid:])[0]))
            else:
                s[:2] = (s[0], mid) if n <= budget else (mid, s[1])
        for (s, mid, _), n in zip(encode, enc.lengths([prompt for _, _, prompt in encode])):
            s[:2] = (s[0], mid) if n <= budget else (mid, s[1])
        active = [s for s in active if s[1] - s[0] > 1]
    for _, hi, i, build, history, _ in state:
        if hi != out[i][2]:
            out[i] = [*build(history[hi:]), hi]
    return [tuple(o) for o in out]


# tokens of the prompts here average 2.7-4 characters, so such a suffix almost never fits
EVAL_SUFFIX_CHARS_PER_TOKEN = 6


def catalog_item(item: Item, cfg: dict) -> Item:
    return item if item.title else dataclasses.replace(item, title=cfg["eval"]["missing_title"])


def write_eval(plan: SourcePlan, enc: Encoder, cfg: dict, out_dir: pathlib.Path, heldout_manifest,
               counts: collections.Counter, keep_texts: Optional[list] = None) -> dict:
    """Benchmark validation/test prompts with their targets, and the item catalog (part 0 only)."""
    d, name = plan.domain, plan.cfg["name"]
    eval_dir = out_dir / "eval" / name
    eval_dir.mkdir(parents=True, exist_ok=True)
    budget = cfg["max_seq_len"] - cfg["eval"]["max_new_tokens"]
    files, handles = {}, {}

    lines: dict[int, tuple] = {}  # id(interaction) -> (interaction, its history line); validation and
    # test prompts share most of their history, and a prompt being cut is rendered again

    def history_line(x):
        hit = lines.get(id(x))
        if hit is None or hit[0] is not x:
            hit = lines[id(x)] = (x, templates.next_item_line(d, d.history, x))
        return hit[1]

    def next_item_build(response):
        # templates.next_item_pair(d, hist, target_item), with each history line rendered once
        return lambda hist: (templates.wrap_prompt(templates.NEXT_ITEM_TASK, d, [history_line(x) for x in hist]),
                             response)

    def rating_build(target):
        return lambda hist: templates.rating_pair(d, list(hist) + [target])

    # A prompt is first encoded from the most recent items whose history lines add up to
    # EVAL_SUFFIX_CHARS_PER_TOKEN characters per token of the budget, not from the whole history: when
    # that does not fit (almost always), what fits lies inside it (fit_prompts). Next-item lines stand
    # in for rating lines, which are longer.
    def suffix_start(history) -> int:
        chars = 0
        for i in range(len(history) - 1, -1, -1):
            chars += len(history_line(history[i])) + 1
            if chars > EVAL_SUFFIX_CHARS_PER_TOKEN * budget:
                return i
        return 0

    bar = tqdm(total=len(plan.heldout), desc=f"eval {name}", unit="example", leave=False)

    def start(block):
        todo = []  # (example, history, build, extra, first item encoded), in held-out order
        for h in block:
            if heldout_manifest:
                heldout_manifest.write(f"{name}\t{h.task}\t{h.split}\t{h.key}\n".encode())
            history = [x for x in h.history if x.item.title]
            counts["eval_history_items_without_title_dropped"] += len(h.history) - len(history)
            target_item = catalog_item(h.target.item, cfg)
            if not h.target.item.title:
                counts[f"eval_{h.task}_targets_without_title"] += 1
            if h.task == "next_item":
                target_text = templates.item_text(d, target_item)
                build = next_item_build(target_text)
                extra = {"target_item_id": target_item.id, "target_text": target_text}
            else:
                if d.rating is None or h.target.rating is None:
                    counts["eval_rating_examples_without_rating"] += 1
                    continue
                build = rating_build(h.target if h.target.item.title else dataclasses.replace(h.target, item=target_item))
                extra = {"target_item_id": target_item.id, "target_rating": h.target.rating}
            todo.append((h, history, build, extra, suffix_start(history)))
        firsts = [build(history[first:]) for _, history, build, _, first in todo]
        return block, todo, firsts, enc.submit([p for p, _ in firsts])

    for block, todo, firsts, encoded in prefetched(batched(plan.heldout, 4096), start):
        fit = []
        for (h, history, build, _, first), (prompt, response), e in zip(todo, firsts, encoded.result()):
            n, count = len(e), None
            if n > budget:  # a rating prompt's body is the history lines, then the target's line
                n_lines = len(history) - first + (1 if h.task == "rating" else 0)
                task = templates.NEXT_ITEM_TASK if h.task == "next_item" else templates.RATING_TASK
                # the prompt without its oldest m items, counted from this encoding (LineSpans)
                spans = LineSpans.of(prompt, e.ids, templates.prompt_head(task, d), templates.PROMPT_TAIL, enc.nl_id,
                                     n_lines)
                if spans:
                    count = lambda m, spans=spans, first=first, n=n_lines: (  # noqa: E731
                        spans.length(m - first, n) if first <= m < first + n else None)
            fit.append((build, history, (first, prompt, response, n), count))
        fitted = fit_prompts(enc, fit, budget)
        for (h, history, build, extra, _), (prompt, response, dropped) in zip(todo, fitted):
            counts["eval_prompts_truncated"] += dropped > 0
            fname = f"{h.task}_{h.split}.jsonl"
            if fname not in handles:
                handles[fname] = open(eval_dir / fname, "w", encoding="utf-8")
                files[fname] = 0
            record = {"task": h.task, "split": h.split, "source": name, "domain": d.name, "user": h.user,
                      "prompt": prompt, "response": response,
                      "history_item_ids": [x.item.id for x in history[dropped:]],
                      "history_items_dropped_oldest": dropped, **extra}
            handles[fname].write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
            files[fname] += 1
            if keep_texts is not None:
                keep_texts.append(prompt)
        bar.update(len(block))
    bar.close()
    for f in handles.values():
        f.close()
    ids = sorted(plan.catalog, key=item_id_order)
    with open(eval_dir / "catalog.jsonl", "w", encoding="utf-8") as f:
        for i in ids:
            item = plan.catalog[i]
            f.write(json.dumps({"item_id": i, "text": templates.item_text(d, catalog_item(item, cfg)),
                                "title_missing": not item.title}, ensure_ascii=False) + "\n")
    (eval_dir / "train_stats.json").write_text(json.dumps(plan.train_stats, sort_keys=True) + "\n")
    counts["catalog_items"] = len(ids)
    counts["catalog_items_without_title"] = sum(1 for i in ids if not plan.catalog[i].title)
    return {"dir": f"eval/{name}", "files": {k: files[k] for k in sorted(files)}, "catalog": f"eval/{name}/catalog.jsonl",
            "train_stats": f"eval/{name}/train_stats.json"}


# -- a part and the merge --------------------------------------------------------------------------

def part_dir(out_dir: pathlib.Path, i: int, n: int) -> pathlib.Path:
    return out_dir / "parts" / f"{i:05d}-of-{n:05d}"


def run_part(cfg: dict, i: int, n: int, keep_texts: Optional[list] = None) -> dict:
    t0 = time.perf_counter()
    out_dir = pathlib.Path(cfg["out_dir"])
    pdir = part_dir(out_dir, i, n)
    pdir.mkdir(parents=True, exist_ok=True)
    tok_path, tok = get_tokenizer(cfg)
    enc = Encoder(tok)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    dtype = tokenizer_lib.token_dtype(vocab)
    limit = cfg["max_seq_len"]
    writer = PackWriter(pdir, "pretrain", cfg["pack"]["seq_len"], dtype, cfg["pack"]["rows_per_shard"], enc.eos_id)
    instr = InstructionWriter(pdir, dtype, enc.eos_id)
    manifest = background_gzip_writer(pdir / "manifest.tsv.gz") if cfg["write_manifests"] else None
    ft_manifest = background_gzip_writer(pdir / "manifest-finetune.tsv.gz") if cfg["write_manifests"] else None
    heldout_manifest = None
    if i == 0 and cfg["write_manifests"]:
        (out_dir / "eval").mkdir(parents=True, exist_ok=True)
        heldout_manifest = background_gzip_writer(out_dir / "eval" / "heldout.tsv.gz")
    sources, evals, timings = {}, {}, {"tokenizer_s": time.perf_counter() - t0}
    for plan in iter_plans(cfg):
        # the source's interactions live until its part is written: keep the cyclic collector from
        # walking them again at every full collection (8% of an Amazon Beauty build); undone below
        gc.freeze()
        name = plan.cfg["name"]
        t1 = time.perf_counter()
        counts: collections.Counter = collections.Counter()
        tokens_before = writer.tokens
        write_pretrain(plan, plan.pretrain[i::n], enc, limit, writer, manifest, cfg["batch_users"], counts, keep_texts)
        t2 = time.perf_counter()
        write_finetune(plan, plan.finetune[i::n], enc, limit, instr, ft_manifest, counts, keep_texts=keep_texts)
        if i == 0 and plan.heldout:
            evals[name] = write_eval(plan, enc, cfg, out_dir, heldout_manifest, counts, keep_texts)
        timings[name] = {"pretrain_s": t2 - t1, "pretrain_tokens": writer.tokens - tokens_before,
                         "finetune_eval_s": time.perf_counter() - t2}
        sources[name] = {
            "domain": plan.domain.name, "benchmark": plan.cfg["benchmark"], "table4": plan.table4,
            "bad_lines": dict(sorted(plan.bad.counts.items())), "bad_line_examples": plan.bad.examples,
            "ignored_rows": dict(sorted(plan.bad.ignored.items())),
            "interactions_read": plan.ledger.read, "interactions_dropped": dict(sorted(plan.ledger.dropped.items())),
            "users_dropped": dict(sorted(plan.ledger.users_dropped.items())),
            "interactions_kept": dict(sorted(plan.ledger.kept.items())),
            "part": dict(sorted(counts.items())),
        }
    gc.unfreeze()
    shards = writer.close()
    n_pairs = instr.close()
    for m in (manifest, ft_manifest, heldout_manifest):
        if m:
            m.close()
    enc.close()
    rel = pdir.relative_to(out_dir).as_posix()
    part = {"part": i, "of": n, "dtype": dtype, "vocab_size": vocab, "eos_id": enc.eos_id,
            "tokenizer": {"path": tok_path, "sha256": tokenizer_lib.sha256_file(tok_path)},
            "pretrain_shards": [{"file": f"{rel}/{s['file']}", "rows": s["rows"]} for s in shards],
            "documents": writer.documents, "tokens": writer.tokens, "padding_tokens": writer.padding_tokens,
            "instructions": {"jsonl": f"{rel}/instructions.jsonl", "tokens": f"{rel}/instructions.tokens.bin",
                             "index": f"{rel}/instructions.index.npy", "examples": n_pairs},
            "manifests": [f"{rel}/{m}" for m in ("manifest.tsv.gz", "manifest-finetune.tsv.gz")]
            if cfg["write_manifests"] else [],
            "eval": evals, "sources": sources}
    (pdir / "part.json").write_text(json.dumps(part, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    timings["total_s"] = time.perf_counter() - t0
    timings["tokens"] = writer.tokens
    (pdir / "timings.json").write_text(json.dumps(timings, indent=1) + "\n")
    return part


def _sum_counts(dicts: list[dict]) -> dict:
    total: collections.Counter = collections.Counter()
    for d in dicts:
        total.update(d)
    return dict(sorted(total.items()))


def merge(cfg: dict, n: int) -> dict:
    from data import stats  # noqa: keeps the build path free of the report code
    out_dir = pathlib.Path(cfg["out_dir"])
    parts = []
    for i in range(n):
        p = part_dir(out_dir, i, n) / "part.json"
        if not p.is_file():
            raise FileNotFoundError(f"{p}: part {i}/{n} has not been built (run --shard {i}/{n})")
        parts.append(json.loads(p.read_text()))
    first = parts[0]
    for p in parts[1:]:
        if p["tokenizer"]["sha256"] != first["tokenizer"]["sha256"]:
            raise ValueError(f"part {p['part']} used a different tokenizer than part 0")
    sources = {}
    for name, s in first["sources"].items():
        sources[name] = {**s, "part": _sum_counts([p["sources"][name]["part"] for p in parts])}
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "tokenizer": {**first["tokenizer"], "vocab_size": first["vocab_size"]},
        "pretrain": {"dtype": first["dtype"], "seq_len": cfg["pack"]["seq_len"], "eos_id": first["eos_id"],
                     "shards": [s for p in parts for s in p["pretrain_shards"]],
                     "rows": sum(s["rows"] for p in parts for s in p["pretrain_shards"]),
                     "documents": sum(p["documents"] for p in parts), "tokens": sum(p["tokens"] for p in parts),
                     "padding_tokens": sum(p["padding_tokens"] for p in parts)},
        "instructions": {"dtype": first["dtype"], "eos_id": first["eos_id"], "ignore_index": -100,
                         "examples": sum(p["instructions"]["examples"] for p in parts),
                         "parts": [p["instructions"] for p in parts]},
        "eval": first["eval"], "heldout_manifest": "eval/heldout.tsv.gz" if cfg["write_manifests"] else None,
        "manifests": [m for p in parts for m in p["manifests"]],
        "sources": sources, "parts": n, "config": cfg,
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    (out_dir / "stats.md").write_text(stats.report(meta))
    return meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--shard", default=None, help="i/N: build part i of N (0-based)")
    ap.add_argument("--merge", action="store_true", help="merge the N parts' statistics and listings")
    ap.add_argument("--parts", type=int, default=None, help="N for --merge (default: count the part folders)")
    ap.add_argument("--skip-bad", action="store_true", help="skip malformed input lines, counted by reason")
    args, rest = ap.parse_known_args(argv)
    cfg = config_lib.load(args.config, config_lib.parse_overrides(rest))
    if args.skip_bad:
        cfg["skip_bad"] = True
    out_dir = pathlib.Path(cfg["out_dir"])
    if args.merge:
        n = args.parts or len(list((out_dir / "parts").glob("*-of-*")))
        meta = merge(cfg, n)
    else:
        i, n = (int(v) for v in args.shard.split("/")) if args.shard else (0, 1)
        if not 0 <= i < n:
            raise SystemExit(f"--shard {args.shard}: need 0 <= i < N")
        run_part(cfg, i, n)
        if n > 1:
            print(f"part {i}/{n} written to {part_dir(out_dir, i, n)}; merge with --merge when all are done")
            return 0
        meta = merge(cfg, 1)
    print((out_dir / "stats.md").read_text())
    print(f"wrote {out_dir}/meta.json: {meta['pretrain']['rows']} rows x {meta['pretrain']['seq_len']} tokens, "
          f"{meta['instructions']['examples']} instruction pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
