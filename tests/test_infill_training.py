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
from data.formats.infilling import document_entities, row_entities
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
    return row_entities(row, c.newline_id, c.eos_id)


def restored_spans(ex, row, c) -> list:
    """The example rebuilds its row (the collator only marks and moves spans), but for [gMASK], which drops the row's
    last piece of a line so that its suffix is a whole item line -> each span's [start, end) in the row."""
    tokens, ranges = restore(ex, c.ids)
    gmask = c.ids["gmask"] in ex.input_ids
    assert tokens == row.tolist()[:len(tokens)] and (len(tokens) == len(row) or gmask)
    if gmask:  # the suffix is a whole item line: its document's newest one when a document ends in the row
        items, r = item_ranges(row, c), row.tolist()
        ends = [e for _, e in items if e < len(r) and r[e] == c.eos_id]
        assert ranges[-1] in items and (len(tokens) == max(ends) if ends else len(tokens) == items[-1][1])
    return ranges


def test_rows_become_infilling_examples_with_whole_item_lines(build_dir):
    c = collator(build_dir)
    ds = PackedDataset(build_dir)
    masked_items = 0
    for i in range(len(ds)):
        row = np.asarray(ds[i])[:96]
        ex = c.example(row, i)
        ranges = restored_spans(ex, row, c)
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


def beauty_collator(out, *extra):
    import dataclasses

    from model.config import MPTConfig

    cfg = load_config(TINY, [f"--data.path={out}", "--infill.objective=infill", *extra])
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
        ranges = restored_spans(ex, row, c)
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
    gmask_only = beauty_collator(beauty_build, "--infill.mix=[0,0,1]")
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
        # and Part A: the collator's [gMASK] example of a packed row holding this document then the answer's line
        # (then a piece of the next document) is the decoder's prompt, up to the row's leading EOS
        row = np.asarray([c.eos_id] + history + answer + [c.newline_id] + history[:5])
        built = gmask_only.example(row, 0)
        prompt = gmask_prompt(history, entities, c.ids)
        n = built.prefix_end
        assert built.input_ids[1:n] == prompt.input_ids[:-1] and built.intra[1:n] == prompt.intra[:-1]
        assert [p - 1 for p in built.positions[1:n]] == prompt.positions[:-1]
        assert built.targets[n:] == answer + [c.ids["end"]]
        checked += 1
    assert checked > 100


@pytest.fixture(scope="module")
def ml_benchmark(tmp_path_factory):
    """MovieLens as a benchmark: instruction pairs (next item, rating) and eval files with a catalog."""
    tmp = tmp_path_factory.mktemp("mlb")
    source = [{"name": "ml", "reader": "movielens", "domain": "movielens", "benchmark": True, "rating_split": True,
               "finetune_from_train": True, "options": {"path": str(movielens_fixture(tmp / "raw", n_users=60))}}]
    return build(tmp, "data", source, max_seq_len=256)


