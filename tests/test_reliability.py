"""Faults and bad input, in miniature: each class a fault-injection run found (issue 16) is repeated here and its
outcome class asserted: a clear one-line error naming the culprit, or a counted skip; never a silent result, a raw
crash, a mixed output or a lost model. Integrity of checkpoints (a flipped bit, a truncation, an edited config):
tests/test_checkpoint_errors.py; config grammar errors: tests/test_config.py; documented commands:
tests/test_documented_commands.py."""
import importlib.metadata
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import pytest
import torch

import finetune
from config import cli
from data.prepare import pipeline
from data_fixtures import build, movielens_fixture, p5_fixture, write_config
from output import OutputLock, OutputLocked, provenance
from training.testing import write_tiny_build

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_FT = "configs/train/tiny-finetune.yaml"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_tiny_build(tmp_path_factory.mktemp("data"), seq_len=32, n_docs=40, n_pairs=16)


def run_cli(main, argv, capsys) -> tuple[int, str]:
    """A command as the shell runs it (config/cli.py): exit code, and what it printed on stderr."""
    code = cli.run(main, argv)
    return code, capsys.readouterr().err


def one_line_error(err: str, *needles: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# ---------------------------------------------------------------------------------------------------- lost models


def test_a_kill_during_the_final_export_then_the_same_command_exports_the_same_model(tiny_data, tmp_path, monkeypatch):
    args = [TINY_FT, f"--data.path={tiny_data}", "--train.max_steps=6", "--schedule.t_warmup=1"]
    reference = tmp_path / "reference"
    finetune.main(args + [f"--run.out_dir={reference}"])

    from training import checkpoint as ckpt
    real = ckpt.write_export_card

    def killed(*a, **k):  # the weights are written (into the staged folder), the card is not: the process dies
        raise KeyboardInterrupt("killed during the export")

    run = tmp_path / "run"
    monkeypatch.setattr(ckpt, "write_export_card", killed)
    with pytest.raises(KeyboardInterrupt):
        finetune.main(args + [f"--run.out_dir={run}"])
    assert not (run / "model").exists()  # nothing half-written where a reader looks
    monkeypatch.setattr(ckpt, "write_export_card", real)
    finetune.main(args + [f"--run.out_dir={run}"])  # the same command: no step is redone, the model is exported
    for f in sorted((reference / "model").glob("*.safetensors")):
        assert (run / "model" / f.name).read_bytes() == f.read_bytes(), f.name
    assert not list(run.glob("model.partial-*")) and not (run.parent / "run.lock").exists()
    steps = [json.loads(line)["step"] for line in open(run / "metrics.jsonl")]
    assert steps == sorted(set(steps)) == list(range(1, 7))  # one record per step


def test_a_failed_conversion_leaves_the_old_output_whole(tmp_path, capsys):
    from model.checkpoint import save_model
    from model.config import MPTConfig
    from model.convert import main as convert_main
    from model.mpt import build_model

    config = MPTConfig.from_name("tiny")
    save_model(build_model(config, seed=0).state_dict(), config, tmp_path / "src")
    assert cli.run(convert_main, ["to-hf", str(tmp_path / "src"), str(tmp_path / "hf")]) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()}
    shard = next((tmp_path / "src").glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-50])  # the next conversion fails part-way
    code, err = run_cli(convert_main, ["to-hf", str(tmp_path / "src"), str(tmp_path / "hf")], capsys)
    assert code == 1
    one_line_error(err, shard.name)
    assert {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()} == before  # not a mix of old and new


# ---------------------------------------------------------------------------------------------------- one writer


def test_a_second_writer_is_refused_naming_the_holder(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a live process on this host
    try:
        lock = out.with_name("run.lock")
        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid, "command": "finetune (other)",
                                    "started": "2026-01-01T00:00:00"}))
        code, err = run_cli(finetune.main, [TINY_FT, f"--data.path={tiny_data}", f"--run.out_dir={out}",
                                            "--train.max_steps=2"], capsys)
        assert code == 1
        one_line_error(err, f"PID {holder.pid}", "finetune (other)", "being written")
        assert not (out / "checkpoints").exists()  # it stopped before touching anything
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone (a kill -9): the same command takes the lock over and runs
    code, err = run_cli(finetune.main, [TINY_FT, f"--data.path={tiny_data}", f"--run.out_dir={out}",
                                        "--train.max_steps=2", "--schedule.t_warmup=1"], capsys)
    assert code == 0 and "taking over the lock" in err and "no longer running" in err
    assert not lock.exists()


