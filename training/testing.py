"""A tiny synthetic data build in the data issue's on-disk format, for the training tests and CPU smoke runs.

    python -m training.testing out/tiny-data        # then: python train.py configs/train/tiny-pretrain.yaml

Writes, with the formats' own writers (data/formats/packed.py PackWriter, data/formats/instructions.py
InstructionWriter), a meta.json with a `pretrain` section (documents of token ids packed into rows), an
`instructions` section (prompt/response pairs, prompt masked), and held-out `pretrain_valid` and
`instructions_valid` splits. Token ids are synthetic (vocab 512, EOS = 0): documents are noisy arithmetic sequences so
a model can learn something, and each instruction's response is a fixed function of its prompt.
"""
import argparse
import json
import pathlib
import sys

import numpy as np

from data.formats.instructions import InstructionWriter
from data.formats.instructions import section_meta as instructions_meta
from data.formats.packed import FORMAT, FORMAT_VERSION, PackWriter
from data.formats.packed import section_meta as packed_meta

EOS_ID = 0


def synthetic_documents(n_docs: int, vocab: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(n_docs):
        length = int(rng.integers(8, 90))
        start, stride = int(rng.integers(1, vocab)), int(rng.integers(1, 7))
        doc = (start + stride * np.arange(length)) % (vocab - 1) + 1  # ids 1..vocab-1 (0 is EOS)
        noise = rng.random(length) < 0.1
        doc[noise] = rng.integers(1, vocab, int(noise.sum()))
        yield doc.tolist()


def synthetic_pairs(n_pairs: int, vocab: int, seed: int, prompt_len=(6, 20), response_len=(2, 6)):
    """(prompt ids, response ids); the response is determined by the prompt (its first ids, reversed, + 7)."""
    rng = np.random.default_rng(seed + 1)
    for _ in range(n_pairs):
        prompt = rng.integers(1, vocab, int(rng.integers(*prompt_len))).tolist()
        k = int(rng.integers(*response_len))
        response = [((t + 7) % (vocab - 1)) + 1 for t in prompt[:k][::-1]]
        yield prompt, response


def write_tiny_build(out_dir, seq_len: int = 32, n_docs: int = 200, n_pairs: int = 16, vocab: int = 512,
                     seed: int = 0, rows_per_shard: int = 50, pairs=None, n_valid_docs: int = 40,
                     n_valid_pairs: int = 8) -> pathlib.Path:
    """Training documents and pairs, and held-out ones (other seeds) for validation: `pretrain_valid` and
    `instructions_valid`, as a data build writes them (none when n_valid_* is 0)."""
    out_dir = pathlib.Path(out_dir)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION,
            "tokenizer": {"path": None, "vocab_size": vocab, "synthetic": True}}
    for section, n, s in (("pretrain", n_docs, seed), ("pretrain_valid", n_valid_docs, seed + 100)):
        if n:
            writer = PackWriter(out_dir / section, section, seq_len, "uint16", rows_per_shard, EOS_ID)
            for doc in synthetic_documents(n, vocab, s):
                writer.add(doc)
            meta[section] = packed_meta(writer, writer.close(), section)
    for section, given, n, s in (("instructions", pairs, n_pairs, seed), ("instructions_valid", None, n_valid_pairs,
                                                                            seed + 100)):
        if given is None and not n:
            continue
        iw = InstructionWriter(out_dir / section, "uint16", EOS_ID)
        for prompt, response in (given if given is not None else synthetic_pairs(n, vocab, s)):
            iw.add({"prompt": " ".join(map(str, prompt)), "response": " ".join(map(str, response))}, prompt, response)
        meta[section] = instructions_meta(section, iw.close(), "uint16", EOS_ID)
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return out_dir


def main(argv=None) -> int:
    # argparse, not sys.argv[1]: `--help` must print usage, not become an output folder named "--help"
    parser = argparse.ArgumentParser(prog="python -m training.testing", description=__doc__.split("\n")[0])
    parser.add_argument("out", nargs="?", default="out/tiny-data", help="the build's folder (default out/tiny-data)")
    out = write_tiny_build(parser.parse_args(argv).out)
    print(f"wrote {out}/meta.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
