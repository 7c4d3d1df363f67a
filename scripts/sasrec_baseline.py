"""SASRec, RecBole's implementation, as a baseline row beside the LLM arms on a P5 build (issue 14): trained on
exactly the training sequences the build's multitask corpus sees, and scored on the build's own evaluation records
with the repository's metric code, so that its numbers sit beside `evaluate.py --task p5` and evaluation.baselines:

    pip install --target /tmp/rbpkgs --no-deps -r requirements-baselines.txt     # beside the project's torch/numpy
    PYTHONPATH=/tmp/rbpkgs python scripts/sasrec_baseline.py --p5-build out/papers/movielens/p5 \
        --templates 2-3,2-13,5-5,5-8 --sample 300 --out out/papers/movielens/eval/sasrec [--epochs 200] [--seed 2020]

What it does:
- Data. The build's source is read again with the builder's own reader (data/prepare/p5_tasks.py read_data and the
  options in the build's meta.json), the build's users only (its max_users). Training sequences are the builder's:
  each user's whole sequence less every held-out interaction (heldout.jsonl: the sequential/direct validation and
  test items, and on MovieLens the rating split's validation/test interactions); checked against a recomputation.
  RecBole gets them as pre-split benchmark files: every prefix of a training sequence (at most MAX_ITEM_LIST_LENGTH
  items) with its next item, RecBole's own data augmentation; its leave-one-out split is not used, because it would
  keep the rating family's held-out interactions in the training sequences.
- Training. RecBole's SASRec with RecBole's defaults (hidden 64, 2 layers, 2 heads, inner 256, dropout 0.5, max
  sequence 50, CE loss over all items, Adam lr 1e-3, batch 2,048), RecBole's Trainer; early stopping on RecBole's
  full-sort MRR@10 on the build's validation split (the second-last item, never trained on), patience 10 epochs,
  at most --epochs. The best epoch's weights are kept in memory (a copy of the state dict): nothing is written or
  read back with torch.load, so no pickle beyond plain data is ever loaded.
- Scoring, on the evaluation records themselves (the records evaluate.py --sample/--sample-seed picks):
  sequential templates (2-x): the user's history -> a score for every catalog item (eval/<name>/catalog.jsonl), the
  whole catalog ranked (ties: catalog order), nothing excluded (history items stay rankable, as for the LLM arms;
  ../shared/spec/evaluation.md §6.6, §9.5); HR/NDCG@5/10 by evaluation/metrics.py ranking_metrics. Direct
  templates with candidates (5-5 .. 5-8): the 100 candidates ranked by SASRec's log-probability of each as the next
  item (log-softmax over the catalog); HR@1/5/10, NDCG@5/10 by candidate_ranking_metrics. The history is what the
  build's sequential records show (the user's items before the target, the newest render.max_history of them): the
  record's own history_item_ids for 2-x, the same list for 5-x (whose prompts show no history); --max-history
  shortens it. SASRec scores 2-3 and 2-13 alike (the same histories), and 5-5 and 5-8 alike (the same candidates).
- Outputs, in --out: metrics.json (a "p5" section shaped as evaluation.baselines writes it: per template "seen",
  "kind", "n", "n_in_file" and "sasrec": the metrics; the same metrics in a "templates" section shaped as
  evaluate.py --task p5 writes it (family, kind, seen, n, n_in_file, metrics), which scripts/papers.py report reads
  from <dataset>/eval/sasrec/; plus the model's settings, training log, timings and versions), metrics.md,
  predictions.jsonl (one line per scored record: template, user, target_item_id, and ranked_item_ids (the top 20)
  and target_rank, or candidates and logprob). Also RecBole's own full-sort test
  metrics over all users beside ours computed the same way ("cross_check"), which must agree.

RecBole 1.2.1 with numpy 2, pandas and torch >= 2.6 (the install: requirements-baselines.txt):
- its Config sets numpy's removed aliases (np.float = np.float_ ...: AttributeError on numpy 2), and its metrics and
  Interaction still use np.float: the aliases are set here first (np.float = np.float64, ...; a process-wide change
  to numpy, in this script's process only) and that method is skipped;
- pandas 3 breaks its dataset remapping (ValueError "Length of values (1) does not match length of index"): pandas < 3;
- its Trainer saves the best epoch with torch.save of a dict holding its Config object and reads it back with a plain
  torch.load, which torch >= 2.6 (weights_only=True by default) refuses (UnpicklingError), and which would load a
  pickle beyond plain data anyway: the best weights are kept in memory instead (above), nothing is loaded;
- its Trainer opens a tensorboard writer in ./log_tensorboard: replaced by a no-op one (tensorboard must still be
  installed: recbole.utils imports it).
"""
import argparse
import copy
import json
import logging
import math
import pathlib
import sys
import tempfile
import time
import warnings

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import config as config_lib  # noqa: E402
from data.formats.evalfiles import item_id_order, sample_examples  # noqa: E402
from data.prepare import p5_tasks as P  # noqa: E402
from data.prepare.records import BadLines  # noqa: E402
from evaluation.metrics import candidate_ranking_metrics, ranking_metrics  # noqa: E402
from evaluation.p5_tasks import read_template_file, template_files  # noqa: E402

