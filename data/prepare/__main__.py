"""`python -m data.prepare CONFIG [--key=value ...]`: the corpus build (data/prepare/pipeline.py)."""
import sys

from config import cli
from data.prepare.pipeline import main

sys.exit(cli.run(main))
