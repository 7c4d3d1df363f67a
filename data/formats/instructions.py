"""Instruction (prompt/response) data: writer and reader.

Per part (paths relative to out_dir, listed in meta.json["instructions"]["parts"]; a build writes one part,
`instructions/`):
    instructions/instructions.jsonl       one pair per line (fields in data/README.md)
    instructions/instructions.tokens.bin  all pairs' input_ids concatenated (meta dtype, little-endian)
    instructions/instructions.index.npy   int64 (n, 3): token offset, length, prompt length
input_ids = tokens(prompt) + tokens(response) + [EOS] (prompt and response tokenised separately, as
llm-foundry does); labels = -100 over the prompt, then the response tokens and EOS.

    ds = InstructionDataset("out/data/movielens-100k")
    ds[i] -> {"input_ids": int64 (L,), "labels": int64 (L,)};  ds.record(i) -> the JSONL dict
    InstructionDataset(path, "instructions_valid")   # the build's held-out pairs, when it wrote them
"""
import json
import pathlib
import shutil

import numpy as np

from data.formats.packed import read_section

IGNORE_INDEX = -100


class InstructionWriter:
    def __init__(self, out_dir, dtype: str, eos_id: int):
        out_dir = pathlib.Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(out_dir / "instructions.jsonl", "w", encoding="utf-8")
        self.tokens = open(out_dir / "instructions.tokens.bin", "wb")
        self.index_path = out_dir / "instructions.index.npy"
        self.dtype, self.eos_id = np.dtype(dtype).newbyteorder("<"), eos_id
        self.index: list[tuple[int, int, int]] = []
        self.offset = 0

    def add(self, record: dict, prompt_ids, response_ids) -> None:
        """One pair; prompt_ids and response_ids are sequences of ints (lists, arrays); EOS is appended here."""
        ids = np.concatenate([np.asarray(prompt_ids, self.dtype), np.asarray(response_ids, self.dtype),
                              np.asarray([self.eos_id], self.dtype)])
        self.jsonl.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
        ids.tofile(self.tokens)
        self.index.append((self.offset, len(ids), len(prompt_ids)))
        self.offset += len(ids)

    def extend(self, part_dir) -> int:
        """Append, in order, the pairs another InstructionWriter wrote to `part_dir` -> how many."""
        part_dir = pathlib.Path(part_dir)
        with open(part_dir / "instructions.jsonl", encoding="utf-8") as f:
            shutil.copyfileobj(f, self.jsonl)
        with open(part_dir / "instructions.tokens.bin", "rb") as f:
            shutil.copyfileobj(f, self.tokens)
        index = np.load(part_dir / "instructions.index.npy")
        self.index += [(int(o) + self.offset, int(n), int(p)) for o, n, p in index]
        self.offset += int(index[:, 1].sum()) if len(index) else 0
        return len(index)

    def close(self) -> int:
        self.jsonl.close()
        self.tokens.close()
        np.save(self.index_path, np.asarray(self.index, dtype=np.int64).reshape(-1, 3))
        return len(self.index)


def section_meta(folder: str, examples: int, dtype: str, eos_id: int) -> dict:
    """meta.json's entry for the pairs an InstructionWriter wrote into out_dir/`folder` (e.g. "instructions")."""
    return {"dtype": dtype, "eos_id": eos_id, "ignore_index": IGNORE_INDEX, "examples": examples,
            "parts": [{"jsonl": f"{folder}/instructions.jsonl", "tokens": f"{folder}/instructions.tokens.bin",
                       "index": f"{folder}/instructions.index.npy", "examples": examples}]}


class InstructionDataset:
    def __init__(self, path, section: str = "instructions"):
        """`section`: of meta.json, "instructions" or a build's held-out "instructions_valid"."""
        meta_path, _, s = read_section(path, section)
        root = meta_path.parent
        self.dtype = np.dtype(s["dtype"]).newbyteorder("<")
        self._parts = []
        for part in s["parts"]:
            index = np.load(root / part["index"])
            tokens_path = root / part["tokens"]
            n_tokens = int(index[:, :2].sum(axis=1).max()) if len(index) else 0
            if tokens_path.stat().st_size != n_tokens * self.dtype.itemsize:
                raise ValueError(f"{tokens_path}: size does not match {root / part['index']}")
            tokens = np.memmap(tokens_path, dtype=self.dtype, mode="r") if n_tokens else np.zeros(0, self.dtype)
            self._parts.append((index, tokens, root / part["jsonl"]))
        self._starts = np.cumsum([0] + [len(p[0]) for p in self._parts])
        self._records = None

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _locate(self, i: int):
        if not 0 <= i < len(self):
            raise IndexError(f"example {i} out of range for {len(self)}")
        p = int(np.searchsorted(self._starts, i, side="right")) - 1
        return p, i - int(self._starts[p])

    def __getitem__(self, i: int) -> dict:
        p, j = self._locate(i)
        index, tokens, _ = self._parts[p]
        offset, length, prompt_len = (int(v) for v in index[j])
        input_ids = np.asarray(tokens[offset: offset + length], dtype=np.int64)
        labels = input_ids.copy()
        labels[:prompt_len] = IGNORE_INDEX
        return {"input_ids": input_ids, "labels": labels}

    def record(self, i: int) -> dict:
        if self._records is None:
            self._records = []
            for _, _, jsonl in self._parts:
                with open(jsonl, encoding="utf-8") as f:
                    self._records.extend(json.loads(line) for line in f)
        return self._records[i]


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
