"""Helpers of scripts/papers.sh, the two papers side by side (issue 14; docs/results.md):

    python scripts/papers.py heldout DATA_BUILD P5_BUILD       # both builds hold out the same interactions
    python scripts/papers.py sft-steps PRE_STEPS PRE_ROWS SEQ_LEN FT_STEPS FT_BATCH P5_BUILD   # arm (c)'s budget
    python scripts/papers.py report OUT [--datasets movielens beauty]   # the tables, with paired bootstrap intervals

heldout: the pre-training rows come from `python -m data.prepare` and the multitask pairs from
`python -m data.prepare.p5_tasks`; each build audits itself, and this checks that the two hold out exactly the same
(user, item) interactions for the users they share, so that no arm pre-trains on another's test items.

sft-steps: the arms get the same number of training tokens. (a) and (b) pre-train on the same rows for the same
steps, then fine-tune for FT_STEPS; (c) has no pre-training and spends that budget on fine-tuning: FT_STEPS plus as
many steps as the pre-training tokens (PRE_STEPS x PRE_ROWS x SEQ_LEN) fill at the pairs' mean length (prompt +
response + EOS) x FT_BATCH.

report: per dataset, each arm's `evaluate.py --task p5` results beside the baselines and the papers' rows, and the
paired differences between arms with a 95% bootstrap interval over users (2,000 resamples, seed 0): HR@10 for
sequential and direct templates, RMSE for rating templates.
"""
import argparse
import json
import math
import pathlib
import sys

import numpy as np

ARMS = {"a": "(a) RecGPT: causal pre-training + instruction tuning",
        "b": "(b) RecSysLLM: blank-infilling pre-training + [gMASK] instruction tuning",
        "c": "(c) instruction tuning alone"}
PAIRS = (("b", "a"), ("a", "c"), ("b", "c"))
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


def per_user(prediction: dict, kind: str):
    """One user's contribution: hit@10 (sequential, direct) or the squared error (rating)."""
    if kind == "rating":
        value = prediction.get("expected")
        return None if value is None else (min(max(value, 1.0), 5.0) - prediction["target_rating"]) ** 2
    if "ranked_item_ids" in prediction:
        return float(prediction["target_item_id"] in prediction["ranked_item_ids"][:10])
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


def report(out, datasets) -> int:
    out = pathlib.Path(out)
    for d in datasets:
        root = out / d
        if not (root / "eval").is_dir():
            continue
        results, preds = {}, {}
        for arm in ARMS:
            m = root / "eval" / arm / "metrics.json"
            if m.is_file():
                results[arm] = json.loads(m.read_text())["templates"]
                preds[arm] = read_jsonl(root / "eval" / arm / "predictions.jsonl")
        base = json.loads((root / "eval" / "baselines" / "metrics.json").read_text()).get("p5", {})
        templates = sorted({t for r in results.values() for t in r}, key=lambda t: tuple(map(int, t.split("-"))))
        print(f"### {d}\n")
        header = "| | " + " | ".join(f"{t} ({'seen' if next(iter(results.values()))[t]['seen'] else 'unseen'}) "
                                       f"{_key(next(iter(results.values()))[t]['kind'])}" for t in templates) + " |"
        print(header)
        print("|---" + "|---:" * len(templates) + "|")
        for arm, r in results.items():
            print(f"| {ARMS[arm]} | " + " | ".join(_fmt(r[t]["metrics"].get(_key(r[t]["kind"]))) for t in templates)
                  + " |")
        for name in ("most_popular", "global_mean", "per_item_mean"):
            cells = [base.get(t, {}).get(name, {}).get(_key(base.get(t, {}).get("kind", ""))) for t in templates]
            if any(c is not None for c in cells):
                print(f"| {name.replace('_', ' ')} (baseline) | " + " | ".join(_fmt(c) for c in cells) + " |")
        for name, row in PAPER_ROWS.get(d, {}).items():
            print(f"| {name} | " + " | ".join(_fmt(row.get(t, {}).get("HR@10")) for t in templates) + " |")
        print()
        print("Paired differences (95% bootstrap interval over users; HR@10, or RMSE for rating):\n")
        print("| template | " + " | ".join(f"{x} - {y}" for x, y in PAIRS) + " |")
        print("|---" + "|---" * len(PAIRS) + "|")
        for t in templates:
            cells = []
            for x, y in PAIRS:
                if x not in preds or y not in preds:
                    cells.append("-")
                    continue
                kind = results[x][t]["kind"]
                ux = {p["user"]: per_user(p, kind) for p in preds[x] if p["template"] == t}
                uy = {p["user"]: per_user(p, kind) for p in preds[y] if p["template"] == t}
                users = sorted(u for u in ux if u in uy and ux[u] is not None and uy[u] is not None)
                if not users:
                    cells.append("-")
                    continue
                diff, lo, hi = bootstrap(np.array([ux[u] for u in users]), np.array([uy[u] for u in users]),
                                         rmse=kind == "rating")
                cells.append(f"{diff:+.4f} [{lo:+.4f}, {hi:+.4f}]")
            print(f"| {t} | " + " | ".join(cells) + " |")
        print()
    return 0


def _key(kind: str) -> str:
    return "RMSE" if kind == "rating" else "HR@10"


def _fmt(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    h = sub.add_parser("heldout")
    h.add_argument("data_build")
    h.add_argument("p5_build")
    s = sub.add_parser("sft-steps")
    for name in ("pre_steps", "pre_rows", "seq_len", "ft_steps", "ft_batch"):
        s.add_argument(name, type=int)
    s.add_argument("p5_build")
    r = sub.add_parser("report")
    r.add_argument("out")
    r.add_argument("--datasets", nargs="+", default=["movielens", "beauty"])
    args = p.parse_args(argv)
    if args.command == "heldout":
        return heldout(args.data_build, args.p5_build)
    if args.command == "sft-steps":
        return sft_steps(args.pre_steps, args.pre_rows, args.seq_len, args.ft_steps, args.ft_batch, args.p5_build)
    return report(args.out, args.datasets)


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    sys.exit(main())
