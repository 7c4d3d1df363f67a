"""The on-disk formats a data build writes and training / evaluation read (data/README.md "Output layout").

    packed.py        pre-training rows: PackWriter, PackedDataset, read_meta (FORMAT, FORMAT_VERSION)
    instructions.py  prompt/response pairs: InstructionWriter, InstructionDataset (IGNORE_INDEX)
    evalfiles.py     evaluation files: read_examples, read_catalog, read_train_stats, item_id_order
    tokenizer.py     the tokenizer a build names: load, EOS, sha256_file, token_dtype

Nothing here imports the build (data.prepare) or any other part of the project.
"""
