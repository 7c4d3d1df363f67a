"""Helpers of scripts/papers.sh, the two papers side by side (issue 14; docs/results.md):

    python scripts/papers.py heldout DATA_BUILD P5_BUILD       # both builds hold out the same interactions
    python scripts/papers.py sft-steps PRE_STEPS PRE_ROWS SEQ_LEN FT_STEPS FT_BATCH P5_BUILD   # arm (c)'s budget
    python scripts/papers.py users P5_BUILD OUT_FILE           # the multitask prompts' users, one id per line
    python scripts/papers.py report OUT [--datasets movielens beauty]   # the tables, with paired bootstrap intervals

heldout: the pre-training rows come from `python -m data.prepare` and the multitask pairs from
`python -m data.prepare.p5_tasks`; each build audits itself, and this checks that the two hold out exactly the same
(user, item) interactions for the users they share, so that no arm pre-trains on another's test items.

users: the users the P5 build renders prompts for (its held-out interactions' users: every user has some), for
`python -m data.prepare`'s `users_file`: arm a-cut pre-trains on those users' rows only.

sft-steps: the arms get the same number of training tokens. (a) and (b) pre-train on the same rows for the same
steps, then fine-tune for FT_STEPS; (c) has no pre-training and spends that budget on fine-tuning: FT_STEPS plus as
many steps as the pre-training tokens (PRE_STEPS x PRE_ROWS x SEQ_LEN) fill at the pairs' mean length (prompt +
response + EOS) x FT_BATCH.

report: per dataset, each arm's `evaluate.py --task p5` results beside the baselines and the papers' rows, and the
paired differences between arms with a 95% bootstrap interval over users (2,000 resamples, seed 0): HR@10 for
sequential and direct templates, RMSE for rating templates. Arms trained from another seed (<arm>-s<seed>) get their
own table of the same differences, and of each arm against itself at the main seed.
"""
import argparse
import json
import math
import pathlib
import re
import sys

import numpy as np

ARMS = {"a": "(a) RecGPT: causal pre-training + instruction tuning",
        "b": "(b) RecSysLLM: blank-infilling pre-training + [gMASK] instruction tuning",
        "c": "(c) instruction tuning alone"}
PAIRS = (("b", "a"), ("a", "c"), ("b", "c"))
# an arm with one thing changed, paired with (a) and (c): (a) pre-trained on the multitask prompts' users' rows only
# (scripts/papers.sh's cut stage); (c) with the loss on the prompts' history titles too (the history stage); (a) tuned
# for as many steps as (c) (the steps stage)
VARIANTS = {"a-cut": "(a) pre-trained on the prompts' users' rows only",
            "c-history": "(c) with the loss on the prompts' history titles too",
            "a-steps": "(a) tuned for as many steps as (c) (more tokens than the other arms)"}
# an arm trained again from another training seed (scripts/papers.sh's seeds stage; arm <arm>-s<seed>; the main arms
# train from papers.sh's MAIN_SEED)
SEEDED = re.compile(r"^([abc])-s([0-9]+)$")
# (b) with one RecSysLLM ingredient switched (scripts/papers.sh's ablate stage; arm b-<name>)
ABLATIONS = {"no-entity": "entity-aware masking off (GLM's token spans)",
             "no-chrono": "chronological spans off (Part B shuffled, GLM's default)",
             "no-intra": "intra positions off (1D positions only)",
             "behaviour": "behaviour sampling on (long/medium/short-term items)",
             "again": "nothing switched, trained again as the ablations are (the run-to-run reference)"}
# the published rows, for scale (RecSysLLM Tables 2, 4, 7 on Beauty: GLM-10B + LoRA; P5-B; ../shared/spec/p5.md 4.2)
PAPER_ROWS = {"beauty": {"P5-B (paper)": {"2-3": {"HR@10": .0664}, "2-13": {"HR@10": .0645},
                                          "5-5": {"HR@10": .2325}, "5-8": {"HR@10": .2300}},
                         "RecSysLLM (paper)": {"2-3": {"HR@10": .0667}, "2-13": {"HR@10": .0650},
                                               "5-5": {"HR@10": .2209}, "5-8": {"HR@10": .2317}}}}


