"""P5's multitask corpus builder (data/prepare/p5_tasks.py) on real Amazon Beauty and MovieLens-100K (a subset of
users each, so that the file runs in seconds; skipped when ../shared/data is absent) and on the synthetic P5-format
fixture tests/fixtures/p5 (the explanation and review families, from P5's pickles)."""
import collections
import json
import os
import pathlib
import pickle
import shutil

import pytest

import config as config_lib
from data.formats import evalfiles
from data.prepare import p5_tasks as P
from data.prepare import p5_templates as T
from data.prepare.audit import audit
from data.prepare.records import BadLines, DataError
from tests.conftest import REPO_ROOT, SHARED_DATA

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "p5"
TOKENIZER = SHARED_DATA / "tokenizer" / "gpt-neox-20b.json"
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real data folder {SHARED_DATA} not found "
                                                                      f"(set RECGPT_SHARED_DATA)")
pytestmark = needs_shared  # the tokenizer lives there too


def _build(config, out_dir, *overrides):
    """A build from a config file, with the shared data's tokenizer (callers give --source.path)."""
    cfg = config_lib.load(P.P5TasksConfig, config, [f"--out_dir={out_dir}",
                                                    f"--tokenizer.path={TOKENIZER}", *overrides])
    return P.build(cfg, log=lambda *a: None)


def _lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _sequences(path):
    return {line.split()[0]: line.split()[1:] for line in pathlib.Path(path).read_text().splitlines()}


N_BEAUTY = 200


@pytest.fixture(scope="module")
def beauty(tmp_path_factory):
    out = tmp_path_factory.mktemp("p5-beauty")
    meta = _build(REPO_ROOT / "configs/data/p5-beauty.yaml", out, f"--max_users={N_BEAUTY}",
                  f"--source.path={SHARED_DATA / 'amazon-beauty-p5'}")
    return out, meta


def test_beauty_counts_per_family_and_template(beauty):
    out, meta = beauty
    assert set(meta["families"]) == {"sequential", "direct"}
    assert set(meta["skipped_families"]) == {"rating", "explanation", "review"}
    assert "review_splits" in meta["skipped_families"]["rating"]
    seq, direct = meta["families"]["sequential"], meta["families"]["direct"]
    # P5's multipliers: sequential (5, 5, 10) and direct (10, 5) per user; every Beauty user has >= 5 items
    assert seq["train_pairs"] == 20 * N_BEAUTY and direct["train_pairs"] == 15 * N_BEAUTY
    group = lambda fam, ids: sum(meta["families"][fam]["train_templates"].get(t, 0) for t in ids)
    assert group("sequential", [f"2-{i}" for i in range(1, 7)]) == 5 * N_BEAUTY
    assert group("sequential", ["2-11", "2-12"]) == 10 * N_BEAUTY
    assert group("direct", ["5-5", "5-6", "5-7"]) == 5 * N_BEAUTY
    # uniform template choice: every seen template of a group is drawn; held-out ones never
    assert all(seq["train_templates"].get(f"2-{i}", 0) > 0 for i in range(1, 13))
    assert "2-13" not in seq["train_templates"] and "5-8" not in direct["train_templates"]
    assert all(n == N_BEAUTY for n in {**seq["eval"], **direct["eval"]}.values())
    assert set(seq["eval"]) == {f"{t}_{s}.jsonl" for t in ("2-3", "2-13") for s in ("validation", "test")}
    pairs = _lines(out / "instructions/instructions.jsonl")
    assert len(pairs) == meta["instructions"]["examples"] == 35 * N_BEAUTY
    # 1:1 yes/no (P5 §5.1), seeded draws: within 4 binomial standard deviations of half
    answers = collections.Counter(p["response"] for p in pairs if p["template"] in ("2-11", "2-12", "5-1", "5-2",
                                                                                     "5-3", "5-4"))
    n = answers["yes"] + answers["no"]
    assert n == 20 * N_BEAUTY and abs(answers["yes"] - n / 2) < 4 * (n / 4) ** 0.5


