"""The corpus build end to end: outputs and their readers, what is written equals the encoding of its text,
determinism whatever the buckets and workers, resuming after a crash, config changes, audit, bad input."""
import json
import os
import shutil
import subprocess
import sys
import time

import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data.prepare import audit, eval_prompts, jobs, pipeline, templates, workdir
from data.prepare import encoder as encoder_lib
from data.prepare.config import ConfigError
from data.prepare.records import DataError
from data.formats import tokenizer as tokenizer_lib
from data.formats.instructions import IGNORE_INDEX, InstructionDataset, read_jsonl
from data.formats.packed import PackedDataset
from data_fixtures import amazon_fixture, build, files_of, movielens_fixture, p5_fixture, two_sources


@pytest.fixture
def inputs(tmp_path):
    return two_sources(movielens_fixture(tmp_path / "ml"), p5_fixture(tmp_path / "beauty"))


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
    assert meta["sources"]["ml"]["counts"]["histories_chunked"] > 0
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
    # a blank-infilling model's inputs: the history as a document (header, blank line, one line per item) and each
    # catalog item's line (docs/recsysllm.md)
    assert all(len(r["document"].split("\n")) == 2 + len(r["history_item_ids"]) for r in test)
    assert all(c["line"].startswith("Title: ") and "Rating" not in c["line"] for c in catalog if not c["title_missing"])
    # counts add up, and short users / untitled items are counted, not silently lost
    ml = meta["sources"]["ml"]
    assert ml["interactions_read"] == sum(ml["interactions_kept"].values()) + sum(ml["interactions_dropped"].values())
    assert ml["users_dropped"]["user_under_5_interactions"] >= 4
    assert ml["interactions_dropped"]["item_without_title"] > 0
    assert "| beauty (*) |" in (out / "stats.md").read_text()
    assert audit.audit(out)["ok"]


def test_validation_split_holds_out_whole_users(tmp_path, inputs):
    """valid_fraction: a seeded share of the training users of each source (pre-training and fine-tuning users
    apart) goes to pretrain_valid / instructions_valid and nowhere else; the training outputs keep the rest."""
    tok = {"path": str(build(tmp_path, "bpe", inputs) / "tokenizer.json")}  # a BPE trained on the build's own
    base = build(tmp_path, "base", inputs, bucket_interactions=50, tokenizer=tok)  # training text: the same for both
    out = build(tmp_path, "valid", inputs, valid_fraction=0.2, bucket_interactions=50, tokenizer=tok)
    meta, meta0 = (json.loads((o / "meta.json").read_text()) for o in (out, base))
    assert "pretrain_valid" not in meta0 and not (base / "pretrain_valid").exists()
    valid_rows, valid_pairs = PackedDataset(out, "pretrain_valid"), InstructionDataset(out, "instructions_valid")
    assert len(valid_rows) > 0 and len(valid_pairs) > 0
    for name in ("beauty", "ml"):
        kept, kept0 = meta["sources"][name]["interactions_kept"], meta0["sources"][name]["interactions_kept"]
        assert kept["pretrain"] + kept["pretrain_valid"] == kept0["pretrain"] and kept["pretrain_valid"] > 0
        users = meta["sources"][name]["validation_users"]
        assert users == round(0.2 * meta0["sources"][name]["table4"]["users"]) or name == "ml"
    ml = meta["sources"]["ml"]["interactions_kept"]
    assert ml["finetune"] + ml["finetune_valid"] == meta0["sources"]["ml"]["interactions_kept"]["finetune"]
    # the documents and pairs of every user are in exactly one split: training + validation = the build without one
    both = read_jsonl(out / "instructions/instructions.jsonl") + read_jsonl(out / "instructions_valid/instructions.jsonl")
    assert sorted(json.dumps(r, sort_keys=True) for r in both) == sorted(
        json.dumps(r, sort_keys=True) for r in read_jsonl(base / "instructions/instructions.jsonl"))
    train_users = {r["user"] for r in read_jsonl(out / "instructions/instructions.jsonl")}
    assert not train_users & {r["user"] for r in read_jsonl(out / "instructions_valid/instructions.jsonl")}
    def documents(ds):
        flat = np.concatenate([ds[i] for i in range(len(ds))])
        return sorted(d.tobytes() for d in np.split(flat, np.flatnonzero(flat == ds.eos_id) + 1) if len(d) > 1)
    assert sorted(documents(PackedDataset(out)) + documents(valid_rows)) == documents(PackedDataset(base))
    result = audit.audit(out)
    assert result["ok"] and result["validation_users_in_training"] == 0, result["problems"]


