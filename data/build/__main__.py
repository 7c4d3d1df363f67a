"""`python -m data.build --config ...`: the corpus build (data/build/pipeline.py)."""
import sys

from data.build.pipeline import main

sys.exit(main())