def test_beauty_splits_windows_and_candidates(beauty):
    out, meta = beauty
    seqs = _sequences(SHARED_DATA / "amazon-beauty-p5/sequential_data.txt")
    p5 = out / "eval/p5-beauty/p5"
    for split, pos in (("validation", -2), ("test", -1)):
        for rec in _lines(p5 / f"2-3_{split}.jsonl"):
            s = seqs[rec["user"]]
            assert rec["target_item_id"] == s[pos] == rec["target_text"] and rec["history_item_ids"] == s[:pos]
            assert rec["prompt"].startswith(f"Here is the purchase history list of user_{rec['user']} : \n ")
    negatives = {line.split()[0]: line.split()[1:] for line in (p5 / "negatives.txt").read_text().splitlines()}
    assert len(negatives) == N_BEAUTY
    for split in ("validation", "test"):
        cand = {t: {r["user"]: r for r in _lines(p5 / f"{t}_{split}.jsonl")} for t in ("5-1", "5-4", "5-5", "5-8")}
        for user, rec in cand["5-5"].items():
            c = rec["candidates"]
            assert len(c) == 100 and c.count(rec["target_item_id"]) == 1
            assert not (set(c) - {rec["target_item_id"]}) & set(seqs[user])  # none of the user's other items
            assert set(c) == set(negatives[user]) | {rec["target_item_id"]}
            assert rec["candidate_texts"] == c and rec["prompt"].endswith(" , ".join(c))
            assert cand["5-8"][user]["candidates"] == c  # every model and template sees the same list
            yn = cand["5-1"][user]
            assert yn["candidates"][0] == rec["target_item_id"] and sorted(yn["candidates"]) == sorted(c)
            assert [p.split("item_")[1].split(" ")[0] for p in yn["candidate_prompts"]] == yn["candidates"]
            assert yn["prompt"] == yn["candidate_prompts"][0] and (yn["yes"], yn["no"]) == ("yes", "no")
        for path in evalfiles.p5_files(out / "eval/p5-beauty").values():
            evalfiles.read_p5_examples(path)
    # training windows (P5's sub-window): history + target inside the training part, target in its last 4 positions
    for p in _lines(out / "instructions/instructions.jsonl"):
        s = seqs[p["user"]]
        shown = [i for i, _ in p["interactions"]]
        assert set(shown) <= set(s[:-2])
        if p["template"] in ("2-1", "2-2", "2-3", "2-4", "2-5", "2-6"):
            m = len(s) - 2
            assert s.index(p["response"]) in range(max(2, m - 3), m) and shown[-1] == p["response"]
            assert s.index(shown[0]) <= 2 and shown[:-1] == s[s.index(shown[0]): s.index(p["response"])]


def test_beauty_audit_passes_and_a_planted_leak_fails(beauty, tmp_path):
    out, meta = beauty
    result = audit(out)
    assert result["ok"] and result["leaked_pairs"] == 0 and result["training_pairs"] == 35 * N_BEAUTY
    leaky = tmp_path / "leaky"
    shutil.copytree(out, leaky)
    seqs = _sequences(SHARED_DATA / "amazon-beauty-p5/sequential_data.txt")
    path = leaky / "instructions/instructions.jsonl"
    pairs = _lines(path)
    victim = next(p for p in pairs if p["template"] == "2-3")
    test_item = seqs[victim["user"]][-1]
    victim["prompt"] = victim["prompt"].replace(" \n try", f" , {test_item} \n try")  # the test item in a history
    victim["interactions"].append([test_item, 0])
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    result = audit(leaky)
    assert not result["ok"] and result["leaked_pairs"] == 1 and result["leaked_pairs_by_text"] == 1
    assert victim["user"] in result["problems"][0]
    # the text check alone: a pair that shows the item without declaring it
    victim["interactions"].pop()
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    result = audit(leaky)
    assert not result["ok"] and result["leaked_pairs"] == 0 and result["leaked_pairs_by_text"] == 1


