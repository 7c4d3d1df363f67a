"""P5's five task families as a multitask corpus: training pairs for the seen templates, evaluation files for the
evaluated ones (seen and held out), P5's splits and candidate lists, and a leakage audit (docs/p5.md).

    python -m data.prepare.p5_tasks configs/data/p5-beauty.yaml [--key=value ...] [--dry-run | --help]
    python -m data.prepare.p5_tasks configs/data/p5-movielens.yaml
    python -m data.prepare.audit out/data/p5-beauty          # no held-out interaction in any training pair
    python finetune.py ... --data.path=out/data/p5-beauty   # instructions/ (the multitask training pairs)

Config (`P5TasksConfig` below is the schema; the project's one config system, config/__init__.py):

    name: p5-beauty                       # required; out_dir defaults to out/data/<name>
    tokenizer: {path: x.json}             # required: a `tokenizers` JSON with <|endoftext|>
    source:
      reader: p5 | movielens              # P5's files (sequential_data.txt + items.jsonl) or MovieLens (ratings)
      path: ../shared/data/amazon-beauty-p5
      datamaps: null                      # P5's datamaps.json (reviewerID/ASIN -> P5 ids): needed by the pickles
      review_splits: null                 # P5's review_splits.pkl: rating (1-x) and review (4-x) families
      exp_splits: null                    # P5's exp_splits.pkl: the explanation family (3-x)
      user_id2name: null                  # P5's user_id2name.pkl: user_desc of sequential/direct prompts
      rating_split_seed: 1234             # MovieLens: the seed of `python -m data.prepare`'s rating split
    families: null                        # null: every family the data supports (the others are skipped and
                                          # reported); a list: exactly these, an error if the data lacks a field
    templates: {collection: amazon, held_out: null, evaluate: null}   # null: P5's held-out / evaluated sets
    render:
      items: id | title                   # P5's integer ids ("57") or item titles (RecSysLLM)
      index: p5 | sequential | random     # id rendering: P5's ids, RID's time-sensitive re-indexing, or seeded
                                          # random ids (both remove P5's consecutive-id "+1" leak, spec §4.4)
      users: id | name | features         # what fills user_desc: "user_<id>", P5's names, MovieLens features
      max_history: null                   # sequential prompts (training and evaluation) show only the newest N
                                          # history items (null: all, as P5)
    multipliers: {rating: [1], sequential: [5, 5, 10], explanation: [1], review: [1], direct: [10, 5]}
    negatives: 99                         # direct recommendation: 1 positive + this many sampled negatives
    negatives_seed: 2022                  # P5's seed of negative_samples.txt
    seed: 2022                            # training-pair sampling (windows, templates, yes/no, ratings)
    max_users: null                       # the first N users only (a quick build)
    max_seq_len: 2048                     # a pair whose prompt alone has >= this many tokens is skipped, counted

Splits (P5's, under the project's leakage rule): sequential and direct are leave-one-out (validation = the
second-last item, test = the last); rating on MovieLens is `python -m data.prepare`'s 80/10/10 split (the same
function, seed and source name, data/prepare/recipe.py); with P5's pickles, rating, explanation and review use
their train/val/test lists. An interaction held out by any family (its user, item and occurrence) is in no
training pair of any family: it leaves the training sequences and the training review/explanation records
(counted).

Outputs, in out_dir (meta.json written last):
    instructions/                         training pairs (data/formats/instructions.py); each JSONL record:
                                          task "p5", family, template, user, prompt, response, interactions
                                          ([item, occurrence] of the user's interactions it shows), entities
                                          ([start, end) character spans of the prompt's items, user
                                          description and feature word: blank infilling's entities),
                                          entity_slots (each entity's template slot, e.g. purchase_history)
    eval/<name>/p5/<template>_<split>.jsonl   evaluation records (schema: data/formats/evalfiles.py P5_KEYS);
                                          split validation | test; with the prompt's entities (and
                                          candidate_entities beside candidate_prompts)
    eval/<name>/p5/negatives.txt          the 99 fixed negatives per user, P5's format (`user n1 ... n99`)
    eval/<name>/catalog.jsonl             item_id, text (as prompts render it), title, title_missing
    eval/<name>/train_stats.json          the training split's counts and mean rating (data.prepare's schema)
    heldout.jsonl                         every held-out interaction: user, item, occurrence, held_out_as
    tokenizer.json, meta.json             counts per family and template, skipped families with reasons,
                                          the options used (rendering, indexing, seeds, held-out set), "+1" shares
"""
import collections
import hashlib
import itertools
import json
import pathlib
import pickle
import random
import re
import shutil
import sys
from dataclasses import dataclass, field
from typing import Iterator, Literal, NamedTuple, Optional

import numpy as np

import config as config_lib
from config import cli, invalid
from data.formats.instructions import InstructionWriter
from data.prepare import build_command
from data.formats.instructions import section_meta as instructions_meta
from data.formats.packed import FORMAT, FORMAT_VERSION
from data.formats.tokenizer import EOS, load as load_tokenizer, sha256_file, token_dtype
from data.prepare import p5_templates as T
from data.prepare.own_files import TokenizerFile
from data.prepare.recipe import Negatives, p5_rating_split, seeded_rng
from data.prepare.records import BadLines, DataError
from data.prepare.sources import movielens as movielens_source
from data.prepare.sources import p5 as p5_source

ENCODE_BATCH = 512
UNKNOWN_TITLE = "unknown title"  # P5's text for an item without a title (src/pretrain_data.py)
SPLITS = ("validation", "test")
P5_SPLIT_KEYS = {"train": "train", "validation": "val", "test": "test"}


# ---------------------------------------------------------------------------------------------------------------
# the config


@dataclass
class SourceSection:
    reader: Literal["p5", "movielens"]
    path: str
    name: Optional[str] = None  # default: the folder's name (MovieLens: the rating split's source name)
    sequences: str = "sequential_data.txt"
    items: str = "items.jsonl"
    datamaps: Optional[str] = None
    review_splits: Optional[str] = None
    exp_splits: Optional[str] = None
    user_id2name: Optional[str] = None
    rating_split_seed: int = 1234

    def __post_init__(self):
        self.name = self.name or pathlib.Path(self.path).name
        if (self.review_splits or self.exp_splits) and not self.datamaps:
            raise invalid("datamaps", None, "P5's review/explanation pickles name users and items by reviewerID and "
                                            "ASIN: give datamaps.json to map them to P5's ids")
        if self.reader == "movielens" and (self.review_splits or self.exp_splits or self.user_id2name):
            raise invalid("reader", self.reader, "P5's pickles go with reader p5")


