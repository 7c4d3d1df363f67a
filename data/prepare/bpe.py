"""The tokenizer a build uses: the one `tokenizer.path` names (GPT-NeoX-20B for paper-scale builds), or a small
byte-level BPE trained on the corpus for CPU demos, saved as <out_dir>/tokenizer.json:

    tokenizer: {path: ../shared/data/tokenizer/gpt-neox-20b.json}
    tokenizer: {train: {vocab_size: 4096, max_documents: 20000}}

The BPE learns from the first `max_documents` pre-training documents in build order (sources in config
order, users in seeded order, whole histories), and is trained again only when that corpus's config changed
(tokenizer.spec.json records it).

Item tokens (a source's `item_tokens: true`, data/prepare/templates.py): every item of the source's catalog gets a
token of its own, `<{source}#{id}>`, and every rating string the source can show ("4.0/5.0") one too. They are
added after the BPE's ids (the BPE learns `vocab_size` minus their number, from the documents with them taken out),
as plain added tokens: encoding matches them anywhere in a text, decoding writes them back.
"""
import dataclasses
import json
import math
import pathlib
import re
from typing import Iterable, Sequence

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from config import invalid
from data.formats.evalfiles import RATING_LOW
from data.formats.tokenizer import EOS
from data.prepare import engine, histories, normalise, plan, templates, workdir
from data.prepare.config import BuildConfig
from data.prepare.records import DataError


def train_bpe(texts: Iterable[str], vocab_size: int, out_path, added: Sequence[str] = ()) -> Tokenizer:
    """A byte-level BPE (GPT-2/NeoX style pre-tokenisation) with EOS = id 0 and `vocab_size` ids, the last
    len(added) of them the `added` tokens (taken out of the training texts), saved to out_path."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(added), special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    if added:  # longest first, so that no token is matched inside a longer one
        pattern = re.compile("|".join(re.escape(t) for t in sorted(added, key=len, reverse=True)))
        # each token's place kept by one letter: an emptied line would teach the BPE merges of newline runs, which
        # encoding then makes of the newlines before a token (a text's ids would no longer be its lines' ids)
        texts = (pattern.sub("X", t) for t in texts)
    tok.train_from_iterator(texts, trainer=trainer)
    if added:
        n_bpe = tok.get_vocab_size(with_added_tokens=True)
        tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in added])
        if tok.get_vocab_size(with_added_tokens=True) != n_bpe + len(added):
            raise ValueError(f"{len(added)} item/rating tokens added to a {n_bpe}-id BPE gave "
                             f"{tok.get_vocab_size(with_added_tokens=True)} ids: some token is not new")
    pathlib.Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_path))
    return tok


def added_tokens(cfg: BuildConfig) -> list[str]:
    """The item and rating tokens of the build's item-token sources, in config order: each source's catalog items
    (catalog order), then the rating strings its templates can write (every integer of the scale, and every other
    rating its interactions have)."""
    tokens: list[str] = []
    con = engine.connect(cfg.work_dir, cfg.memory_limit)
    try:
        for s in cfg.sources:
            if not s.item_tokens:
                continue
            folder, d = normalise.source_dir(cfg, s.name), templates.source_domain(s)
            ids = normalise.item_ids(con, cfg, s.name)
            bad = [i for i in ids if not i or ">" in i or any(c.isspace() for c in i)]
            if bad:
                raise DataError(f"source {s.name}: item id {bad[0]!r} cannot name an item token (item_tokens needs "
                                f"ids without '>' or whitespace)")
            tokens += [templates.item_token(s.name, i) for i in ids]
            if d.scale is not None:
                ratings = {float(v) for v in range(math.ceil(RATING_LOW), math.floor(d.scale) + 1)}
                for batch in engine.rows(con, f"SELECT DISTINCT rating FROM "
                                              f"{engine.parquet(folder / 'interactions.parquet')} WHERE rating IS NOT NULL"):
                    ratings.update(batch["rating"])
                tokens += [templates.format_rating(r, d.scale) for r in sorted(ratings)]
    finally:
        con.close()
    return list(dict.fromkeys(tokens))  # two sources' rating strings are one token


def first_documents(cfg: BuildConfig, n: int) -> list[str]:
    """The first n pre-training documents of the build, whole histories (before chunking)."""
    texts: list[str] = []
    con = engine.connect(cfg.work_dir, cfg.memory_limit)
    try:
        for s in cfg.sources:
            train = plan.plan_dir(cfg, s.name) / "train"
            if len(texts) >= n or not train.is_dir():
                continue
            d = templates.source_domain(s)
            rows = f"""SELECT * FROM {engine.parquet(train)} WHERE pretrain AND position IN
                       (SELECT DISTINCT position FROM {engine.parquet(train)} WHERE pretrain
                        ORDER BY position LIMIT {n - len(texts)})"""
            items = histories.items_of(con, normalise.source_dir(cfg, s.name) / "items.parquet", rows)
            for _, history, _ in histories.grouped(con, rows + " ORDER BY position, ord", "position", items):
                texts.append(templates.pretrain_document(d, history))
    finally:
        con.close()
    return texts


def _spec(cfg: BuildConfig) -> tuple[pathlib.Path, dict, str]:
    """(where the trained tokenizer goes, its training settings, the spec of the corpus it learns from)."""
    train = dataclasses.asdict(cfg.tokenizer.train)
    spec = json.dumps({"train": train, "seed": cfg.seed, "sources": [dataclasses.asdict(s) for s in cfg.sources],
                       "min_interactions": cfg.min_interactions,
                       "finetune_fraction": cfg.finetune_fraction}, sort_keys=True)
    return pathlib.Path(cfg.out_dir) / "tokenizer.json", train, spec


def is_trained(cfg: BuildConfig) -> bool:
    """The trained tokenizer is there, learnt from this config's corpus."""
    out, _, spec = _spec(cfg)
    spec_path = out.with_suffix(".spec.json")
    return out.is_file() and spec_path.is_file() and spec_path.read_text() == spec


def tokenizer_path(cfg: BuildConfig) -> str:
    """The path of the build's tokenizer; trains the BPE first when the config asks for one (after the plan)."""
    if cfg.tokenizer.path:
        return cfg.tokenizer.path
    out, train, spec = _spec(cfg)
    if is_trained(cfg):
        return str(out)  # the same corpus spec: the same tokenizer
    added = added_tokens(cfg)
    if train["vocab_size"] - len(added) < 257:
        raise invalid("tokenizer.train.vocab_size", train["vocab_size"], f"must leave the BPE at least 257 ids (the "
                      f"byte alphabet and EOS) beside the {len(added):,} item and rating tokens")
    workdir.log(f"training a {train['vocab_size'] - len(added)}-id BPE on the first {train['max_documents']} documents"
                + (f", then adding {len(added):,} item and rating tokens" if added else ""))
    tmp = out.with_suffix(".tmp.json")
    train_bpe(first_documents(cfg, train["max_documents"]), train["vocab_size"], tmp, added)
    tmp.replace(out)
    out.with_suffix(".spec.json").write_text(spec)
    return str(out)