@pytest.mark.parametrize("tokenizer", ["trained-bpe", "gpt-neox-20b"])
def test_written_ids_are_the_encoding_of_the_written_text(tmp_path, tokenizer, request, monkeypatch):
    """The build encodes each distinct line once and joins lines' ids (data/prepare/encoder.py). Every id sequence
    written must be the encoding of its text, and the build must be byte for byte the one that encodes every
    text whole (a tokenizer taken as not line-local). Long histories are chunked, evaluation prompts cut."""
    ml, beauty = movielens_fixture(tmp_path / "ml"), p5_fixture(tmp_path / "beauty")
    tok_cfg = {"train": {"vocab_size": 400}}
    if tokenizer == "gpt-neox-20b":  # skips, with the reason, without ../shared/data
        tok_cfg = {"path": str(request.getfixturevalue("shared_data") / "tokenizer" / "gpt-neox-20b.json")}
    sources = [{"name": "ml", "reader": "movielens", "domain": "movielens", "benchmark": True, "rating_split": True,
                "finetune_from_train": True, "options": {"path": str(ml)}},
               {"name": "beauty", "reader": "p5", "domain": "amazon", "options": {"path": str(beauty)}}]
    extra = dict(tokenizer=tok_cfg, eval={"max_new_tokens": 40, "missing_title": "unknown title"})
    out = build(tmp_path, "lines", sources, **extra)
    meta = json.loads((out / "meta.json").read_text())
    counts = meta["sources"]["ml"]["counts"]
    assert counts["histories_chunked"] > 0 and counts["eval_prompts_truncated"] > 0  # every path is taken
    tok = tokenizer_lib.load(meta["tokenizer"]["path"])
    eos = meta["pretrain"]["eos_id"]

    def encode(text):
        return tok.encode(text, add_special_tokens=False).ids
    # documents: decoded back (a byte-level BPE round-trips exactly) and encoded whole
    stream = np.concatenate([d for d in PackedDataset(out)])
    docs = np.split(stream, np.flatnonzero(stream == eos) + 1)[: meta["pretrain"]["documents"]]
    for d in docs:
        assert encode(tok.decode(d[:-1].tolist(), skip_special_tokens=False)) == d[:-1].tolist()
    inst = InstructionDataset(out)
    assert any(inst.record(i)["chunk"] > 0 for i in range(len(inst)))  # chunked fine-tuning histories
    for i in range(len(inst)):
        rec, ex = inst.record(i), inst[i]
        prompt = encode(rec["prompt"])
        assert ex["input_ids"].tolist() == prompt + encode(rec["response"]) + [eos]
        assert (ex["labels"][: len(prompt)] == IGNORE_INDEX).all() and (ex["labels"][len(prompt):] != IGNORE_INDEX).all()
    # evaluation prompts: at most max_seq_len - max_new_tokens tokens, and one more history item would not fit
    budget = 160 - 40
    for r in read_jsonl(out / "eval/ml/rating_test.jsonl") + read_jsonl(out / "eval/ml/next_item_test.jsonl"):
        assert len(encode(r["prompt"])) <= budget or not r["history_item_ids"]
    monkeypatch.setattr(encoder_lib, "line_local", lambda tok: False)
    whole = build(tmp_path, "whole", sources, **extra)
    assert files_of(whole).keys() == files_of(out).keys()
    for k, v in files_of(out).items():
        if k not in ("meta.json", "stats.md"):  # these name their out_dir
            assert files_of(whole)[k] == v, k


