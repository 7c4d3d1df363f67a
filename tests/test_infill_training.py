"""RecSysLLM's objective on real build rows (training/infilling.py): item lines are entities and are never split, the
loss is on Part B only, each ablation switch changes the batches as intended, and train.py learns it."""
import json

import numpy as np
import pytest
import torch

import train
from data.formats.infilling import IGNORE_INDEX
from data.formats.packed import PackedDataset
from data_fixtures import build, movielens_fixture
from training.config import load_config
from data.formats.infilling import document_entities
from training.infilling import collator_for

TINY = "configs/train/tiny-pretrain.yaml"
ARGS = ["--infill.objective=infill", "--model.overrides={intra_positions: 64}", "--data.seq_len=96"]


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ml")
    source = [{"name": "ml", "reader": "movielens", "domain": "movielens", "options": {"path": str(
        movielens_fixture(tmp / "raw", n_users=60))}}]
    return build(tmp, "data", source, finetune_fraction=0.0)


def collator(build_dir, *extra):
    from training.loop import model_config

    cfg = load_config(TINY, [f"--data.path={build_dir}", *ARGS, *extra])
    return collator_for(cfg, model_config(cfg), 96)


def restore(ex, ids):
    """Part A with each mask replaced by its Part-B span -> (the original tokens, each span's [start, end))."""
    part_b = ex.input_ids[ex.prefix_end:]
    starts = [k for k, t in enumerate(part_b) if t == ids["start"]] + [len(part_b)]
    spans = [part_b[s + 1:e] for s, e in zip(starts, starts[1:])]
    tokens, ranges = [], []
    masks = {ids["mask"], ids["smask"], ids["gmask"]}
    for t in ex.input_ids[:ex.prefix_end]:
        if t in masks:
            span = spans[len(ranges)]
            ranges.append((len(tokens), len(tokens) + len(span)))
            tokens += span
        else:
            tokens.append(t)
    return tokens, ranges


def item_ranges(row, c):
    return document_entities(row, c.newline_id, c.eos_id)


def test_rows_become_infilling_examples_with_whole_item_lines(build_dir):
    c = collator(build_dir)
    ds = PackedDataset(build_dir)
    masked_items = 0
    for i in range(len(ds)):
        row = np.asarray(ds[i])[:96]
        ex = c.example(row, i)
        tokens, ranges = restore(ex, c.ids)
        assert tokens == row.tolist()  # lossless: the collator only marks and moves spans
        assert all(t == IGNORE_INDEX for t in ex.targets[:ex.prefix_end])  # no loss on Part A
        for s, e in item_ranges(row, c):  # no span boundary falls inside an item line
            assert not any(s < a < e or s < b < e for a, b in ranges), (i, (s, e), ranges)
            masked_items += any(a <= s and e <= b for a, b in ranges)
    assert masked_items > 20


def test_each_ablation_switch_changes_the_batches(build_dir):
    ds = PackedDataset(build_dir)
    rows = range(min(40, len(ds)))
    base = collator(build_dir)

    def batch(c):
        return c.batch(ds, list(rows))

    ref = batch(base)
    no_intra = batch(collator(build_dir, "--infill.intra=false"))
    assert ref["intra_positions"].any() and not no_intra["intra_positions"].any()
    assert torch.equal(no_intra["input_ids"], ref["input_ids"])  # only the intra ids differ
    shuffled = batch(collator(build_dir, "--infill.chronological=false", "--infill.mix=[1,0,0]"))
    chrono = batch(collator(build_dir, "--infill.mix=[1,0,0]"))
    assert torch.equal(shuffled["prefix_end"], chrono["prefix_end"])  # the same Part A
    assert not torch.equal(shuffled["input_ids"], chrono["input_ids"])  # Part B in another order somewhere
    tokens_spans = collator(build_dir, "--infill.entity_masking=false", "--infill.mix=[1,0,0]")
    split = 0
    for i in rows:  # token spans cut item lines: some masked span starts or ends inside a line
        row = np.asarray(ds[i])[:96]
        ex = tokens_spans.example(row, i)
        _, ranges = restore(ex, tokens_spans.ids)
        split += any(s < a < e or s < b < e for s, e in item_ranges(row, tokens_spans) for a, b in ranges)
    assert split > 0
    sampled = collator(build_dir, "--infill.behaviour_sampling=true")
    row = np.asarray(ds[0])[:96]
    assert len(sampled.example(row, 0).input_ids) < len(base.example(row, 0).input_ids)


def test_infilling_needs_the_intra_table(build_dir):
    from training.loop import model_config

    cfg = load_config(TINY, [f"--data.path={build_dir}", "--infill.objective=infill"])
    with pytest.raises(ValueError, match="needs a model with an intra-position table"):
        collator_for(cfg, model_config(cfg), 96)