def test_reindexing_removes_the_plus_one_pattern(tmp_path):
    cfg = config_lib.load(P.P5TasksConfig, REPO_ROOT / "configs/data/p5-beauty.yaml",
                          [f"--source.path={SHARED_DATA / 'amazon-beauty-p5'}"])
    data = P.read_data(cfg, BadLines())
    share = {mode: P.plus_one_share(data, data.users, P.item_index(data, data.users, mode, 2022))
             for mode in ("p5", "sequential", "random")}
    # spec §4.4: 4.4% of Beauty's test items are max(history id) + 1 with P5's ids, 0.4% with RID's re-indexing
    assert round(share["p5"], 3) == 0.044 and round(share["sequential"], 3) == 0.004
    assert share["random"] < 0.005
    # the option reaches the prompts and meta.json records it
    meta = _build(REPO_ROOT / "configs/data/p5-beauty.yaml", tmp_path / "b", "--max_users=30",
                  "--render.index=sequential", f"--source.path={SHARED_DATA / 'amazon-beauty-p5'}")
    assert meta["options"]["index"] == "sequential" and "sequential" in meta["plus_one_share"]
    index = P.item_index(data, data.users, "sequential", 2022)
    rec = _lines(tmp_path / "b/eval/p5-beauty/p5/2-3_test.jsonl")[5]
    assert rec["target_text"] == index[rec["target_item_id"]]
    catalog = {c["item_id"]: c["text"] for c in _lines(tmp_path / "b/eval/p5-beauty/catalog.jsonl")}
    assert catalog[rec["target_item_id"]] == rec["target_text"] and len(catalog) == 12101


N_ML = 40


def test_movielens_rating_with_user_features(tmp_path):
    out = tmp_path / "ml"
    meta = _build(REPO_ROOT / "configs/data/p5-movielens.yaml", out, f"--max_users={N_ML}",
                  f"--source.path={SHARED_DATA / 'movielens-100k'}")
    assert set(meta["families"]) == {"rating", "sequential", "direct"}
    assert set(meta["skipped_families"]) == {"explanation", "review"}
    ratings = {}
    for line in (SHARED_DATA / "movielens-100k/u.data").read_text().splitlines():
        u, i, r, _ = line.split("\t")
        ratings[(u, i)] = int(r)
    users = sorted({u for u, _ in ratings})[:N_ML]
    rating = meta["families"]["rating"]
    held = {(h["user"], h["item"]) for h in _lines(out / "heldout.jsonl")}
    n_train = sum(1 for (u, i) in ratings if u in users and (u, i) not in held)
    assert rating["train_pairs"] == n_train and set(rating["train_templates"]) == {f"1-{i}" for i in range(1, 10)}
    # the training statistics the rating fallback and the baselines read: exactly the trained ratings
    stats = json.loads((out / "eval/p5-movielens/train_stats.json").read_text())
    trained = [r for (u, i), r in ratings.items() if u in users and (u, i) not in held]
    assert stats["rated_interactions"] == n_train == len(trained)
    assert stats["mean_rating"] == pytest.approx(sum(trained) / len(trained)) and stats["rating_scale"] == [1.0, 5.0]
    bands = {1: (1.0, 1.4), 2: (1.5, 2.4), 3: (2.5, 3.4), 4: (3.5, 4.4), 5: (4.5, 5.0)}
    draws = collections.defaultdict(list)
    for p in _lines(out / "instructions/instructions.jsonl"):
        if p["family"] != "rating":
            continue
        (item, _), = p["interactions"]
        true = ratings[(p["user"], item)]
        if p["template"] in ("1-1", "1-2", "1-5", "1-6", "1-7"):  # Gaussian-in-band floats (P5 training targets)
            value = float(p["response"])
            assert p["response"] == f"{value:.1f}" and 1.0 <= value <= 5.0
            lo, hi = bands[true]
            draws[true].append(value)
            assert abs(value - (lo + hi) / 2) < 6 * (hi - lo) / 4 + 0.05  # 6 sd (and the rounding)
        elif p["template"] in ("1-4", "1-9"):
            assert p["response"] == ("like" if true >= 4 else "dislike")
    for star in (3, 4):  # the mean of the draws is the band's middle (5 is clipped at 5.0)
        lo, hi = bands[star]
        assert abs(sum(draws[star]) / len(draws[star]) - (lo + hi) / 2) < 0.05
    test = _lines(out / "eval/p5-movielens/p5/1-10_test.jsonl")
    assert len(test) == rating["eval"]["1-10_test.jsonl"] > 0
    for rec in test:
        assert rec["target_rating"] == ratings[(rec["user"], rec["item_id"])] and rec["seen"] is False
        assert rec["target_text"] == str(int(rec["target_rating"]))
    user1 = next(r for r in test if r["user"] == "1")
    assert user1["prompt"].startswith("Predict a 24-year-old male technician 's preference towards ")
    assert audit(out)["ok"]
    # the rating split is `python -m data.prepare`'s: validation + test = 20% of the ratings, none of them trained
    n_all = sum(1 for (u, _) in ratings if u in users)
    n_rating_held = sum(rating["eval"][f"1-6_{s}.jsonl"] for s in ("validation", "test"))
    assert 0.1 * n_all < n_rating_held < 0.3 * n_all