@dataclass
class TemplatesSection:
    collection: Literal["amazon", "yelp"] = "amazon"
    held_out: Optional[list[str]] = None  # default P5's (p5_templates.HELD_OUT)
    evaluate: Optional[list[str]] = None  # default P5's evaluated templates that exist in the collection

    def __post_init__(self):
        for key in ("held_out", "evaluate"):
            for tid in getattr(self, key) or []:
                try:
                    T.get(tid, self.collection)
                except ValueError as e:
                    raise invalid(key, getattr(self, key), str(e))


@dataclass
class RenderSection:
    items: Literal["id", "title"] = "id"
    index: Literal["p5", "sequential", "random"] = "p5"
    users: Literal["id", "name", "features"] = "name"
    max_history: Optional[int] = None

    def __post_init__(self):
        if self.max_history is not None and self.max_history < 1:
            raise invalid("max_history", self.max_history, "must be >= 1 (or null: the whole history)")


def _p5_multipliers() -> dict:
    return {k: list(v) for k, v in T.P5_MULTIPLIERS.items()}


@dataclass
class P5TasksConfig:
    name: str
    tokenizer: TokenizerFile
    source: SourceSection
    out_dir: Optional[str] = None
    families: Optional[list[str]] = None
    templates: TemplatesSection = field(default_factory=TemplatesSection)
    render: RenderSection = field(default_factory=RenderSection)
    multipliers: dict = field(default_factory=_p5_multipliers)
    negatives: int = 99
    negatives_seed: int = 2022
    seed: int = 2022
    max_users: Optional[int] = None
    max_seq_len: int = 2048
    skip_bad: bool = False

    def __post_init__(self):
        if not self.name or "/" in self.name:
            raise invalid("name", self.name, "must be a non-empty folder name")
        self.out_dir = self.out_dir or f"out/data/{self.name}"
        for fam in self.families or []:
            if fam not in T.FAMILIES:
                raise invalid("families", self.families, f"{fam!r} is not a P5 family (one of {list(T.FAMILIES)})")
        for fam, counts in self.multipliers.items():
            if fam not in T.FAMILIES:
                raise invalid("multipliers", self.multipliers, f"{fam!r} is not a P5 family")
            groups = len(T.TRAIN_GROUPS[fam])
            if (not isinstance(counts, list) or len(counts) != groups
                    or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts)):
                raise invalid(f"multipliers.{fam}", counts, f"must be a list of {groups} non-negative integers (one "
                                                            f"per training group of P5)")
        for fam, counts in _p5_multipliers().items():
            self.multipliers.setdefault(fam, counts)
        if self.negatives < 1:
            raise invalid("negatives", self.negatives, "must be >= 1")
        if self.max_users is not None and self.max_users < 1:
            raise invalid("max_users", self.max_users, "must be >= 1 (or null: every user)")
        if self.max_seq_len < 2:
            raise invalid("max_seq_len", self.max_seq_len, "must be >= 2")
        if self.render.users == "features" and self.source.reader != "movielens":
            raise invalid("render.users", "features", "user features exist for MovieLens only (u.user)")


# ---------------------------------------------------------------------------------------------------------------
# reading P5's pickles: plain data only


class PlainDataUnpickler(pickle.Unpickler):
    """Unpickles dict, list, tuple, set, str, bytes, int, float, bool and None (built from opcodes alone) and
    refuses every class or function a pickle names, so that a pickle cannot run code."""

    def __init__(self, file, path):
        super().__init__(file)
        self.path = path

    def find_class(self, module, name):
        raise DataError(f"{self.path}: refused to unpickle {module}.{name}: only plain data (dict, list, tuple, str, "
                        f"int, float, bool, None) is read from P5's pickles; convert the file to plain types")


def load_plain_pickle(path) -> object:
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    with open(path, "rb") as f:
        try:
            return PlainDataUnpickler(f, path).load()
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001  (a truncated or corrupt pickle: one line naming the file)
            raise DataError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------------------------------------------------------
# the data: sequences, items, ratings, reviews


@dataclass
class Review:
    """One record of P5's review/explanation splits (or a MovieLens rating), in P5 ids."""
    user: str
    item: str
    rating: Optional[float]
    occurrence: int = 0
    name: Optional[str] = None  # reviewerName, else reviewerID (P5's user_desc for these families)
    text: Optional[str] = None  # reviewText
    summary: Optional[str] = None
    explanation: Optional[str] = None
    feature: Optional[str] = None


@dataclass
class Data:
    source: str
    users: list  # in reading order (P5: the file's; MovieLens: sorted ids)
    seqs: dict  # user -> item ids, oldest first (the whole sequence)
    titles: dict  # item id -> title or None
    user_names: dict = field(default_factory=dict)  # user -> user_desc from user_id2name.pkl or datamaps
    user_features: dict = field(default_factory=dict)  # user -> text (MovieLens)
    ratings: Optional[dict] = None  # split -> [Review]  (MovieLens ratings, or P5's review_splits)
    reviews: Optional[dict] = None  # split -> [Review]  (P5's review_splits, with text and summary)
    explanations: Optional[dict] = None  # split -> [Review]  (P5's exp_splits)
    notes: collections.Counter = field(default_factory=collections.Counter)


def occurrences(seq: list) -> list:
    """The occurrence of each position: how many earlier times the user had the same item."""
    seen, out = collections.Counter(), []
    for item in seq:
        out.append(seen[item])
        seen[item] += 1
    return out


def user_feature_text(age: int, gender: str, occupation: str) -> str:
    """MovieLens u.user -> "a 24-year-old male technician" (our wording; docs/p5.md)."""
    article = "an" if str(age).startswith("8") or age in (11, 18) else "a"
    sex = {"M": "male", "F": "female"}.get(gender, "person")
    if occupation in ("other", "none", ""):
        return f"{article} {age}-year-old {sex}"
    return f"{article} {age}-year-old {sex} {occupation}"