def test_train_py_learns_the_infilling_objective(build_dir, tmp_path):
    out = tmp_path / "run"
    train.main([TINY, f"--data.path={build_dir}", f"--run.out_dir={out}", *ARGS, "--train.max_steps=60",
                "--log.interval=1", "--checkpoint.export_final=true"])
    losses = [json.loads(line)["loss"] for line in open(out / "metrics.jsonl")]
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert first > 5.0 and last < 4.0, (first, last)  # Part B only: from about log(512) to well below it
    from model.checkpoint import load_model

    model = load_model(out / "model")
    assert model.wte_intra is not None and model.wte_intra.weight.abs().sum() > 0  # the intra table was trained


@pytest.fixture(scope="module")
def beauty_build(tmp_path_factory):
    from conftest import SHARED_DATA

    beauty, tok = SHARED_DATA / "amazon-beauty-p5", SHARED_DATA / "tokenizer" / "gpt-neox-20b.json"
    if not (beauty / "sequential_data.txt").is_file() or not tok.is_file():
        pytest.skip(f"{beauty} or {tok} not found (the shared data)")
    tmp = tmp_path_factory.mktemp("beauty")
    return build(tmp, "beauty", [{"name": "b", "reader": "p5", "domain": "amazon", "benchmark": True,
                                  "options": {"path": str(beauty)}}], tokenizer={"path": str(tok)}, max_seq_len=256)


def beauty_collator(out):
    import dataclasses

    from model.config import MPTConfig

    cfg = load_config(TINY, [f"--data.path={out}", "--infill.objective=infill"])
    config = dataclasses.replace(MPTConfig.from_name("tiny"), vocab_size=50432, intra_positions=256, max_seq_len=512)
    return collator_for(cfg, config, 256)


def test_real_beauty_histories_never_split_an_entity(beauty_build):
    """The property over rows of a build of Amazon Beauty (P5's split, real titles, GPT-NeoX tokens): rebuilt from
    Part A and Part B, and no span boundary inside an item line."""
    out, c = beauty_build, beauty_collator(beauty_build)
    ds = PackedDataset(out)
    rows = range(0, len(ds), max(1, len(ds) // 400))  # about 400 rows spread over the build
    masked = 0
    for i in rows:
        row = np.asarray(ds[i])
        ex = c.example(row, i)
        tokens, ranges = restore(ex, c.ids)
        assert tokens == row.tolist()
        for s, e in item_ranges(row, c):
            assert not any(s < a < e or s < b < e for a, b in ranges), (i, (s, e), ranges)
            masked += any(a <= s and e <= b for a, b in ranges)
    assert masked > 100


def test_collator_and_decoder_number_held_out_answers_alike(beauty_build):
    """On held-out next-item examples: the training example of history + answer (the collator, its catalog pool)
    gives the answer's tokens the intra ids the decoder gives them, step by step (evaluation/generate.py)."""
    from data.formats.infilling import gmask_prompt, infill, units_of
    from data.formats.tokenizer import load
    from evaluation.generate import InfillState

    c = beauty_collator(beauty_build)
    tok = load(beauty_build / "tokenizer.json") if (beauty_build / "tokenizer.json").is_file() else None
    meta = json.loads((beauty_build / "meta.json").read_text())
    tok = tok or load(meta["tokenizer"]["path"])
    catalog = {json.loads(line)["item_id"]: json.loads(line)["line"]
               for line in open(beauty_build / meta["eval"]["b"]["catalog"])}
    examples = [json.loads(line) for line in open(beauty_build / meta["eval"]["b"]["dir"] / "next_item_test.jsonl")]
    checked = 0
    for x in examples[:: max(1, len(examples) // 200)]:
        history = tok.encode(x["document"], add_special_tokens=False).ids + [c.newline_id]
        answer = tok.encode(catalog[x["target_item_id"]], add_special_tokens=False).ids
        entities = document_entities(history, c.newline_id, c.eos_id)
        last = len(units_of(len(history), entities))
        ex = infill(history + answer, entities + [(len(history), len(history) + len(answer))], [(last, last + 1)],
                    c.ids, c.trie, mask="gmask")
        state = InfillState([gmask_prompt(history, entities, c.ids)], [0], c.trie, "cpu", 10_000)
        decoded = [int(state.step(None, torch.tensor([t]), whole=False)["intra_positions"]) for t in answer]
        assert ex.intra[ex.prefix_end + 1:] == decoded, x["user"]
        checked += 1
    assert checked > 100
