"""Stage 2: the recipe on a whole source, in the engine: who is kept, in which order, for what.

Reads the normalised source (data/prepare/normalise.py) and writes, under <work_dir>/plan/<name>/:

    train/bucket=<b>/*.parquet     the interactions the source trains on, with each user's place in the
                                   seeded user order (`position`) and role (pre-training, fine-tuning)
    heldout/bucket=<e>/*.parquet   benchmarks: every interaction, with P5's next-item and rating splits
    catalog.jsonl, train_stats.json  benchmarks: the evaluation catalog and the training split's counts
    done.json                      the counts of the ledger (read = kept + dropped, by reason), table 4

The rules (paper §2.1, App. A; recgpt.md §3-4, evaluation.md §1-3):
1. histories: group by user, stable chronological sort (no time: reading order);
2. non-benchmark: users of `exclude_users_of` sources removed (compared by raw id), items without a title
   dropped, then users with < min_interactions; a seeded permutation of the sorted users, whose first
   round(finetune_fraction n) are the fine-tuning users;
3. benchmark: P5's splits on the full sequences (next item leave-one-out; rating 80/10/10); training =
   every interaction in no validation/test split of either task, untitled items then dropped; the users
   with a training history left, in seeded order (all pre-training; also fine-tuning with
   `finetune_from_train` when they have >= 2 items); with `users_file`, only its users train (the splits are
   still drawn over every user, so the held-out interactions are the full source's).
Users are cut into buckets of contiguous places in the seeded order (about `bucket_interactions`
interactions each), and benchmark users into evaluation buckets of contiguous sorted ranks: the build's
jobs render one bucket each, and concatenated in bucket order their outputs are those of one job.
Everything but two arrays of numbers per source (recipe.py: places, rating split) stays in the engine,
which spills to disk beyond `memory_limit`.
"""
import collections
import json
import math
import pathlib

import pyarrow as pa

from data.formats.evalfiles import RATING_LOW, item_id_order
from data.prepare import engine, normalise, recipe, templates, workdir
from data.prepare.config import BuildConfig, SourceConfig
from data.prepare.records import ITEM_FIELDS, DataError, Interaction, Item


def plan_dir(cfg: BuildConfig, name: str) -> pathlib.Path:
    return pathlib.Path(cfg.work_dir) / "plan" / name


def plan_fingerprint(cfg: BuildConfig, s: SourceConfig, source_fps: dict) -> str:
    code = workdir.code_fingerprint(__name__, "data.prepare.recipe", "data.prepare.templates", "data.prepare.engine")
    return workdir.fingerprint("plan", code, source_fps[s.name], [source_fps[o] for o in s.exclude_users_of],
                               {k: getattr(s, k) for k in ("domain", "item_tokens", "benchmark", "rating_split",
                                                           "finetune_from_train", "exclude_users_of", "users_file")},
                               workdir.input_stats({"users_file": s.users_file}),
                               {k: getattr(cfg, k) for k in ("seed", "min_interactions", "finetune_fraction",
                                                             "valid_fraction", "bucket_interactions",
                                                             "duplicate_interactions")},
                               cfg.limits.history,
                               cfg.eval.missing_title)


def plan(cfg: BuildConfig, s: SourceConfig, source_fps: dict, threads: int | None = None) -> dict:
    """The plan of source `s` (reused when done with the same fingerprint) -> its record."""
    fp = plan_fingerprint(cfg, s, source_fps)
    return workdir.run_stage(plan_dir(cfg, s.name), fp, lambda out: write_plan(cfg, s, out, threads),
                             f"plan of {s.name}")


