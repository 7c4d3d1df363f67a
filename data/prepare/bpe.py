"""The tokenizer a build uses: the one `tokenizer.path` names (GPT-NeoX-20B for paper-scale builds), or a small
byte-level BPE trained on the corpus for CPU demos, saved as <out_dir>/tokenizer.json:

    tokenizer: {path: ../shared/data/tokenizer/gpt-neox-20b.json}
    tokenizer: {train: {vocab_size: 4096, max_documents: 20000}}

The BPE learns from the first `max_documents` pre-training documents in build order (sources in config
order, users in seeded order, whole histories), and is trained again only when that corpus's config changed
(tokenizer.spec.json records it).
"""
import dataclasses
import json
import pathlib
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from data.formats.tokenizer import EOS
from data.prepare import engine, histories, normalise, plan, templates, workdir
from data.prepare.config import BuildConfig


def train_bpe(texts: Iterable[str], vocab_size: int, out_path) -> Tokenizer:
    """A byte-level BPE (GPT-2/NeoX style pre-tokenisation) with EOS = id 0, saved to out_path."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    pathlib.Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_path))
    return tok


def first_documents(cfg: BuildConfig, n: int) -> list[str]:
    """The first n pre-training documents of the build, whole histories (before chunking)."""
    texts: list[str] = []
    con = engine.connect(cfg.work_dir, cfg.memory_limit)
    try:
        for s in cfg.sources:
            train = plan.plan_dir(cfg, s.name) / "train"
            if len(texts) >= n or not train.is_dir():
                continue
            d = templates.get_domain(s.domain)
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
    workdir.log(f"training a {train['vocab_size']}-id BPE on the first {train['max_documents']} documents")
    tmp = out.with_suffix(".tmp.json")
    train_bpe(first_documents(cfg, train["max_documents"]), train["vocab_size"], tmp)
    tmp.replace(out)
    out.with_suffix(".spec.json").write_text(spec)
    return str(out)
