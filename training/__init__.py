"""Training machinery shared by train.py and finetune.py: LION, schedules, FSDP2, DCP checkpoints, data, metrics (docs/training.md)."""