def write_plan(cfg: BuildConfig, s: SourceConfig, out: pathlib.Path, threads: int | None = None) -> dict:
    name = s.name
    workdir.log(f"planning {name}")
    src = normalise.source_dir(cfg, name)
    db = out / "plan.duckdb"  # a database file, so that the engine can move its tables out of memory
    con = engine.connect(cfg.work_dir, cfg.memory_limit, threads, database=db)
    try:
        interactions = engine.parquet(src / "interactions.parquet")
        read, duplicates = con.execute(f"""
            SELECT count(*), count(*) FILTER (WHERE time IS NOT NULL)
                             - (SELECT count(*) FROM (SELECT DISTINCT user, item, time, rating, review
                                                      FROM {interactions} WHERE time IS NOT NULL))
            FROM {interactions}""").fetchall()[0]  # without a time, a repeated item is a new event of a sequence
        if duplicates and cfg.duplicate_interactions == "error":
            raise DataError(f"source {name}: {duplicates} interactions repeat an earlier one exactly (user, item, "
                            f"time, rating, review); set duplicate_interactions: keep or drop")
        drop = cfg.duplicate_interactions == "drop"
        # a user's history keeps its most recent limits.history interactions (the tail, as the chunking keeps the
        # order): no step downstream then grows with one user's raw length
        con.execute(f"""
            CREATE TABLE hist AS
            SELECT *, row_number() OVER (PARTITION BY user ORDER BY time NULLS FIRST, seq) - 1 AS ord,
                   -- earlier interactions of the user with the same item at the same time
                   row_number() OVER (PARTITION BY user, item, time ORDER BY seq) - 1 AS occurrence
            FROM (SELECT i.user, i.item, i.time, i.rating, i.review, i.seq,
                         coalesce(i.raw_user, i.user) AS raw_user, coalesce(t.raw_id, i.item) AS raw_item,
                         t.title IS NOT NULL AS titled,
                         row_number() OVER (PARTITION BY i.user ORDER BY i.time DESC NULLS LAST, i.seq DESC) - 1
                           AS from_end
                  FROM (SELECT * FROM {interactions}
                        {"QUALIFY time IS NULL OR row_number() OVER (PARTITION BY user, item, time, rating, review "
                         "ORDER BY seq) = 1" if drop else ""}) i
                  LEFT JOIN {engine.parquet(src / 'items.parquet')} t ON t.id = i.item)
            WHERE from_end < {cfg.limits.history}""")
        kept_rows = con.execute("SELECT count(*) FROM hist").fetchall()[0][0]
        counts = {"read": read, "dropped": collections.Counter(), "users_dropped": collections.Counter(),
                  "kept": collections.Counter()}
        if drop and duplicates:
            counts["dropped"]["duplicate_interaction"] += duplicates
        if read - kept_rows - (duplicates if drop else 0):
            counts["dropped"][f"history_over_{cfg.limits.history}"] += read - kept_rows - (duplicates if drop else 0)
        result_extra = {"duplicate_interactions": duplicates}
        plan_users = benchmark_users if s.benchmark else corpus_users
        result = plan_users(con, cfg, s, counts)
        n_valid_users = mark_validation_users(con, cfg.valid_fraction, counts)
        n_train = counts["kept"]["pretrain"] + counts["kept"].get("finetune", 0)
        if read != sum(counts["dropped"].values()) + sum(counts["kept"].values()):
            raise AssertionError(f"{name}: ledger does not add up: read {read} != dropped {dict(counts['dropped'])} "
                                 f"+ kept {dict(counts['kept'])}")
        n_users = con.execute("SELECT count(*) FROM users WHERE position IS NOT NULL").fetchall()[0][0]
        buckets = min(max(n_users, 1), max(1, math.ceil(n_train / cfg.bucket_interactions)))
        write_users(con, out / "train", "NOT u.valid", f"u.position * {buckets} // {max(n_users, 1)}")
        result.update(train_buckets=buckets, users_in_order=n_users, validation_users=n_valid_users)
        if n_valid_users:
            n_valid = counts["kept"]["pretrain_valid"] + counts["kept"]["finetune_valid"]
            valid_buckets = min(n_valid_users, max(1, math.ceil(n_valid / cfg.bucket_interactions)))
            write_users(con, out / "valid", "u.valid", f"u.valid_rank * {valid_buckets} // {n_valid_users}")
            result.update(valid_buckets=valid_buckets)
        if s.benchmark:
            result.update(write_benchmark(con, cfg, s, out, read))
    finally:
        con.close()
        db.unlink(missing_ok=True)
        pathlib.Path(str(db) + ".wal").unlink(missing_ok=True)
    return {"interactions_read": read, "interactions_dropped": dict(sorted(counts["dropped"].items())),
            "users_dropped": dict(sorted(counts["users_dropped"].items())),
            "interactions_kept": dict(sorted(counts["kept"].items())), **result_extra, **result}