def read_jsonl(path) -> list:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def heldout(data_build, p5_build) -> int:
    data_build, p5_build = pathlib.Path(data_build), pathlib.Path(p5_build)
    meta = json.loads((data_build / "meta.json").read_text())
    held_data = set()
    for entry in (meta.get("eval") or {}).values():
        folder = data_build / entry["dir"]
        for path in sorted(folder.glob("*_validation.jsonl")) + sorted(folder.glob("*_test.jsonl")):
            held_data |= {(str(r["user"]), str(r["target_item_id"])) for r in read_jsonl(path)}
    held_p5 = {(str(r["user"]), str(r["item"])) for r in read_jsonl(p5_build / "heldout.jsonl")}
    users = {u for u, _ in held_p5}
    shared = {x for x in held_data if x[0] in users}
    if shared != held_p5:
        only_p5, only_data = sorted(held_p5 - shared)[:5], sorted(shared - held_p5)[:5]
        raise SystemExit(f"{data_build} and {p5_build} hold out different interactions: only in the P5 build "
                         f"{only_p5}, only in the data build {only_data}")
    print(f"held out alike: {len(held_p5)} interactions of {len(users)} users in both builds")
    return 0


def users(p5_build, out_file) -> int:
    ids = sorted({str(r["user"]) for r in read_jsonl(pathlib.Path(p5_build) / "heldout.jsonl")})
    pathlib.Path(out_file).write_text("".join(f"{u}\n" for u in ids), encoding="utf-8")
    print(f"{len(ids)} users of {p5_build} -> {out_file}")
    return 0


def sft_steps(pre_steps: int, pre_rows: int, seq_len: int, ft_steps: int, ft_batch: int, p5_build) -> int:
    from data.formats.instructions import InstructionDataset

    ds = InstructionDataset(p5_build)
    sample = range(0, len(ds), max(1, len(ds) // 20_000))  # at most about 20,000 pairs, spread over the build
    mean_len = sum(len(ds[i]["input_ids"]) for i in sample) / len(sample)
    extra = math.ceil(pre_steps * pre_rows * seq_len / (mean_len * ft_batch))
    print(ft_steps + extra)
    return 0


# ---------------------------------------------------------------------------------------------------------------
# the report


def per_user(prediction: dict, kind: str, view: str = "headline"):
    """One user's contribution: hit@10 (sequential, direct) or the squared error (rating: the expected value).
    view "constrained": the sequential prediction's trie-constrained beams."""
    if kind == "rating":
        value = prediction.get("expected")
        return None if value is None else (min(max(value, 1.0), 5.0) - prediction["target_rating"]) ** 2
    ranked = (prediction.get("constrained") or {}).get("ranked_item_ids") if view == "constrained" else \
        prediction.get("ranked_item_ids")
    if kind == "sequential":
        return None if ranked is None else float(prediction["target_item_id"] in ranked[:10])
    scores = prediction.get("logprob") or prediction.get("p_yes")
    cands, target = prediction["candidates"], prediction["target_item_id"]
    order = sorted(range(len(cands)), key=lambda i: -scores[i])  # ties keep the list's order, as evaluate.py
    return float(target in [cands[i] for i in order[:10]])


def bootstrap(a: np.ndarray, b: np.ndarray, rmse: bool, n: int = 2000, seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n, len(a)))

    def stat(x):
        return np.sqrt(x.mean(axis=-1)) if rmse else x.mean(axis=-1)
    diff = stat(a) - stat(b)
    boot = stat(a[idx]) - stat(b[idx])
    return float(diff), float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))


# the columns of each kind of template, and the rows: (label, {template: metrics}) per arm, view and baseline
COLUMNS = {"rating": ("RMSE", "MAE"), "sequential": ("HR@5", "NDCG@5", "HR@10", "NDCG@10"),
           "direct_candidates": ("HR@1", "HR@5", "NDCG@5", "HR@10", "NDCG@10")}
TITLES = {"rating": "Rating (RMSE, MAE; lower is better)",
          "sequential": "Next item over the whole catalog (10 beams)",
          "direct_candidates": "Direct recommendation: the 100 candidates ranked by likelihood"}
BASELINES = {"rating": ("global_mean", "per_item_mean"), "sequential": ("most_popular",),
             "direct_candidates": ("most_popular",)}


def arm_label(arm: str) -> str:
    labels = {**ARMS, **VARIANTS}
    if arm in labels:
        return labels[arm]
    if seeded := SEEDED.match(arm):
        return f"{ARMS[seeded[1]]}, training seed {seeded[2]}"
    name = arm[len("b-"):]
    return f"(b) with {ABLATIONS[name]}" if name in ABLATIONS else arm


