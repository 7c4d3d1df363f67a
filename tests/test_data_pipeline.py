"""End to end: prepare -> shards, instruction data, eval files, audit; determinism, sharding, bad input."""
import gzip
import json
import random

import numpy as np
import pytest

from data import audit, prepare, templates
from data import config as config_lib
from data import tokenizer as tokenizer_lib
from data.config import ConfigError
from data.instructions import IGNORE_INDEX, InstructionDataset, read_jsonl
from data.packed import PackedDataset


def movielens_fixture(root, n_users=40, bad_line=None):
    root.mkdir()
    rng = random.Random(0)
    genres = ["0"] * 19
    items = []
    for i in range(1, 31):
        g = genres.copy()
        g[1 + i % 18] = "1"
        items.append(f"{i}|Movie number {i} ({1990 + i % 10})|01-Jan-1995||http://x|" + "|".join(g))
    items.append("31||01-Jan-1995||http://x|" + "|".join(genres))  # an item without a title
    (root / "u.item").write_text("\n".join(items) + "\n", encoding="latin-1")
    lines = []
    for u in range(1, n_users + 1):
        for k in range(3 if u % 10 == 0 else 6 + u % 25):  # every 10th user has < 5 interactions
            lines.append(f"{u}\t{rng.randint(1, 31)}\t{rng.randint(1, 5)}\t{1000 + k * 10 + rng.randint(0, 3)}")
    if bad_line:
        lines.insert(5, bad_line)
    (root / "u.data").write_text("\n".join(lines) + "\n")
    return root


def p5_fixture(root, n_users=30):
    root.mkdir()
    rng = random.Random(1)
    (root / "items.jsonl").write_text("".join(json.dumps({"item_id": i, "title": "" if i == 7 else f"Cream {i}"}) + "\n"
                                              for i in range(1, 41)))
    (root / "sequential_data.txt").write_text("".join(
        f"{u} " + " ".join(str(i) for i in rng.sample(range(1, 41), 5 + u % 9)) + "\n" for u in range(1, n_users + 1)))
    return root


def config(tmp_path, out, ml, beauty, **extra):
    cfg = {"name": "tiny", "out_dir": str(out), "seed": 5, "max_seq_len": 160, "finetune_fraction": 0.2,
           "tokenizer": {"train": {"vocab_size": 400}}, "pack": {"rows_per_shard": 16}, "batch_users": 8,
           "sources": [{"name": "beauty", "reader": "p5", "domain": "amazon", "benchmark": True,
                        "options": {"path": str(beauty)}},
                       {"name": "ml", "reader": "movielens", "domain": "movielens", "options": {"path": str(ml)}}]}
    cfg.update(extra)
    path = tmp_path / f"{out.name}.yaml"
    import yaml
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def inputs(tmp_path):
    return movielens_fixture(tmp_path / "ml"), p5_fixture(tmp_path / "beauty")


def build(tmp_path, name, inputs, *args, **extra):
    out = tmp_path / name
    assert prepare.main(["--config", str(config(tmp_path, out, *inputs, **extra)), *args]) == 0
    return out


def files_of(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "timings.json"}