def test_a_lock_from_another_host_is_taken_only_when_asked(tmp_path, monkeypatch):
    folder = tmp_path / "out"
    folder.with_name("out.lock").write_text(json.dumps({"host": "elsewhere", "pid": 1, "command": "train.py"}))
    with pytest.raises(OutputLocked, match=r"on another host: if it is gone, run again with --take-over-lock"):
        with OutputLock(folder, "test"):
            pass
    monkeypatch.setenv("RECGPT_TAKE_OVER_LOCK", "1")
    with OutputLock(folder, "test"):
        assert json.loads(folder.with_name("out.lock").read_text())["pid"] == os.getpid()
    assert not folder.with_name("out.lock").exists()


def test_the_environment_names_the_commit_its_changes_and_the_packages(tmp_path, monkeypatch):
    head = subprocess.run(["git", "-C", str(provenance.REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("this copy is not a git checkout")
    written = json.loads(provenance.write_environment(tmp_path).read_text())
    assert written["commit"] == head.stdout.strip() and isinstance(written["dirty"], bool)
    assert written["packages"]["torch"] == importlib.metadata.version("torch")
    assert written["machine"]["torch_build"] == torch.__version__ and written["machine"]["torch_threads"] >= 1
    # a copy outside git (an installed or exported tree) says so rather than failing the run
    monkeypatch.setattr(provenance, "REPO", tmp_path)
    assert provenance.environment()["commit"] is None

    # a tracked file changed: dirty
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], check=True)
    (repo / "f").write_text("1")
    subprocess.run(git + ["add", "f"], check=True)
    subprocess.run(git + ["commit", "-qm", "f"], check=True)
    monkeypatch.setattr(provenance, "REPO", repo)
    assert provenance.git_commit()["dirty"] is False
    (repo / "f").write_text("2")
    assert provenance.git_commit()["dirty"] is True


# ---------------------------------------------------------------------------------------------------- bad data


def ml_with(tmp_path, *lines, items=None):
    root = movielens_fixture(tmp_path / "ml")
    if lines:
        with open(root / "u.data", "a") as f:
            f.write("".join(line + "\n" for line in lines))
    if items:
        with open(root / "u.item", "a", encoding="latin-1") as f:
            f.write("".join(line + "\n" for line in items))
    return [{"name": "ml", "reader": "movielens", "domain": "movielens", "options": {"path": str(root)}}]


GENRES = "|".join(["0"] * 19)


@pytest.mark.parametrize("line, reason", [
    ("1\t2\tinf\t1000", "bad_rating"),
    ("1\t2\t99\t1000", "rating_out_of_scale"),
    ("1\t2\t-3\t1000", "rating_out_of_scale"),
    ("1\t2\t4\tnan", "bad_time"),
    ("1\t2\t4\t99999999999", "bad_time"),
])
def test_impossible_values_stop_the_build_or_are_counted(tmp_path, capsys, line, reason):
    sources = ml_with(tmp_path, line)
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "out", sources)
    code, err = run_cli(pipeline.main, [str(cfg)], capsys)
    assert code == 1
    one_line_error(err, reason)
    out = build(tmp_path, "skip", sources, "--skip_bad=true")  # counted, and nothing impossible reaches the outputs
    meta = json.loads((out / "meta.json").read_text())
    assert meta["sources"]["ml"]["bad_lines"] == {reason: 1}
    stats = json.loads((out / "meta.json").read_text())["sources"]["ml"]
    assert "inf" not in (out / "instructions" / "instructions.jsonl").read_text()
    assert stats["interactions_read"] == sum(stats["interactions_kept"].values()) + sum(
        stats["interactions_dropped"].values())


def test_duplicates_are_counted_and_follow_their_policy(tmp_path, capsys):
    import pyarrow.parquet as pq

    sources = ml_with(tmp_path, "1\t2\t4\t5000", "1\t2\t4\t5000", items=[f"2|Another title (1999)|x||http://x|{GENRES}"])
    out = build(tmp_path, "keep", sources)
    meta = json.loads((out / "meta.json").read_text())["sources"]["ml"]
    assert meta["duplicate_interactions"] >= 1 and meta["ignored_rows"]["duplicate_item_id"] == 1
    items = pq.read_table(out / "work" / "sources" / "ml" / "items.parquet").to_pylist()
    assert [i["title"] for i in items if i["id"] == "2"] == ["Movie number 2 (1992)"]  # keep_first
    dropped = json.loads((build(tmp_path, "drop", sources, duplicate_interactions="drop") / "meta.json")
                         .read_text())["sources"]["ml"]
    assert dropped["interactions_dropped"]["duplicate_interaction"] == meta["duplicate_interactions"]
    cfg = write_config(tmp_path / "e.yaml", tmp_path / "e", sources, duplicate_items="error")
    code, err = run_cli(pipeline.main, [str(cfg)], capsys)
    assert code == 1
    one_line_error(err, "duplicate_item_id", "'2'")
    cfg = write_config(tmp_path / "d.yaml", tmp_path / "d", sources, duplicate_interactions="error")
    code, err = run_cli(pipeline.main, [str(cfg)], capsys)
    assert code == 1
    one_line_error(err, "repeat an earlier one exactly")