def write_users(con, folder: pathlib.Path, which: str, bucket: str) -> None:
    """The training rows of the users `which` (users u), partitioned into job buckets by the expression `bucket`."""
    con.execute(f"""
        COPY (SELECT {bucket} AS bucket, u.position, u.pretrain, u.finetune,
                     h.user, h.ord, h.item, h.time, h.rating, h.review, h.occurrence, h.raw_user, h.raw_item
              FROM hist h JOIN users u USING (user) WHERE h.train AND h.titled AND u.position IS NOT NULL AND {which})
        TO {engine.quote(folder)} (FORMAT parquet, PARTITION_BY (bucket), COMPRESSION zstd)""")


def mark_validation_users(con, fraction: float, counts: dict) -> int:
    """users.valid: the last round(fraction x n) places of the pre-training users and, apart, of the users who only
    fine-tune (so that both splits get some), held out whole for the validation loss; valid_rank orders them.
    Their kept interactions move to the ledger's pretrain_valid / finetune_valid -> how many users."""
    con.execute("""ALTER TABLE users ADD COLUMN valid BOOLEAN DEFAULT false;
                   ALTER TABLE users ADD COLUMN valid_rank BIGINT""")
    if fraction <= 0:
        return 0
    con.execute(f"""
        UPDATE users SET valid = true FROM (
            SELECT user, row_number() OVER (PARTITION BY pretrain ORDER BY position DESC) - 1 AS from_end,
                   count(*) OVER (PARTITION BY pretrain) AS n
            FROM users WHERE position IS NOT NULL) g
        WHERE users.user = g.user AND g.from_end < round({fraction} * g.n)""")
    con.execute("""UPDATE users SET valid_rank = r.rank FROM (
                       SELECT user, row_number() OVER (ORDER BY position) - 1 AS rank FROM users WHERE valid) r
                   WHERE users.user = r.user""")
    pre, ft = _counts(con, """SELECT count(*) FILTER (WHERE u.pretrain), count(*) FILTER (WHERE NOT u.pretrain)
                              FROM hist h JOIN users u USING (user) WHERE u.valid AND h.train AND h.titled""")
    for use, n in (("pretrain", pre), ("finetune", ft)):
        if n:
            counts["kept"][use] -= n
            counts["kept"][f"{use}_valid"] += n
    return _counts(con, "SELECT count(*) FROM users WHERE valid")[0]


def _counts(con, sql: str) -> tuple:
    return tuple(int(v or 0) for v in con.execute(sql).fetchall()[0])


def place_users(con, cfg: BuildConfig, name: str, where: str) -> int:
    """users.position: the seeded place of each user with `where`, NULL for the others -> their number."""
    n = con.execute(f"SELECT count(*) FROM users WHERE {where}").fetchall()[0][0]
    places = pa.table({"rank": pa.array(range(n), pa.int64()),
                       "position": pa.array(recipe.user_positions(n, cfg.seed, name))})
    con.register("places", places)
    con.execute(f"""
        CREATE OR REPLACE TABLE users AS
        SELECT u.*, p.position FROM users u
        LEFT JOIN (SELECT user, row_number() OVER (ORDER BY user) - 1 AS kept_rank FROM users WHERE {where}) r
          USING (user)
        LEFT JOIN places p ON p.rank = r.kept_rank""")
    con.unregister("places")
    return n