def test_eval_prompts_drop_the_fewest_oldest_items():
    """evaluation.md §4: the oldest history items are dropped until the prompt fits, and no more. The oldest items
    here are long, so a jump proportional to the excess would overshoot."""
    class Words:  # a tokenizer stand-in: one token per word
        def counts(self, texts):
            return [len(t.split()) for t in texts]
    d = templates.get_domain("netflix")
    from data.prepare.records import Interaction, Item
    h = [Interaction("u", Item(str(i), title=" ".join(["long"] * 40 if i < 5 else ["short"] * 3))) for i in range(30)]
    lines = [templates.next_item_line(d, d.history, x) for x in h]

    def make(hist_lines):
        return templates.wrap_prompt(templates.NEXT_ITEM_TASK, d, hist_lines), "target"

    def words(m):
        return Words().counts([make(lines[m:])[0]])[0]
    for fewest in (0, 1, 3, 5, 12, 29, 30):
        budget = words(fewest)
        assert fewest == 0 or words(fewest - 1) > budget
        assert eval_prompts.fewest_dropped(Words(), [(lines, make)], budget) == [fewest]
    assert eval_prompts.fewest_dropped(Words(), [(lines, make)], 1) == [30]  # nothing fits: every item dropped
    assert eval_prompts.fewest_dropped(Words(), [(lines[:1], make)], 1) == [1]  # one item, too long
    # several prompts bisect together
    assert eval_prompts.fewest_dropped(Words(), [(lines, make)] * 3 + [(lines[25:], make)], words(5)) == [5, 5, 5, 0]


def test_benchmark_finetune_from_train_and_training_stats(tmp_path):
    """A benchmark alone (the miniature ablation): fine-tuning pairs from each user's training history, whose
    last training item is the answer; no held-out interaction anywhere (audit); train_stats counts training."""
    beauty = p5_fixture(tmp_path / "beauty")
    out = build(tmp_path, "ft", [{"name": "beauty", "reader": "p5", "domain": "amazon", "benchmark": True,
                                  "finetune_from_train": True, "rating_split": False, "options": {"path": str(beauty)}}])
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


def test_users_file_trains_its_users_on_the_full_sources_splits(tmp_path):
    """A benchmark's users_file (scripts/papers.py users: another build's users): only the listed users train, while
    P5's splits are still drawn over every user (MovieLens's rating split depends on all of them), so the held-out
    interactions and evaluation files equal the full build's; the others' training rows are dropped and counted, and
    a listed user the source lacks is an error naming the file."""
    ml = movielens_fixture(tmp_path / "ml")
    source = {"name": "ml", "reader": "movielens", "domain": "movielens", "benchmark": True,
              "options": {"path": str(ml)}}
    full = build(tmp_path, "full", [source])
    keep = {str(u) for u in range(1, 11)}
    (tmp_path / "users.txt").write_text("\n".join(sorted(keep)) + "\n\n")
    cut = build(tmp_path, "cut", [{**source, "users_file": str(tmp_path / "users.txt")}])
    full_files, cut_files = files_of(full), files_of(cut)
    evals = [f for f in full_files if f.startswith("eval/")]
    assert evals and all(cut_files[f] == full_files[f] for f in evals)

    def training(out):  # (use, user) of every training interaction, from the build's manifests
        rows = pq.read_table(out / "manifests" / "ml").to_pylist()
        return [(r["use"], r["user"]) for r in rows if r["use"] != "heldout"]
    assert {u for _, u in training(cut)} == keep
    full_rows = training(full)
    assert sorted(training(cut)) == sorted(r for r in full_rows if r[1] in keep)
    others = sum(1 for _, u in full_rows if u not in keep)
    assert f"'user_not_in_users_file': {others}" in (cut / "stats.md").read_text()
    (tmp_path / "users.txt").write_text("1\n99\n")
    with pytest.raises(DataError, match=r"users\.txt: 1 of its 2 users have no interaction in source ml "
                                        r"\(first: '99'"):
        build(tmp_path, "missing", [{**source, "users_file": str(tmp_path / "users.txt")}])
    with pytest.raises(ConfigError, match=r"users_file.*needs benchmark: true"):
        build(tmp_path, "corpus", [{**source, "benchmark": False, "users_file": str(tmp_path / "users.txt")}])