def arm_rows(arm: str, results: dict, sampled: dict, kind: str) -> list:
    """An arm's rows for one kind: rating by the expected value (and sampled, mean +- std over seeds); sequential
    grounded and trie-constrained."""
    label = arm_label(arm)
    if kind == "rating":
        rows = [(f"{label}, expected value", {t: r["metrics"] for t, r in results.items()})]
        if sampled:
            rows.append((f"{label}, sampled ({len(next(iter(sampled.values()))['metrics']['details']['per_seed'])}"
                         f" seeds, mean +- std)", {t: {k: r["metrics"]["details"]["summary"][k] for k in ("RMSE", "MAE")}
                                                   for t, r in sampled.items()}))
        return rows
    if kind == "sequential":
        return [(f"{label}, grounded", {t: r["metrics"] for t, r in results.items()}),
                (f"{label}, constrained", {t: r["metrics"]["details"].get("constrained", {})
                                           for t, r in results.items()})]
    return [(label, {t: r["metrics"] for t, r in results.items()})]


def report(out, datasets, figures=None) -> int:
    out = pathlib.Path(out)
    for d in datasets:
        root = out / d
        if not (root / "eval").is_dir():
            continue
        arms = [a for a in ARMS if (root / "eval" / a / "metrics.json").is_file()]
        arms += [f"b-{x}" for x in ABLATIONS if (root / "eval" / f"b-{x}" / "metrics.json").is_file()]
        arms += [a for a in VARIANTS if (root / "eval" / a / "metrics.json").is_file()]
        seeded = [p.parent.name for p in (root / "eval").glob("*-s*/metrics.json") if SEEDED.match(p.parent.name)]
        arms += sorted(seeded, key=lambda a: (int(SEEDED.match(a)[2]), a))
        results = {a: json.loads((root / "eval" / a / "metrics.json").read_text())["templates"] for a in arms}
        preds = {a: read_jsonl(root / "eval" / a / "predictions.jsonl") for a in arms}
        sampled = {a: json.loads((root / "eval" / f"{a}-sampled" / "metrics.json").read_text())["templates"]
                   for a in arms if (root / "eval" / f"{a}-sampled" / "metrics.json").is_file()}
        base = json.loads((root / "eval" / "baselines" / "metrics.json").read_text()).get("p5", {})
        external = {}  # a standard sequential recommender, when scripts/sasrec_baseline.py has run
        if (root / "eval" / "sasrec" / "metrics.json").is_file():
            external["SASRec (RecBole; baseline)"] = json.loads((root / "eval" / "sasrec" / "metrics.json")
                                                                 .read_text())["templates"]
            preds["sasrec"] = read_jsonl(root / "eval" / "sasrec" / "predictions.jsonl")
            for p in preds["sasrec"]:  # a ranking of the catalog is its own constrained view
                if "ranked_item_ids" in p:
                    p["constrained"] = {"ranked_item_ids": p["ranked_item_ids"]}
        info = results[arms[0]]
        print(f"### {d}\n")
        for kind in COLUMNS:
            templates = sorted((t for t in info if info[t]["kind"] == kind), key=_order)
            if not templates:
                continue
            columns = COLUMNS[kind]
            print(f"**{TITLES[kind]}**, {info[templates[0]]['n']} users\n")
            print("| | " + " | ".join(f"{t} ({'seen' if info[t]['seen'] else 'unseen'}) {c}"
                                      for t in templates for c in columns) + " |")
            print("|---" + "|---:" * (len(templates) * len(columns)) + "|")
            rows = [row for a in arms for row in arm_rows(a, {t: results[a][t] for t in templates},
                                                          {t: sampled[a][t] for t in templates
                                                           if t in sampled.get(a, {})}, kind)]
            rows += [(f"{name.replace('_', ' ')}" + (" within the candidates" if kind == "direct_candidates" else "")
                      + " (baseline)", {t: base.get(t, {}).get(name, {}) for t in templates})
                     for name in BASELINES[kind]]
            rows += [(name, {t: m[t]["metrics"] for t in templates if t in m}) for name, m in external.items()
                     if any(t in m for t in templates)]
            rows += [(name, {t: {"HR@10": row[t]["HR@10"]} for t in templates if t in row})
                     for name, row in PAPER_ROWS.get(d, {}).items()]
            for label, per_template in rows:
                print(f"| {label} | " + " | ".join(_fmt(per_template.get(t, {}).get(c)) for t in templates
                                                  for c in columns) + " |")
            print()
        pairs = [(x, y) for x, y in PAIRS if x in preds and y in preds]
        pairs += [(f"b-{x}", "b") for x in ABLATIONS if f"b-{x}" in preds and "b" in preds]
        pairs += [(a, y) for a in VARIANTS if a in preds for y in ("a", "c") if y in preds]
        pairs += [(a, "sasrec") for a in ARMS if a in preds and "sasrec" in preds]
        paired_table("Paired differences between arms (95% bootstrap interval over users): HR@10 for next item "
                     "(grounded and constrained) and direct, RMSE of the expected rating for rating.",
                     pairs, preds, info)
        for seed in sorted({int(m[2]) for m in map(SEEDED.match, arms) if m}):
            # the same differences between arms trained from another seed, and how far the retraining moved each arm
            again = [(f"{x}-s{seed}", f"{y}-s{seed}") for x, y in PAIRS]
            again += [(f"{x}-s{seed}", x) for x in ARMS]
            paired_table(f"The same paired differences between arms trained from training seed {seed}, and each arm at "
                         f"seed {seed} against itself at the main arms' seed (the interval is over users for fixed "
                         "weights, so the last columns show what a retraining adds).",
                         [(x, y) for x, y in again if x in preds and y in preds], preds, info)
        diagnosis(root, arms, preds, info)
        if figures is not None:
            curves(root, arms, pathlib.Path(figures) / f"papers-{d}-curves.png")
    return 0