def read_movielens_users(path: pathlib.Path, bad: BadLines) -> dict:
    """u.user (`id|age|gender|occupation|zip`) -> {user: feature text}; {} when the file is absent."""
    f = path / "u.user"
    if not f.is_file():
        return {}
    out = {}
    for lineno, line in movielens_source.open_text_lines(f, bad, "latin-1"):
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) != 5 or not parts[1].isdigit():
            bad.bad(f, lineno, "bad_user_line", f"expected id|age|gender|occupation|zip, got {line[:80]!r}")
            continue
        out[parts[0]] = user_feature_text(int(parts[1]), parts[2], parts[3])
    return out


def _read_p5_pickle_splits(path, key: str, user2id: dict, item2id: dict, seqs: dict, need: tuple,
                           bad: BadLines) -> dict:
    """P5's review_splits.pkl / exp_splits.pkl -> {split: [Review]} in P5 ids; a record whose user or item is not in
    datamaps, or that lacks a needed field, is a bad record (an error naming it, or counted with skip_bad)."""
    data = load_plain_pickle(path)
    if not isinstance(data, dict) or not all(isinstance(data.get(s), list) for s in ("train", "val", "test")):
        raise DataError(f"{path}: expected P5's {key} layout, a dict with 'train', 'val' and 'test' lists")
    out = {}
    for split, p5_key in P5_SPLIT_KEYS.items():
        records = []
        for i, r in enumerate(data[p5_key]):
            where = f"{path}: {p5_key}[{i}]"
            if not isinstance(r, dict):
                bad.bad(where, None, "not_a_record", f"a {type(r).__name__}, not a dict")
                continue
            missing = [k for k in ("reviewerID", "asin", "overall", *need) if r.get(k) is None]
            if missing:
                bad.bad(where, None, "missing_field", f"no {missing[0]!r}")
                continue
            user, item = user2id.get(str(r["reviewerID"])), item2id.get(str(r["asin"]))
            if user is None or item is None:
                bad.bad(where, None, "not_in_datamaps", f"reviewerID {r['reviewerID']!r} / asin {r['asin']!r}")
                continue
            if user not in seqs:
                bad.bad(where, None, "user_not_in_sequences", f"user {user}")
                continue
            try:
                rating = float(r["overall"])
            except (TypeError, ValueError):
                bad.bad(where, None, "bad_rating", repr(r["overall"]))
                continue
            records.append(Review(user, item, rating, 0, str(r.get("reviewerName") or r["reviewerID"]),
                                  r.get("reviewText"), r.get("summary"), r.get("explanation"), r.get("feature")))
        out[split] = records
    return out


def read_data(cfg: P5TasksConfig, bad: BadLines) -> Data:
    s = cfg.source
    path = pathlib.Path(s.path)
    if not path.is_dir():
        raise FileNotFoundError(f"source.path: {path} is not a folder")
    if s.reader == "p5":
        catalog = p5_source.read_catalog(path, bad, items=s.items)
        seqs: dict = {}
        for x in p5_source.read(path, bad, sequences=s.sequences, items=s.items, catalog=catalog):
            seqs.setdefault(x.user, []).append(x.item.id)
        data = Data(s.name, list(seqs), seqs, {i: it.title for i, it in catalog.items()})
        user2id, item2id = {}, {}
        if s.datamaps:
            id2user, id2item = p5_source.read_datamaps(path / s.datamaps)
            user2id = {raw: uid for uid, raw in id2user.items()}
            item2id = {raw: iid for iid, raw in id2item.items()}
            data.user_names = {u: raw for u, raw in id2user.items()}  # P5 falls back to reviewerID
        if s.user_id2name:
            names = load_plain_pickle(path / s.user_id2name)
            if not isinstance(names, dict):
                raise DataError(f"{path / s.user_id2name}: expected a dict of P5 user id -> name")
            data.user_names.update({str(k): str(v) for k, v in names.items()})
        if s.review_splits:
            rs = _read_p5_pickle_splits(path / s.review_splits, "review_splits", user2id, item2id, seqs, (), bad)
            data.ratings = rs
            with_text = {k: [r for r in v if r.text and r.summary] for k, v in rs.items()}
            data.notes["review_records_without_text_or_summary"] = sum(len(rs[k]) - len(v)
                                                                       for k, v in with_text.items())
            data.reviews = with_text if any(with_text.values()) else None
        if s.exp_splits:
            data.explanations = _read_p5_pickle_splits(path / s.exp_splits, "exp_splits", user2id, item2id, seqs,
                                                       ("explanation", "feature"), bad)
        return data
    # MovieLens: the project's reader; users sorted and histories in time order as `python -m data.prepare` has them
    rows: dict = {}
    titles = {}
    for x in movielens_source.read(path, bad):
        rows.setdefault(x.user, []).append((x.time, x.seq, x.item.id, x.rating))
        titles.setdefault(x.item.id, x.item.title)
    users = sorted(rows)
    for u in users:
        rows[u].sort(key=lambda r: (r[0], r[1]))
    seqs = {u: [r[2] for r in rows[u]] for u in users}
    data = Data(s.name, users, seqs, titles, user_features=read_movielens_users(path, bad))
    # the rating split of `python -m data.prepare` (plan.benchmark_users): users sorted, each history in time order,
    # items ranked by their sorted id, the build's seed and source name
    sizes = np.array([len(seqs[u]) for u in users], dtype=np.int64)
    order = {item: r for r, item in enumerate(sorted({i for u in users for i in seqs[u]}))}
    ranks = np.array([order[i] for u in users for i in seqs[u]], dtype=np.int64)
    split = p5_rating_split(sizes, ranks, s.rating_split_seed, s.name)
    data.ratings = {k: [] for k in P5_SPLIT_KEYS}
    g = 0
    for u in users:
        for (_, _, item, rating), occ in zip(rows[u], occurrences(seqs[u])):
            data.ratings[("train", "validation", "test")[split[g]]].append(Review(u, item, rating, occ))
            g += 1
    if not any(r.rating is not None for rs in data.ratings.values() for r in rs):
        data.ratings = None
    return data


# ---------------------------------------------------------------------------------------------------------------
# which families the data supports


def supported_families(data: Data) -> dict:
    """family -> None when the data has what it needs, else the reason (naming the missing field)."""
    return {
        "rating": None if data.ratings else "no star ratings (MovieLens ratings, or P5's review_splits.pkl 'overall')",
        "sequential": None,
        "explanation": None if data.explanations else ("no explanations (field 'explanation'/'feature' of P5's "
                                                       "exp_splits.pkl: source.exp_splits)"),
        "review": None if data.reviews else ("no review text (fields 'reviewText'/'summary' of P5's "
                                             "review_splits.pkl: source.review_splits)"),
        "direct": None,
    }