TOP_SAVED = 20  # ranked_item_ids kept per sequential prediction
DATASET = "p5"  # the RecBole dataset (atomic files) name
log = logging.getLogger("sasrec_baseline")


# ---------------------------------------------------------------------------------------------------------------
# RecBole, imported with its compatibility fixes


def import_recbole():
    """-> the recbole modules this script uses; an ImportError naming the install when recbole is missing."""
    for name, value in {"bool": np.bool_, "int": np.int_, "float": np.float64, "complex": np.complex128,
                        "object": np.object_, "str": np.str_, "long": np.int_, "unicode": np.str_}.items():
        if name not in np.__dict__:  # numpy 2 removed these aliases; RecBole 1.2.1 still uses them
            setattr(np, name, value)
    try:
        import recbole
        import recbole.trainer.trainer as rb_trainer
        from recbole.config import Config
        from recbole.data import create_dataset, data_preparation
        from recbole.data.interaction import Interaction
        from recbole.model.sequential_recommender.sasrec import SASRec
        from recbole.utils import init_seed
    except ImportError as e:
        raise ImportError(f"RecBole is not importable ({e}): pip install --target DIR --no-deps -r "
                          f"requirements-baselines.txt, then run with PYTHONPATH=DIR") from e
    import pandas
    if int(pandas.__version__.split(".")[0]) >= 3:
        raise ImportError(f"pandas {pandas.__version__}: RecBole 1.2.1's dataset remapping fails with pandas 3 "
                          f"(requirements-baselines.txt pins pandas < 3)")
    Config.compatibility_settings = lambda self: None  # it sets np.float = np.float_, gone in numpy 2 (set above)
    rb_trainer.get_tensorboard = lambda logger: _NullWriter()

    class InMemoryBestTrainer(rb_trainer.Trainer):
        """RecBole's Trainer, its best checkpoint kept as an in-memory copy of the state dict instead of a
        torch.save'd pickle (config included) that evaluate() would torch.load back."""
        best_state = None
        best_epoch = None

        def _save_checkpoint(self, epoch, verbose=True, **kwargs):
            self.best_state = copy.deepcopy(self.model.state_dict())
            self.best_epoch = epoch

    return {"version": recbole.__version__, "Config": Config, "create_dataset": create_dataset,
            "data_preparation": data_preparation, "Interaction": Interaction, "SASRec": SASRec,
            "init_seed": init_seed, "Trainer": InMemoryBestTrainer, "pandas": pandas.__version__}


