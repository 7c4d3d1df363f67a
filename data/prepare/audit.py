"""Leakage audit of a build: proves that no validation/test interaction of a benchmark (either task) is in any
training output, in the benchmark's own ids and in the raw ids it shares with newer versions of its data,
and that no user is in both the pre-training and fine-tuning data.

    python -m data.prepare.audit out/data/amazon-beauty     # exit 0 and a report, or exit 1 naming leaks

It reads what the build wrote, not what the config says: the manifests (data/prepare/manifests.py: every
interaction of every pre-training document, fine-tuning pair and held-out example) and the evaluation
files, in the engine (bounded memory). Checks:
1. no training interaction is a held-out one: same user, item, time and occurrence, in any source;
2. across id spaces: a source that excludes the users of a benchmark (`exclude_users_of`, e.g. Amazon 2018
   after P5's Amazon 2014) trains on no user of it and on no held-out (raw user, raw item) pair of it,
   compared by raw id (P5's reviewerID/ASIN from its datamaps.json; the ids themselves elsewhere);
3. no user in both pre-training and fine-tuning (but benchmarks with finetune_from_train, by design), and no
   user of the validation split (valid_fraction) in either (the validation outputs count as training for 1-2);
4. the manifests list as many pre-training interactions as meta.json counts;
5. every evaluation example's user has a held-out interaction.
"""
import argparse
import json
import sys

from config import cli
from data.formats.packed import read_meta
from data.prepare import engine

SHOWN = 20  # leaks named in the report; all are counted