# ---------------------------------------------------------------------------------------------------------------
# item and user rendering


def item_index(data: Data, users: list, mode: str, seed: int) -> dict:
    """item id -> the integer string prompts show: P5's own ids, RID's time-sensitive sequential indexing (every
    user's training items first, in user order, then the validation/test items; Hua et al. 2023), or a seeded
    random permutation of 1..N. Items in no sequence follow in id order."""
    all_items = sorted(data.titles, key=lambda i: (not i.isdigit(), int(i) if i.isdigit() else 0, i))
    if mode == "p5":
        return {i: i for i in all_items}
    if mode == "random":
        numbers = list(range(1, len(all_items) + 1))
        seeded_rng(seed, "item-index").shuffle(numbers)
        return {i: str(n) for i, n in zip(all_items, numbers)}
    order: dict = {}
    for part in (slice(None, -2), slice(-2, None)):
        for u in data.users:
            for item in data.seqs[u][part]:
                order.setdefault(item, len(order) + 1)
    for item in all_items:
        order.setdefault(item, len(order) + 1)
    return {i: str(n) for i, n in order.items()}


def plus_one_share(data: Data, users: list, index: dict) -> float:
    """Share of users whose test item's id is max(history ids) + 1 (spec §4.4: the consecutive-id leak)."""
    hits = n = 0
    for u in users:
        seq = data.seqs[u]
        if len(seq) < 2:
            continue
        n += 1
        hits += int(index[seq[-1]]) == max(int(index[i]) for i in seq[:-1]) + 1
    return hits / n if n else 0.0


class ItemList(NamedTuple):
    """Items shown in one slot, joined as P5 joins them (" , " or " -> "): each item is an entity."""
    joiner: str
    texts: list

    def __str__(self) -> str:
        return self.joiner.join(self.texts)


class Rendered(str):
    """A rendered prompt that knows its entities: [start, end) character spans of the values its slots show (the
    user description, items, feature words), what RecSysLLM's infilling marks (docs/recsysllm.md); written as the
    record's "entities", and the slot each came from as its "entity_slots" (e.g. "purchase_history": finetune.py's
    data.prompt_loss_slots puts a loss on those)."""
    entities: list
    entity_slots: list


# the slots whose values are entities; a list slot (ItemList) gives one entity per item
ENTITY_SLOTS = {"user_id", "user_desc", "item_id", "item_title", "purchase_history", "visit_history", "candidates",
                "feature"}


class Renderer:
    """How a template's slots are filled from our records (docs/p5.md "Rendering")."""

    def __init__(self, cfg: P5TasksConfig, data: Data, index: dict):
        self.items, self.users, self.data, self.index = cfg.render.items, cfg.render.users, data, index
        self.counts = collections.Counter()
        self.missing = collections.defaultdict(set)  # reason -> users whose user_desc fell back to user_<id>

    def item(self, item: str) -> str:
        """An item as lists and targets show it: P5's bare id ("57") or its title."""
        return self.index[item] if self.items == "id" else self.title(item)

    def title(self, item: str) -> str:
        title = self.data.titles.get(item)
        if not title:
            self.counts["items_shown_as_unknown_title"] += 1
        return title or UNKNOWN_TITLE

    def user_desc(self, user: str, review: Optional[Review] = None) -> str:
        if self.users == "features":
            if user in self.data.user_features:
                return self.data.user_features[user]
            self.missing["user_desc_without_features"].add(user)
        elif self.users == "name":
            if review is not None and review.name:  # P5: reviewerName, else reviewerID, of the record
                return review.name
            if user in self.data.user_names:
                return self.data.user_names[user]
            self.missing["user_desc_without_name"].add(user)
        return f"user_{user}"

    def source(self, t: T.Template) -> str:
        """The template's source; with titles, an `item_{}` slot shows the title without P5's "item_" prefix."""
        return t.source.replace("item_{}", "{}") if self.items == "title" else t.source

    def prompt(self, t: T.Template, **values) -> Rendered:
        fields = dict(values)
        if "item_id" in fields:
            fields["item_id"] = self.item(fields["item_id"])
        pieces = self.source(t).split("{}")  # P5's sources use bare "{}" slots only
        text, entities, slots = pieces[0], [], []
        for name, after in zip(t.source_fields, pieces[1:]):
            value = T._value(t, fields, name)
            if name in ENTITY_SLOTS:
                for k, part in enumerate(value.texts if isinstance(value, ItemList) else [str(value)]):
                    if k:
                        text += value.joiner
                    if part:
                        entities.append([len(text), len(text) + len(part)])
                        slots.append(name)
                    text += part
            else:
                text += str(value)
            text += after
        out = Rendered(text)
        out.entities, out.entity_slots = entities, slots
        return out


# ---------------------------------------------------------------------------------------------------------------
# splits and the held-out set


def held_out_interactions(data: Data, users: list) -> dict:
    """(user, item, occurrence) -> ["family:split", ...]: everything any evaluation holds out."""
    held: dict = collections.defaultdict(list)
    for u in users:
        seq, occ = data.seqs[u], occurrences(data.seqs[u])
        for split, pos in (("validation", len(seq) - 2), ("test", len(seq) - 1)):
            if pos >= 1:  # a user needs one earlier item to be evaluated
                held[(u, seq[pos], occ[pos])].append(f"sequential+direct:{split}")
    chosen = set(users)
    for family, records in (("rating", data.ratings), ("review", data.reviews), ("explanation", data.explanations)):
        for split in SPLITS:
            for r in (records or {}).get(split, []):
                if r.user in chosen:
                    held[(r.user, r.item, r.occurrence)].append(f"{family}:{split}")
    return held


# ---------------------------------------------------------------------------------------------------------------
# sampling


def gaussian_rating(rating: float, rng: random.Random) -> str:
    """P5's training target for a star rating: a draw from N(mean, sd) of the star's band, one decimal, in [1, 5]
    (bands 1.0-1.4, 1.5-2.4, 2.5-3.4, 3.5-4.4, 4.5-5.0; mean the band's middle, sd a quarter of its width)."""
    star = int(rating)
    lo, hi = {1: (1.0, 1.4), 2: (1.5, 2.4), 3: (2.5, 3.4), 4: (3.5, 4.4)}.get(star, (4.5, 5.0))
    value = round(rng.gauss((lo + hi) / 2, (hi - lo) / 4), 1)
    return str(min(5.0, max(1.0, value)))