def paired_table(title: str, pairs: list, preds: dict, info: dict) -> None:
    """One row per template (and per view of the sequential ones), one column per pair (x, y): x - y with its 95%
    bootstrap interval over the users both have."""
    if not pairs:
        return
    print(title + "\n")
    print("| template | " + " | ".join(f"{x} - {y}" for x, y in pairs) + " |")
    print("|---" + "|---" * len(pairs) + "|")
    for t in sorted(info, key=_order):
        kind = info[t]["kind"]
        for view in (("headline", "constrained") if kind == "sequential" else ("headline",)):
            cells = [_paired(preds[x], preds[y], t, kind, view) for x, y in pairs]
            name = t if view == "headline" else f"{t} constrained"
            print(f"| {name} | " + " | ".join(cells) + " |")
    print()


def diagnosis(root: pathlib.Path, arms: list, preds: dict, info: dict) -> None:
    """What each arm's predictions follow, from its predictions and the training statistics: for direct templates
    the mean per-user Spearman correlation of a candidate's score with its training popularity and with its
    length in tokens, and what the scores add to popularity (beyond_popularity); for rating templates the spread of
    the expected ratings against the targets' and their correlation with the targets; for free generation the share
    of outputs that are exactly a catalog text."""
    from data.formats.evalfiles import read_train_stats

    stats = read_train_stats(next((root / "p5" / "eval").iterdir()))  # the build's one benchmark
    items = stats["items"]
    print("What the predictions follow (mean per-user Spearman correlation of a candidate's log-probability with "
          "its training popularity / its length in tokens; HR@10 of log(1 + popularity) + w x the mean log-probability "
          "per token, w chosen on the other half of the users (w = 0: popularity alone); expected ratings' "
          "standard deviation against the "
          "targets', and their Pearson correlation with the targets; free generation's share of outputs "
          "that are exactly a catalog title):\n")
    print("| arm | template | measure | value |\n|---|---|---|---:|")
    for arm in arms:
        for t in sorted(info, key=_order):
            rows = [p for p in preds[arm] if p["template"] == t]
            kind = info[t]["kind"]
            if kind == "direct_candidates":
                pop = np.mean([_spearman(p["logprob"], _popularity(p, items)) for p in rows])
                length = np.mean([_spearman(p["logprob"], p["n_tokens"]) for p in rows])
                print(f"| {arm} | {t} | rho(score, popularity) | {pop:+.3f} |")
                print(f"| {arm} | {t} | rho(score, length) | {length:+.3f} |")
                print(f"| {arm} | {t} | HR@10, popularity + w x score per token | "
                      f"{beyond_popularity(rows, items):.3f} |")
            elif kind == "rating":
                expected = np.array([p["expected"] for p in rows])
                target = np.array([p["target_rating"] for p in rows])
                print(f"| {arm} | {t} | std(expected) / std(target) | {expected.std():.3f} / {target.std():.3f} |")
                print(f"| {arm} | {t} | r(expected, target) | {np.corrcoef(expected, target)[0, 1]:+.3f} |")
            elif kind == "sequential":
                outs = [o for p in rows for o in p.get("outputs", [])]
                exact = np.mean([bool(o.get("exact_match")) for o in outs]) if outs else float("nan")
                print(f"| {arm} | {t} | outputs that are a catalog title | {exact:.3f} |")
    print()