def test_finetune_from_train_needs_a_benchmark(tmp_path):
    ml = movielens_fixture(tmp_path / "ml")
    with pytest.raises(ConfigError, match=r"bad\.yaml: key 'sources\.0\.finetune_from_train' = True: needs benchmark"):
        build(tmp_path, "bad", [{"name": "ml", "reader": "movielens", "domain": "movielens",
                                 "finetune_from_train": True, "options": {"path": str(ml)}}])


def test_same_bytes_whatever_the_buckets_and_workers(tmp_path, inputs):
    """The outputs do not depend on how the users are cut into jobs, nor on how many processes run them; another
    seed gives other outputs."""
    one = files_of(build(tmp_path, "one", inputs))
    for name, extra in (("again", {}), ("buckets", {"bucket_interactions": 50}),
                        ("buckets-2-workers", {"bucket_interactions": 50, "workers": 2})):
        out = build(tmp_path, name, inputs, **extra)
        if extra:
            assert json.loads((out / "meta.json").read_text())["jobs"] > 10
        other = files_of(out)
        def outputs(files):
            return {k for k in files if not k.startswith("manifests/")}
        assert outputs(other) == outputs(one)
        for k in one:
            if not k.startswith("manifests/") and k not in ("meta.json", "stats.md"):
                assert other[k] == one[k], (name, k)
        assert audit.audit(out)["ok"]
    seeded = files_of(build(tmp_path, "seed", inputs, seed=6))
    assert seeded["pretrain/pretrain-00000.bin"] != one["pretrain/pretrain-00000.bin"]


def test_a_build_killed_midway_resumes_where_it_stopped(tmp_path, inputs, monkeypatch):
    """A crash in the fourth job: a rerun keeps the three finished jobs (and the read sources and the plan), redoes
    the rest, discards a half-written folder of a dead process, and writes what an uninterrupted build writes."""
    want = files_of(build(tmp_path, "whole", inputs, bucket_interactions=50))
    calls = []
    real = jobs.write_train

    def crash_at_the_fourth(cfg, job, tok_path, out):
        calls.append(job.name)
        if len(calls) == 4:
            (out / "half-written").write_text("x")
            raise KeyboardInterrupt("killed")
        return real(cfg, job, tok_path, out)
    monkeypatch.setattr(jobs, "write_train", crash_at_the_fourth)
    with pytest.raises(KeyboardInterrupt):  # one worker: the jobs run in this process, where the crash is planted
        build(tmp_path, "resumed", inputs, bucket_interactions=50, workers=1)
    work = tmp_path / "resumed" / "work"
    finished = {p: p.stat().st_mtime_ns for p in (work / "jobs").rglob("done.json")}
    assert len(finished) == 3  # the three training jobs before the crash
    assert not list((work / "jobs").rglob("*.tmp-*")) and not (tmp_path / "resumed" / "meta.json").exists()
    dead = subprocess.Popen(["true"])
    dead.wait()  # a process that has ended: what kill -9 leaves behind is its half-written folder
    stale = work / "jobs" / "beauty" / f"train-00003-of-00004.tmp-{workdir.HOST}-{dead.pid}"
    stale.mkdir()
    (stale / "pretrain.tokens.bin").write_bytes(b"half")
    before = {p: p.stat().st_mtime_ns for d in ("sources", "plan") for p in (work / d).rglob("done.json")}
    calls.clear()
    monkeypatch.setattr(jobs, "write_train", real)
    out = build(tmp_path, "resumed", inputs, bucket_interactions=50)
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # not redone
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert not list((work / "jobs").rglob("*.tmp-*"))
    got = files_of(out)
    assert got.keys() == want.keys()
    for k in want:
        if k not in ("meta.json", "stats.md"):
            assert got[k] == want[k], k
    # run again: already built, nothing is redone
    mtime = (out / "meta.json").stat().st_mtime_ns
    build(tmp_path, "resumed", inputs, bucket_interactions=50)
    assert (out / "meta.json").stat().st_mtime_ns == mtime