# ---------------------------------------------------------------------------------------------------------------
# training pairs


def _pair(family, tid, user, prompt, response, shown) -> dict:
    """A training pair, with the user's interactions it shows ([item, occurrence]; what the audit checks)."""
    return {"task": "p5", "family": family, "template": tid, "user": user, "prompt": prompt, "response": response,
            "interactions": [list(x) for x in shown], "entities": prompt.entities,
            "entity_slots": prompt.entity_slots}


def training_pairs(cfg, data: Data, users: list, families: list, seen: list, r: Renderer, held: dict,
                   negatives: Negatives, counts: collections.Counter) -> Iterator[dict]:
    """The training pairs, made as they are consumed (the build tokenises them in batches)."""
    rng = random.Random(cfg.seed)
    coll = cfg.templates.collection
    train_seq = {}
    for u in users:
        seq, occ = data.seqs[u], occurrences(data.seqs[u])
        train_seq[u] = [(i, o) for i, o in zip(seq, occ) if (u, i, o) not in held]
        counts["train_sequence_items_held_out_by_another_family"] += sum(
            1 for p, (i, o) in enumerate(zip(seq, occ)) if p < len(seq) - 2 and (u, i, o) in held)

    def choose(family, group):
        ids = T.group_templates(family, group, seen, coll)
        return T.get(rng.choice(ids), coll) if ids else None

    def joiner():
        return " , " if rng.random() > 0.5 else " -> "

    if "sequential" in families:
        for g, times in enumerate(cfg.multipliers["sequential"]):
            if not T.group_templates("sequential", g, seen, coll):
                continue
            for u in users:
                tr = train_seq[u]
                m = len(tr)
                if m < 3:  # P5's window needs a target at position >= 2 of the training part
                    counts["sequential_user_training_part_shorter_than_3"] += times
                    continue
                for _ in range(times):
                    t = choose("sequential", g)
                    # P5's sub-window (src/pretrain_data.py, mode train): the target is one of the last four
                    # positions of the training part (never before position 2); the history runs from one of its
                    # first three positions up to the target
                    target_pos = rng.randint(max(2, m - 3), m - 1)
                    start = rng.randint(0, min(4, target_pos) - 2)
                    hist, target = tr[start:target_pos], tr[target_pos]
                    if cfg.render.max_history and len(hist) > cfg.render.max_history:
                        hist = hist[-cfg.render.max_history:]  # our option (P5 cuts the prompt's end at 512 tokens)
                        counts["sequential_train_histories_cut_to_max_history"] += 1
                    history = ItemList(joiner(), [r.item(i) for i, _ in hist])
                    values = {"user_id": u, "user_desc": r.user_desc(u), "purchase_history": history,
                              "visit_history": history}
                    shown = hist + [target]
                    if "candidates" in t.source_fields:
                        cands = negatives.sample(set(data.seqs[u]), cfg.negatives) + [target[0]]
                        rng.shuffle(cands)
                        values["candidates"] = ItemList(" , ", [r.item(c) for c in cands])
                        response = r.item(target[0])
                    elif t.target_fields == ("yes_no",):
                        if rng.random() > 0.5:
                            values["item_id"], response = target[0], "yes"
                        else:
                            values["item_id"], response = negatives.sample(set(data.seqs[u]), 1)[0], "no"
                            shown = hist
                    else:
                        response = r.item(target[0])
                    prompt = r.prompt(t, **values)  # 2-11/2-12 show the item bare ("{}"), as P5's lists do
                    yield _pair("sequential", t.id, u, prompt, response, shown)

    if "direct" in families:
        for g, times in enumerate(cfg.multipliers["direct"]):
            if not T.group_templates("direct", g, seen, coll):
                continue
            for u in users:
                tr = train_seq[u]
                if not tr:
                    counts["direct_user_without_training_item"] += times
                    continue
                for _ in range(times):
                    t = choose("direct", g)
                    target = rng.choice(tr)  # P5: a random item of the training part
                    values = {"user_id": u, "user_desc": r.user_desc(u)}
                    shown = [target]
                    if "candidates" in t.source_fields:
                        cands = negatives.sample(set(data.seqs[u]), cfg.negatives) + [target[0]]
                        rng.shuffle(cands)
                        values["candidates"] = ItemList(" , ", [r.item(c) for c in cands])
                        response = r.item(target[0])
                    else:
                        if rng.random() > 0.5:
                            item, response = target[0], "yes"
                        else:
                            item, response, shown = negatives.sample(set(data.seqs[u]), 1)[0], "no", []
                        values["item_id"], values["item_title"] = item, r.title(item)
                    yield _pair("direct", t.id, u, r.prompt(t, **values), response, shown)

    chosen = set(users)
    for family, records in (("rating", data.ratings), ("explanation", data.explanations),
                            ("review", data.reviews)):
        if family not in families:
            continue
        times = cfg.multipliers[family][0]
        for rec in records["train"]:
            if rec.user not in chosen:
                continue
            if (rec.user, rec.item, rec.occurrence) in held:
                counts[f"{family}_train_record_held_out_by_another_family"] += 1
                continue
            for _ in range(times):
                t = choose(family, 0)
                if t is None:
                    break
                prompt, response = _review_family_pair(t, rec, r, rng)
                yield _pair(family, t.id, rec.user, prompt, response, [(rec.item, rec.occurrence)])


def _review_values(rec: Review, r: Renderer) -> dict:
    return {"user_id": rec.user, "user_desc": r.user_desc(rec.user, rec), "item_id": rec.item,
            "item_title": r.title(rec.item), "star_rating": int(rec.rating), "review_headline": rec.summary,
            "review_body": rec.text, "feature": rec.feature, "explanation": rec.explanation}