def test_end_to_end_outputs_and_readers(tmp_path, inputs):
    out = build(tmp_path, "a", inputs)
    meta = json.loads((out / "meta.json").read_text())
    ds = PackedDataset(out)
    assert len(ds) == meta["pretrain"]["rows"] > 1 and ds[0].shape == (160,) and ds[0].dtype == np.uint16
    assert len(meta["pretrain"]["shards"]) > 1  # 16 rows per shard
    flat = np.concatenate([ds[i] for i in range(len(ds))])
    eos = meta["pretrain"]["eos_id"]
    assert (flat == eos).sum() == meta["pretrain"]["documents"] + meta["pretrain"]["padding_tokens"]
    # every document (between EOS) is shorter than max_seq_len: the chunking rule
    docs = np.split(flat, np.flatnonzero(flat == eos) + 1)
    assert max(len(d) for d in docs) <= 160
    assert meta["sources"]["ml"]["part"]["histories_chunked"] > 0
    # instruction data: prompt masked, response + EOS supervised
    inst = InstructionDataset(out)
    assert len(inst) == meta["instructions"]["examples"] > 0
    tasks = set()
    for i in range(len(inst)):
        ex, rec = inst[i], inst.record(i)
        tasks.add(rec["task"])
        n_resp = int((ex["labels"] != IGNORE_INDEX).sum())
        assert ex["input_ids"][-1] == eos and ex["labels"][-1] == eos and len(ex["input_ids"]) <= 160
        assert (ex["labels"][:-n_resp] == IGNORE_INDEX).all() and (ex["labels"][-n_resp:] == ex["input_ids"][-n_resp:]).all()
        assert rec["prompt"].endswith("### Response:") and rec["source"] == "ml"
        if rec["task"] == "rating":
            assert rec["response"] == f"{rec['target_rating']:.1f}/5.0"
    assert tasks == {"rating", "next_item"}
    # benchmark eval files: P5 leave-one-out, every user, catalog with the untitled item
    ev = meta["eval"]["beauty"]
    test = read_jsonl(out / ev["dir"] / "next_item_test.jsonl")
    assert len(test) == 30 and len(read_jsonl(out / ev["dir"] / "next_item_validation.jsonl")) == 30
    catalog = read_jsonl(out / ev["catalog"])
    assert len(catalog) == 40 and [c["item_id"] for c in catalog if c["title_missing"]] == ["7"]
    assert all(r["response"] == r["target_text"] for r in test)
    # counts add up, and short users / untitled items are counted, not silently lost
    ml = meta["sources"]["ml"]
    assert ml["interactions_read"] == sum(ml["interactions_kept"].values()) + sum(ml["interactions_dropped"].values())
    assert ml["users_dropped"]["user_under_5_interactions"] >= 4
    assert ml["interactions_dropped"]["item_without_title"] > 0
    assert "| beauty (*) |" in (out / "stats.md").read_text()
    assert audit.audit(out)["ok"]


@pytest.mark.parametrize("tokenizer", ["trained-bpe", "gpt-neox-20b"])
def test_cut_ids_equal_encoded_ids(tmp_path, inputs, tokenizer, request, monkeypatch):
    """Chunks, fine-tuning pairs and trimmed evaluation prompts take their ids (or counts) from the whole
    texts' ids (data/token_lines.py). Every id sequence written must be the encoding of its text, and the
    build must be byte for byte the one that encodes everything (a tokenizer taken as not line-local), and
    the one that starts every evaluation prompt from its whole history."""
    ml, beauty = inputs
    tok_cfg = {"train": {"vocab_size": 400}}
    if tokenizer == "gpt-neox-20b":  # skips, with the reason, without ../shared/data
        tok_cfg = {"path": str(request.getfixturevalue("shared_data") / "tokenizer" / "gpt-neox-20b.json")}
    extra = dict(tokenizer=tok_cfg, eval={"max_new_tokens": 40, "missing_title": "unknown title"}, sources=[
        {"name": "ml", "reader": "movielens", "domain": "movielens", "benchmark": True, "rating_split": True,
         "finetune_from_train": True, "options": {"path": str(ml)}},
        {"name": "beauty", "reader": "p5", "domain": "amazon", "options": {"path": str(beauty)}}])
    out = tmp_path / "cut"
    cfg = config_lib.load(config(tmp_path, out, ml, beauty, **extra))
    kept: list = []
    prepare.run_part(cfg, 0, 1, keep_texts=kept)
    meta = prepare.merge(cfg, 1)
    counts = meta["sources"]["ml"]["part"]
    assert counts["histories_chunked"] > 0 and counts["eval_prompts_truncated"] > 0  # every path is taken
    tok = tokenizer_lib.load(meta["tokenizer"]["path"])
    eos = meta["pretrain"]["eos_id"]

    def encode(text):
        return tok.encode(text, add_special_tokens=False).ids
    written = np.concatenate([d for d in PackedDataset(out)]).tolist()
    want = [i for k in kept if isinstance(k, tuple) for i in encode(templates.pretrain_document(*k)) + [eos]]
    assert written[: len(want)] == want and set(written[len(want):]) <= {eos}  # then the last row's padding
    inst = InstructionDataset(out)
    assert any(inst.record(i)["chunk"] > 0 for i in range(len(inst)))  # chunked fine-tuning histories
    for i in range(len(inst)):
        rec, ex = inst.record(i), inst[i]
        prompt = encode(rec["prompt"])
        assert ex["input_ids"].tolist() == prompt + encode(rec["response"]) + [eos]
        assert (ex["labels"][: len(prompt)] == IGNORE_INDEX).all() and (ex["labels"][len(prompt):] != IGNORE_INDEX).all()
    cut = files_of(out)
    assert "eval/ml/rating_test.jsonl" in cut

    def same_build(name):  # meta.json, part.json and stats.md name the out_dir
        other = files_of(build(tmp_path, name, inputs, **extra))
        assert other.keys() == cut.keys()
        for k in cut:
            assert other[k].replace(str(tmp_path / name).encode(), b"OUT") == cut[k].replace(str(out).encode(), b"OUT"), k
    # evaluation prompts first encoded from a suffix that always fits (so: again, whole) or from the
    # whole history: the same prompts, the fewest items dropped
    for chars_per_token in (0.5, 10_000):
        monkeypatch.setattr(prepare, "EVAL_SUFFIX_CHARS_PER_TOKEN", chars_per_token)
        same_build(f"suffix-{chars_per_token}")
    monkeypatch.setattr(tokenizer_lib, "line_local", lambda tok: False)
    same_build("encoded")


