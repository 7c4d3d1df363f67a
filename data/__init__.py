"""Data for RecGPT, in two rooms (data/README.md):

- `data.formats`: the small on-disk formats that training, evaluation and the build share (packed
  pre-training rows, instruction pairs, evaluation files, the tokenizer wrapper). It imports nothing else
  of the project.
- `data.prepare`: the offline corpus build, `python -m data.prepare` (readers, recipe, templates, chunking,
  the build's stages, audit, statistics). It writes the formats; the trainer and the evaluator never
  import it.
"""
