"""The offline corpus build, `python -m data.prepare` (data/prepare/pipeline.py; data/README.md)."""