def beyond_popularity(rows: list, items: dict, seed: int = 0) -> float:
    """HR@10 of log(1 + training popularity) + w x the candidate's mean log-probability per token, with w chosen on
    one half of the users and scored on the other (2-fold, seeded users; ties of the best w go to the smaller): what an
    arm's scores add to popularity, without choosing w on the users it is scored on. w = 0 is popularity alone."""
    weights = (0.0, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0, 2.0, 4.0)
    hits = np.zeros((len(rows), len(weights)))
    for u, p in enumerate(rows):
        pop = np.log1p(_popularity(p, items))
        per_token = np.asarray(p["logprob"]) / np.asarray(p["n_tokens"])
        for j, w in enumerate(weights):  # per_user's hit@10 of the mixed score (ties: the list's order)
            hits[u, j] = per_user({**p, "logprob": list(pop + w * per_token)}, "direct_candidates")
    order = np.random.default_rng(seed).permutation(len(rows))
    halves = (order[: len(rows) // 2], order[len(rows) // 2:])
    return float(sum(hits[test, int(np.argmax(hits[fit].mean(axis=0)))].sum()
                     for fit, test in (halves, halves[::-1])) / len(rows))


def _popularity(prediction: dict, items: dict) -> list:
    """Each candidate's number of training interactions (train_stats.json; 0 for an item never trained on)."""
    return [items.get(c, (0,))[0] for c in prediction["candidates"]]


def _spearman(x, y) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1]) if rx.std() and ry.std() else 0.0


def _paired(px: list, py: list, template: str, kind: str, view: str) -> str:
    ux = {p["user"]: per_user(p, kind, view) for p in px if p["template"] == template}
    uy = {p["user"]: per_user(p, kind, view) for p in py if p["template"] == template}
    users = sorted(u for u in ux if u in uy and ux[u] is not None and uy[u] is not None)
    if not users:
        return "-"
    diff, lo, hi = bootstrap(np.array([ux[u] for u in users]), np.array([uy[u] for u in users]),
                             rmse=kind == "rating")
    return f"{diff:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def curves(root: pathlib.Path, arms: list, path: pathlib.Path) -> None:
    """Training loss against step: pre-training (left; (b)'s loss is over its blank spans, another objective than
    (a)'s next token) and instruction tuning (right; loss on the responses)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, suffix, title in ((axes[0], "-pretrain", "pre-training"), (axes[1], "", "instruction tuning")):
        for arm in arms:
            log = root / f"{arm}{suffix}" / "metrics.jsonl"
            if log.is_file():
                records = [r for r in read_jsonl(log) if "loss" in r]
                ax.plot([r["step"] for r in records], [r["loss"] for r in records], label=arm_label(arm),
                        linewidth=1)
        ax.set_title(f"{root.name}: {title}")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (nats / supervised token)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _order(template: str) -> tuple:
    return tuple(map(int, template.split("-")))


def _fmt(x) -> str:
    if isinstance(x, dict):  # mean and std over seeds
        return f"{x['mean']:.4f} +- {x['std']:.4f}"
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    h = sub.add_parser("heldout")
    h.add_argument("data_build")
    h.add_argument("p5_build")
    u = sub.add_parser("users")
    u.add_argument("p5_build")
    u.add_argument("out_file")
    s = sub.add_parser("sft-steps")
    for name in ("pre_steps", "pre_rows", "seq_len", "ft_steps", "ft_batch"):
        s.add_argument(name, type=int)
    s.add_argument("p5_build")
    r = sub.add_parser("report")
    r.add_argument("out")
    r.add_argument("--datasets", nargs="+", default=["movielens", "beauty"])
    r.add_argument("--figures", help="a folder for each dataset's training curves (papers-<dataset>-curves.png)")
    args = p.parse_args(argv)
    if args.command == "heldout":
        return heldout(args.data_build, args.p5_build)
    if args.command == "users":
        return users(args.p5_build, args.out_file)
    if args.command == "sft-steps":
        return sft_steps(args.pre_steps, args.pre_rows, args.seq_len, args.ft_steps, args.ft_batch, args.p5_build)
    return report(args.out, args.datasets, args.figures)


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    sys.exit(main())