def corpus_users(con, cfg: BuildConfig, s: SourceConfig, counts: dict) -> dict:
    """A non-benchmark source: exclusion, cleaning, the seeded user split."""
    name, min_n = s.name, cfg.min_interactions
    others = [normalise.source_dir(cfg, o) / "interactions.parquet" for o in s.exclude_users_of]
    if others:
        con.execute(f"""CREATE TABLE excluded AS SELECT DISTINCT coalesce(raw_user, user) AS raw_user
                        FROM read_parquet([{', '.join(engine.quote(p) for p in others)}])""")
    else:
        con.execute("CREATE TABLE excluded (raw_user VARCHAR)")
    con.execute("""
        CREATE TABLE users AS
        SELECT h.user, count(*) AS n_read, count(*) FILTER (WHERE h.titled) AS n_titled,
               bool_or(e.raw_user IS NOT NULL) AS excluded
        FROM hist h LEFT JOIN excluded e USING (raw_user) GROUP BY h.user""")
    n_ex, ex_read, n_short, short_titled, n_other = _counts(con, f"""
        SELECT count(*) FILTER (WHERE excluded), sum(n_read) FILTER (WHERE excluded),
               count(*) FILTER (WHERE NOT excluded AND n_titled < {min_n}),
               sum(n_titled) FILTER (WHERE NOT excluded AND n_titled < {min_n}), count(*) FILTER (WHERE NOT excluded)
        FROM users""")
    warnings = []
    if n_ex:
        counts["dropped"]["user_in_benchmark_version"] += ex_read
        counts["users_dropped"]["user_in_benchmark_version"] += n_ex
    elif others:
        warnings.append(f"source {name}: exclude_users_of {s.exclude_users_of} removed no user. If these sources "
                        f"number users differently (a P5 benchmark next to the raw Amazon files it came from), give "
                        f"the P5 reader its datamaps.json (option datamaps) so that users are compared by raw id")
    if n_other:  # items without a title are dropped from every user not excluded (the count may be 0)
        counts["dropped"]["item_without_title"] += _counts(con, """
            SELECT sum(n_read - n_titled) FROM users WHERE NOT excluded""")[0]
    if n_short:
        counts["dropped"][f"user_under_{min_n}_interactions"] += short_titled
        counts["users_dropped"][f"user_under_{min_n}_interactions"] += n_short
    n = place_users(con, cfg, name, f"NOT excluded AND n_titled >= {min_n}")
    n_ft = round(cfg.finetune_fraction * n)
    con.execute(f"""ALTER TABLE users ADD COLUMN finetune BOOLEAN; ALTER TABLE users ADD COLUMN pretrain BOOLEAN;
                    UPDATE users SET finetune = position < {n_ft}, pretrain = position >= {n_ft}""")
    con.execute("ALTER TABLE hist ADD COLUMN train BOOLEAN; UPDATE hist SET train = true")
    pre, ft = _counts(con, """SELECT sum(n_titled) FILTER (WHERE pretrain), sum(n_titled) FILTER (WHERE finetune)
                              FROM users""")
    counts["kept"]["pretrain"] += pre
    counts["kept"]["finetune"] += ft
    n_items = _counts(con, """SELECT count(DISTINCT h.item) FROM hist h JOIN users u USING (user)
                               WHERE h.titled AND u.position IS NOT NULL""")[0]
    return {"table4": {"users": n, "items": n_items, "interactions": pre + ft},
            "excluded_users": n_ex, "warnings": warnings}