def test_benchmark_finetune_from_train_and_training_stats(tmp_path, inputs):
    """A benchmark alone (the miniature ablation): fine-tuning pairs from each user's training history, whose
    last training item is the answer; no held-out interaction anywhere (audit); train_stats counts training."""
    ml, beauty = inputs
    out = build(tmp_path, "ft", (ml, beauty), sources=[{"name": "beauty", "reader": "p5", "domain": "amazon",
                                                        "benchmark": True, "finetune_from_train": True,
                                                        "rating_split": False, "options": {"path": str(beauty)}}])
    meta = json.loads((out / "meta.json").read_text())
    inst = InstructionDataset(out)
    records = [inst.record(i) for i in range(len(inst))]
    assert len(records) == 30 and {r["task"] for r in records} == {"next_item"}  # P5 has no ratings
    test = {r["user"]: r for r in read_jsonl(out / "eval/beauty/next_item_test.jsonl")}
    valid = {r["user"]: r for r in read_jsonl(out / "eval/beauty/next_item_validation.jsonl")}
    sequences = {line.split()[0]: line.split()[1:] for line in (beauty / "sequential_data.txt").read_text().splitlines()}
    for r in records:
        seq = [i for i in sequences[r["user"]][:-2] if i != "7"]  # training part, untitled item 7 dropped
        assert r["target_item_id"] == seq[-1] not in (test[r["user"]]["target_item_id"], valid[r["user"]]["target_item_id"])
    result = audit.audit(out)
    assert result["ok"] and result["leaked_interactions"] == 0
    stats = json.loads((out / meta["eval"]["beauty"]["train_stats"]).read_text())
    train_items = [i for seq in sequences.values() for i in seq[:-2]]  # untitled item 7 included
    assert stats["interactions"] == len(train_items)
    assert {i: c for i, (c, _, _) in stats["items"].items()} == {i: train_items.count(i) for i in set(train_items)}
    assert stats["mean_rating"] is None and stats["rated_interactions"] == 0


def test_finetune_from_train_needs_a_benchmark(tmp_path, inputs):
    ml, beauty = inputs
    with pytest.raises(ConfigError, match=r"sources\[0\].finetune_from_train needs benchmark"):
        build(tmp_path, "bad", inputs, sources=[{"name": "ml", "reader": "movielens", "domain": "movielens",
                                                 "finetune_from_train": True, "options": {"path": str(ml)}}])


def test_same_inputs_same_bytes(tmp_path, inputs):
    a = build(tmp_path, "a", inputs)
    build(tmp_path, "b", inputs, out_dir=str(tmp_path / "a2"))  # the same build again, into a2
    fa, fb = files_of(a), files_of(tmp_path / "a2")
    assert fa.keys() == fb.keys()
    for k in fa:
        if k not in ("meta.json", "stats.md") and not k.endswith("part.json"):  # these name the out_dir
            assert fa[k] == fb[k], k
    ma, mb = (json.loads(fa["meta.json"]), json.loads(fb["meta.json"]))
    assert ma["tokenizer"]["sha256"] == mb["tokenizer"]["sha256"] and ma["sources"] == mb["sources"]
    c = build(tmp_path, "c", inputs, seed=6)
    assert files_of(c)["parts/00000-of-00001/pretrain-00000.bin"] != fa["parts/00000-of-00001/pretrain-00000.bin"]