def audit(path) -> dict:
    meta_path, meta = read_meta(path)
    root = meta_path.parent
    if meta.get("builder") == "p5_tasks":  # P5's multitask corpus: its own held-out manifest and checks
        from data.prepare.p5_tasks import audit_build
        return audit_build(root, meta)
    if not meta.get("manifests"):
        raise ValueError(f"{meta_path}: built with write_manifests: false; nothing to audit")
    cfg = meta["config"]
    con = engine.connect(cfg.get("work_dir") or root / "work", cfg.get("memory_limit", "1GB"))
    try:
        files = ", ".join(engine.quote(root / m) for m in meta["manifests"])
        con.execute(f"CREATE VIEW m AS SELECT * FROM read_parquet([{files}])")
        con.execute("CREATE VIEW heldout AS SELECT * FROM m WHERE use = 'heldout'")
        con.execute("CREATE VIEW training AS SELECT * FROM m WHERE use <> 'heldout'")
        problems = []
        # 1. the interaction's identity (the source is left out on purpose: no leak through another source)
        leaks = con.execute("""
            SELECT t.use, t.source, t.user, t.item, t.time, t.occurrence, h.held_out_as
            FROM training t JOIN (SELECT user, item, time, occurrence,
                                         string_agg(source || ':' || task || ':' || split, ', ') AS held_out_as
                                  FROM heldout GROUP BY ALL) h
              ON t.user = h.user AND t.item = h.item AND t.time IS NOT DISTINCT FROM h.time
                 AND t.occurrence = h.occurrence""").fetchall()
        if leaks:
            problems.append(f"{len(leaks)} training interactions are held out: " + "; ".join(
                f"{use} {src} {[u, i, t, o]} is held out as {held}" for use, src, u, i, t, o, held in leaks[:SHOWN]))
        # 2. across id spaces, between the sources the config says share users
        related = [(s["name"], o) for s in cfg["sources"] for o in s.get("exclude_users_of", [])]
        across = []
        for source, other in related:
            rows = con.execute("""
                SELECT t.use, t.raw_user, t.raw_item, h.held_out_as FROM training t
                JOIN (SELECT raw_user, raw_item, string_agg(task || ':' || split, ', ') AS held_out_as
                      FROM heldout WHERE source = ? GROUP BY ALL) h
                  ON t.raw_user = h.raw_user AND t.raw_item = h.raw_item
                WHERE t.source = ?""", [other, source]).fetchall()
            across += [(source, other, *r) for r in rows]
            users = con.execute("""
                SELECT count(DISTINCT raw_user) FROM training WHERE source = ?
                AND raw_user IN (SELECT raw_user FROM m WHERE source = ?)""", [source, other]).fetchall()[0][0]
            if users:
                problems.append(f"{source} trains on {users} users of {other}, whose users it excludes "
                                f"(exclude_users_of), compared by raw user id")
        if across:
            problems.append(f"{len(across)} training interactions are held-out (raw user, raw item) pairs of another "
                            "source: " + "; ".join(f"{use} {src} ({u}, {i}) is held out in {o} as {held}"
                                                   for src, o, use, u, i, held in across[:SHOWN]))
        # 3. users in both pre-training and fine-tuning
        by_design = {s["name"] for s in cfg["sources"] if s.get("finetune_from_train")}
        shared = {src: n for src, n in con.execute("""
            SELECT source, count(*) FROM (SELECT source, user FROM training GROUP BY source, user
                                          HAVING bool_or(use = 'pretrain') AND bool_or(use = 'finetune'))
            GROUP BY source""").fetchall() if src not in by_design}
        if shared:
            problems.append(f"users in both pre-training and fine-tuning: {shared}")
        # 3b. validation users (valid_fraction) are held out whole: none of them trains
        in_both = dict(con.execute("""
            SELECT source, count(*) FROM (SELECT source, user FROM training GROUP BY source, user
                                          HAVING bool_or(use LIKE '%_valid') AND bool_or(use NOT LIKE '%_valid'))
            GROUP BY source""").fetchall())
        if in_both:
            problems.append(f"users in both training and the validation split: {in_both}")
        # 4. the manifests against meta.json
        per_source = {s: {} for s in meta["sources"]}
        for src, use, n in con.execute("SELECT source, use, count(*) FROM training GROUP BY ALL").fetchall():
            per_source.setdefault(src, {})[use] = n
        per_source = {src: dict(sorted(uses.items())) for src, uses in sorted(per_source.items())}
        for src, s in meta["sources"].items():
            want = s["counts"].get("interactions_in_documents", 0)
            if per_source[src].get("pretrain", 0) != want:
                problems.append(f"{src}: the manifests list {per_source[src].get('pretrain', 0)} pre-training "
                                f"interactions, meta.json says {want}")
        # 5. every evaluated user has a held-out interaction
        evaluated = 0
        for src, e in meta.get("eval", {}).items():
            for fname in e["files"]:
                f = root / e["dir"] / fname
                n, orphans = con.execute(f"""
                    SELECT count(*), count(*) FILTER (WHERE r.user NOT IN
                        (SELECT user FROM heldout WHERE source = ?))
                    FROM read_json({engine.quote(f)}, format = 'newline_delimited', columns = {{'user': 'VARCHAR'}}) r
                    """, [src]).fetchall()[0]
                evaluated += n
                if orphans:
                    problems.append(f"{e['dir']}/{fname}: {orphans} examples of users with no held-out interaction")
        n_heldout = con.execute("""SELECT count(*) FROM (SELECT DISTINCT source, user, item, time, occurrence
                                                         FROM heldout)""").fetchall()[0][0]
    finally:
        con.close()
    return {"heldout_interactions": n_heldout, "evaluation_examples": evaluated,
            "training_interactions": per_source,
            "leaked_interactions": len(leaks), "leaked_across_id_spaces": len(across),
            "users_in_both_splits": sum(shared.values()), "validation_users_in_training": sum(in_both.values()),
            "problems": problems, "ok": not problems}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data.prepare.audit", description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", help="a data build (the folder with meta.json)")
    result = audit(ap.parse_args(argv).out_dir)
    print(json.dumps(result, indent=1))
    print("AUDIT OK: no overlap" if result["ok"] else "AUDIT FAILED", file=sys.stderr)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(cli.run(main))