def _review_family_pair(t: T.Template, rec: Review, r: Renderer, rng: random.Random) -> tuple[str, str]:
    """One training pair of the rating, explanation or review family, filled as P5's __getitem__ fills it."""
    values = _review_values(rec, r)
    target = t.target_fields
    if target == ("yes_no",):  # 1-3 / 1-8: the true star with probability 0.5, else another star and "no"
        if rng.random() > 0.5:
            response = "yes"
        else:
            values["star_rating"] = rng.choice([s for s in range(1, 6) if s != int(rec.rating)])
            response = "no"
    elif target == ("like_dislike",):
        response = "like" if rec.rating >= 4 else "dislike"
    elif target == ("star_rating",):
        # rating prompts train on P5's Gaussian-in-band floats; the review family's 4-2 trains on the integer
        response = str(int(rec.rating)) if t.family == "review" else gaussian_rating(rec.rating, rng)
    elif target == ("star_rating", "explanation"):
        response = t.fill_target(star_rating=gaussian_rating(rec.rating, rng), explanation=rec.explanation)
    elif target == ("explanation",):
        response = rec.explanation
    else:  # review_headline
        response = rec.summary
    return r.prompt(t, **values), response


def train_stats(data: Data, users: list, held: dict) -> dict:
    """The training split's statistics in `python -m data.prepare`'s train_stats.json schema (data/formats/
    evalfiles.py read_train_stats), for the simple baselines and the rating fallback: per item [interactions,
    rated interactions, sum of ratings] over the users' training sequences and training rating records (nothing
    held out), and the mean training rating."""
    items = collections.defaultdict(lambda: [0, 0, 0.0])
    for u in users:
        for item, occ in zip(data.seqs[u], occurrences(data.seqs[u])):
            if (u, item, occ) not in held:
                items[item][0] += 1
    chosen = set(users)
    for rec in (data.ratings or {}).get("train", []):
        if rec.user in chosen and rec.rating is not None and (rec.user, rec.item, rec.occurrence) not in held:
            items[rec.item][1] += 1
            items[rec.item][2] += rec.rating
    rated = sum(c[1] for c in items.values())
    return {"interactions": sum(c[0] for c in items.values()), "rated_interactions": rated,
            "mean_rating": sum(c[2] for c in items.values()) / rated if rated else None,
            "rating_scale": [1.0, 5.0] if rated else None, "items": {i: items[i] for i in sorted(items)}}


# ---------------------------------------------------------------------------------------------------------------
# evaluation files


def _eval_records(cfg, data: Data, users: list, families: list, evaluated: list, unseen: set, r: Renderer,
                  fixed_negatives: dict):
    """(template id, split, record) for every evaluation record, file by file (the schema of
    data/formats/evalfiles.py P5_KEYS); (template id, split, None) opens each file, so that an empty one exists."""
    coll = cfg.templates.collection
    mh = cfg.render.max_history
    for tid in evaluated:
        t = T.get(tid, coll)
        if t.family not in families:
            continue
        for split in SPLITS:
            rng = seeded_rng(cfg.seed, "eval", tid, split)
            yield tid, split, None
            base = lambda u, fam: {"user": u, "family": fam, "template": tid, "seen": tid not in unseen,
                                   "split": split}
            if t.family in ("sequential", "direct"):
                for u in users:
                    seq = data.seqs[u]
                    end = len(seq) - 2 if split == "validation" else len(seq) - 1
                    if end < 1:
                        continue
                    target = seq[end]
                    rec = base(u, t.family)
                    if t.family == "sequential":
                        hist = seq[:end][-mh:] if mh else seq[:end]
                        history = ItemList(" , " if rng.random() > 0.5 else " -> ", [r.item(i) for i in hist])
                        rec.update(prompt=r.prompt(t, user_id=u, user_desc=r.user_desc(u), purchase_history=history,
                                                   visit_history=history),
                                   target_text=r.item(target), target_item_id=target, history_item_ids=hist)
                    elif "candidates" in t.source_fields:
                        cands = fixed_negatives[u] + [target]
                        seeded_rng(cfg.negatives_seed, "candidates", u, split).shuffle(cands)
                        texts = [r.item(c) for c in cands]
                        rec.update(prompt=r.prompt(t, user_id=u, user_desc=r.user_desc(u),
                                                   candidates=ItemList(" , ", texts)),
                                   target_text=r.item(target), target_item_id=target, candidates=cands,
                                   candidate_texts=texts)
                    else:  # yes/no: P5's test protocol, one prompt per candidate, the positive first
                        cands = [target] + fixed_negatives[u]
                        prompts = [r.prompt(t, user_id=u, user_desc=r.user_desc(u), item_id=c, item_title=r.title(c))
                                   for c in cands]
                        rec.update(prompt=prompts[0], target_text="yes", target_item_id=target, candidates=cands,
                                   candidate_prompts=prompts, yes="yes", no="no")
                    yield tid, split, rec
            else:
                records = {"rating": data.ratings, "explanation": data.explanations, "review": data.reviews}[t.family]
                chosen = set(users)
                for rec_in in (records or {}).get(split, []):
                    if rec_in.user not in chosen:
                        continue
                    values = _review_values(rec_in, r)
                    rec = base(rec_in.user, t.family)
                    if t.target_fields == ("star_rating",):
                        rec.update(target_text=str(int(rec_in.rating)), target_rating=float(rec_in.rating))
                    elif t.target_fields == ("explanation",):
                        rec.update(target_text=rec_in.explanation)
                    else:
                        rec.update(target_text=rec_in.summary)
                    rec.update(prompt=r.prompt(t, **values), item_id=rec_in.item)
                    yield tid, split, rec


# ---------------------------------------------------------------------------------------------------------------
# the build


def _families(cfg: P5TasksConfig, data: Data, log) -> tuple[list, dict]:
    support = supported_families(data)
    if cfg.families is not None:
        for fam in cfg.families:
            if support[fam]:
                raise DataError(f"families: {fam!r} was asked for, but {cfg.source.path} has {support[fam]}")
        return list(cfg.families), {}
    skipped = {fam: why for fam, why in support.items() if why}
    for fam, why in skipped.items():
        log(f"skipping family {fam}: {why}")
    return [f for f in T.FAMILIES if f not in skipped], skipped