def test_explanation_and_review_families_from_p5_pickles(tmp_path):
    cfg_path = tmp_path / "fixture.yaml"
    cfg_path.write_text(json.dumps({
        "name": "p5-fixture", "tokenizer": {"path": str(TOKENIZER)},
        "source": {"reader": "p5", "path": str(FIXTURE), "datamaps": "datamaps.json",
                   "review_splits": "review_splits.pkl", "exp_splits": "exp_splits.pkl",
                   "user_id2name": "user_id2name.pkl"}, "negatives": 9}))
    out = tmp_path / "out"
    meta = P.build(config_lib.load(P.P5TasksConfig, cfg_path, [f"--out_dir={out}"]), log=lambda *a: None)
    assert set(meta["families"]) == set(T.FAMILIES) and not meta["skipped_families"]
    with open(FIXTURE / "exp_splits.pkl", "rb") as f:
        exp = pickle.load(f)  # our own fixture: safe to unpickle plainly here
    p5 = out / "eval/p5-fixture/p5"
    for tid in ("3-3", "3-9", "3-12"):
        recs = _lines(p5 / f"{tid}_test.jsonl")
        assert [r["target_text"] for r in recs] == [r["explanation"] for r in exp["test"]]
    r312 = _lines(p5 / "3-12_test.jsonl")[0]
    first = exp["test"][0]
    assert r312["prompt"] == (f"According to the feature word {first['feature']} , generate a {int(first['overall'])}"
                              f"-star explanation for {first.get('reviewerName', first['reviewerID'])} about "
                              f"item_{r312['item_id']}")
    for tid, key in (("4-1", "target_text"), ("4-2", "target_rating"), ("4-4", "target_rating")):
        assert all(r.get(key) is not None for r in _lines(p5 / f"{tid}_validation.jsonl"))
    for path in evalfiles.p5_files(out / "eval/p5-fixture").values():
        evalfiles.read_p5_examples(path)
    pairs = _lines(out / "instructions/instructions.jsonl")
    by_family = collections.Counter(p["family"] for p in pairs)
    assert by_family["explanation"] > 0 and by_family["review"] > 0
    assert {p["template"] for p in pairs if p["family"] == "review"} <= {"4-1", "4-2", "4-3"}
    assert all(p["response"] == p["response"].strip() for p in pairs)
    assert audit(out)["ok"]


