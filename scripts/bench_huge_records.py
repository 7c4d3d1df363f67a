"""One huge record against the corpus build (issue 16): a 10 MB title, and one P5 user line of 10 MB of valid item
ids, each beside the same small dataset without it. Prints wall time and peak memory (max RSS of the build process
and its workers) side by side, as ratios to the plain build, and what the build counted.

    python scripts/bench_huge_records.py            # MovieLens (10 MB title) and P5 (10 MB user line) fixtures
"""
import json
import pathlib
import random
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
from data_fixtures import movielens_fixture, p5_fixture, write_config  # noqa: E402

GENRES = "|".join(["0"] * 19)


WRAPPER = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def run(cfg: pathlib.Path) -> tuple[float, float]:
    """(seconds, peak RSS in GB of the build), the build run by a fresh wrapper process so that its peak is its own
    (workers=1: the build's stages run in the build process)."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", WRAPPER, sys.executable, "-m", "data.prepare", str(cfg)], cwd=REPO,
                         check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - t0, int(out.strip().splitlines()[-1]) / 1e6  # ru_maxrss is in KB on Linux


def case(root: pathlib.Path, name: str, kind: str, huge: bool) -> dict:
    data = root / f"{name}-data"
    if kind == "movielens":
        movielens_fixture(data)
        if huge:
            with open(data / "u.item", "a", encoding="latin-1") as f:
                f.write(f"32|{'x' * 10_000_000} (1999)|x||http://x|{GENRES}\n")
            with open(data / "u.data", "a") as f:
                f.write("8\t32\t5\t999999\n")
        source = {"name": "s", "reader": "movielens", "domain": "movielens", "options": {"path": str(data)}}
    else:
        p5_fixture(data)
        if huge:
            ids = " ".join(str(random.Random(0).randint(1, 40)) for _ in range(4_000_000))  # ~10 MB
            with open(data / "sequential_data.txt", "a") as f:
                f.write(f"31 {ids}\n")
        source = {"name": "s", "reader": "p5", "domain": "amazon", "benchmark": True, "options": {"path": str(data)}}
    cfg = write_config(root / f"{name}.yaml", root / name, [source], workers=1)
    seconds, peak = run(cfg)
    meta = json.loads((root / name / "meta.json").read_text())["sources"]["s"]
    counted = {**meta["interactions_dropped"], **{k: v for k, v in meta["ignored_rows"].items()}}
    return {"seconds": seconds, "peak_gb": peak, "counted": counted}


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        for kind, what in (("movielens", "10 MB title"), ("p5", "10 MB user line (4M item ids)")):
            plain = case(root, f"{kind}-plain", kind, False)
            huge = case(root, f"{kind}-huge", kind, True)
            rows.append((kind, what, plain, huge))
    print("| source | huge record | time, plain | time ratio | peak memory, plain | memory ratio | counted |")
    print("|---|---|---:|---:|---:|---:|---|")
    for kind, what, plain, huge in rows:
        extra = {k: v for k, v in huge["counted"].items() if plain["counted"].get(k) != v}
        print(f"| {kind} | {what} | {plain['seconds']:.1f} s | {huge['seconds'] / plain['seconds']:.2f}x "
              f"| {plain['peak_gb']:.2f} GB | {huge['peak_gb'] / plain['peak_gb']:.2f}x | {extra} |")


if __name__ == "__main__":
    main()
