"""`python -m data.prepare CONFIG [--key=value ...]`: the corpus build (data/prepare/pipeline.py)."""
import sys

from data.prepare.pipeline import main

sys.exit(main())