def test_empty_inputs_and_unknown_options_are_errors(tmp_path, capsys):
    root = movielens_fixture(tmp_path / "ml")
    (root / "u.data").write_text("")
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "out", [{"name": "ml", "reader": "movielens",
                                                                 "domain": "movielens", "options": {"path": str(root)}}])
    code, err = run_cli(pipeline.main, [str(cfg)], capsys)
    assert code == 1
    one_line_error(err, "source ml: no interaction read")
    cfg = write_config(tmp_path / "o.yaml", tmp_path / "o", [{"name": "ml", "reader": "movielens", "domain": "movielens",
                                                              "options": {"path": str(root), "pth": "x"}}])
    code, err = run_cli(pipeline.main, [str(cfg)], capsys)
    assert code == 1
    one_line_error(err, "'sources.0.options.pth'", "reader 'movielens' has no option 'pth'")
    cfg = write_config(tmp_path / "k.yaml", tmp_path / "k", [{"name": "ml", "reader": "movielens", "domian": "x",
                                                              "options": {"path": str(root)}}])
    code, err = run_cli(pipeline.main, [str(cfg)], capsys)
    assert code == 1
    one_line_error(err, "k.yaml", "unknown key 'sources.0.domian'")


def test_one_huge_title_and_one_huge_history_are_cut_and_counted(tmp_path):
    """A 10 MB title and one user with 200,000 interactions: the text is cut to limits.text_chars and the history
    to its newest limits.history interactions before any encoding, both counted (timings: docs/data.md)."""
    sources = ml_with(tmp_path, *[f"7\t{1 + k % 30}\t4\t{2000 + k}" for k in range(200_000)],
                      items=[f"32|{'x' * 10_000_000} (1999)|x||http://x|{GENRES}"])
    with open(pathlib.Path(sources[0]["options"]["path"]) / "u.data", "a") as f:
        f.write("8\t32\t5\t999999\n")  # someone watched the film with the huge title
    out = build(tmp_path, "huge", sources, limits={"history": 1000, "text_chars": 500})
    meta = json.loads((out / "meta.json").read_text())["sources"]["ml"]
    assert meta["ignored_rows"]["text_truncated"] == 1
    assert meta["interactions_dropped"]["history_over_1000"] == 200_000 + (6 + 7 % 25) - 1000
    assert "x" * 501 not in (out / "instructions" / "instructions.jsonl").read_text()


def test_one_huge_p5_line_is_cut_while_reading(tmp_path):
    """A P5 user line of 30,000 valid ids with limits.history 500: its newest 500 are read, the rest counted, and the
    user's evaluation prompts come from that tail (whose examples would otherwise copy the whole history each)."""
    data = p5_fixture(tmp_path / "p5")
    ids = [str(1 + k % 40) for k in range(30_000)]
    with open(data / "sequential_data.txt", "a") as f:
        f.write("31 " + " ".join(ids) + "\n")
    out = build(tmp_path, "p5", [{"name": "b", "reader": "p5", "domain": "amazon", "benchmark": True,
                                  "options": {"path": str(data)}}], limits={"history": 500})
    meta = json.loads((out / "meta.json").read_text())["sources"]["b"]
    assert meta["ignored_rows"]["history_over_limit"] == 30_000 - 500
    test = [json.loads(line) for line in open(out / "eval" / "b" / "next_item_test.jsonl")]
    mine = next(r for r in test if r["user"] == "31")
    titled = [i for i in ids[-500:-1] if i != "7"]  # the fixture's item 7 has no title
    assert mine["target_item_id"] == ids[-1]
    assert mine["history_item_ids"] == titled[len(titled) - len(mine["history_item_ids"]):]  # the newest that fit
    assert mine["history_items_dropped_oldest"] + len(mine["history_item_ids"]) == len(titled)


# ---------------------------------------------------------------------------------------------------- bad configs


@pytest.mark.parametrize("override, culprit", [
    ("--data.seq_len=-1", "data.seq_len"), ("--checkpoint.interval=-5", "checkpoint.interval"),
    ("--checkpoint.keep_last=0", "checkpoint.keep_last"), ("--optim.grad_clip=-1", "optim.grad_clip"),
    ("--train.micro_batch_size=0", "train.micro_batch_size"), ("--optim.lr=.nan", "optim.lr"),
    ("--optim.lr=fast", "optim.lr"), ("--train.max_steps=1.5", "train.max_steps"),
])
def test_bad_config_values_are_one_line_errors(tiny_data, tmp_path, capsys, override, culprit):
    code, err = run_cli(finetune.main, [TINY_FT, f"--data.path={tiny_data}", f"--run.out_dir={tmp_path}", override],
                        capsys)
    assert code == 1
    one_line_error(err, "command line", f"'{culprit}'")