def build(cfg: P5TasksConfig, log=print) -> dict:
    """Write the build's outputs and meta.json (last) into cfg.out_dir -> meta."""
    tok = load_tokenizer(cfg.tokenizer.path)
    eos_id = tok.token_to_id(EOS)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(vocab)
    bad = BadLines(cfg.skip_bad)
    data = read_data(cfg, bad)
    families, skipped = _families(cfg, data, log)
    coll = cfg.templates.collection
    seen, unseen = T.split(coll, cfg.templates.held_out)
    evaluate = cfg.templates.evaluate
    if evaluate is None:
        evaluate = [t for t in (*T.EVALUATED_SEEN, *T.EVALUATED_UNSEEN) if t in T.templates(coll)]
    users = data.users[: cfg.max_users] if cfg.max_users else data.users
    if cfg.render.users == "features" and not data.user_features:
        raise DataError(f"render.users: features asked for, but {cfg.source.path} has no u.user")

    index = item_index(data, users, cfg.render.index, cfg.seed)
    r = Renderer(cfg, data, index)
    held = held_out_interactions(data, users)
    counts: collections.Counter = collections.Counter()
    counts.update({"users_with_fewer_than_3_items": sum(1 for u in users if len(data.seqs[u]) < 3)})

    # the fixed negatives: one list per user, P5's rule and seed, in user order (a prefix of users gets the same
    # lists as the whole build)
    pool = sorted({i for u in data.users for i in data.seqs[u]}, key=lambda i: (len(i), i))
    fixed_rng = Negatives(pool, np.random.default_rng(cfg.negatives_seed))
    fixed = {u: fixed_rng.sample(set(data.seqs[u]), cfg.negatives) for u in users} \
        if "direct" in families else {}
    train_negatives = Negatives(pool, np.random.default_rng([cfg.seed, 1]))
    pairs = training_pairs(cfg, data, users, families, seen, r, held, train_negatives, counts)
    evals = _eval_records(cfg, data, users, families, evaluate, set(unseen), r, fixed)

    out_dir = pathlib.Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)  # until the new one is written, the build is not complete
    for old in (out_dir / "instructions", out_dir / "eval" / cfg.name, out_dir / "heldout.jsonl"):
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()

    # training pairs, tokenised
    writer = InstructionWriter(out_dir / "instructions", dtype, eos_id)
    per_template = collections.Counter()
    slot_entities = collections.Counter()  # entities per template slot (finetune.py's data.prompt_loss_slots checks)
    dropped = collections.Counter()
    longer = 0
    start = 0
    while batch := list(itertools.islice(pairs, ENCODE_BATCH)):
        p_ids = tok.encode_batch([x["prompt"] for x in batch], add_special_tokens=False)
        r_ids = tok.encode_batch([x["response"] for x in batch], add_special_tokens=False)
        for k, (x, p, q) in enumerate(zip(batch, p_ids, r_ids)):
            if len(p.ids) >= cfg.max_seq_len:
                dropped[f"prompt_too_long:{x['family']}"] += 1
                continue
            longer += len(p.ids) + len(q.ids) + 1 > cfg.max_seq_len
            x["id"] = f"{x['template']}-{start + k}"
            writer.add(x, p.ids, q.ids)
            per_template[(x["family"], x["template"])] += 1
            slot_entities.update(x["entity_slots"])
        start += len(batch)
    n_pairs = writer.close()
    if n_pairs == 0:
        raise DataError(f"{cfg.source.path}: no training pair left (families {families}; {dict(dropped)})")

    # evaluation files, catalog, negatives, held-out manifest
    eval_dir = out_dir / "eval" / cfg.name
    p5_dir = eval_dir / "p5"
    p5_dir.mkdir(parents=True, exist_ok=True)
    files, f = {}, None
    for tid, split, rec in evals:
        fname = f"{tid}_{split}.jsonl"
        if rec is None:
            if f is not None:
                f.close()
            f = open(p5_dir / fname, "w", encoding="utf-8")
            files[fname] = 0
            continue
        rec["entities"] = rec["prompt"].entities
        if "candidate_prompts" in rec:
            rec["candidate_entities"] = [p.entities for p in rec["candidate_prompts"]]
        f.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")
        files[fname] += 1
    if f is not None:
        f.close()
    if fixed:
        with open(p5_dir / "negatives.txt", "w", encoding="utf-8") as f:
            for u in users:
                f.write(" ".join([u, *fixed[u]]) + "\n")
    with open(eval_dir / "catalog.jsonl", "w", encoding="utf-8") as f:
        for item in sorted(data.titles, key=lambda i: (not i.isdigit(), int(i) if i.isdigit() else 0, i)):
            title = data.titles[item]
            f.write(json.dumps({"item_id": item, "text": r.item(item), "title": title, "title_missing": not title},
                               ensure_ascii=False, sort_keys=True) + "\n")
    (eval_dir / "train_stats.json").write_text(json.dumps(train_stats(data, users, held), sort_keys=True) + "\n")
    with open(out_dir / "heldout.jsonl", "w", encoding="utf-8") as f:
        for (u, item, occ), labels in held.items():
            f.write(json.dumps({"user": u, "item": item, "occurrence": occ, "held_out_as": labels}) + "\n")
    tok_copy = out_dir / "tokenizer.json"
    if not (tok_copy.exists() and tok_copy.samefile(cfg.tokenizer.path)):
        shutil.copyfile(cfg.tokenizer.path, tok_copy)

    family_counts = {}
    for fam in T.FAMILIES:
        if fam not in families:
            continue
        family_counts[fam] = {
            "train_pairs": sum(n for (f, _), n in per_template.items() if f == fam),
            "train_templates": {tid: per_template[(fam, tid)] for tid in T.templates(coll)
                                if per_template[(fam, tid)]},
            "eval": {fn: n for fn, n in files.items() if T.get(fn.split("_")[0], coll).family == fam}}
    options = {"collection": coll, "items": cfg.render.items, "index": cfg.render.index, "users": cfg.render.users,
               "max_history": cfg.render.max_history, "seen": seen, "held_out": unseen, "evaluated": evaluate,
               "multipliers": cfg.multipliers, "negatives": cfg.negatives, "negatives_seed": cfg.negatives_seed,
               "seed": cfg.seed, "rating_split": ("p5_review_splits" if cfg.source.review_splits else
                                                  "data.prepare 80/10/10" if data.ratings else None),
               "rating_split_seed": cfg.source.rating_split_seed if cfg.source.reader == "movielens" else None,
               "users_built": len(users), "users_in_data": len(data.users)}
    plus_one = {"p5_ids": plus_one_share(data, users, item_index(data, users, "p5", cfg.seed)) if
                all(i.isdigit() for i in data.titles) else None,
                cfg.render.index: plus_one_share(data, users, index)}
    notes = counts + r.counts + data.notes + collections.Counter({k: len(v) for k, v in r.missing.items()})
    tokenizer = {"path": str(cfg.tokenizer.path), "sha256": sha256_file(cfg.tokenizer.path), "vocab_size": vocab,
                 "eos": EOS, "eos_id": eos_id}
    config = config_lib.to_dict(cfg)
    fingerprint = hashlib.sha256(json.dumps({"config": config, "tokenizer": tokenizer["sha256"],
                                             "format_version": FORMAT_VERSION}, sort_keys=True).encode()).hexdigest()
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "fingerprint": fingerprint, "builder": "p5_tasks",
            "tokenizer": tokenizer, "instructions": instructions_meta("instructions", n_pairs, dtype, eos_id),
            "eval": {cfg.name: {"dir": f"eval/{cfg.name}", "p5_dir": f"eval/{cfg.name}/p5", "files": files,
                                "catalog": f"eval/{cfg.name}/catalog.jsonl",
                                "negatives": f"eval/{cfg.name}/p5/negatives.txt" if fixed else None}},
            "heldout": "heldout.jsonl", "families": family_counts, "skipped_families": skipped,
            "options": options, "plus_one_share": plus_one,
            "counts": {"train_pairs": n_pairs, "heldout_interactions": len(held),
                       "entity_slots": dict(sorted(slot_entities.items())),
                       "dropped_pairs": dict(sorted(dropped.items())), "pairs_longer_than_max_seq_len": longer,
                       "bad_lines": dict(bad.counts), "bad_examples": bad.examples, "ignored": dict(bad.ignored),
                       "notes": dict(sorted(notes.items()))},
            "config": config}
    tmp = out_dir / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    tmp.replace(out_dir / "meta.json")
    for fam, c in family_counts.items():
        log(f"{fam:<12} {c['train_pairs']:>8} training pairs {c['train_templates']}; eval "
            + ", ".join(f"{k} {v}" for k, v in c["eval"].items()))
    for reason, n in sorted(dropped.items()):
        log(f"skipped {n} pairs: {reason}")
    for reason, n in sorted(meta["counts"]["notes"].items()):
        log(f"note: {reason} {n}")
    log(f"'+1' share of test items: {plus_one}")
    log(f"wrote {out_dir}: instructions ({n_pairs} pairs), eval/{cfg.name}/p5 ({len(files)} files)")
    return meta


