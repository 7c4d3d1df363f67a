"""The statistics report in the shape of the paper's Table 4 (users, items, interactions per source),
with the documents and tokens this build produced, the instruction pairs, and every count of what was
skipped or dropped. `python -m data.prepare.stats out/data/<name>` prints it again from meta.json."""
import argparse
import sys

from config import cli
from data.formats.packed import read_meta


def _fmt(v) -> str:
    return f"{v:,}" if isinstance(v, int) else str(v)


def report(meta: dict) -> str:
    lines = [f"# Data statistics: {meta['config']['name']}", "",
             f"Tokenizer `{meta['tokenizer']['path']}` (sha256 {meta['tokenizer']['sha256'][:12]}..., "
             f"{meta['tokenizer']['vocab_size']:,} ids); max_seq_len {meta['config']['max_seq_len']}; "
             f"seed {meta['config']['seed']}.", "",
             "| dataset | users | items | interactions | pre-training docs | tokens | rating pairs | next-item pairs |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    tot = [0] * 7
    for name, s in meta["sources"].items():
        t, p = s["table4"], s["counts"]
        row = [t["users"], t["items"], t["interactions"], p.get("documents", 0), p.get("tokens", 0),
               p.get("pairs_rating", 0), p.get("pairs_next_item", 0)]
        tot = [a + b for a, b in zip(tot, row)]
        star = " (*)" if s["benchmark"] else ""
        lines.append(f"| {name}{star} | " + " | ".join(_fmt(v) for v in row) + " |")
    lines.append("| **Total** | " + " | ".join(f"**{_fmt(v)}**" for v in tot) + " |")
    lines += ["", "(*) benchmark: users/items/interactions of the whole dataset; pre-training uses only its "
              "leakage-cleaned training split. Tokens include one EOS per document.", "",
              f"Packed: {meta['pretrain']['rows']:,} rows x {meta['pretrain']['seq_len']} tokens "
              f"({meta['pretrain']['dtype']}), {meta['pretrain']['padding_tokens']:,} padding tokens; "
              f"{meta['instructions']['examples']:,} instruction pairs.", ""]
    for w in meta.get("warnings", []):
        lines += [f"**WARNING**: {w}", ""]
    for name, s in meta["sources"].items():
        lines.append(f"## {name}")
        lines.append(f"- interactions read: {s['interactions_read']:,} = kept {s['interactions_kept']} "
                     f"+ dropped {s['interactions_dropped']}")
        lines.append(f"- bad input lines skipped: {s['bad_lines'] or 'none'}; rows ignored by design: "
                     f"{s['ignored_rows'] or 'none'}")
        lines.append(f"- users dropped: {s['users_dropped'] or 'none'}")
        if s.get("excluded_users"):
            lines.append(f"- users removed as users of its exclude_users_of sources: {s['excluded_users']:,}")
        lines.append(f"- build counts: {s['counts']}")
        if name in meta.get("eval", {}):
            lines.append(f"- evaluation files: {meta['eval'][name]['files']}")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m data.prepare.stats", description="the Table-4 style report of a build")
    ap.add_argument("out_dir", help="a data build (the folder with meta.json)")
    print(report(read_meta(ap.parse_args(argv).out_dir)[1]))


if __name__ == "__main__":
    sys.exit(cli.run(main))
