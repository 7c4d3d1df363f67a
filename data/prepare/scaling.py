"""How the build's wall time and peak memory grow with the corpus: synthetic MovieLens datasets (ml-100k layout,
`u.data` + `u.item`, read by the real reader) of 1M, 4M and 16M interactions, each built by `python -m data.prepare`
in a fresh process while its whole process tree's resident memory is sampled.

    python -m data.prepare.scaling --sizes 1M,4M,16M --out out/scaling [--key=value ... config overrides]
    python -m data.prepare.scaling --sizes 1M,4M --cwd ../old-checkout --tag old   # another checkout's builder

The datasets: 62,000 movies (ml-25m has 62,423) with titles and genres; users with 20-300 ratings (mean about
160, as MovieLens), times increasing per user, ratings 1-5; seeded, written once and reused. The config is
configs/data/movielens-100k-neox.yaml's (GPT-NeoX tokenizer, max_seq_len 2048, the paper's 99.5/0.5 user split)
without manifests, at the build's default memory budget. Memory is the peak over time of the sum of VmRSS over
the build process and all its children (shared pages counted in each process: an upper bound), sampled every
50 ms; also the largest single process. Prints a table; ratios against the smallest size.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

N_ITEMS = 62_000
GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
WORDS = ("The", "Last", "Night", "Return", "of", "Dark", "City", "Love", "Story", "Blue", "Man", "War", "Secret",
         "Summer", "House", "Lost", "King", "Girl", "River", "Star", "Shadow", "Time", "Road", "Game", "Heart")


def parse_size(s: str) -> int:
    s = s.strip().upper()
    return int(float(s[:-1]) * {"K": 1e3, "M": 1e6}[s[-1]]) if s[-1] in "KM" else int(s)


def write_dataset(root: pathlib.Path, n: int, seed: int = 0) -> pathlib.Path:
    """A MovieLens ml-100k-layout dataset of about n interactions (kept if already there)."""
    done = root / "done.json"
    if done.is_file() and json.loads(done.read_text())["interactions"] >= n:
        return root
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with open(root / "u.item", "w", encoding="latin-1") as f:
        for i in range(1, N_ITEMS + 1):
            title = " ".join(WORDS[w] for w in rng.integers(0, len(WORDS), rng.integers(1, 5)))
            flags = ["0"] * len(GENRES)
            for g in rng.choice(np.arange(1, len(GENRES)), rng.integers(1, 4), replace=False):
                flags[g] = "1"
            f.write(f"{i}|{title} ({1950 + i % 70})|01-Jan-1995||http://x|{'|'.join(flags)}\n")
    popularity = 1.0 / np.arange(1, N_ITEMS + 1) ** 0.8  # a long tail, as real catalogs
    popularity /= popularity.sum()
    written, user = 0, 0
    with open(root / "u.data", "w") as f:
        while written < n:
            user += 1
            k = min(int(rng.integers(20, 300)), n - written)
            items = rng.choice(N_ITEMS, k, p=popularity) + 1
            ratings = rng.integers(1, 6, k)
            times = 880_000_000 + np.cumsum(rng.integers(1, 100_000, k))
            f.write("".join(f"{user}\t{i}\t{r}\t{t}\n" for i, r, t in zip(items, ratings, times)))
            written += k
    done.write_text(json.dumps({"interactions": written, "users": user, "items": N_ITEMS}))
    return root


def tree_rss(pid: int) -> tuple[int, int]:
    """(sum, max) of VmRSS in bytes over `pid` and its descendants."""
    children: dict[int, list[int]] = {}
    for p in pathlib.Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(p.name))
    total = largest = 0
    todo = [pid]
    while todo:
        q = todo.pop()
        todo += children.get(q, [])
        try:
            for line in pathlib.Path(f"/proc/{q}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                    total, largest = total + rss, max(largest, rss)
        except OSError:
            pass
    return total, largest


def measure(cmd: list[str], cwd, log_path) -> dict:
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        peak = peak_one = 0
        while proc.poll() is None:
            total, largest = tree_rss(proc.pid)
            peak, peak_one = max(peak, total), max(peak_one, largest)
            time.sleep(0.05)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log_path}")
    return {"seconds": time.perf_counter() - t0, "peak_rss": peak, "peak_rss_one_process": peak_one}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1M,4M,16M")
    ap.add_argument("--out", default="out/scaling")
    ap.add_argument("--config", default="configs/data/movielens-100k-neox.yaml")
    ap.add_argument("--module", default="data.prepare", help="the builder (python -m MODULE CONFIG ...)")
    ap.add_argument("--tag", default="current", help="names this builder's outputs (e.g. old, new)")
    ap.add_argument("--cwd", default=None, help="run the builder from this checkout (the config path too)")
    args, rest = ap.parse_known_args(argv)
    out = pathlib.Path(args.out).resolve()
    tokenizer = pathlib.Path("../shared/data/tokenizer/gpt-neox-20b.json").resolve()
    rows = []
    for size in args.sizes.split(","):
        n = parse_size(size)
        data = write_dataset(out / "datasets" / f"movielens-{size}", n)
        build = out / f"build-{size}-{args.tag}"
        cmd = [sys.executable, "-m", args.module, args.config, f"--out_dir={build}",
               f"--sources.0.options.path={data}", f"--tokenizer.path={tokenizer}", "--finetune_fraction=0.005",
               "--write_manifests=false", *rest]
        subprocess.run(["rm", "-rf", str(build)], check=True)  # a fresh build (its work dir is inside)
        m = measure(cmd, args.cwd, out / f"build-{size}-{args.tag}.log")
        meta = json.loads((build / "meta.json").read_text())
        m.update(size=size, interactions=json.loads((data / "done.json").read_text())["interactions"],
                 tokens=meta["pretrain"]["tokens"])
        rows.append(m)
        print(json.dumps(m), flush=True)
    base = rows[0]
    gb = 2 ** 30
    print(f"\nbuilder: python -m {args.module} ({args.tag}, in {args.cwd or '.'}); cpus: {os.cpu_count()}")
    print("| interactions | tokens | wall s | tokens/s | peak RSS, all processes | largest process | "
          "wall / smallest | interactions / smallest | peak / smallest |")
    print("|" + "---:|" * 9)
    for m in rows:
        print(f"| {m['interactions']:,} | {m['tokens']:,} | {m['seconds']:.1f} | {m['tokens'] / m['seconds']:,.0f} | "
              f"{m['peak_rss'] / gb:.2f} GB | {m['peak_rss_one_process'] / gb:.2f} GB | "
              f"{m['seconds'] / base['seconds']:.2f} | {m['interactions'] / base['interactions']:.2f} | "
              f"{m['peak_rss'] / base['peak_rss']:.2f} |")
    (out / f"scaling-{args.tag}.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
