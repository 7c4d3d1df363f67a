"""Stage 3: the jobs that render, tokenize and write a source's users, one bucket each (data/prepare/plan.py).

A training job writes its users' pre-training documents (data/prepare/pretrain.py) and fine-tuning pairs
(data/prepare/pairs.py); an evaluation job writes its benchmark users' evaluation prompts
(data/prepare/eval_prompts.py). Each job reads only its bucket, streams its users in order, and writes one
folder under <work_dir>/jobs/<source>/ (complete or not at all, data/prepare/workdir.py), so jobs run in any
order, side by side (a local process pool) or as a Slurm array (scripts/build_slurm.sh), and a rerun
skips the finished ones.
"""
import collections
import functools
import pathlib
from dataclasses import dataclass

from data.formats import tokenizer as tokenizer_lib
from data.formats.instructions import InstructionWriter
from data.prepare import engine, histories, normalise, plan, recipe, templates, workdir
from data.prepare.chunking import Chunker
from data.prepare.config import BuildConfig, SourceConfig
from data.prepare.encoder import Encoder
from data.prepare.eval_prompts import EvalWriter, write_prompts
from data.prepare.manifests import ManifestWriter
from data.prepare.pairs import write_pairs
from data.prepare.pretrain import DocumentStream, write_documents


@dataclass(frozen=True)
class Job:
    source: str
    kind: str  # "train" | "valid" (the validation users: same outputs, kept apart) | "eval"
    bucket: int
    buckets: int

    @property
    def name(self) -> str:
        return f"{self.source}/{self.kind}-{self.bucket:05d}-of-{self.buckets:05d}"


def job_list(cfg: BuildConfig, plans: dict) -> list[Job]:
    """Every job of the build, in merge order: sources in config order, training buckets, validation buckets, then
    evaluation buckets, each in bucket order."""
    jobs = []
    for s in cfg.sources:
        p = plans[s.name]["result"]
        jobs += [Job(s.name, "train", b, p["train_buckets"]) for b in range(p["train_buckets"])]
        jobs += [Job(s.name, "valid", b, p["valid_buckets"]) for b in range(p.get("valid_buckets", 0))]
        jobs += [Job(s.name, "eval", b, p["eval_buckets"]) for b in range(p.get("eval_buckets", 0))]
    return jobs


def job_dir(cfg: BuildConfig, job: Job) -> pathlib.Path:
    return pathlib.Path(cfg.work_dir) / "jobs" / job.name


def job_fingerprint(cfg: BuildConfig, job: Job, plan_fp: str, tokenizer_sha: str) -> str:
    code = workdir.code_fingerprint(__name__, "data.prepare.templates", "data.prepare.chunking", "data.prepare.encoder",
                                    "data.prepare.pretrain", "data.prepare.pairs", "data.prepare.eval_prompts",
                                    "data.prepare.histories", "data.prepare.recipe", "data.prepare.manifests",
                                    "data.formats.instructions")
    return workdir.fingerprint("job", code, job.name, plan_fp, tokenizer_sha, cfg.max_seq_len, cfg.eval,
                               cfg.write_manifests)


@functools.lru_cache(maxsize=2)
def load_tokenizer(path: str):
    """The tokenizer, loaded once per process."""
    return tokenizer_lib.load(path)


def run_job(cfg: BuildConfig, job: Job, plan_fp: str, tok_path: str, tok_sha: str) -> dict:
    """Run `job` unless it is done with the same fingerprint -> its done record."""
    fp = job_fingerprint(cfg, job, plan_fp, tok_sha)
    write = write_eval if job.kind == "eval" else write_train
    return workdir.run_stage(job_dir(cfg, job), fp, lambda out: write(cfg, job, tok_path, out), f"job {job.name}",
                             announce=False)  # the pipeline says how many jobs are redone


def _source(cfg: BuildConfig, name: str) -> SourceConfig:
    return next(s for s in cfg.sources if s.name == name)