def listed_users(con, s: SourceConfig) -> str:
    """The SQL condition on `user` that the source's `users_file` lists it ("true" without one); a listed user the
    source lacks (not in the `users` table) is an error naming the file."""
    if not s.users_file:
        return "true"
    path = pathlib.Path(s.users_file)
    if not path.is_file():
        raise DataError(f"{path}: file not found (source {s.name}: users_file)")
    ids = sorted({line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()})
    if not ids:
        raise DataError(f"{path}: no user id in it (source {s.name}: users_file, one id per line)")
    con.register("listed_ids", pa.table({"user": pa.array(ids, pa.string())}))
    con.execute("CREATE TABLE listed AS SELECT user FROM listed_ids")
    con.unregister("listed_ids")
    missing = con.execute("SELECT user FROM listed WHERE user NOT IN (SELECT user FROM users) ORDER BY user").fetchall()
    if missing:
        raise DataError(f"{path}: {len(missing)} of its {len(ids)} users have no interaction in source {s.name} "
                        f"(first: {missing[0][0]!r}; users_file)")
    return "user IN (SELECT user FROM listed)"


def benchmark_users(con, cfg: BuildConfig, s: SourceConfig, counts: dict) -> dict:
    """A benchmark: P5's splits on the full sequences (untitled items included), the leakage rule, the users
    with a training history left in seeded order."""
    name = s.name
    con.execute("""CREATE TABLE users AS SELECT user, count(*) AS n_read, row_number() OVER (ORDER BY user) - 1 AS rank
                   FROM hist GROUP BY user""")
    n_users = con.execute("SELECT count(*) FROM users").fetchall()[0][0]
    con.execute("ALTER TABLE hist ADD COLUMN rating_split TINYINT")
    if s.rating_split:
        sizes = con.execute("SELECT n_read FROM users ORDER BY user").fetchnumpy()["n_read"]
        item_ranks = con.execute("""SELECT dense_rank() OVER (ORDER BY item) - 1 AS r FROM hist
                                    ORDER BY user, ord""").fetchnumpy()["r"]
        split = recipe.p5_rating_split(sizes.astype("int64"), item_ranks.astype("int64"), cfg.seed, name)
        con.register("split", pa.table({"g": pa.array(range(len(split)), pa.int64()), "s": pa.array(split)}))
        con.execute("""
            CREATE OR REPLACE TABLE hist AS
            SELECT h.* REPLACE (s.s AS rating_split)
            FROM (SELECT *, row_number() OVER (ORDER BY user, ord) - 1 AS g FROM hist) h JOIN split s USING (g)""")
        con.unregister("split")
    # next item: last = test (2), second-to-last = validation (1); training: in no validation/test split
    con.execute(f"""
        CREATE OR REPLACE TABLE hist AS
        SELECT h.*, CASE WHEN h.ord = u.n_read - 1 THEN {recipe.RATING_TEST}
                         WHEN h.ord = u.n_read - 2 THEN {recipe.RATING_VALIDATION} ELSE 0 END AS next_split
        FROM hist h JOIN users u USING (user)""")
    con.execute("""ALTER TABLE hist ADD COLUMN train BOOLEAN;
                   UPDATE hist SET train = next_split = 0 AND coalesce(rating_split, 0) = 0""")
    listed = listed_users(con, s)
    heldout, untitled, kept, unlisted = _counts(con, f"""SELECT count(*) FILTER (WHERE NOT train),
        count(*) FILTER (WHERE train AND NOT titled), count(*) FILTER (WHERE train AND titled AND {listed}),
        count(*) FILTER (WHERE train AND titled AND NOT {listed}) FROM hist""")
    counts["kept"]["heldout_validation_test"] += heldout
    counts["dropped"]["train_item_without_title"] += untitled
    counts["kept"]["pretrain"] += kept
    if unlisted:
        counts["dropped"]["user_not_in_users_file"] += unlisted
    con.execute("""CREATE OR REPLACE TABLE users AS SELECT u.*, count(*) FILTER (WHERE h.train AND h.titled) AS n_train
                   FROM users u JOIN hist h USING (user) GROUP BY ALL""")
    counts["users_dropped"]["no_training_interaction_left"] += _counts(
        con, "SELECT count(*) FROM users WHERE n_train = 0")[0]
    n_unlisted = _counts(con, f"SELECT count(*) FROM users WHERE n_train > 0 AND NOT {listed}")[0]
    if n_unlisted:
        counts["users_dropped"]["user_not_in_users_file"] += n_unlisted
    place_users(con, cfg, name, f"n_train > 0 AND {listed}")
    con.execute(f"""ALTER TABLE users ADD COLUMN pretrain BOOLEAN; ALTER TABLE users ADD COLUMN finetune BOOLEAN;
                    UPDATE users SET pretrain = position IS NOT NULL,
                                     finetune = {str(bool(s.finetune_from_train)).lower()} AND n_train >= 2""")
    n_items = _counts(con, "SELECT count(DISTINCT item) FROM hist")[0]
    return {"table4": {"users": n_users, "items": n_items, "interactions": counts["read"]},
            "excluded_users": 0, "warnings": []}