def test_bad_input_is_named(tmp_path):
    beauty = REPO_ROOT / "configs/data/p5-beauty.yaml"
    with pytest.raises(config_lib.ConfigError, match="no P5 template '2-14'"):
        config_lib.load(P.P5TasksConfig, beauty, ["--templates.evaluate=[2-3,2-14]"])
    with pytest.raises(config_lib.ConfigError, match="'ratings' is not a P5 family"):
        config_lib.load(P.P5TasksConfig, beauty, ["--families=[ratings]"])
    with pytest.raises(DataError, match="'rating' was asked for.*overall"):
        _build(beauty, tmp_path / "x", "--families=[rating,sequential]",
               f"--source.path={SHARED_DATA / 'amazon-beauty-p5'}")
    with pytest.raises(DataError, match="'explanation' was asked for.*exp_splits"):
        _build(REPO_ROOT / "configs/data/p5-movielens.yaml", tmp_path / "y", "--families=[explanation]",
               f"--source.path={SHARED_DATA / 'movielens-100k'}")
    with pytest.raises(config_lib.ConfigError, match="render.users.*MovieLens"):
        config_lib.load(P.P5TasksConfig, beauty, ["--render.users=features"])

    # a pickle that would run a command when unpickled is refused, naming the file and the class
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    data = tmp_path / "evil"
    shutil.copytree(FIXTURE, data)
    with open(data / "review_splits.pkl", "wb") as f:
        pickle.dump({"train": [Evil()], "val": [], "test": []}, f)
    cfg_path = tmp_path / "evil.yaml"
    cfg_path.write_text(json.dumps({"name": "evil", "tokenizer": {"path": str(TOKENIZER)},
                                    "source": {"reader": "p5", "path": str(data), "datamaps": "datamaps.json",
                                               "review_splits": "review_splits.pkl"}, "negatives": 9}))
    with pytest.raises(DataError, match=r"review_splits\.pkl: refused to unpickle (posix|os|nt)\.system"):
        P.build(config_lib.load(P.P5TasksConfig, cfg_path, [f"--out_dir={tmp_path / 'z'}"]), log=lambda *a: None)
    assert not marker.exists()
    with pytest.raises(DataError, match="datamaps"):  # a pickle record whose user is not in datamaps.json
        with open(data / "review_splits.pkl", "wb") as f:
            pickle.dump({"train": [{"reviewerID": "NOBODY", "asin": "B00FIX0001", "overall": 5.0}], "val": [],
                         "test": []}, f)
        P.build(config_lib.load(P.P5TasksConfig, cfg_path, [f"--out_dir={tmp_path / 'z'}"]), log=lambda *a: None)