def test_numbers_written_as_1e_5_are_numbers(tiny_data):
    from training.config import load_config

    assert load_config(TINY_FT, ["--optim.lr=1e-5"]).optim.lr == 1e-5


def test_a_non_utf8_config_and_a_broken_meta_json_name_their_files(tiny_data, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"run: {name: \xff\xfe}\n")
    code, err = run_cli(finetune.main, [str(bad)], capsys)
    assert code == 1 and "error: " in err and "Traceback" not in err
    broken = tmp_path / "build"
    shutil.copytree(tiny_data, broken)
    (broken / "meta.json").write_text("{not json")
    code, err = run_cli(finetune.main, [TINY_FT, f"--data.path={broken}", f"--run.out_dir={tmp_path / 'r'}"], capsys)
    assert code == 1
    one_line_error(err, "meta.json")


def test_a_vocabulary_larger_than_the_model_is_named(tmp_path, capsys):
    data = write_tiny_build(tmp_path / "big", seq_len=32, n_docs=40, n_pairs=16, vocab=600)  # tiny has 512 ids
    code, err = run_cli(finetune.main, [TINY_FT, f"--data.path={data}", f"--run.out_dir={tmp_path / 'r'}"], capsys)
    assert code == 1
    one_line_error(err, "600 tokens", "vocab_size 512")


def test_a_short_disk_makes_room_or_says_how_much_is_needed(tiny_data, tmp_path, capsys, monkeypatch):
    import collections

    from training import checkpoint as ckpt

    out = tmp_path / "run"
    args = [TINY_FT, f"--data.path={tiny_data}", f"--run.out_dir={out}", "--train.max_steps=6", "--schedule.t_warmup=1",
            "--checkpoint.interval=2", "--checkpoint.keep_last=2", "--checkpoint.export_final=false"]
    usage = collections.namedtuple("usage", "total used free")
    real = shutil.disk_usage
    free = {"bytes": None}

    def fake(path):
        u = real(path)
        return usage(u.total, u.used, free["bytes"] if free["bytes"] is not None else u.free)

    monkeypatch.setattr(ckpt.shutil, "disk_usage", fake)
    finetune.main(args + ["--train.stop_after=4"])  # checkpoints at steps 2 and 4
    size = ckpt._size(ckpt.latest(out / "checkpoints"))
    free["bytes"] = 1  # not even one checkpoint fits: stop before writing, saying how much is needed
    code, err = run_cli(finetune.main, args, capsys)
    assert code == 1
    one_line_error(err, "no space left", "GB needed")
    assert [s for s, _ in ckpt.complete_checkpoints(out / "checkpoints")] == [4]  # room was made first; newest kept
    free["bytes"] = int(size * 1.2)  # room for one more: the run goes on
    assert cli.run(finetune.main, args) == 0


def test_a_legacy_non_zip_bin_checkpoint_loads(tmp_path):
    """A benign pytorch_model.bin in torch's pre-1.6 (non-zip) format: read with weights_only, without mmap."""
    import torch
    from safetensors.torch import load_file

    from model.checkpoint import load_model, save_model
    from model.config import MPTConfig
    from model.convert import convert_to_hf
    from model.mpt import build_model

    config = MPTConfig.from_name("tiny")
    model = build_model(config, seed=0)
    save_model(model.state_dict(), config, tmp_path / "ours")
    convert_to_hf(tmp_path / "ours", tmp_path / "hf")
    hf = tmp_path / "hf"
    state = {}
    for f in sorted(hf.glob("*.safetensors")):
        state.update(load_file(f))
        f.unlink()
    (hf / "model.safetensors.index.json").unlink()
    torch.save(state, hf / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    ids = torch.randint(0, config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(load_model(hf)(ids), model.eval()(ids))


def test_a_bad_catalog_line_is_counted_once(tmp_path):
    data = p5_fixture(tmp_path / "p5")
    with open(data / "items.jsonl", "a") as f:
        f.write("{broken\n")
    out = build(tmp_path, "b", [{"name": "b", "reader": "p5", "domain": "amazon", "benchmark": True,
                                 "options": {"path": str(data)}}], "--skip_bad=true")
    assert json.loads((out / "meta.json").read_text())["sources"]["b"]["bad_lines"] == {"broken_json": 1}


def test_nan_weights_are_named_not_a_sampling_error():
    import torch

    from evaluation.generate import GenerationConfig, generate
    from model.config import MPTConfig
    from model.mpt import build_model

    model = build_model(MPTConfig.from_name("tiny"), seed=0).eval()
    with torch.no_grad():
        model.blocks[1].ffn.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"logits are not finite after the prompts .*NaN/inf"):
        generate(model, [[1, 2, 3]], GenerationConfig(max_new_tokens=2, do_sample=True, eos_token_id=0))
