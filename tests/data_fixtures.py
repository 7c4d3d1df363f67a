"""Small raw datasets in their published layouts, and a helper that builds them, for the data-build tests."""
import json
import random
import re

import pathlib

import yaml

from data.prepare import pipeline

REPO = pathlib.Path(__file__).resolve().parents[1]


def movielens_fixture(root, n_users=40, bad_line=None):
    """ml-100k layout: 31 items (item 31 untitled), every 10th user with < 5 interactions."""
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


def p5_fixture(root, n_users=30, datamaps=False):
    """P5 layout: 40 items (item 7 untitled), items.jsonl with ASINs; with `datamaps`, P5's datamaps.json mapping
    user u to reviewer "R<u>" (so the raw Amazon files of amazon_fixture can be matched)."""
    root.mkdir()
    rng = random.Random(1)
    (root / "items.jsonl").write_text("".join(json.dumps({"item_id": i, "asin": f"B{i:04d}",
                                                          "title": "" if i == 7 else f"Cream {i}"}) + "\n"
                                              for i in range(1, 41)))
    (root / "sequential_data.txt").write_text("".join(
        f"{u} " + " ".join(str(i) for i in rng.sample(range(1, 41), 5 + u % 9)) + "\n" for u in range(1, n_users + 1)))
    if datamaps:
        (root / "datamaps.json").write_text(json.dumps({
            "user2id": {f"R{u}": str(u) for u in range(1, n_users + 1)},
            "item2id": {f"B{i:04d}": str(i) for i in range(1, 41)}}))
    return root


def amazon_fixture(root, reviewers, seed=2):
    """Amazon 2018 layout (reviews and meta as JSON lines): each reviewer reviews 6-10 of the ASINs B0001-B0040."""
    root.mkdir()
    rng = random.Random(seed)
    reviews = []
    for r in reviewers:
        for k, i in enumerate(rng.sample(range(1, 41), rng.randint(6, 10))):
            reviews.append({"reviewerID": r, "asin": f"B{i:04d}", "overall": float(rng.randint(1, 5)),
                            "reviewText": f"review {k} of {r}", "unixReviewTime": 1_500_000_000 + 86_400 * k})
    (root / "reviews.json").write_text("".join(json.dumps(x) + "\n" for x in reviews))
    (root / "meta.json").write_text("".join(json.dumps({"asin": f"B{i:04d}", "title": f"Cream {i}"}) + "\n"
                                            for i in range(1, 41)))
    return root


def write_config(path, out, sources, **extra):
    cfg = {"name": "tiny", "out_dir": str(out), "seed": 5, "max_seq_len": 160, "finetune_fraction": 0.2,
           "tokenizer": {"train": {"vocab_size": 400}}, "pack": {"rows_per_shard": 16}, "batch_users": 8,
           "sources": sources}
    cfg.update(extra)
    path.write_text(yaml.safe_dump(cfg))
    return path


def two_sources(ml, beauty):
    """A P5 benchmark and a MovieLens corpus source (the pipeline tests' default)."""
    return [{"name": "beauty", "reader": "p5", "domain": "amazon", "benchmark": True, "options": {"path": str(beauty)}},
            {"name": "ml", "reader": "movielens", "domain": "movielens", "options": {"path": str(ml)}}]


def build(tmp_path, name, sources, *args, **extra):
    """`python -m data.prepare` of a config with these sources into tmp_path/name -> the out_dir."""
    out = tmp_path / name
    assert pipeline.main([str(write_config(tmp_path / f"{name}.yaml", out, sources, **extra)), *args]) == 0
    return out


def files_of(out) -> dict:
    """Every output file of a build (not its work dir, nor environment.json: what produced it, whose threads differ
    between equal builds) -> bytes, with the out_dir's path replaced by OUT."""
    path = re.compile(re.escape(str(out).encode()) + rb"(?![\w-])")  # not another folder that starts alike
    return {p.relative_to(out).as_posix(): path.sub(b"OUT", p.read_bytes())
            for p in sorted(out.rglob("*")) if p.is_file() and "work" not in p.relative_to(out).parts
            and p.relative_to(out).as_posix() != "environment.json"}