def test_kill_9_then_the_same_command(tmp_path, inputs):
    """`kill -9` of a running build (its worker processes die with it), then the same command: the build ends with
    what an uninterrupted one writes."""
    from data_fixtures import REPO, write_config
    want = files_of(build(tmp_path, "whole", inputs, bucket_interactions=20))
    out = tmp_path / "killed"
    cfg = write_config(tmp_path / "killed.yaml", out, inputs, bucket_interactions=20, workers=2)
    proc = subprocess.Popen([sys.executable, "-m", "data.prepare", str(cfg)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while proc.poll() is None and not list(out.glob("work/jobs/*/*/done.json")) and time.time() < deadline:
        time.sleep(0.01)
    children = pathlib.Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    workers = [int(p) for p in children.read_text().split()] if children.exists() else []
    os.kill(proc.pid, 9)
    proc.wait()
    for _ in range(200):  # the kernel ends the workers (PR_SET_PDEATHSIG)
        if not any(pathlib.Path(f"/proc/{w}").exists() for w in workers):
            break
        time.sleep(0.05)
    assert not any(pathlib.Path(f"/proc/{w}").exists() for w in workers)
    assert pipeline.main([str(cfg)]) == 0
    got = files_of(out)
    for k in want:
        if k not in ("meta.json", "stats.md"):
            assert got[k] == want[k], k


def test_a_changed_config_redoes_what_it_changes(tmp_path, inputs, capsys):
    out = build(tmp_path, "a", inputs)
    work = out / "work"
    sources = {p: p.stat().st_mtime_ns for p in (work / "sources").rglob("done.json")}
    plans = {p: p.stat().st_mtime_ns for p in (work / "plan").rglob("done.json")}
    capsys.readouterr()
    build(tmp_path, "a", inputs, max_seq_len=200)  # the same out_dir, another max_seq_len
    assert "redoing it" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in sources} == sources and {p: p.stat().st_mtime_ns for p in plans} == plans
    fresh = files_of(build(tmp_path, "b", inputs, max_seq_len=200))
    got = files_of(out)
    for k in fresh:
        if k not in ("meta.json", "stats.md"):
            assert got[k] == fresh[k], k
    assert json.loads((out / "meta.json").read_text())["config"]["max_seq_len"] == 200
    build(tmp_path, "a", inputs, seed=9)  # the seed changes the plan: the plan is redone, the sources are not
    assert {p: p.stat().st_mtime_ns for p in sources} == sources and any(
        p.stat().st_mtime_ns != t for p, t in plans.items())


def test_stages_as_separate_commands(tmp_path, inputs):
    """What scripts/build_slurm.sh runs: prepare, every job by number (any order), merge; the same outputs. A job
    or a merge before its inputs are ready says what to run."""
    from data_fixtures import write_config
    want = files_of(build(tmp_path, "whole", inputs, bucket_interactions=80))
    out = tmp_path / "staged"
    cfg = str(write_config(tmp_path / "staged.yaml", out, inputs, bucket_interactions=80))
    with pytest.raises(SystemExit, match="stage prepare"):
        pipeline.main([cfg, "--job", "0"])
    assert pipeline.main([cfg, "--stage", "prepare"]) == 0
    n = len((out / "work" / "jobs.txt").read_text().split())
    assert n > 2
    with pytest.raises(SystemExit, match="--job 0"):
        pipeline.main([cfg, "--stage", "merge"])
    for k in reversed(range(n)):
        assert pipeline.main([cfg, "--job", str(k)]) == 0
    with pytest.raises(SystemExit, match=f"jobs 0..{n - 1}"):
        pipeline.main([cfg, "--job", str(n)])
    assert pipeline.main([cfg, "--stage", "merge"]) == 0
    got = files_of(out)
    for k in want:
        if k not in ("meta.json", "stats.md"):
            assert got[k] == want[k], k


def _add_manifest_row(path, **changes):
    """Append to a manifest a copy of its first row with `changes` (a planted leak)."""
    table = pq.read_table(path)
    row = {c: table.column(c)[0].as_py() for c in table.column_names}
    row.update(changes)
    pq.write_table(pa.concat_tables([table, pa.Table.from_pylist([row], schema=table.schema)]), path)


def test_audit_catches_a_planted_leak(tmp_path, inputs):
    out = build(tmp_path, "a", inputs)
    assert audit.main([str(out)]) == 0
    held = pq.read_table(out / "manifests/beauty/eval-00000.parquet").to_pylist()[0]
    _add_manifest_row(out / "manifests/beauty/train-00000.parquet", **{**held, "use": "pretrain", "task": None,
                                                                       "split": None})
    result = audit.audit(out)
    assert not result["ok"] and result["leaked_interactions"] == 1
    assert any("held out" in p for p in result["problems"])
    assert audit.main([str(out)]) == 1


def test_users_of_a_benchmark_are_excluded_by_raw_id_and_a_leak_across_id_spaces_is_caught(tmp_path, capsys):
    """A P5 benchmark (integer ids) and the raw Amazon files of a newer version (reviewerIDs, ASINs) that share
    users: with P5's datamaps.json the newer source's copies of the benchmark's users are removed, compared by raw
    id; without it nothing matches, and the build says so loudly. The audit compares raw ids too: a held-out
    (reviewer, ASIN) pair planted in the newer source's training data, under its own ids, is caught."""
    beauty = p5_fixture(tmp_path / "beauty", datamaps=True)
    raw = amazon_fixture(tmp_path / "amazon2018", [f"R{u}" for u in range(1, 11)] + [f"N{u}" for u in range(30)])
    sources = [{"name": "beauty", "reader": "p5", "domain": "amazon", "benchmark": True,
                "options": {"path": str(beauty), "datamaps": "datamaps.json"}},
               {"name": "amazon2018", "reader": "amazon", "domain": "amazon", "exclude_users_of": ["beauty"],
                "options": {"reviews": str(raw / "reviews.json"), "meta": str(raw / "meta.json")}}]
    out = build(tmp_path, "raw", sources)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["sources"]["amazon2018"]["excluded_users"] == 10 and not meta["warnings"]
    assert meta["sources"]["amazon2018"]["users_dropped"]["user_in_benchmark_version"] == 10
    assert audit.audit(out)["ok"]
    held = pq.read_table(out / "manifests/beauty/eval-00000.parquet").to_pylist()[0]
    assert held["raw_user"].startswith("R") and held["raw_item"].startswith("B")
    _add_manifest_row(out / "manifests/amazon2018/train-00000.parquet", raw_user=held["raw_user"],
                      raw_item=held["raw_item"], user=held["raw_user"], item=held["raw_item"], time=1.5e9)
    result = audit.audit(out)
    assert not result["ok"] and result["leaked_interactions"] == 0 and result["leaked_across_id_spaces"] == 1
    assert any("trains on 1 users of beauty" in p for p in result["problems"])
    # without the datamaps, the P5 users are integers: nobody is excluded, and the build warns
    sources[0]["options"].pop("datamaps")
    out = build(tmp_path, "no-maps", sources)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["sources"]["amazon2018"]["excluded_users"] == 0
    assert len(meta["warnings"]) == 1 and "removed no user" in meta["warnings"][0]
    assert "WARNING" in capsys.readouterr().err and "**WARNING**" in (out / "stats.md").read_text()


def test_bad_line_stops_or_is_skipped_and_counted(tmp_path):
    sources = two_sources(movielens_fixture(tmp_path / "ml", bad_line="1\t2\tNaNx\t5"), p5_fixture(tmp_path / "beauty"))
    with pytest.raises(DataError, match=r"u.data:6: bad_rating"):
        build(tmp_path, "a", sources)
    out = build(tmp_path, "b", sources, "--skip_bad=true")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["sources"]["ml"]["bad_lines"] == {"bad_rating": 1}
    assert "u.data:6" in meta["sources"]["ml"]["bad_line_examples"]["bad_rating"]


def test_packed_reader_validates_metadata(tmp_path, inputs):
    out = build(tmp_path, "a", inputs)
    shard = out / "pretrain" / "pretrain-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(ValueError, match="pretrain-00000.bin"):
        PackedDataset(out)
    with pytest.raises(FileNotFoundError, match="meta.json"):
        PackedDataset(tmp_path)
    shutil.rmtree(out / "pretrain")
    meta = json.loads((out / "meta.json").read_text())
    meta["format_version"] = 1
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="v1, expected 'recgpt-packed' v2"):
        PackedDataset(out)