class _NullWriter:
    def add_scalar(self, *args, **kwargs):
        pass

    def add_hparams(self, *args, **kwargs):
        pass


# ---------------------------------------------------------------------------------------------------------------
# the build's data


def resolve_source(path: str, p5_build: pathlib.Path) -> pathlib.Path:
    """The build's source.path: as written (relative to the working directory), else relative to the repository."""
    p = pathlib.Path(path)
    for candidate in (p, pathlib.Path(__file__).resolve().parents[1] / p):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"{p5_build}/meta.json: source.path {path} not found (give --source-path)")


def load_build(p5_build, benchmark_name=None, source_path=None) -> dict:
    """The build's users, sequences, held-out interactions, training sequences, catalog and evaluation folder."""
    root = pathlib.Path(p5_build)
    meta = json.loads((root / "meta.json").read_text())
    if meta.get("builder") != "p5_tasks":
        raise ValueError(f"{root}: not a P5 build (meta.json builder {meta.get('builder')!r})")
    values = copy.deepcopy(meta["config"])
    values["source"]["path"] = str(source_path or resolve_source(values["source"]["path"], root))
    cfg = config_lib.from_dict(P.P5TasksConfig, values, f"{root}/meta.json")
    names = sorted(meta["eval"])
    name = benchmark_name or (names[0] if len(names) == 1 else None)
    if name not in meta["eval"]:
        raise ValueError(f"--benchmark-name: one of {names}")
    bench = root / meta["eval"][name]["dir"]
    data = P.read_data(cfg, BadLines(cfg.skip_bad))
    users = data.users[: cfg.max_users] if cfg.max_users else data.users
    held = set()
    with open(root / meta["heldout"], encoding="utf-8") as f:
        for line in f:
            if line.strip():
                h = json.loads(line)
                held.add((str(h["user"]), str(h["item"]), int(h["occurrence"])))
    again = set(P.held_out_interactions(data, users))
    if again != held:
        raise ValueError(f"{root}/heldout.jsonl differs from the held-out set recomputed from {cfg.source.path} "
                         f"({len(held ^ again)} interactions): not the data this build was made from")
    train = {}
    for u in users:
        seq = data.seqs[u]
        train[u] = [i for i, o in zip(seq, P.occurrences(seq)) if (u, i, o) not in held]
    catalog = []
    with open(bench / "catalog.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                catalog.append(str(json.loads(line)["item_id"]))
    catalog.sort(key=item_id_order)
    missing = {i for u in users for i in data.seqs[u]} - set(catalog)
    if missing:
        raise ValueError(f"{bench}/catalog.jsonl lacks {len(missing)} items of the users' sequences")
    for x in [*catalog, *users]:
        if not x or any(c.isspace() for c in x):
            raise ValueError(f"id {x!r}: RecBole's atomic files need ids without whitespace")
    return {"root": root, "bench": bench, "name": name, "cfg": cfg, "seqs": data.seqs, "users": users,
            "held": held, "train": train, "catalog": catalog, "max_history": cfg.render.max_history}


def history(build: dict, user: str, split: str) -> tuple:
    """(the items before the split's target, newest render.max_history of them; the target), as the builder writes
    the sequential records; None when the user has no evaluation record for the split."""
    seq = build["seqs"][user]
    end = len(seq) - 2 if split == "validation" else len(seq) - 1
    if end < 1:
        return None
    mh = build["max_history"]
    return (seq[:end][-mh:] if mh else seq[:end]), seq[end]


# ---------------------------------------------------------------------------------------------------------------
# RecBole's dataset and training


def write_atomic_files(build: dict, folder: pathlib.Path, max_len: int) -> dict:
    """RecBole benchmark files: train = every prefix of each training sequence (at most max_len items) -> its next
    item; valid / test = each user's validation / test history (at most max_len) -> target; the catalog as the item
    file, so that every catalog item has an id (and a row of scores). -> counts."""
    folder.mkdir(parents=True, exist_ok=True)
    head = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    counts = {"train": 0, "valid": 0, "test": 0}
    with open(folder / f"{DATASET}.train.inter", "w", encoding="utf-8") as f:
        f.write(head)
        for u in build["users"]:
            tr = build["train"][u]
            for t in range(1, len(tr)):
                f.write(f"{u}\t{' '.join(tr[max(0, t - max_len):t])}\t{tr[t]}\n")
                counts["train"] += 1
    for part, split in (("valid", "validation"), ("test", "test")):
        with open(folder / f"{DATASET}.{part}.inter", "w", encoding="utf-8") as f:
            f.write(head)
            for u in build["users"]:
                h = history(build, u, split)
                if h is not None:
                    f.write(f"{u}\t{' '.join(h[0][-max_len:])}\t{h[1]}\n")
                    counts[part] += 1
    (folder / f"{DATASET}.item").write_text("item_id:token\n" + "".join(f"{i}\n" for i in build["catalog"]))
    return counts


def recbole_config(rb, folder: pathlib.Path, args, device: str) -> object:
    values = {"data_path": str(folder.parent), "benchmark_filename": ["train", "valid", "test"],
              "alias_of_item_id": ["item_id_list"],
              "load_col": {"inter": ["user_id", "item_id_list", "item_id"], "item": ["item_id"]},
              "train_neg_sample_args": None,  # CE over all items (RecBole's SASRec default loss)
              "epochs": args.epochs, "stopping_step": args.stopping_step, "eval_step": 1 if args.stopping_step else 0,
              "seed": args.seed, "reproducibility": True, "use_gpu": device == "cuda", "show_progress": False,
              "checkpoint_dir": str(folder.parent / "checkpoints"), "metric_decimal_place": 8,
              "metrics": ["Hit", "NDCG", "MRR"], "topk": [5, 10], "valid_metric": "MRR@10",
              "MAX_ITEM_LIST_LENGTH": args.max_seq_len}
    if args.train_batch_size:
        values["train_batch_size"] = args.train_batch_size
    return rb["Config"](model="SASRec", dataset=DATASET, config_dict=values)


def train(rb, build: dict, args, workdir: pathlib.Path, device: str) -> tuple:
    """-> (model, the RecBole dataset, the test dataloader, trainer, training record)."""
    counts = write_atomic_files(build, workdir / DATASET, args.max_seq_len)
    cfg = recbole_config(rb, workdir / DATASET, args, device)
    rb["init_seed"](cfg["seed"], cfg["reproducibility"])
    dataset = rb["create_dataset"](cfg)
    train_data, valid_data, test_data = rb["data_preparation"](cfg, dataset)
    rb["init_seed"](cfg["seed"], cfg["reproducibility"])
    model = rb["SASRec"](cfg, train_data._dataset).to(cfg["device"])
    trainer = rb["Trainer"](cfg, model)
    epochs = []
    started, cpu_started = time.time(), time.process_time()

    def each_epoch(epoch, valid_score):
        loss = trainer.train_loss_dict[epoch]
        epochs.append({"epoch": epoch, "train_loss": loss, "valid_MRR@10": valid_score,
                       "seconds": time.time() - started, "cpu_seconds": time.process_time() - cpu_started})
        log.info(f"epoch {epoch}: train loss {loss:.4f}, validation MRR@10 {valid_score:.4f} "
                 f"({time.time() - started:.0f} s, {time.process_time() - cpu_started:.0f} s of CPU)")

    best_score, best_result = trainer.fit(train_data, valid_data if args.stopping_step else None, verbose=False,
                                          saved=True, show_progress=False, callback_fn=each_epoch)
    seconds, cpu_seconds = time.time() - started, time.process_time() - cpu_started
    if trainer.best_state is not None:
        model.load_state_dict(trainer.best_state)
    if not args.stopping_step:
        epochs = [{"epoch": e, "train_loss": v} for e, v in sorted(trainer.train_loss_dict.items())]
    record = {"samples": counts, "epochs_run": len(trainer.train_loss_dict),
              "best_epoch": trainer.best_epoch, "best_valid_MRR@10": best_score if args.stopping_step else None,
              "best_valid_result": {k: float(v) for k, v in (best_result or {}).items()},
              "seconds": seconds, "cpu_seconds": cpu_seconds, "epochs": epochs,
              "n_users": len(build["users"]), "n_items": len(build["catalog"]),
              "n_train_interactions": sum(len(v) for v in build["train"].values()),
              "n_parameters": sum(p.numel() for p in model.parameters())}
    return model, dataset, test_data, trainer, record


# ---------------------------------------------------------------------------------------------------------------
# scoring and the metrics


class Scorer:
    """SASRec's next-item scores over the catalog (columns in catalog order), for histories of external ids."""

    def __init__(self, rb, model, dataset, catalog: list, max_len: int, device, batch_size: int = 512):
        self.rb, self.model, self.max_len, self.device, self.batch_size = rb, model, max_len, device, batch_size
        self.dataset = dataset
        self.columns = torch.as_tensor(dataset.token2id("item_id", catalog), dtype=torch.long)
        if int((self.columns == 0).sum()):
            raise ValueError("a catalog item mapped to RecBole's padding id")

    @torch.no_grad()
    def logits(self, histories: list) -> torch.Tensor:
        self.model.eval()
        out = []
        for start in range(0, len(histories), self.batch_size):
            chunk = [h[-self.max_len:] for h in histories[start:start + self.batch_size]]
            if any(not h for h in chunk):
                raise ValueError("an empty history")
            seq = torch.zeros(len(chunk), self.max_len, dtype=torch.long)  # right-padded, as RecBole's lists
            for n, h in enumerate(chunk):
                seq[n, :len(h)] = torch.as_tensor(self.dataset.token2id("item_id", list(h)), dtype=torch.long)
            inter = self.rb["Interaction"]({self.model.ITEM_SEQ: seq,
                                             self.model.ITEM_SEQ_LEN: torch.tensor([len(h) for h in chunk])})
            scores = self.model.full_sort_predict(inter.to(self.device)).float().cpu()
            out.append(scores[:, self.columns])
        return torch.cat(out)


def full_ranking(logits: torch.Tensor, catalog: list, targets: list, exclude: list = None) -> tuple:
    """-> (top TOP_SAVED ids per row, the target's 1-based rank in the whole catalog); ties in catalog order (the
    target ranks after every item with a higher score and every earlier catalog item with an equal one).
    exclude: per row, items given -inf first (an informational variant; not P5's protocol)."""
    index = {item: c for c, item in enumerate(catalog)}
    logits = logits.clone()
    if exclude:
        for r, items in enumerate(exclude):
            logits[r, [index[i] for i in items if i in index]] = -math.inf
    tops, ranks = [], []
    for r, target in enumerate(targets):
        row = logits[r].numpy()
        order = np.argsort(-row, kind="stable")[:TOP_SAVED]
        tops.append([catalog[c] for c in order])
        c = index[target]
        ranks.append(int((row > row[c]).sum() + (row[:c] == row[c]).sum() + 1))
    return tops, ranks


def score_template(records: list, kind: str, split: str, build: dict, scorer: Scorer, max_history) -> tuple:
    """-> (predictions, metrics) for one template's (sampled) records of a split."""
    hists = []
    for x in records:
        h = history(build, str(x["user"]), split)
        if x.get("split", split) != split or h is None or h[1] != str(x["target_item_id"]):
            raise ValueError(f"template {x['template']}, user {x['user']}: the record's target is not the user's "
                             f"{split} item in the build's data")
        if kind == "sequential" and [str(i) for i in x["history_item_ids"]] != h[0]:
            raise ValueError(f"template {x['template']}, user {x['user']}: history_item_ids differ from the build's "
                             f"data")
        hists.append(h[0][-max_history:] if max_history else h[0])
    logits = scorer.logits(hists)
    targets = [str(x["target_item_id"]) for x in records]
    if kind == "sequential":
        tops, ranks = full_ranking(logits, build["catalog"], targets)
        metrics = ranking_metrics(tops, targets)
        masked_tops, _ = full_ranking(logits, build["catalog"], targets, exclude=hists)
        metrics["history_excluded"] = ranking_metrics(masked_tops, targets)  # informational, not P5's protocol
        metrics["mean_target_rank"] = sum(ranks) / len(ranks)
        preds = [{"target_item_id": t, "ranked_item_ids": top, "target_rank": rank, "history_item_ids": h}
                 for t, top, rank, h in zip(targets, tops, ranks, hists)]
        return preds, metrics
    index = {item: c for c, item in enumerate(build["catalog"])}
    logprobs = torch.log_softmax(logits, dim=-1)
    cands = [[str(c) for c in x["candidates"]] for x in records]
    unknown = {c for cs in cands for c in cs if c not in index}
    if unknown:
        raise ValueError(f"template {records[0]['template']}: candidates {sorted(unknown)[:5]} not in the catalog")
    scores = [[float(logprobs[r, index[c]]) for c in cs] for r, cs in enumerate(cands)]
    metrics = candidate_ranking_metrics(cands, scores, targets)
    preds = [{"target_item_id": t, "candidates": cs, "logprob": s, "history_item_ids": h}
             for t, cs, s, h in zip(targets, cands, scores, hists)]
    return preds, metrics


def cross_check(trainer, test_data, build: dict, scorer: Scorer, max_len: int) -> dict:
    """RecBole's own full-sort test metrics over every test user, beside ours on the same histories (cut to
    max_len, as RecBole's test file has them): the two must agree (ties aside)."""
    theirs = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    users = [u for u in build["users"] if history(build, u, "test") is not None]
    hists = [history(build, u, "test")[0][-max_len:] for u in users]
    targets = [history(build, u, "test")[1] for u in users]
    tops, _ = full_ranking(scorer.logits(hists), build["catalog"], targets)
    ours = ranking_metrics(tops, targets)
    return {"recbole": {k: float(v) for k, v in theirs.items()},
            "ours": {k: ours[k] for k in ("HR@5", "NDCG@5", "HR@10", "NDCG@10", "n_users")}}


def markdown(results: dict) -> str:
    lines = ["| P5 template | seen | model | metrics | examples |", "|---|---|---|---|---:|"]
    for tid, row in results.items():
        m = row["sasrec"]
        keys = tuple(k for k in ("HR@1", "HR@5", "NDCG@5", "HR@10", "NDCG@10") if k in m)
        cells = ", ".join(f"{k} {m[k]:.4f}" for k in keys)
        lines.append(f"| {tid} | {'seen' if row['seen'] else 'unseen'} | SASRec (RecBole) | {cells} | {row['n']} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--p5-build", required=True, help="a `python -m data.prepare.p5_tasks` output folder")
    p.add_argument("--benchmark-name", help="its eval/<name> (default: the only one)")
    p.add_argument("--source-path", help="the build's source data folder (default: meta.json's source.path)")
    p.add_argument("--templates", help="comma-separated P5 template ids (default: every sequential and direct "
                                       "candidate template of the build)")
    p.add_argument("--split", default="test")
    p.add_argument("--sample", type=int, help="records per template, as evaluate.py --sample (default: all)")
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=200, help="at most this many (early stopping on validation)")
    p.add_argument("--stopping-step", type=int, default=10, help="RecBole's early-stopping patience in epochs; 0: no "
                                                                 "validation, train --epochs, keep the last weights")
    p.add_argument("--seed", type=int, default=2020, help="RecBole's seed (its default 2020)")
    p.add_argument("--max-seq-len", type=int, default=50, help="SASRec's MAX_ITEM_LIST_LENGTH (RecBole's default)")
    p.add_argument("--max-history", type=int, help="scoring histories: the newest N items (default: as the "
                                                   "build's sequential records show them)")
    p.add_argument("--train-batch-size", type=int, help="default RecBole's 2048")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger().handlers[0].addFilter(lambda r: r.name == log.name)  # RecBole's own lines stay quiet
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")  # pandas 2.x deprecations
    rb = import_recbole()
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    started = time.time()
    build = load_build(args.p5_build, args.benchmark_name, args.source_path)
    files = template_files(build["bench"], args.split, args.templates.split(",") if args.templates else None)
    chosen = {}
    for tid, path in files.items():
        records, kind = read_template_file(path)
        if kind in ("sequential", "direct_candidates"):
            chosen[tid] = (records, kind)
        elif args.templates:
            raise ValueError(f"template {tid} ({kind}): SASRec scores sequential and direct candidate templates only")
    if not chosen:
        raise ValueError(f"{build['bench']}: no sequential or direct candidate template files")
    log.info(f"{build['root']}: {len(build['users'])} users, {len(build['catalog'])} catalog items, "
             f"{sum(len(v) for v in build['train'].values())} training interactions; templates {list(chosen)}")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sasrec-") as tmp:
        model, dataset, test_data, trainer, training = train(rb, build, args, pathlib.Path(tmp), device)
        scorer = Scorer(rb, model, dataset, build["catalog"], args.max_seq_len, device)
        check = cross_check(trainer, test_data, build, scorer, args.max_seq_len)
    results, templates, predictions, eval_started = {}, {}, [], time.time()
    for tid, (records, kind) in chosen.items():
        n_file = len(records)
        records = sample_examples(records, args.sample, args.sample_seed)
        preds, metrics = score_template(records, kind, args.split, build, scorer, args.max_history)
        results[tid] = {"seen": bool(records[0]["seen"]), "kind": kind, "n": len(records), "n_in_file": n_file,
                        "sasrec": metrics}
        templates[tid] = {"family": records[0]["family"], "kind": kind, "seen": bool(records[0]["seen"]),
                          "n": len(records), "n_in_file": n_file, "metrics": metrics}
        predictions += [{"template": tid, "user": x["user"], **pr} for x, pr in zip(records, preds)]
    cfg = trainer.config
    settings = {"model": {k: cfg[k] for k in ("hidden_size", "n_layers", "n_heads", "inner_size",
                                               "hidden_dropout_prob", "attn_dropout_prob", "hidden_act",
                                               "layer_norm_eps", "initializer_range", "loss_type",
                                               "MAX_ITEM_LIST_LENGTH")},
                "training": {k: cfg[k] for k in ("epochs", "train_batch_size", "learner", "learning_rate",
                                                  "weight_decay", "stopping_step", "valid_metric", "seed")},
                "scoring_history": args.max_history or build["max_history"] or args.max_seq_len}
    summary = {"p5": results, "templates": templates, "sasrec": {**settings, **training}, "cross_check": check,
               "seconds": {"total": time.time() - started, "training": training["seconds"],
                           "scoring": time.time() - eval_started},
               "versions": {"recbole": rb["version"], "torch": torch.__version__, "numpy": np.__version__,
                            "pandas": rb["pandas"]},
               "device": device, "benchmark": str(build["bench"]), "settings": vars(args)}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as f:
        for pr in predictions:
            f.write(json.dumps(pr) + "\n")
    table = markdown(results)
    (out / "metrics.md").write_text(table)
    print(table)
    print(f"cross-check, every test user: RecBole {json.dumps(check['recbole'])}; ours {json.dumps(check['ours'])}")
    return summary


if __name__ == "__main__":
    from config import cli
    sys.exit(cli.run(main))