def test_entity_slots_and_the_loss_on_the_history_titles(tmp_path):
    """Every entity names its template slot, and finetune.py's data.prompt_loss_slots=[purchase_history] opens the
    labels on exactly the history's titles (template 2-3's: the items the pair shows but its answer, by the catalog),
    beside the response and EOS, and nothing else of the prompt."""
    import finetune
    from data.formats.instructions import IGNORE_INDEX, InstructionDataset
    from data.formats.tokenizer import load_build_tokenizer
    from training.data import FilteredDataset, GlobalBatchSampler, PromptSlotLoss, sft_batch

    out = tmp_path / "p5"
    meta = _build(REPO_ROOT / "configs/data/p5-beauty.yaml", out, "--max_users=40", "--render.items=title",
                  f"--source.path={SHARED_DATA / 'amazon-beauty-p5'}")
    ds, tok = InstructionDataset(out), load_build_tokenizer(out)
    eos = int(meta["instructions"]["eos_id"])
    slot_loss = PromptSlotLoss(tok, ["purchase_history"], out)
    titles = {r["item_id"]: r["text"] for r in _lines(out / "eval" / "p5-beauty" / "catalog.jsonl")}
    checked, slot_entities = 0, collections.Counter()
    for i in range(len(ds)):
        rec = ds.record(i)
        assert len(rec["entity_slots"]) == len(rec["entities"])
        slot_entities.update(rec["entity_slots"])
        if rec["template"] != "2-3" or checked == 40:
            continue
        # the history: the items the pair shows but its answer, as the catalog renders them, joined as P5 joins them
        history = [titles[item] for item, _ in rec["interactions"][:-1]]
        assert titles[rec["interactions"][-1][0]] == rec["response"]
        assert any(f" : \n {j.join(history)} \n " in rec["prompt"] for j in (" , ", " -> ")), rec["prompt"]
        assert rec["entity_slots"] == ["user_id"] + ["purchase_history"] * len(history)
        batch = slot_loss.apply(sft_batch(ds, [i], 4096, eos, "longest"), ds, [i])
        ids, opened = batch["input_ids"][0], batch["labels"][0] != IGNORE_INDEX
        assert (batch["labels"][0][opened] == ids[opened]).all()
        n_prompt = len(tok.encode(rec["prompt"], add_special_tokens=False).ids)
        assert opened[n_prompt:].all()  # the response and EOS, as without slots
        runs, k = [], 0  # the prompt's opened tokens, as contiguous runs
        while k < n_prompt:
            if opened[k]:
                start = k
                while k < n_prompt and opened[k]:
                    k += 1
                runs.append(tok.decode(ids[start:k].tolist()).strip())
            k += 1
        assert runs == history, rec["prompt"]
        checked += 1
    assert checked >= 20  # 2-3 pairs of the 40 users
    assert meta["counts"]["entity_slots"] == dict(slot_entities)  # what PromptSlotLoss checks its slots against

    before = {k: v for k, v in ds.record(0).items() if k != "entity_slots"}  # a build written before entity_slots
    with pytest.raises(ValueError, match="example 0 names no entity slot per entity"):
        slot_loss.ranges(before, [], 0)
    k = next(i for i in range(len(ds)) if "purchase_history" in ds.record(i)["entity_slots"])
    stored = tok.encode(ds.record(k)["prompt"], add_special_tokens=False).ids
    with pytest.raises(ValueError, match=f"example {k}: its prompt does not tokenise to its stored tokens"):
        slot_loss.ranges(ds.record(k), stored[1:], k)  # tokens of another tokenizer, say
    with pytest.raises(ValueError, match=r"no pair of .* has an entity of slot\(s\) \['visit_history'\]"):
        PromptSlotLoss(tok, ["purchase_history", "visit_history"], out)  # Yelp's slot: not in a Beauty build
    written = (out / "meta.json").read_text()
    older = json.loads(written)
    del older["counts"]["entity_slots"]  # a build written before the counts
    (out / "meta.json").write_text(json.dumps(older))
    with pytest.raises(ValueError, match="meta.json counts no entity slots"):
        PromptSlotLoss(tok, ["purchase_history"], out)
    (out / "meta.json").write_text(written)

    # finetune.py: the same first step with and without the slots; the loss also counts that step's history tokens
    kept = FilteredDataset(ds, 2048)
    first = GlobalBatchSampler(len(kept), 4, 4, 0, 1, seed=1337).global_indices(0).tolist()
    plain = sft_batch(kept, first, 2048, eos, "longest")
    history_tokens = int((slot_loss.apply(sft_batch(kept, first, 2048, eos, "longest"), kept, first)["labels"]
                          != plain["labels"]).sum())
    valid = {}
    for slots in ("[]", "[purchase_history]"):
        run = tmp_path / slots.strip("[]")
        finetune.main(["configs/train/tiny-finetune.yaml", f"--data.path={out}", f"--run.out_dir={run}",
                       "--data.seq_len=2048", "--model.overrides={vocab_size: 50432, max_seq_len: 2048}",
                       "--train.max_steps=1", "--schedule.t_warmup=0", "--train.global_batch_size=4",
                       "--log.interval=1", f"--data.prompt_loss_slots={slots}", "--checkpoint.export_final=false"])
        valid[slots] = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["valid_tokens"]
    assert valid["[purchase_history]"] - valid["[]"] == history_tokens > 0
    with pytest.raises(ValueError, match="data.prompt_loss_slots is for the causal objective"):
        finetune.main(["configs/train/tiny-finetune.yaml", f"--data.path={out}", f"--run.out_dir={tmp_path / 'x'}",
                       "--model.overrides={vocab_size: 50432, max_seq_len: 2048, intra_positions: 64}",
                       "--infill.objective=infill", "--data.prompt_loss_slots=[purchase_history]"])