def test_sharded_build_merges_to_the_same_totals(tmp_path, inputs):
    whole = json.loads((build(tmp_path, "whole", inputs) / "meta.json").read_text())
    out = tmp_path / "sharded"
    cfg = config(tmp_path, out, *inputs, tokenizer={"path": str(tmp_path / "whole" / "tokenizer.json")})
    for i in range(3):
        assert prepare.main(["--config", str(cfg), "--shard", f"{i}/3"]) == 0
    assert prepare.main(["--config", str(cfg), "--merge"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["pretrain"]["documents"] == whole["pretrain"]["documents"]
    assert meta["instructions"]["examples"] == whole["instructions"]["examples"]
    assert meta["sources"]["ml"]["part"]["tokens"] == whole["sources"]["ml"]["part"]["tokens"]
    assert len(PackedDataset(out)) >= len(PackedDataset(tmp_path / "whole"))  # each part pads its last row
    assert audit.audit(out)["ok"]


def test_audit_catches_a_planted_leak(tmp_path, inputs):
    out = build(tmp_path, "a", inputs)
    assert audit.main([str(out)]) == 0
    with gzip.open(out / "eval" / "heldout.tsv.gz", "rt") as f:
        source, task, split, *key = f.readline().rstrip("\n").split("\t")
    manifest = out / "parts" / "00000-of-00001" / "manifest.tsv.gz"
    with gzip.open(manifest, "rt") as f:
        rows = f.read()
    with gzip.open(manifest, "wt") as f:  # plant: one held-out interaction in the pre-training data
        f.write(rows + "\t".join([source, *key]) + "\n")
    result = audit.audit(out)
    assert not result["ok"] and result["leaked_interactions"] == 1
    assert any("held out" in p for p in result["problems"])
    assert audit.main([str(out)]) == 1


def test_bad_line_stops_or_is_skipped_and_counted(tmp_path):
    inputs = (movielens_fixture(tmp_path / "ml", bad_line="1\t2\tNaNx\t5"), p5_fixture(tmp_path / "beauty"))
    with pytest.raises(Exception, match=r"u.data:6: bad_rating"):
        build(tmp_path, "a", inputs)
    out = build(tmp_path, "b", inputs, "--skip-bad")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["sources"]["ml"]["bad_lines"] == {"bad_rating": 1}
    assert "u.data:6" in meta["sources"]["ml"]["bad_line_examples"]["bad_rating"]


def test_packed_reader_validates_metadata(tmp_path, inputs):
    out = build(tmp_path, "a", inputs)
    shard = out / "parts" / "00000-of-00001" / "pretrain-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(ValueError, match="pretrain-00000.bin"):
        PackedDataset(out)
    with pytest.raises(FileNotFoundError, match="meta.json"):
        PackedDataset(tmp_path)


def test_eval_prompts_drop_the_fewest_oldest_items():
    """evaluation.md §4: the oldest history items are dropped until the prompt fits, and no more. The oldest
    items here are long, so a jump proportional to the excess would overshoot; both ways of counting (from
    the whole prompt's spans, or by encoding each candidate) must find exactly the fewest."""
    from data.records import Interaction, Item

    class Words:  # a tokenizer stand-in: one token per word
        def lengths(self, texts):
            return [len(t.split()) for t in texts]
    d = templates.get_domain("netflix")
    h = [Interaction("u", Item(str(i), title=" ".join(["long"] * 40 if i < 5 else ["short"] * 3))) for i in range(30)]

    def build(hist):
        return templates.next_item_pair(d, hist, Item("t", title="target"))

    def words(hist):
        return Words().lengths([build(hist)[0]])[0]
    for fewest in (0, 1, 3, 5, 12, 29, 30):
        budget = words(h[fewest:])
        assert fewest == 0 or words(h[fewest - 1:]) > budget
        for count in (None, lambda m: words(h[m:]) if m < len(h) else None):
            for first in (0, 2, 6, 20):  # the first prompt given: too long, or fitting with more to drop
                probe = (first, *build(h[first:]), words(h[first:]))
                ((prompt, response, dropped),) = prepare.fit_prompts(Words(), [(build, h, probe, count)], budget)
                assert dropped == fewest and (prompt, response) == build(h[fewest:]), (fewest, first, count)
    ((_, _, dropped),) = prepare.fit_prompts(Words(), [(build, h, (0, *build(h), words(h)), None)], 1)
    assert dropped == 30  # nothing fits: every history item is dropped
