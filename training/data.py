"""Per-rank, resumable batches for train.py (packed shards) and finetune.py (prompt/response pairs).

Reads a data build through the formats' own readers (data/formats/packed.py `PackedDataset`,
data/formats/instructions.py `InstructionDataset`, both listed in the build's meta.json).

Sampling is defined on the *global* batch, independent of the number of ranks:
    epoch e order = permutation(len(dataset), seed + e) (or 0..n-1 without shuffle), drop_last;
    global step s uses order[(s mod spe) * G : (s mod spe + 1) * G], spe = n // G steps per epoch;
    rank r of W takes the r-th contiguous slice of G / W sequences, cut into micro-batches;
    with `lengths` (data.micro_batches_by_length), the slice is first ordered longest first, so that padded
    micro-batches hold similar lengths: the same examples in the same step, and the same gradient, since the
    loop divides every micro-batch's loss sum by the step's valid tokens.
So the position in the data is the global step alone: a checkpoint written by 8 ranks resumes on 4 or 1 with the
same sequences in the same steps, and a 2-rank run sees exactly the batch a 1-rank run sees (with more
accumulation). `state_dict()` stores the step plus fingerprints (dataset length, global batch, seed) that a resume
checks, failing loudly if the data changed under the run.

Batches are dicts of int64 tensors: input_ids (B, S), labels (B, S) aligned with input_ids (label i is token i,
-100 = no loss; the loss shifts), attention_mask (B, S) (1 = real token) for fine-tuning.
"""
import numpy as np
import torch

from data.formats.instructions import IGNORE_INDEX, InstructionDataset
from data.formats.packed import PackedDataset, read_meta