def bucket_users(cfg: BuildConfig, job: Job, table: str, group: str, extra: tuple):
    """The users of the job's bucket of the plan's `table` ("train", "valid": by seeded place; "heldout": by sorted
    rank), streamed in that order from the engine: (first row's `group` and `extra` values, history, the
    `extra` values of each row) a user (histories.grouped)."""
    folder = plan.plan_dir(cfg, job.source) / table / f"bucket={job.bucket}"
    if not folder.is_dir():
        return  # no user in this bucket
    rows = f"SELECT * FROM {engine.parquet(folder)}"
    con = engine.connect(cfg.work_dir, cfg.memory_limit, threads=1)
    try:
        items = histories.items_of(con, normalise.source_dir(cfg, job.source) / "items.parquet", rows)
        yield from histories.grouped(con, f"{rows} ORDER BY {group}, ord", group, items, extra)
    finally:
        con.close()


def write_train(cfg: BuildConfig, job: Job, tok_path: str, out: pathlib.Path) -> dict:
    """A training bucket's (or, for a "valid" job, a validation bucket's) documents and fine-tuning pairs."""
    s = _source(cfg, job.source)
    d = templates.source_domain(s)
    tok = load_tokenizer(tok_path)
    enc = Encoder(tok)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    dtype, eos_id = tokenizer_lib.token_dtype(vocab), tok.token_to_id(tokenizer_lib.EOS)
    stream = DocumentStream(out / "pretrain.tokens.bin", dtype, eos_id)
    instructions = InstructionWriter(out, dtype, eos_id)
    suffix = "_valid" if job.kind == "valid" else ""
    manifest = ManifestWriter(out / "manifest.parquet", job.source, suffix) if cfg.write_manifests else None
    counts: collections.Counter = collections.Counter()
    doc_chunker, pair_chunker = Chunker(enc.counts, cfg.max_seq_len), Chunker(enc.counts, cfg.max_seq_len)
    pre, ft = [], []

    def flush():
        write_documents(d, pre, enc, doc_chunker, stream, manifest, counts)
        write_pairs(d, job.source, ft, enc, pair_chunker, instructions, manifest, counts)
        pre.clear()
        ft.clear()

    for head, history, _ in bucket_users(cfg, job, job.kind, "position", ("pretrain", "finetune")):
        if head["pretrain"]:
            pre.append(history)
        if head["finetune"]:
            ft.append((history[0].user, history))
        if len(pre) + len(ft) >= cfg.batch_users:
            flush()
    flush()
    stream.close()
    n_pairs = instructions.close()
    if manifest:
        manifest.close()
    counts.update(doc_chunker.counts)
    counts.update(pair_chunker.counts)
    return {"counts": dict(sorted(counts.items())), "documents": counts["documents"], "tokens": counts["tokens"],
            "pairs": n_pairs, "dtype": dtype, "eos_id": eos_id, "vocab_size": vocab,
            "encoded_tokens": enc.encoded_tokens}


def write_eval(cfg: BuildConfig, job: Job, tok_path: str, out: pathlib.Path) -> dict:
    s = _source(cfg, job.source)
    d = templates.source_domain(s)
    enc = Encoder(load_tokenizer(tok_path))
    writer = EvalWriter(out)
    manifest = ManifestWriter(out / "manifest.parquet", job.source) if cfg.write_manifests else None
    counts: collections.Counter = collections.Counter()
    negatives = None
    if cfg.eval.negatives:  # over the source's whole catalog, built once per job
        con = engine.connect(cfg.work_dir, cfg.memory_limit, threads=1)
        try:
            negatives = recipe.Negatives(normalise.item_ids(con, cfg, job.source), key="eval.negatives")
        finally:
            con.close()
    users = []
    for _, history, per_row in bucket_users(cfg, job, "heldout", "rank", ("rating_split",)):
        users.append((history[0].user, history, [r[0] for r in per_row] if s.rating_split else None))
        if len(users) >= cfg.batch_users:
            write_prompts(d, job.source, users, enc, cfg, writer, manifest, counts, negatives)
            users.clear()
    write_prompts(d, job.source, users, enc, cfg, writer, manifest, counts, negatives)
    files = writer.close()
    if manifest:
        manifest.close()
    return {"counts": dict(sorted(counts.items())), "files": files, "encoded_tokens": enc.encoded_tokens}