def test_pairs_become_gmask_generation_and_decode_alike(ml_benchmark):
    """finetune.py's collator: Part A = the prompt (item lines marked) + [gMASK], Part B = [START] response
    predicting [END], the EOS dropped; its Part A and intra ids are those the decoder builds for the same prompt."""
    from data.formats.infilling import gmask_prompt, prompt_entities
    from data.formats.instructions import InstructionDataset
    from training.infilling import pair_collator_for
    from training.loop import model_config

    cfg = load_config("configs/train/tiny-finetune.yaml", [f"--data.path={ml_benchmark}", *ARGS])
    c = pair_collator_for(cfg, model_config(cfg), 256)
    ds = InstructionDataset(ml_benchmark)
    tasks = set()
    for i in range(0, len(ds), max(1, len(ds) // 40)):
        ex, rec = ds[i], ds.record(i)
        tasks.add(rec["task"])
        n_prompt = int((ex["labels"] == IGNORE_INDEX).sum())
        prompt, response = ex["input_ids"][:n_prompt].tolist(), ex["input_ids"][n_prompt:-1].tolist()
        inf = c.example(np.asarray(ex["input_ids"]), np.asarray(ex["labels"]), i)
        entities = prompt_entities(prompt, c.newline_id)
        assert len(entities) == rec["prompt"].split("\n\n")[1].count("\n") + 1  # every history line, no other
        decode = gmask_prompt(prompt, entities, c.ids)  # the decoder's Part A + [START]
        k = inf.prefix_end + 1
        assert (inf.input_ids[:k], inf.positions[:k], inf.intra[:k]) == (decode.input_ids, decode.positions,
                                                                           decode.intra)
        assert inf.input_ids[k:] == response and inf.targets[k - 1:] == response + [c.ids["end"]]
        assert all(t == IGNORE_INDEX for t in inf.targets[:k - 1])
    assert tasks == {"rating", "next_item"}


def test_finetune_py_infilling_then_rating_by_infilling(ml_benchmark, tmp_path):
    """finetune.py --infill.objective=infill learns the pairs' responses as [gMASK] spans; evaluate.py --task rating
    --objective infill then decodes parsable ratings from the instruction prompt + [gMASK]."""
    import evaluate
    import finetune

    out = tmp_path / "ft"

    finetune.main(["configs/train/tiny-finetune.yaml", f"--data.path={ml_benchmark}", f"--run.out_dir={out}",
                   "--infill.objective=infill", "--model.overrides={intra_positions: 64, max_seq_len: 256}", "--data.seq_len=256",
                   "--data.pad_to=longest", "--train.max_steps=80", "--optim.lr=3e-3",
                   "--log.interval=1", "--checkpoint.export_final=true"])
    losses = [json.loads(line)["loss"] for line in open(out / "metrics.jsonl")]
    assert np.mean(losses[:5]) > 2 * np.mean(losses[-5:]), (losses[:5], losses[-5:])
    meta = json.loads((ml_benchmark / "meta.json").read_text())
    bench = ml_benchmark / next(iter(meta["eval"].values()))["dir"]
    res = tmp_path / "eval"
    evaluate.main([f"--checkpoint={out / 'model'}", f"--benchmark={bench}", "--task=rating", f"--out={res}",
                   "--objective=infill", "--device=cpu", "--limit=12", "--seeds", "0"])
    metrics = json.loads((res / "metrics.json").read_text())
    assert metrics["per_seed"]["0"]["n_unparsable"] <= 3, metrics  # the span is a rating string, closed by [END]
    # the expected rating over the rating strings, each scored as a span closed by [END]
    evaluate.main([f"--checkpoint={out / 'model'}", f"--benchmark={bench}", "--task=rating", f"--out={res}-expected",
                   "--objective=infill", "--device=cpu", "--limit=12", "--rating.decoding=expected"])
    predictions = [json.loads(line) for line in open(f"{res}-expected/predictions.jsonl")]
    assert len(predictions) == 12 and all(sum(p["probabilities"].values()) == pytest.approx(1) for p in predictions)
    assert all(1 <= p["expected"] <= 5 for p in predictions)


def test_a_tiny_model_learns_infilling_on_beauty_and_decodes_catalog_titles(tmp_path):
    """Real Amazon Beauty (P5's split and titles; the first 40 users, a 1,000-token BPE trained by the build): a tiny
    model trained with the infilling objective brings its Part-B loss below 0.5, and [gMASK] decoding over its
    training examples (Part A from the collator, the span decoded with the dynamic position mechanism) writes whole
    catalog titles, closed by [END]. This shows the objective is learned and that training and decoding agree; it
    is memorisation: on held-out users a model this small writes no catalog title (docs/recsysllm.md), which is
    issue 14's question at a scale that can learn it."""
    from conftest import SHARED_DATA
    from data.formats.evalfiles import read_catalog
    from data.formats.infilling import InfillPrompt
    from evaluation.generate import GenerationConfig, generate
    from model.checkpoint import load_model
    from training.loop import model_config

    beauty = SHARED_DATA / "amazon-beauty-p5"
    if not (beauty / "sequential_data.txt").is_file():
        pytest.skip(f"{beauty} not found (the shared data)")
    raw = tmp_path / "raw"  # a subset of the shared files, read from there (nothing copied into the repository)
    raw.mkdir()
    users = (beauty / "sequential_data.txt").read_text().splitlines()[:40]
    wanted = {int(i) for line in users for i in line.split()[1:]}
    (raw / "sequential_data.txt").write_text("\n".join(users) + "\n")
    (raw / "items.jsonl").write_text("".join(line for line in open(beauty / "items.jsonl")
                                             if json.loads(line)["item_id"] in wanted))
    out = build(tmp_path, "data", [{"name": "b", "reader": "p5", "domain": "amazon", "benchmark": True,
                                    "options": {"path": str(raw)}}], max_seq_len=256,
                tokenizer={"train": {"vocab_size": 1000}})
    args = [f"--data.path={out}", "--infill.objective=infill", "--infill.mix=[0.2,0.1,0.7]", "--data.seq_len=256",
            "--model.overrides={intra_positions: 256, max_seq_len: 256, vocab_size: 1024, d_model: 128}"]
    train.main([TINY, *args, f"--run.out_dir={tmp_path / 'run'}", "--train.max_steps=250", "--optim.lr=3e-3",
                "--log.interval=1", "--checkpoint.export_final=true"])
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert np.mean(losses[:5]) > 5.0 and np.mean(losses[-10:]) < 0.5, (losses[:5], losses[-10:])

    cfg = load_config(TINY, [*args, "--infill.mix=[0,0,1]"])  # [gMASK] examples only
    c = collator_for(cfg, model_config(cfg), 256)
    model = load_model(tmp_path / "run" / "model").eval()
    catalog = read_catalog(out / "eval" / "b" / "catalog.jsonl", "line")[1]
    titles_tokens = {tuple(e) for e in _encoded(out, catalog)}
    ds = PackedDataset(out)
    titles = reproduced = 0
    for i in range(12):
        batch = c.batch(ds, [i])
        n = int(batch["prefix_end"][0])
        prompt = InfillPrompt(batch["input_ids"][0, :n + 1].tolist(), batch["positions"][0, :n + 1].tolist(),
                              batch["intra_positions"][0, :n + 1].tolist(), n)
        answer = batch["labels"][0, n + 1:][batch["labels"][0, n + 1:] != IGNORE_INDEX].tolist()  # span + [END]
        g = generate(model, [prompt], GenerationConfig(max_new_tokens=len(answer) + 5, eos_token_id=c.ids["end"]),
                     infill=c.trie)[0][0]
        assert tuple(answer[:-1]) in titles_tokens  # every [gMASK] target is a whole catalog line
        titles += g.finish_reason == "eos" and tuple(g.tokens[:-1]) in titles_tokens
        reproduced += g.tokens == answer
    assert titles >= 6 and reproduced >= 6, (titles, reproduced)  # measured: 9 and 9 of 12 (AMD EPYC, 2 cores)


def _encoded(out, texts) -> list:
    from data.formats.tokenizer import load

    tok = load(out / "tokenizer.json")
    return [e.ids for e in tok.encode_batch(list(texts), add_special_tokens=False)]


def test_two_ranks_match_one_rank_and_resume(build_dir, tmp_path):
    """RecSysLLM's objective under torchrun/FSDP2 (gloo, 2 CPU processes): the same per-step losses as one process
    (each example is built from its index and the run's seed, so ranks build exactly their share of the global batch),
    and a run stopped at step 4 resumes to the same losses."""
    from test_training_dist import assert_same, launch, losses

    common = (*ARGS, "--train.max_steps=8", "--checkpoint.interval=4", "--log.interval=1")
    launch("train.py", 2, tmp_path / "two", *common, data=build_dir)
    launch("train.py", 1, tmp_path / "one", *common, data=build_dir)
    assert_same(losses(tmp_path / "two"), losses(tmp_path / "one"), range(1, 9))
    launch("train.py", 1, tmp_path / "resumed", *common, "--train.stop_after=4", data=build_dir)
    launch("train.py", 1, tmp_path / "resumed", *common, data=build_dir)
    assert_same(losses(tmp_path / "resumed"), losses(tmp_path / "one"), range(1, 9))


def test_p5_prompts_mark_the_renderers_entities(tmp_path):
    """P5's prompts on MovieLens with textualised user features (data/prepare/p5_tasks.py): the builder writes each
    prompt's entities (the user description, the items) as character spans; finetune.py's collator marks exactly
    those tokens as entities, and the evaluator's infilling prompt for an evaluation record is the collator's Part A."""
    import config as config_lib
    from conftest import SHARED_DATA
    from data.formats.evalfiles import read_p5_examples
    from data.formats.infilling import gmask_prompt
    from data.formats.instructions import InstructionDataset
    from data.prepare import p5_tasks
    from evaluation.infill_prompts import infill_prompts
    from model.config import MPTConfig
    from training.infilling import pair_collator_for

    ml, tok_path = SHARED_DATA / "movielens-100k", SHARED_DATA / "tokenizer" / "gpt-neox-20b.json"
    if not (ml / "u.user").is_file() or not tok_path.is_file():
        pytest.skip(f"{ml} or {tok_path} not found (the shared data)")
    out = tmp_path / "p5"
    cfg = config_lib.load(p5_tasks.P5TasksConfig, "configs/data/p5-movielens.yaml", [
        f"--out_dir={out}", f"--tokenizer.path={tok_path}", "--max_users=12", f"--source.path={ml}"])
    p5_tasks.build(cfg, log=lambda *a: None)
    train_cfg = load_config("configs/train/tiny-finetune.yaml", [f"--data.path={out}", *ARGS])
    import dataclasses
    config = dataclasses.replace(MPTConfig.from_name("tiny"), vocab_size=50432, intra_positions=256,
                                 max_seq_len=2048)
    c = pair_collator_for(train_cfg, config, 2048)
    ds = InstructionDataset(out)
    features = 0
    for i in range(0, len(ds), max(1, len(ds) // 60)):
        ex, rec = ds[i], ds.record(i)
        n_prompt = int((ex["labels"] == IGNORE_INDEX).sum())
        prompt = ex["input_ids"][:n_prompt].tolist()
        assert rec["entities"], rec["prompt"]
        spans = [rec["prompt"][a:b] for a, b in rec["entities"]]
        for (s, e), text in zip(c.entities(prompt, rec, i), sorted(spans, key=rec["prompt"].index)):
            assert c.tokenizer.decode(prompt[s:e]).strip() == text  # whole tokens, exactly the rendered value
        features += any(text.endswith(("-year-old male technician", "-year-old female")) or "-year-old" in text
                        for text in spans)
    assert features > 10  # the user features are entities of the rating prompts
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    records = read_p5_examples(out / "eval" / cfg.name / "p5" / "1-10_test.jsonl", limit=5)

    class Eval:
        infill_prompt, task = "prompt", "rating"

    model = build_tiny_infill_model(config)
    prompts, _, ids = infill_prompts(Eval, model, tok, records)
    for rec, got in zip(records, prompts):
        prompt = tok.encode(rec["prompt"], add_special_tokens=False).ids
        want = gmask_prompt(prompt, c.entities(prompt, rec, 0), c.ids)
        assert (got.input_ids, got.positions, got.intra) == (want.input_ids, want.positions, want.intra)
        assert any(i > 1 for i in got.intra)  # the user description and the item are numbered as entities


def build_tiny_infill_model(config):
    class Stub:  # infill_prompts reads the model's config only
        pass

    stub = Stub()
    stub.config = config
    return stub
