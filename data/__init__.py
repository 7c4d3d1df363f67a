"""RecGPT data: raw recommendation datasets -> pre-training shards and instruction data.

See data/README.md for the pipeline, the commands and the exact output formats.
"""
