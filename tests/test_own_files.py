"""Bring your own data: the build from your own pairs and documents (data/prepare/own_files.py), its evaluation
files (data/formats/evalfiles.py), the yes/no and text scoring (evaluation/text_tasks.py) and their metrics."""
import itertools
import json
import pathlib
import random

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import config as config_lib
from config import cli
from data.formats.evalfiles import read_examples
from data.formats.instructions import IGNORE_INDEX, InstructionDataset, read_jsonl
from data.formats.packed import PackedDataset, read_meta
from data.formats.tokenizer import EOS, sha256_file
from data.prepare import own_files
from data.prepare.own_files import ALPACA_TEMPLATE, ALPACA_TEMPLATE_NO_INPUT, OwnFilesConfig, build
from evaluation.generate import GenerationConfig, generate_text
from evaluation.metrics import roc_auc, text_match_metrics
from evaluation.text_tasks import evaluate_text, evaluate_yes_no, yes_no_scores
from model.config import MPTConfig
from model.mpt import build_model

REPO = pathlib.Path(__file__).resolve().parents[1]
WORDS = ("the user liked the film about space and rated it well; would they like a quiet drama "
         "Yes No yes no maybe summarise this review: great sound, poor battery. Instruction Input Response").split()


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory):
    """A small byte-level BPE (GPT-2/NeoX pre-tokenisation) with <|endoftext|>, trained here on a few strings."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(WORDS)] * 5 + [ALPACA_TEMPLATE, ALPACA_TEMPLATE_NO_INPUT], trainer=trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


def tokens(tok_path, text):
    return Tokenizer.from_file(str(tok_path)).encode(text, add_special_tokens=False).ids


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def make_cfg(tmp_path, tok_path, **values):
    return config_lib.from_dict(OwnFilesConfig, {"name": "own", "out_dir": str(tmp_path / "out"),
                                                 "tokenizer": {"path": str(tok_path)}, **values})


def run(cfg):
    return build(cfg, log=lambda *_: None)


def pairs(n, yes_no=False):
    return [{"prompt": f"### Instruction:\nthe user liked film {i}; would they like drama {i % 7}?\n\n### Response:",
             "response": ("Yes" if i % 3 else "No") if yes_no else f"rated it {i % 5} well", "id": f"p{i}",
             "user": i} for i in range(n)]


# ---------------------------------------------------------------------------------------------------------------
# pairs


def test_prompt_response_jsonl_build(tmp_path, tok_path):
    train = write_jsonl(tmp_path / "train.jsonl", pairs(20))
    test = write_jsonl(tmp_path / "test.jsonl", pairs(3))
    meta = run(make_cfg(tmp_path, tok_path, valid_fraction=0.2, pairs={"train": str(train), "test": str(test)}))
    out = tmp_path / "out"
    assert read_meta(out)[1] == meta and meta["counts"]["pairs.train"]["read"] == 20
    eos = Tokenizer.from_file(str(tok_path)).token_to_id(EOS)
    ds, valid = InstructionDataset(out), InstructionDataset(out, "instructions_valid")
    assert (len(ds), len(valid)) == (16, 4)  # round(20 * 0.2) held out
    for d in (ds, valid):
        for i in range(len(d)):
            x, record = d[i], d.record(i)
            prompt_ids, response_ids = tokens(tok_path, record["prompt"]), tokens(tok_path, record["response"])
            assert x["input_ids"].tolist() == prompt_ids + response_ids + [eos]
            assert (x["labels"][:len(prompt_ids)] == IGNORE_INDEX).all()
            assert x["labels"][len(prompt_ids):].tolist() == response_ids + [eos]
            assert record["fields"] == {"user": int(record["id"][1:])}  # other fields carried along
    train_ids = {ds.record(i)["id"] for i in range(len(ds))}
    valid_ids = {valid.record(i)["id"] for i in range(len(valid))}
    assert not train_ids & valid_ids and len(train_ids | valid_ids) == 20
    # the evaluation file: the training rendering, byte for byte
    examples = read_examples(out / "eval" / "own" / "text_test.jsonl", "text")
    rendered = {r["id"]: r["prompt"] for r in pairs(3)}
    assert [x["id"] for x in examples] == ["p0", "p1", "p2"]
    assert all(x["prompt"] == rendered[x["id"]] and x["target_text"] == x["response"] for x in examples)
    assert meta["eval"]["own"]["files"] == {"text_test.jsonl": 3}
    shared = len({"p0", "p1", "p2"} & train_ids)  # the test records are training records too: a warning says so
    assert f"pairs.test: {shared} of 3 distinct prompts are also training prompts" in meta["warnings"]
    # the tokenizer travels with the build
    assert sha256_file(out / "tokenizer.json") == meta["tokenizer"]["sha256"] == sha256_file(tok_path)
    assert meta["tokenizer"]["eos_id"] == eos and meta["config"]["pairs"]["format"] == "auto"
    # the held-out share is seeded: the same seed holds out the same records (a rebuild drops old outputs)
    assert not run(make_cfg(tmp_path, tok_path, valid_fraction=0.2, pairs={"train": str(train)}))["eval"]
    assert {r["id"] for r in read_jsonl(out / "instructions_valid" / "instructions.jsonl")} == valid_ids


def test_alpaca_json_list_build_and_eval_prompt_identity(tmp_path, tok_path):
    records = [{"instruction": "summarise this review", "input": "great sound, poor battery", "output": "mixed"},
               {"instruction": "would the user like a quiet drama", "input": "", "output": "yes"},
               {"instruction": "rate the film", "output": "4", "lang": "en"}]
    (tmp_path / "train.json").write_text(json.dumps(records, indent=2))
    meta = run(make_cfg(tmp_path, tok_path, valid_fraction=0.0,
                        pairs={"train": str(tmp_path / "train.json"), "test": str(tmp_path / "train.json")}))
    out = tmp_path / "out"
    assert "instructions_valid" not in meta
    ds = InstructionDataset(out)
    trained = [ds.record(i) for i in range(len(ds))]
    assert trained[0]["prompt"] == ALPACA_TEMPLATE.format(instruction=records[0]["instruction"],
                                                          input=records[0]["input"])
    assert trained[1]["prompt"] == ALPACA_TEMPLATE_NO_INPUT.format(instruction=records[1]["instruction"])
    assert trained[0]["prompt"].endswith("### Response:") and trained[2]["fields"] == {"lang": "en"}
    examples = read_examples(out / "eval" / "own" / "text_test.jsonl", "text")
    for i, (x, r) in enumerate(zip(examples, trained)):
        assert x["id"] == r["id"] == str(i + 1)  # no "id" key: the record number
        assert x["prompt"].encode() == r["prompt"].encode()
        n_prompt = len(ds[i]["labels"]) - int((ds[i]["labels"] != IGNORE_INDEX).sum())
        assert ds[i]["input_ids"][:n_prompt].tolist() == tokens(tok_path, x["prompt"])  # the same tokens too


def test_custom_fields_and_template(tmp_path, tok_path):
    write_jsonl(tmp_path / "a.jsonl", [{"q": "the film?", "a": "liked"}, {"q": "the drama?", "a": "no"}])
    write_jsonl(tmp_path / "b.jsonl", [{"instruction": "rate", "input": "film", "output": "4"}])
    run(make_cfg(tmp_path, tok_path, pairs={"train": str(tmp_path / "a.jsonl"), "format": "fields",
                                            "prompt_field": "q", "response_field": "a"}))
    assert InstructionDataset(tmp_path / "out").record(0)["prompt"] == "the film?"
    run(make_cfg(tmp_path, tok_path, pairs={"train": str(tmp_path / "b.jsonl"), "format": "alpaca",
                                            "alpaca_template": "I: {instruction} | {input}\nR:"}))
    assert InstructionDataset(tmp_path / "out").record(0)["prompt"] == "I: rate | film\nR:"
    with pytest.raises(config_lib.ConfigError, match="pairs.alpaca_template"):
        make_cfg(tmp_path, tok_path, pairs={"train": "x", "alpaca_template": "{instruction} {user}"})
    with pytest.raises(config_lib.ConfigError, match="give pairs"):
        make_cfg(tmp_path, tok_path)


def test_yes_no_eval_file(tmp_path, tok_path):
    train = write_jsonl(tmp_path / "train.jsonl", pairs(12, yes_no=True))
    test = [{"prompt": "would they like it?", "response": r} for r in ("Yes", " no. ", "YES", "No")]
    write_jsonl(tmp_path / "test.jsonl", test)
    meta = run(make_cfg(tmp_path, tok_path, pairs={"train": str(train), "test": str(tmp_path / "test.jsonl"),
                                                   "eval_task": "yes_no"}))
    folder = tmp_path / "out" / "eval" / "own"
    assert [x["target_label"] for x in read_examples(folder / "yes_no_test.jsonl", "yes_no")] == [1, 0, 1, 0]
    answers = json.loads((folder / "yes_no_answers.json").read_text())
    assert (answers["yes"], answers["no"]) == ("Yes", "No") == (meta["eval"]["own"]["answers"]["yes"], "No")
    write_jsonl(tmp_path / "test.jsonl", test + [{"prompt": "and this one?", "response": "maybe"}])
    with pytest.raises(ValueError, match=r"test\.jsonl:5: not_yes_no"):
        run(make_cfg(tmp_path, tok_path, pairs={"train": str(train), "test": str(tmp_path / "test.jsonl"),
                                                "eval_task": "yes_no"}))
    # the reader checks labels too
    write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "prompt": "p", "target_label": 1},
                                         {"id": "b", "prompt": "p", "target_label": 2}])
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: target_label"):
        read_examples(tmp_path / "bad.jsonl", "yes_no")


BAD_LINES = ['{"prompt": "film one", "response": "liked"}',
             '{"prompt": "film two", "response": ',  # line 2: not JSON
             '["prompt", "response"]',  # not an object
             '{"prompt": "film three"}',  # missing response
             '{"prompt": 3, "response": "liked"}',  # not a string
             '',  # blank: not a record
             '{"prompt": "film four", "response": "  "}',  # empty response
             json.dumps({"prompt": "film " * 40, "response": "liked"}),  # prompt too long for max_seq_len 16
             '{"prompt": "film five", "response": "no"}']


@pytest.mark.parametrize("bad, reason", [(BAD_LINES[1], "not_json"), (BAD_LINES[2], "not_an_object"),
                                         (BAD_LINES[3], "missing_field"), (BAD_LINES[4], "not_a_string"),
                                         (BAD_LINES[6], "empty_response")])
def test_bad_record_is_an_error_naming_file_and_line(tmp_path, tok_path, bad, reason):
    (tmp_path / "train.jsonl").write_text("\n".join([BAD_LINES[0], "", bad]) + "\n")  # a blank line still counts
    with pytest.raises(ValueError, match=rf"train\.jsonl:3: {reason}"):
        run(make_cfg(tmp_path, tok_path, pairs={"train": str(tmp_path / "train.jsonl")}))


def test_bad_records_skipped_and_counted(tmp_path, tok_path):
    (tmp_path / "train.jsonl").write_text("\n".join(BAD_LINES) + "\n")
    cfg = make_cfg(tmp_path, tok_path, max_seq_len=16, valid_fraction=0.0,
                   pairs={"train": str(tmp_path / "train.jsonl")})
    with pytest.raises(ValueError, match=r"train\.jsonl:2: not_json"):
        run(cfg)
    cfg.skip_bad = True
    counts = run(cfg)["counts"]["pairs.train"]
    assert counts["skipped"] == {"empty_response": 1, "missing_field": 1, "not_a_string": 1, "not_an_object": 1,
                                 "not_json": 1, "prompt_too_long": 1}
    assert counts["read"] == 8 and counts["kept"] == 2 and counts["held_out"] == 0
    assert counts["first_skipped"]["prompt_too_long"].startswith(f"{tmp_path / 'train.jsonl'}:8: prompt_too_long")
    assert len(InstructionDataset(tmp_path / "out")) == 2
    # a too-long prompt is skipped and counted even without skip_bad: it is not malformed
    (tmp_path / "ok.jsonl").write_text("\n".join([BAD_LINES[0], BAD_LINES[7]]) + "\n")
    meta = run(make_cfg(tmp_path, tok_path, max_seq_len=16, pairs={"train": str(tmp_path / "ok.jsonl")}))
    assert meta["counts"]["pairs.train"]["skipped"] == {"prompt_too_long": 1}


def test_json_list_errors_name_the_record_and_empty_files_fail(tmp_path, tok_path):
    (tmp_path / "train.json").write_text(json.dumps([{"instruction": "rate", "output": "4"}, {"instruction": "x"}]))
    with pytest.raises(ValueError, match=r"train\.json: record 2: missing_field: no 'output'"):
        run(make_cfg(tmp_path, tok_path, pairs={"train": str(tmp_path / "train.json")}))
    write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(ValueError, match=r"odd\.jsonl:1: cannot tell the pair format"):
        run(make_cfg(tmp_path, tok_path, pairs={"train": str(tmp_path / "odd.jsonl")}))
    write_jsonl(tmp_path / "empty.jsonl", ['{"prompt": "p", "response": ""}'])
    with pytest.raises(ValueError, match="leaves no training pair"):
        run(make_cfg(tmp_path, tok_path, skip_bad=True, pairs={"train": str(tmp_path / "empty.jsonl")}))


# ---------------------------------------------------------------------------------------------------------------
# documents


def test_documents_are_packed_in_order(tmp_path, tok_path):
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30))) for _ in range(15)]
    write_jsonl(tmp_path / "docs.jsonl", [{"text": d, "n": i} for i, d in enumerate(docs)])
    write_jsonl(tmp_path / "valid.jsonl", [{"body": d} for d in docs[:3]])
    meta = run(make_cfg(tmp_path, tok_path, pack={"seq_len": 16, "rows_per_shard": 4},
                        documents={"train": str(tmp_path / "docs.jsonl"), "valid": str(tmp_path / "docs.jsonl")}))
    eos = meta["tokenizer"]["eos_id"]
    for section in ("pretrain", "pretrain_valid"):
        ds = PackedDataset(tmp_path / "out", section)
        rows = np.concatenate([ds[i] for i in range(len(ds))]).tolist()
        stream = [t for d in docs for t in tokens(tok_path, d) + [eos]]
        assert rows[:len(stream)] == stream and set(rows[len(stream):]) <= {eos}
        assert len(rows) == -(-len(stream) // 16) * 16 and meta[section]["documents"] == 15
    assert len(meta["pretrain"]["shards"]) > 1  # rows_per_shard 4
    assert "instructions" not in meta
    # held out from train when no valid file is given; another text field
    meta = run(make_cfg(tmp_path, tok_path, valid_fraction=0.2,
                        documents={"train": str(tmp_path / "valid.jsonl"), "text_field": "body"}))
    assert (meta["pretrain"]["documents"], meta["pretrain_valid"]["documents"]) == (2, 1)


# ---------------------------------------------------------------------------------------------------------------
# config and command line


def test_example_config_and_command_line(tmp_path, tok_path, capsys):
    cfg = config_lib.load(OwnFilesConfig, REPO / "configs" / "data" / "own-pairs-example.yaml")
    assert cfg.out_dir == "out/data/my-pairs" and cfg.pack.seq_len == cfg.max_seq_len == 2048
    write_jsonl(tmp_path / "train.jsonl", pairs(4))
    argv = [str(REPO / "configs" / "data" / "own-pairs-example.yaml"), f"--tokenizer.path={tok_path}",
            f"--out_dir={tmp_path / 'cli'}", f"--pairs.train={tmp_path / 'train.jsonl'}", "--pairs.test=null",
            "--documents=null"]
    assert own_files.main(argv) == 0
    printed = capsys.readouterr().out
    assert "name: my-pairs" in printed and "pairs.train" in printed  # the resolved config, then the counts
    assert cli.run(own_files.main, argv + ["--pairs.format=csv"]) == 1  # one line, as on the command line
    assert capsys.readouterr().err.strip().startswith("error: command line: key 'pairs.format' = 'csv': must be one")


# ---------------------------------------------------------------------------------------------------------------
# metrics


def test_roc_auc_hand_worked_with_a_tie():
    # positives score 0.9, 0.4, 0.4; negatives 0.4, 0.1. Pairs (positive, negative), 3 x 2 = 6:
    #   0.9 > 0.4, 0.9 > 0.1, 0.4 = 0.4 (tie: 1/2), 0.4 > 0.1, 0.4 = 0.4 (1/2), 0.4 > 0.1  ->  5 / 6
    # by ranks: 0.1 -> 1, the three 0.4 share (2 + 3 + 4) / 3 = 3, 0.9 -> 5; positives' ranks 5 + 3 + 3 = 11;
    #   (11 - 3 * 4 / 2) / (3 * 2) = 5 / 6
    assert roc_auc([0.9, 0.4, 0.4, 0.4, 0.1], [1, 1, 0, 1, 0]) == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([0.2, 0.3], [1, 1])


def test_roc_auc_equals_pairwise_count():
    rng = random.Random(1)
    scores = [rng.choice([0.1, 0.2, 0.3]) if i % 4 == 0 else rng.random() for i in range(200)]  # some ties
    labels = [int(rng.random() < 0.3) for _ in scores]
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    brute = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)) / (len(pos) * len(neg))
    assert roc_auc(scores, labels) == pytest.approx(brute, abs=1e-12)


def test_text_match_metrics():
    m = text_match_metrics([" Liked it ", "liked  IT.", "no"], ["Liked it", "Liked it", "yes"])
    assert (m["n_exact"], m["n_normalised"], m["n"]) == (1, 2, 3)
    assert m["exact_match"] == pytest.approx(1 / 3) and m["normalised_match"] == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------------------------------------------
# scoring on a tiny random model


@pytest.fixture(scope="module")
def tiny(tok_path):
    tok = Tokenizer.from_file(str(tok_path))
    cfg = MPTConfig(d_model=32, n_heads=4, n_layers=2, expansion_ratio=2, max_seq_len=96,
                    vocab_size=tok.get_vocab_size(with_added_tokens=True))
    return build_model(cfg, seed=0).eval(), tok


PROMPTS = ["would they like a quiet drama?",
           "the user liked the film about space and rated it well; would they like a quiet drama?",
           "Yes", "summarise this review: great sound, poor battery."]


def test_yes_no_scores_equal_unbatched_softmax(tiny):
    model, tok = tiny
    yes, no = tok.encode("Yes", add_special_tokens=False).ids[0], tok.encode("No", add_special_tokens=False).ids[0]
    expected = []
    with torch.no_grad():
        for p in PROMPTS:  # one prompt alone, no mask: the full-sequence logits at its last token
            probs = model(torch.tensor([tok.encode(p, add_special_tokens=False).ids]))[0, -1].softmax(-1)
            expected.append(float(probs[yes] / (probs[yes] + probs[no])))
    got = yes_no_scores(model, tok, PROMPTS, batch_size=3, device="cpu")  # lengths differ within a batch
    assert got == pytest.approx(expected, abs=1e-5)
    examples = [{"id": str(i), "prompt": p, "target_label": i % 2} for i, p in enumerate(PROMPTS)]
    predictions, metrics = evaluate_yes_no(model, tok, examples, batch_size=2, device="cpu")
    assert [p["p_yes"] for p in predictions] == pytest.approx(expected, abs=1e-5)
    assert metrics["auc"] == pytest.approx(roc_auc(expected, [0, 1, 0, 1]))
    assert metrics["accuracy"] == sum((s >= 0.5) == y for s, y in zip(expected, [0, 1, 0, 1])) / 4
    with pytest.raises(ValueError, match="same token"):
        yes_no_scores(model, tok, PROMPTS, 2, "cpu", yes="Yes", no="Yes!")


def test_evaluate_text_is_greedy_generation_per_prompt(tiny):
    model, tok = tiny
    examples = [{"id": str(i), "prompt": p, "target_text": "Yes"} for i, p in enumerate(PROMPTS)]
    predictions, metrics = evaluate_text(model, tok, examples, batch_size=3, max_new_tokens=4, stop_strings=())
    eos = tok.token_to_id(EOS)
    cfg = GenerationConfig(max_new_tokens=4, eos_token_id=eos, pad_token_id=eos)
    alone = [generate_text(model, tok, [p], cfg)[0][0].text for p in PROMPTS]
    assert [p["text"] for p in predictions] == alone and [p["id"] for p in predictions] == ["0", "1", "2", "3"]
    assert metrics["n"] == 4 and sum(metrics["finish_reasons"].values()) == 4


# ---------------------------------------------------------------------------------------------------------------
# end to end: your own file -> build -> finetune.py -> evaluate.py


def alpaca(n):
    return [{"instruction": f"Would the user who liked film {i} like drama {i % 7}?", "input": "" if i % 2 else
             f"history: film {i}", "output": f"rated it {i % 5} well"} for i in range(n)]


@pytest.mark.parametrize("kind", ["prompt_response_jsonl", "alpaca_json", "yes_no_jsonl"])
def test_own_file_through_build_finetune_and_evaluate(tmp_path, tok_path, kind):
    """The command-line path a user takes, on a tiny model. The test file is the training file (so that a tiny model
    learns it in a few steps: what is checked is the plumbing and the metrics, not generalisation); a separate valid
    file gives the validation loss."""
    import evaluate
    import finetune

    if kind == "alpaca_json":
        train, valid = tmp_path / "train.json", tmp_path / "valid.json"
        records = alpaca(20)
        train.write_text(json.dumps(records[:16]))
        valid.write_text(json.dumps(records[16:]))
    else:
        records = pairs(20, yes_no=kind == "yes_no_jsonl")
        train, valid = write_jsonl(tmp_path / "train.jsonl", records[:16]), write_jsonl(tmp_path / "v.jsonl", records[16:])
    task = "yes_no" if kind == "yes_no_jsonl" else "text"
    data = tmp_path / "data"
    assert own_files.main([str(REPO / "configs/data/own-pairs-example.yaml"), "--name=mine", f"--out_dir={data}",
                           f"--tokenizer.path={tok_path}", f"--pairs.train={train}", f"--pairs.valid={valid}",
                           f"--pairs.test={train}", f"--pairs.eval_task={task}", "--documents=null",
                           "--max_seq_len=96"]) == 0
    run_dir = tmp_path / "ft"
    finetune.main(["configs/train/tiny-finetune.yaml", f"--data.path={data}", f"--run.out_dir={run_dir}",
                   "--train.max_steps=200", "--train.global_batch_size=8", "--train.micro_batch_size=8",
                   "--data.seq_len=96", "--eval.interval=100", "--eval.batches=0"])
    records = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    assert [r["step"] for r in records if "val_loss" in r] == [100, 200]  # the valid file's pairs
    out = tmp_path / "eval"
    metrics = evaluate.main([f"--checkpoint={run_dir / 'model'}", f"--benchmark={data / 'eval' / 'mine'}",
                             f"--task={task}", f"--out={out}", "--max-new-tokens=8", "--device=cpu"])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["settings"]["task"] == task and (out / "config.yaml").is_file()
    examples = read_examples(data / "eval" / "mine" / f"{task}_test.jsonl", task)
    counts = json.loads((data / "meta.json").read_text())["counts"]["pairs.test"]
    assert metrics["n"] == len(examples) == counts["kept"] == 16 - counts["skipped"].get("prompt_too_long", 0) >= 8
    predictions = [json.loads(line) for line in open(out / "predictions.jsonl")]
    if task == "text":  # every trained response reproduced by greedy decoding
        assert [p["text"].strip() for p in predictions] == [x["target_text"] for x in examples]
        assert metrics["exact_match"] == 1.0
    else:
        # hand-worked: 16 examples, ids 0..15, "No" when i % 3 == 0 (0, 3, 6, 9, 12, 15: 6 negatives, 10 positives).
        # When the model has learned them, each of the 10 x 6 = 60 (yes, no) pairs is ordered right: AUC = 60/60 = 1
        labels = [x["target_label"] for x in examples]
        assert labels == [0 if i % 3 == 0 else 1 for i in range(16)]
        assert metrics["auc"] == 1.0
        assert metrics["accuracy"] == sum((p["p_yes"] >= 0.5) == t for p, t in zip(predictions, labels)) / 16 > 0.8
        assert metrics["yes"] == "Yes" and metrics["positives"] == 10