class GlobalBatchSampler:
    def __init__(self, n: int, global_batch: int, micro_batch: int, rank: int, world: int, seed: int,
                 shuffle: bool = True, lengths=None):
        if global_batch % (micro_batch * world):
            raise ValueError(f"train.global_batch_size = {global_batch} must be divisible by "
                             f"train.micro_batch_size ({micro_batch}) x ranks ({world})")
        if n < global_batch:
            raise ValueError(f"data.path has {n} examples, fewer than one global batch "
                             f"(train.global_batch_size = {global_batch})")
        self.n, self.G, self.mb, self.rank, self.world = n, global_batch, micro_batch, rank, world
        self.seed, self.shuffle = seed, shuffle
        if lengths is not None and len(lengths) != n:
            raise ValueError(f"lengths has {len(lengths)} entries for {n} examples")
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.steps_per_epoch = n // global_batch
        self.step = 0
        self._order_epoch, self._order = None, None

    @property
    def accumulation(self) -> int:
        return self.G // (self.mb * self.world)

    def _order_for(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            self._order = (np.random.default_rng(self.seed + epoch).permutation(self.n) if self.shuffle
                           else np.arange(self.n))
            self._order_epoch = epoch
        return self._order

    def global_indices(self, step: int) -> np.ndarray:
        epoch, i = divmod(step, self.steps_per_epoch)
        return self._order_for(epoch)[i * self.G:(i + 1) * self.G]

    def next_step(self) -> list:
        """This rank's micro-batches (lists of example indices) for the current step; advances the step."""
        per_rank = self.G // self.world
        mine = self.global_indices(self.step)[self.rank * per_rank:(self.rank + 1) * per_rank]
        if self.lengths is not None:  # longest first (stable): ties keep the shuffled order
            mine = mine[np.argsort(-self.lengths[mine], kind="stable")]
        self.step += 1
        return [mine[j:j + self.mb].tolist() for j in range(0, per_rank, self.mb)]

    def state_dict(self) -> dict:
        return {"step": self.step, "n": self.n, "global_batch": self.G, "seed": self.seed, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict):
        for key, mine in (("n", self.n), ("global_batch", self.G), ("seed", self.seed), ("shuffle", self.shuffle)):
            if state[key] != mine:
                raise ValueError(f"checkpoint's data position was saved with {key} = {state[key]}, this run has "
                                 f"{mine}: resuming would not continue the same data order")
        self.step = int(state["step"])


# --------------------------------------------------------------------------------------------------------------
# pre-training: packed rows


def open_packed(path, section: str = "pretrain"):
    return PackedDataset(path, section)


def open_valid(path, section: str, cfg):
    """The build's held-out split (meta.json section `section`) when validation is on (eval.interval > 0)."""
    if not cfg.eval.interval:
        return None
    meta_path, meta = read_meta(path)
    if not meta.get(section):
        raise ValueError(f"eval.interval = {cfg.eval.interval} but {meta_path} has no {section!r} split: build the "
                         f"data with a validation split (valid_fraction), or set eval.interval=0")
    return open_packed(path, section) if section.startswith("pretrain") else open_instructions(path, section)


def pretrain_batch(dataset, indices, seq_len: int = None) -> dict:
    rows = np.stack([dataset[i] for i in indices]).astype(np.int64)  # (B, S)
    if seq_len is not None:
        rows = rows[:, :seq_len]
    ids = torch.from_numpy(rows)
    return {"input_ids": ids, "labels": ids.clone()}


# --------------------------------------------------------------------------------------------------------------
# fine-tuning: prompt/response pairs, loss on the response and EOS only


def open_instructions(path, section: str = "instructions"):
    return InstructionDataset(path, section)


def fit_example(input_ids: np.ndarray, labels: np.ndarray, max_seq_len: int, eos_id: int):
    """Truncate one example to max_seq_len: the prompt is kept whole, the response keeps its first tokens and its
    last token becomes EOS. Returns None when the prompt alone has >= max_seq_len tokens (llm-foundry drops it)."""
    n_prompt = int(np.argmax(labels != IGNORE_INDEX)) if (labels != IGNORE_INDEX).any() else len(labels)
    if n_prompt >= max_seq_len or n_prompt == len(labels):
        return None
    if len(input_ids) > max_seq_len:
        input_ids, labels = input_ids[:max_seq_len].copy(), labels[:max_seq_len].copy()
        input_ids[-1] = labels[-1] = eos_id
    return input_ids, labels


def sft_batch(dataset, indices, max_seq_len: int, eos_id: int, pad_to: str = "max_seq_len") -> dict:
    """Right-padded batch (pad id = EOS, as MPT's tokenizer has no pad token; padded labels are -100)."""
    examples = []
    for i in indices:
        ex = dataset[i]
        fitted = fit_example(np.asarray(ex["input_ids"]), np.asarray(ex["labels"]), max_seq_len, eos_id)
        if fitted is None:
            raise ValueError(f"example {i} has no response tokens within max_seq_len {max_seq_len}; filter it "
                             f"(see filter_instructions)")
        examples.append(fitted)
    if pad_to == "max_seq_len":
        S = max_seq_len
    elif pad_to == "longest":
        S = max(len(ids) for ids, _ in examples)
    else:
        raise ValueError(f"data.pad_to = {pad_to!r}: must be 'max_seq_len' or 'longest'")
    B = len(examples)
    input_ids = torch.full((B, S), eos_id, dtype=torch.long)
    labels = torch.full((B, S), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((B, S), dtype=torch.long)
    for b, (ids, lab) in enumerate(examples):
        n = len(ids)
        input_ids[b, :n] = torch.from_numpy(ids.astype(np.int64))
        labels[b, :n] = torch.from_numpy(lab.astype(np.int64))
        mask[b, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


class PromptSlotLoss:
    """data.prompt_loss_slots: the loss also on the prompt's entities that fill the named template slots, beside the
    response and EOS. A P5 build's records give each entity's character span ("entities") and slot ("entity_slots",
    data/prepare/p5_tasks.py); the spans become token ranges by the build's tokenizer, as blank infilling maps them
    (data/formats/infilling.py record_entities). With [purchase_history], a tuned model reads the histories' titles
    with the loss causal pre-training puts on them, and the rest of the prompt (template words, candidates) with none.
    """

    def __init__(self, tokenizer, slots, data_path):
        """A slot that no pair of the build fills is an error, not a no-op (the build's meta.json counts the entities
        of each slot)."""
        meta_path, meta = read_meta(data_path)
        present = meta.get("counts", {}).get("entity_slots")
        if present is None:
            raise ValueError(f"data.prompt_loss_slots = {list(slots)}: {meta_path} counts no entity slots (a P5 build "
                             f"of data/prepare/p5_tasks.py records them): build it again with this version")
        absent = sorted(set(slots) - set(present))
        if absent:
            raise ValueError(f"data.prompt_loss_slots = {list(slots)}: no pair of {data_path} has an entity of slot(s) "
                             f"{absent} (its pairs' slots: {sorted(present) or 'none'})")
        self.tokenizer, self.slots, self.data_path = tokenizer, frozenset(slots), data_path

    def ranges(self, record: dict, prompt_ids, i: int) -> list:
        """[start, end) token ranges of the prompt (prompt_ids: its stored tokens) that the loss covers."""
        from data.formats.infilling import record_entities

        return record_entities(self.tokenizer, record, prompt_ids, f"{self.data_path} example {i}", self.slots)

    def apply(self, batch: dict, dataset, indices) -> dict:
        """sft_batch's batch, its labels opened on the slots' tokens (in place; the prompt is never cut)."""
        labels, input_ids = batch["labels"], batch["input_ids"]
        for b, i in enumerate(indices):
            n_prompt = int(torch.argmax((labels[b] != IGNORE_INDEX).int()))  # sft_batch keeps a response token
            for start, end in self.ranges(dataset.record(i), input_ids[b, :n_prompt].tolist(), i):
                labels[b, start:end] = input_ids[b, start:end]
        return batch


class FilteredDataset:
    """The examples whose prompt fits in max_seq_len with at least one response token (llm-foundry's filter)."""

    def __init__(self, dataset, max_seq_len: int):
        self.dataset = dataset
        keep, lengths = [], []
        for i in range(len(dataset)):
            labels = np.asarray(dataset[i]["labels"])
            valid = np.flatnonzero(labels != IGNORE_INDEX)
            if len(valid) and valid[0] < max_seq_len:
                keep.append(i)
                lengths.append(len(labels))
        self.keep = keep
        self.lengths = np.asarray(lengths, dtype=np.int64)  # each kept example's stored tokens (micro-batch order)
        self.dropped = len(dataset) - len(keep)

    def __len__(self):
        return len(self.keep)

    def __getitem__(self, i):
        return self.dataset[self.keep[i]]

    def record(self, i) -> dict:
        return self.dataset.record(self.keep[i])


# --------------------------------------------------------------------------------------------------------------


class SyntheticDataset:
    """Deterministic random token rows (benchmark mode: no data needed)."""

    def __init__(self, n: int, seq_len: int, vocab_size: int, seed: int = 0):
        self.n, self.seq_len, self.vocab_size, self.seed = n, seq_len, vocab_size, seed

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return np.random.default_rng(self.seed * 1_000_003 + i).integers(0, self.vocab_size, self.seq_len)