FAKE_SBATCH = r'''#!/usr/bin/env bash
# sbatch stand-in: logs its arguments, runs the --wrap command at once (each task of an --array in turn)
echo "$*" >> "$SBATCH_LOG"
array=""; wrap=""
while [[ $# -gt 0 ]]; do
  case $1 in --array=*) array=${1#--array=}; array=${array%\%*};; --wrap) wrap=$2; shift;; esac; shift
done
if [[ -n $array ]]; then
  for ((k = ${array%-*}; k <= ${array#*-}; k++)); do SLURM_ARRAY_TASK_ID=$k bash -c "$wrap" >&2 || exit 1; done
else
  bash -c "$wrap" >&2 || exit 1
fi
echo $RANDOM
'''


def test_slurm_launcher_runs_the_stages_as_jobs(tmp_path, inputs):
    """scripts/build_slurm.sh with a stand-in sbatch that runs each job at once: prepare, then an array of one task
    per job, then the merge after the array (afterok); the outputs are those of a local build."""
    import os
    import subprocess
    import sys
    from data_fixtures import REPO, write_config
    want = files_of(build(tmp_path, "local", inputs, bucket_interactions=80))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    out = tmp_path / "slurm"
    cfg = write_config(tmp_path / "slurm.yaml", out, inputs, bucket_interactions=80)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SBATCH_LOG": str(tmp_path / "sbatch.log"),
           "PY": sys.executable, "LOGS": str(tmp_path / "logs"), "PYTHONPATH": str(REPO)}
    r = subprocess.run(["bash", "scripts/build_slurm.sh", str(cfg), "--seed=5"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    calls = (tmp_path / "sbatch.log").read_text().splitlines()
    n = len((out / "work" / "jobs.txt").read_text().split())
    assert len(calls) == 3 and f"--array=0-{n - 1}%64" in calls[1] and "--dependency=afterok:" in calls[2]
    assert "--stage prepare" in calls[0] and "--job $SLURM_ARRAY_TASK_ID" in calls[1] and "--stage merge" in calls[2]
    got = files_of(out)
    for k in want:
        if k not in ("meta.json", "stats.md"):
            assert got[k] == want[k], k


def test_a_stage_is_complete_or_absent(tmp_path):
    """workdir.run_stage: a failing write leaves nothing; when another process finished the same stage first (its
    folder appeared while this one wrote), that folder is kept and returned; a different fingerprint redoes it."""
    folder = tmp_path / "stage"

    def failing(out):
        (out / "half").write_text("x")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        workdir.run_stage(folder, "fp1", failing, "stage")
    assert list(tmp_path.iterdir()) == []

    def beaten(out):  # another process renames its finished folder into place meanwhile
        folder.mkdir()
        (folder / "done.json").write_text(json.dumps({"fingerprint": "fp1", "result": {"by": "first"}}))
        return {"by": "second"}
    assert workdir.run_stage(folder, "fp1", beaten, "stage")["result"] == {"by": "first"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]
    redone = workdir.run_stage(folder, "fp2", lambda o: {"by": "redo"}, "stage", announce=False)
    assert redone["result"] == {"by": "redo"} and workdir.done_record(folder) == redone


def test_item_tokens_and_sampled_negatives(tmp_path):
    """item_tokens: one added token per catalog item and per rating string, each encoding to one id; the documents,
    pairs and evaluation files hold the same interactions as the text build, each line now 2-3 tokens. eval.negatives:
    every next-item example lists its target once among N items of the catalog that the user never touched, the same
    in both builds; a given tokenizer cannot take item tokens (config error)."""
    ml = movielens_fixture(tmp_path / "ml")
    source = {"name": "ml", "reader": "movielens", "domain": "movielens", "benchmark": True,
              "finetune_from_train": True, "options": {"path": str(ml)}}
    text = build(tmp_path, "text", [source], eval={"negatives": 5})
    tokens = build(tmp_path, "tokens", [{**source, "item_tokens": True}], eval={"negatives": 5})
    tok = tokenizer_lib.load(tokens / "tokenizer.json")
    added = [f"<ml#{i}>" for i in range(1, 32)] + [f"{r}.0/5.0" for r in range(1, 6)]
    ids = [tok.encode(t, add_special_tokens=False).ids for t in added]
    assert all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == len(added)
    n = tok.get_vocab_size(with_added_tokens=True)  # the BPE may stop short of its share: no pair left to merge
    assert n <= 400 and [i[0] for i in ids] == list(range(n - len(added), n))  # the last ids, in catalog order
    assert tok.decode(tok.encode("<ml#3>4.0/5.0\n<ml#12>", add_special_tokens=False).ids) == "<ml#3>4.0/5.0\n<ml#12>"
    # the same interactions, fewer tokens: every rated item of a document is the 2 tokens item + rating
    t_stats, k_stats = (json.loads((b / "meta.json").read_text())["sources"]["ml"]["counts"] for b in (text, tokens))
    assert t_stats["interactions_in_documents"] == k_stats["interactions_in_documents"]
    assert k_stats["tokens"] < t_stats["tokens"] / 3
    rows = PackedDataset(tokens)
    flat = np.concatenate([np.asarray(rows[i]) for i in range(len(rows))])
    item_ids = {i[0] for i in ids[:31]}
    assert sum(int(t) in item_ids for t in flat) == k_stats["interactions_in_documents"]
    for task in ("next_item", "rating"):
        for split in ("test", "validation"):
            a, b = (read_jsonl(out / "eval" / "ml" / f"{task}_{split}.jsonl") for out in (text, tokens))
            assert [(x["user"], x["target_item_id"], x.get("candidates")) for x in a] == \
                   [(x["user"], x["target_item_id"], x.get("candidates")) for x in b]
            # shorter lines: a cut prompt keeps at least as many of its most recent items
            assert all(y["history_item_ids"][-len(x["history_item_ids"]):] == x["history_item_ids"]
                       for x, y in zip(a, b) if x["history_item_ids"])
    catalog = {r["item_id"]: r["text"] for r in read_jsonl(tokens / "eval" / "ml" / "catalog.jsonl")}
    assert catalog["7"] == "<ml#7>" and len(catalog) == 31
    seen = {}
    for line in (ml / "u.data").read_text().splitlines():
        user, item = line.split("\t")[:2]
        seen.setdefault(user, set()).add(item)
    test = read_jsonl(text / "eval" / "ml" / "next_item_test.jsonl")
    valid = {x["user"]: x for x in read_jsonl(text / "eval" / "ml" / "next_item_validation.jsonl")}
    for x in test:
        c = x["candidates"]
        assert len(c) == len(set(c)) == 6 and c.count(x["target_item_id"]) == 1 and set(c) <= set(catalog)
        assert not (set(c) - {x["target_item_id"]}) & seen[x["user"]]  # never an item of the user's whole history
    assert sum(x["candidates"] != valid[x["user"]]["candidates"] for x in test) > len(test) // 2  # drawn per split
    again = build(tmp_path, "again", [source], eval={"negatives": 5})
    assert files_of(again)["eval/ml/next_item_test.jsonl"] == files_of(text)["eval/ml/next_item_test.jsonl"]
    with pytest.raises(ConfigError, match=r"tokenizer.train.vocab_size' = 290: .*257 ids .* 36 item and rating"):
        build(tmp_path, "small", [{**source, "item_tokens": True}], tokenizer={"train": {"vocab_size": 290}})
    with pytest.raises(ConfigError, match=r"sources.0.item_tokens.*needs tokenizer.train"):
        build(tmp_path, "given", [{**source, "item_tokens": True}],
              tokenizer={"path": str(tokens / "tokenizer.json")})
