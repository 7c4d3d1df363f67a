"""The one config system (config/__init__.py) as every command uses it: train.py / finetune.py (training/config.py),
the data build (data/prepare/config.py), evaluate.py (evaluation/config.py) and model YAMLs (model/config.py)."""
import pathlib

import pytest

import config
import evaluate
from config import ConfigError
from data.prepare.config import BuildConfig
from data.prepare.config import load as load_build
from model.config import MPTConfig
from training.config import TrainConfig, load_config, unsafe_changes

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = REPO / "configs/train/tiny-pretrain.yaml"


def test_precedence_cli_over_file_over_base_over_defaults():
    base = {"optim": {"lr": 1.0, "decay_mode": "schedule"}, "log": {"interval": 3}}
    cfg = load_config(TINY, ["--optim.lr=0.5", "--train.max_steps=7", "--optim.betas=[0.8,0.9]"], base=base)
    assert cfg.optim.lr == 0.5 and cfg.train.max_steps == 7 and cfg.optim.betas == [0.8, 0.9]  # command line
    assert cfg.train.global_batch_size == 8  # the file
    assert cfg.optim.decay_mode == "schedule"  # the base (the file does not set it)
    assert cfg.log.wandb == "disabled"  # the schema's default


@pytest.mark.parametrize("text, argv, message", [
    ("optim: {lr: 1.0e-3, learning_rate: 3}\n", [], r"bad\.yaml: unknown key 'optim\.learning_rate'"),
    ("nosuch: {a: 1}\n", [], r"bad\.yaml: unknown key 'nosuch'"),
    ("train: {max_steps: ten}\n", [], r"bad\.yaml: key 'train\.max_steps' = 'ten': must be an integer"),
    ("optim: {decay_mode: both}\n", [], r"bad\.yaml: key 'optim\.decay_mode' = 'both': must be one of \['lr', 'schedule'\]"),
    ("schedule: {name: cosine}\n", [], r"bad\.yaml: key 'schedule\.name' = 'cosine': must be one of"),
    ("optim: {betas: [0.9]}\n", [], r"bad\.yaml: key 'optim\.betas' = \[0\.9\]: must be two numbers"),
    ("train: {micro_batch_size: 0}\n", [], r"bad\.yaml: key 'train\.micro_batch_size' = 0: must be >= 1"),
    ("optim: {lr: 1.0e-3}\n", ["--optim.lr=fast"], r"command line: key 'optim\.lr' = 'fast': must be a number"),
    ("optim: {lr: 1.0e-3}\n", ["--optim.lrr=1"], r"command line: unknown key 'optim\.lrr'"),
    ("optim: {lr: 1.0e-3}\n", ["--max_steps=1"], r"command line: unknown key 'max_steps'"),
    ("optim: {lr: 1.0e-3}\n", ["optim.lr=1"], r"command line: 'optim\.lr=1' is not of the form --key=value"),
    ("optim: [1, 2]\n", [], r"bad\.yaml: key 'optim' = \[1, 2\]: must be a mapping"),
    ("optim: {lr: 1.0e-3\n", [], r"bad\.yaml: not valid YAML \(line 2\)"),
])
def test_errors_name_the_key_and_where_it_was_set(tmp_path, text, argv, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(bad, argv)


def test_data_build_config_grammar(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text("name: x\ntokenizer: {train: {vocab_size: 300}}\n"
                    "sources:\n  - {name: a, reader: movielens, domain: movielens, options: {path: /a}}\n")
    cfg = load_build(path, ["--sources.0.options.path=/b", "--max_seq_len=256", "--tokenizer.train.max_documents=9"])
    assert isinstance(cfg, BuildConfig)
    assert cfg.sources[0].options == {"path": "/b"} and cfg.max_seq_len == 256 and cfg.pack.seq_len == 256
    assert cfg.tokenizer.train.vocab_size == 300 and cfg.tokenizer.train.max_documents == 9
    assert cfg.out_dir == "out/data/x" and cfg.work_dir == "out/data/x/work"
    with pytest.raises(ConfigError, match=r"command line: --sources\.3\.name: the list has 1 entries"):
        load_build(path, ["--sources.3.name=z"])
    with pytest.raises(ConfigError, match=r"d\.yaml: unknown key 'sources\.0\.path'"):
        path.write_text("name: x\ntokenizer: {train: {}}\nsources: [{name: a, reader: r, domain: d, path: /a}]\n")
        load_build(path)
    with pytest.raises(ConfigError, match=r"d\.yaml: key 'sources\.1\.exclude_users_of' = 'b': must name an earlier"):
        path.write_text("name: x\ntokenizer: {train: {}}\nsources: [{name: a, reader: r, domain: d, "
                        "exclude_users_of: []}, {name: c, reader: r, domain: d, exclude_users_of: [b]}]\n")
        load_build(path)
    with pytest.raises(ConfigError, match=r"d\.yaml: key 'tokenizer\.path' = '/t\.json': set exactly one"):
        path.write_text("name: x\ntokenizer: {path: /t.json, train: {}}\nsources: [{name: a, reader: r, domain: d}]\n")
        load_build(path)
    with pytest.raises(ConfigError, match=r"d\.yaml: key 'sources\.0\.reader' is required"):
        path.write_text("name: x\ntokenizer: {train: {}}\nsources: [{name: a, domain: d}]\n")
        load_build(path)


def test_evaluate_flags_and_yaml_are_one_config(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("checkpoint: ck\nbenchmark: b\ntask: rating\nout: o\nbatch_size: 2\nrating: {seeds: [5]}\n")
    cfg = evaluate.parse_args([str(path), "--batch-size", "4", "--top-p=0.5", "--next_item.constrained=true",
                               "--seeds", "1", "2", "--rating-scale", "1", "10"])
    assert cfg.batch_size == 4 and cfg.rating.top_p == 0.5 and cfg.next_item.constrained is True
    assert cfg.rating.seeds == [1, 2] and cfg.rating.scale == [1.0, 10.0] and cfg.task == "rating"
    cfg = evaluate.parse_args(["--checkpoint", "c", "--benchmark", "b", "--task", "next_item", "--out", "o",
                               "--constrained"])  # no file: flags alone, as before
    assert cfg.next_item.constrained is True and cfg.next_item.num_beams == 10
    with pytest.raises(ConfigError, match=r"command line: key 'task' = 'ranking': must be one of"):
        evaluate.parse_args([str(path), "--task", "ranking"])
    with pytest.raises(ConfigError, match=r"key 'checkpoint' = None: is required"):
        evaluate.parse_args(["--benchmark", "b", "--task", "rating", "--out", "o"])


def test_one_error_type_everywhere(tmp_path):
    bad = tmp_path / "m.yaml"
    bad.write_text("d_model: 64\nn_heads: 3\n")
    with pytest.raises(ConfigError, match=r"m\.yaml: key 'd_model' = 64: must be divisible by n_heads=3"):
        MPTConfig.from_yaml(bad)
    import data.prepare.config
    import evaluation.config
    import model.config
    import training.config
    for module in (data.prepare.config, evaluation.config, model.config, training.config):
        assert getattr(module, "ConfigError", ConfigError) is ConfigError


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(TINY, ["--optim.lr=0.25"])
    saved = config.save(cfg, tmp_path / "config.yaml")
    again = config.load(TrainConfig, saved)
    assert again == cfg
    assert config.differences(config.to_dict(cfg), config.to_dict(again)) == []


def test_unsafe_changes_name_the_keys():
    a = config.to_dict(load_config(TINY))
    b = config.to_dict(load_config(TINY, ["--optim.lr=0.5", "--log.interval=1", "--checkpoint.interval=3",
                                          "--eval.batches=2"]))
    assert unsafe_changes(a, b) == ["optim.lr: 0.001 -> 0.5"]
    assert unsafe_changes(a, b, ["optim.lr"]) == [] and unsafe_changes(a, b, ["optim"]) == []
    assert unsafe_changes(a, b, ["*"]) == []
