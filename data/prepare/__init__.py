"""The offline corpus build, `python -m data.prepare` (data/prepare/pipeline.py; data/README.md)."""


def build_command(schema, build, command: str, doc: str, argv=None) -> int:
    """The main of a build whose whole input is its config (data.prepare.own_files, data.prepare.p5_tasks):
    `python -m data.prepare.<command> CONFIG.yaml [--key=value ...] [--dry-run | --help]`; prints the resolved
    config, then builds under the output folder's lock (one build writes out_dir at a time)."""
    import sys

    import config as config_lib
    from output import OutputLock
    from output.provenance import write_environment

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        print(doc)
        return 2
    cfg = config_lib.command_line(schema, argv, doc)  # --help, --dry-run exit here
    print(config_lib.dump(cfg), flush=True)
    with OutputLock(cfg.out_dir, f"data.prepare.{command}"):
        build(cfg)
        write_environment(cfg.out_dir)
    return 0