def write_benchmark(con, cfg: BuildConfig, s: SourceConfig, out: pathlib.Path, read: int) -> dict:
    """The held-out table for the evaluation jobs, the catalog and the training split's statistics."""
    n_users = con.execute("SELECT count(*) FROM users").fetchall()[0][0]
    buckets = min(max(n_users, 1), max(1, math.ceil(read / cfg.bucket_interactions)))
    con.execute(f"""
        COPY (SELECT u.rank * {buckets} // {max(n_users, 1)} AS bucket, u.rank, h.user, h.ord, h.item, h.time,
                     h.rating, h.review, h.occurrence, h.raw_user, h.raw_item, h.next_split, h.rating_split
              FROM hist h JOIN users u USING (user))
        TO {engine.quote(out / 'heldout')} (FORMAT parquet, PARTITION_BY (bucket), COMPRESSION zstd)""")
    # the simple baselines' statistics: every training interaction, untitled items included, in the order
    # of the in-memory recipe (users sorted, histories in order), so that the float sums come out the same
    items = collections.defaultdict(lambda: [0, 0, 0.0])
    for batch in engine.rows(con, "SELECT item, rating FROM hist WHERE train ORDER BY user, ord"):
        for item, rating in zip(batch["item"], batch["rating"]):
            c = items[item]
            c[0] += 1
            if rating is not None:
                c[1] += 1
                c[2] += rating
    rated = sum(c[1] for c in items.values())
    d = templates.source_domain(s)
    stats = {"interactions": sum(c[0] for c in items.values()), "rated_interactions": rated,
             "mean_rating": sum(c[2] for c in items.values()) / rated if rated else None,
             "rating_scale": [RATING_LOW, d.scale] if d.scale is not None else None,
             "items": {i: items[i] for i in sorted(items)}}
    (out / "train_stats.json").write_text(json.dumps(stats, sort_keys=True) + "\n")
    catalog = {}
    items = normalise.source_dir(cfg, s.name) / "items.parquet"
    for batch in engine.rows(con, f"SELECT * FROM {engine.parquet(items)}"):
        for i, item_id in enumerate(batch["id"]):
            catalog[item_id] = Item(item_id, **{f: batch[f][i] for f in ITEM_FIELDS})
    missing = cfg.eval.missing_title
    with open(out / "catalog.jsonl", "w", encoding="utf-8") as f:
        for i in sorted(catalog, key=item_id_order):
            item = catalog[i]
            shown = item if item.title else Item(i, **{**{k: getattr(item, k) for k in ITEM_FIELDS}, "title": missing})
            # "line": the item as a pre-training document line shows it (no interaction: no rating, no review), the
            # entity a blank-infilling model generates after [gMASK]
            f.write(json.dumps({"item_id": i, "text": templates.item_text(d, shown), "title_missing": not item.title,
                                "line": templates.pretrain_line(d, Interaction("", shown))},
                               ensure_ascii=False) + "\n")
    untitled = sum(1 for x in catalog.values() if not x.title)
    return {"eval_buckets": buckets,
            "catalog": {"catalog_items": len(catalog), "catalog_items_without_title": untitled}}