# ---------------------------------------------------------------------------------------------------------------
# the audit of a p5_tasks build (python -m data.prepare.audit calls it)

SHOWN = 20
_ITEM_TOKEN = re.compile(r"(?:^|(?<=\s))(?:item_)?(\d+)(?=\s|$)")


def audit_build(root, meta: dict) -> dict:
    """No held-out interaction in any training pair: (1) by the interactions each pair declares; (2) independently,
    by the text: with id rendering, no sequential/direct pair shows one of its user's held-out items (an item token
    of its prompt or response); with titles, no pair shows a held-out item's title when that title is the item's
    own. (3) every evaluation record's target is a held-out interaction of its user."""
    root = pathlib.Path(root)
    held = collections.defaultdict(set)  # user -> {(item, occurrence)}
    with open(root / meta["heldout"], encoding="utf-8") as f:
        for line in f:
            h = json.loads(line)
            held[h["user"]].add((h["item"], h["occurrence"]))
    name, e = next(iter(meta["eval"].items()))
    catalog = {}
    with open(root / e["catalog"], encoding="utf-8") as f:
        for line in f:
            c = json.loads(line)
            catalog[c["item_id"]] = c["text"]
    by_text = collections.Counter(catalog.values())
    problems, declared, by_text_leaks, pairs = [], [], [], 0
    items_as = meta["options"]["items"]
    for part in meta["instructions"]["parts"]:
        with open(root / part["jsonl"], encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                x = json.loads(line)
                pairs += 1
                mine = held.get(x["user"], set())
                if not mine:
                    continue
                hits = [tuple(i) for i in x["interactions"] if tuple(i) in mine]
                if hits:
                    declared.append(f"{part['jsonl']}:{lineno} ({x['template']}) user {x['user']} {hits[0]}")
                held_texts = {catalog[i]: i for i, _ in mine if i in catalog and by_text[catalog[i]] == 1}
                tpl = T.get(x["template"], meta["options"]["collection"])
                if x["family"] not in ("sequential", "direct"):
                    found = []
                elif items_as == "id" and "item_title" not in tpl.source_fields:  # titles may hold numbers
                    shown = set(_ITEM_TOKEN.findall(x["prompt"] + " " + x["response"]))
                    found = [t for t in shown if t in held_texts]
                elif items_as == "title":  # the items of lists and targets
                    segments = set(re.split(r" \n | , | -> ", x["prompt"])) | {x["response"]}
                    found = [t for t in segments if t in held_texts]
                else:
                    found = []
                if found:
                    by_text_leaks.append(f"{part['jsonl']}:{lineno} ({x['template']}) user {x['user']} shows held-out "
                                         f"item {held_texts[found[0]]} as {found[0]!r}")
    if declared:
        problems.append(f"{len(declared)} training pairs contain a held-out interaction: "
                        + "; ".join(declared[:SHOWN]))
    if by_text_leaks:
        problems.append(f"{len(by_text_leaks)} training pairs show a held-out item of their user: "
                        + "; ".join(by_text_leaks[:SHOWN]))
    orphans, evaluated = [], 0
    for fname in e["files"]:
        with open(root / e["p5_dir"] / fname, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                rec = json.loads(line)
                evaluated += 1
                item = rec.get("target_item_id", rec.get("item_id"))
                if not any(i == item for i, _ in held.get(rec["user"], ())):
                    orphans.append(f"{fname}:{lineno} user {rec['user']} item {item}")
    if orphans:
        problems.append(f"{len(orphans)} evaluation records whose target is not a held-out interaction: "
                        + "; ".join(orphans[:SHOWN]))
    return {"builder": "p5_tasks", "heldout_interactions": sum(len(v) for v in held.values()),
            "training_pairs": pairs, "evaluation_examples": evaluated, "leaked_pairs": len(declared),
            "leaked_pairs_by_text": len(by_text_leaks), "problems": problems, "ok": not problems}


def main(argv=None) -> int:
    return build_command(P5TasksConfig, build, "p5_tasks", __doc__, argv)


if __name__ == "__main__":
    sys.exit(cli.run(main))
