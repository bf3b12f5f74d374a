"""`python -m chimed_pipeline COMMAND ...`: one module per command, imported only when used.

Each command module exposes `add_arguments(parser)` and `main(args) -> int`, so `run` and
`download` never pay for torch, and a command's dependencies load only when it runs.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = {
    "run": ("chimed_pipeline.commands.run", "build the dataset with Apache Beam"),
    "hash": ("chimed_pipeline.commands.hash", "print perceptual hashes (the --exclude-hashes format)"),
    "export": ("chimed_pipeline.commands.export", "export a built dataset to LLaVA training files"),
    "download": ("chimed_pipeline.commands.download", "fetch and verify a released dataset"),
    "verify": ("chimed_pipeline.commands.verify", "re-check a local copy against its manifest"),
    "publish": ("chimed_pipeline.commands.publish", "copy a built dataset to a release root, verified"),
    "train": ("chimed_pipeline.commands.train", "two-stage LLaVA-style training from the shards"),
}


def _available() -> dict:
    found = {}
    for name, (module, help_text) in COMMANDS.items():
        if importlib.util.find_spec(module) is not None:
            found[name] = (module, help_text)
    return found


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("chimed_pipeline", "transforms"):  # our progress at INFO; Beam's chatter stays at WARNING
        logging.getLogger(name).setLevel(logging.INFO)
    commands = _available()
    parser = argparse.ArgumentParser(prog="python -m chimed_pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in commands.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in commands:
        parser.parse_args(argv)  # prints usage / the error and exits
        return 2
    module = importlib.import_module(commands[argv[0]][0])
    command_parser = argparse.ArgumentParser(prog=f"python -m chimed_pipeline {argv[0]}")
    module.add_arguments(command_parser)
    if getattr(module, "PASS_UNKNOWN_ARGS", False):  # `run` hands the rest to Beam's PipelineOptions
        args, rest = command_parser.parse_known_args(argv[1:])
        return int(module.main(args, rest) or 0)
    return int(module.main(command_parser.parse_args(argv[1:])) or 0)
