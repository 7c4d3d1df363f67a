"""The tokenizer named in the config: a `tokenizers` JSON file (the GPT-NeoX-20B tokenizer for
paper-scale runs), or a small byte-level BPE the pipeline trains on the corpus for CPU demos.

    tokenizer: {path: ../shared/data/tokenizer/gpt-neox-20b.json}
    tokenizer: {train: {vocab_size: 2048, max_documents: 20000}}   # saved as <out_dir>/tokenizer.json
"""
import hashlib
import json
import os
import pathlib
from typing import Iterable

# encode_batch runs on all cores (Rayon); say so explicitly, the library may have disabled it after a fork.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

EOS = "<|endoftext|>"


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load(path) -> Tokenizer:
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} not found (set tokenizer.path in the config)")
    tok = Tokenizer.from_file(str(path))
    if tok.token_to_id(EOS) is None:
        raise ValueError(f"{path}: tokenizer has no {EOS} token, which the packing uses as EOS")
    return tok


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


def line_local(tok: Tokenizer) -> bool:
    """True when the ids of a text made of lines are the ids of its parts, i.e. when the ids of
    head + lines[a:b] + tail can be cut out of the whole text's ids (data/token_lines.py).

    That holds for a byte-level BPE without dropout whose pre-tokenizer is the GPT-2 regex (GPT-NeoX,
    and the BPE this module trains), with no normaliser or NFC, and no added token containing a
    newline: the regex never joins a newline with the non-space characters around it, and BPE merges
    stay inside a pre-token. The per-text conditions (a newline is a token of its own between two
    non-space characters) are checked by data.token_lines.LineSpans.of; with anything else the
    pipeline encodes every chunk instead.
    """
    # the components' own JSON (serialising the whole tokenizer would copy its vocabulary and merges)
    model, pre, norm = tok.model, _spec(tok.pre_tokenizer), _spec(tok.normalizer)
    if type(model).__name__ != "BPE" or getattr(model, "dropout", None) not in (None, 0, 0.0):
        return False
    if pre.get("type") != "ByteLevel" or not pre.get("use_regex", True):
        return False
    if norm and norm.get("type") != "NFC":
        return False
    return not any("\n" in t.content for t in tok.get_added_tokens_decoder().values())


def _spec(component) -> dict:
    return json.loads(component.__getstate__()) if component is not None else {}


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 65535 else "uint32"
