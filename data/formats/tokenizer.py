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


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 65535 else "uint32"
