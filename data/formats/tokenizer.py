"""The tokenizer a data build names in its meta.json: a `tokenizers` JSON file (the GPT-NeoX-20B tokenizer
for paper-scale runs, or the small byte-level BPE a build trains for CPU demos, data/prepare/bpe.py), with the
EOS token that separates packed documents and ends every instruction pair.
"""
import hashlib
import os
import pathlib

# encode_batch runs on all cores (Rayon); say so explicitly, the library may have disabled it after a fork.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

from tokenizers import Tokenizer  # noqa: E402

EOS = "<|endoftext|>"

# Blank infilling's special tokens (GLM's surface strings; RecSysLLM's [MASK], [sMASK], [gMASK], [START], [END]).
# They are added to a tokenizer after its last id: for GPT-NeoX-20B (50,277 ids) that is 50277..50281, inside the
# rows MPT-7B's 50,432-row embedding reserves (no resize); a small trained BPE gets them after its own vocabulary.
INFILL_TOKENS = {"mask": "[MASK]", "smask": "[sMASK]", "gmask": "[gMASK]", "start": "<|startofpiece|>",
                 "end": "<|endofpiece|>"}


def sha256_file(path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def load(path) -> Tokenizer:
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} not found (set tokenizer.path in the config)")
    tok = Tokenizer.from_file(str(path))
    if tok.token_to_id(EOS) is None:
        raise ValueError(f"{path}: tokenizer has no {EOS} token, which the packing uses as EOS")
    return tok


def load_build_tokenizer(data_path) -> Tokenizer:
    """The tokenizer of the data build at `data_path`: its own tokenizer.json (a trained BPE, or the copy a P5 build
    keeps), else the path its meta.json names."""
    from data.formats.packed import read_meta

    meta_path, meta = read_meta(data_path)
    path = meta_path.parent / "tokenizer.json"
    if not path.is_file():
        path = pathlib.Path((meta.get("tokenizer") or {}).get("path") or "")
    return load(path)


def add_infill_tokens(tok: Tokenizer, model_vocab_size: int) -> dict:
    """Add the infilling tokens to `tok` (in place; those it has already keep their ids) -> {name: id}. Each id must
    be a row of the model's embedding (model_vocab_size), or the error names the token and the sizes."""
    from tokenizers import AddedToken

    missing = [s for s in INFILL_TOKENS.values() if tok.token_to_id(s) is None]
    if missing:
        tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in missing])
    ids = {name: tok.token_to_id(s) for name, s in INFILL_TOKENS.items()}
    beyond = {INFILL_TOKENS[n]: i for n, i in ids.items() if i >= model_vocab_size}
    if beyond:
        raise ValueError(f"infilling token(s) {beyond} fall outside the model's {model_vocab_size:,}-row embedding "
                         f"(the tokenizer has {tok.get_vocab_size(with_added_tokens=True):,} ids): use a model with "
                         f"spare rows (MPT-7B reserves 50277..50431) or a larger vocab_size")
    return ids


def newline_id(tok: Tokenizer, name="the tokenizer") -> int:
    """The one token of "\n": it separates a document's lines, so item lines (blank infilling's entities) are the
    tokens between two of them; a tokenizer that merges it with other text cannot mark them."""
    ids = tok.encode("\n", add_special_tokens=False).ids
    if len(ids) != 1:
        raise ValueError(f"{name} encodes a newline as {ids}, not one token: item lines cannot be found")
    return ids[0]


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 65535 else "uint32"
