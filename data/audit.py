"""Leakage audit of a build: proves that no validation/test interaction of a benchmark (either task)
is in any training output, and that no user is in both the pre-training and fine-tuning data.

    python -m data.audit out/data/amazon-beauty        # exit 0 and a report, or exit 1 naming leaks

It reads what the build wrote, not what the config says: the held-out keys (eval/heldout.tsv.gz),
the interaction keys of every pre-training document (parts/*/manifest.tsv.gz) and fine-tuning pair
(parts/*/manifest-finetune.tsv.gz). It also checks that every evaluation target is held out, and that
the counts of the manifests equal the counts in meta.json.
"""
import collections
import gzip
import json
import sys

from data.packed import read_meta


def _rows(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            yield line.rstrip("\n").split("\t")


def interaction(key_fields: list[str]) -> str:
    # key = user, item, time, occurrence; the source name is left out on purpose: the same
    # interaction must not leak through another source (e.g. a newer release of the dataset)
    return "\t".join(key_fields)


def audit(path) -> dict:
    meta_path, meta = read_meta(path)
    root = meta_path.parent
    if not meta.get("manifests"):
        raise ValueError(f"{meta_path}: built with write_manifests: false; nothing to audit")
    heldout, heldout_users = {}, collections.defaultdict(set)
    if meta.get("heldout_manifest"):
        for source, task, split, *key in _rows(root / meta["heldout_manifest"]):
            heldout.setdefault(interaction(key), []).append(f"{source}:{task}:{split}")
            heldout_users[source].add(key[0])
    pre_users, ft_users = collections.defaultdict(set), collections.defaultdict(set)
    per_source = collections.defaultdict(collections.Counter)
    leaks = []
    for m in meta["manifests"]:
        kind = "finetune" if m.endswith("manifest-finetune.tsv.gz") else "pretrain"
        for source, *key in _rows(root / m):
            per_source[source][kind] += 1
            (ft_users if kind == "finetune" else pre_users)[source].add(key[0])
            if interaction(key) in heldout and len(leaks) < 20:
                leaks.append(f"{kind} {source} {key} is held out as {heldout[interaction(key)]}")
            elif interaction(key) in heldout:
                leaks.append(None)
    # a benchmark with finetune_from_train makes its pairs from its pre-training users' histories, by design
    by_design = {s["name"] for s in meta["config"]["sources"] if s.get("finetune_from_train")}
    shared_users = {s: len(pre_users[s] & ft_users[s]) for s in pre_users
                    if pre_users[s] & ft_users[s] and s not in by_design}
    problems = [f"{len(leaks)} training interactions are held out: " + "; ".join(x for x in leaks if x)] if leaks else []
    if shared_users:
        problems.append(f"users in both pre-training and fine-tuning: {shared_users}")
    for source, s in meta["sources"].items():
        want = s["part"].get("interactions_in_documents", 0)
        if per_source[source]["pretrain"] != want:
            problems.append(f"{source}: manifest lists {per_source[source]['pretrain']} pre-training interactions, "
                            f"meta.json says {want}")
    evaluated = 0
    for source, e in meta.get("eval", {}).items():
        for fname in e["files"]:
            with open(root / e["dir"] / fname, encoding="utf-8") as f:
                for line in f:
                    r = json.loads(line)
                    evaluated += 1
                    if r["user"] not in heldout_users[source]:
                        problems.append(f"{e['dir']}/{fname}: user {r['user']} has no held-out interaction")
                        break
    return {"heldout_interactions": len(heldout), "evaluation_examples": evaluated,
            "training_interactions": {s: dict(c) for s, c in sorted(per_source.items())},
            "leaked_interactions": len(leaks), "users_in_both_splits": sum(shared_users.values()),
            "problems": problems, "ok": not problems}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m data.audit OUT_DIR", file=sys.stderr)
        return 2
    result = audit(argv[0])
    print(json.dumps(result, indent=1))
    print("AUDIT OK: no overlap" if result["ok"] else "AUDIT FAILED", file=sys.stderr)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
