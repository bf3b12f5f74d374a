"""`publish SRC DEST`: copy a built dataset to a release root and verify every file written there.

DEST is gs://..., s3://..., a local path (through Beam's FileSystems), or hf://datasets/OWNER/NAME
(through huggingface_hub, one commit). manifest.json is written last. Exit status 1 names each file
that did not arrive intact.
"""
from __future__ import annotations

import argparse
import logging

from chimed_pipeline.release import ManifestError
from chimed_pipeline.transfer import publish_release

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("src", help="a built dataset (the pipeline's --output): local path, gs:// or s3://")
    parser.add_argument("dest", help="release root: gs://, s3://, a local path, or hf://datasets/OWNER/NAME[@REVISION]")
    parser.add_argument("--workers", type=int, default=4, help="files copied in parallel (default 4)")


def main(args: argparse.Namespace) -> int:
    try:
        problems = publish_release(args.src, args.dest, args.workers)
    except (ManifestError, ValueError, RuntimeError, OSError) as exc:
        log.error("%s", exc)
        return 1
    for problem in problems:
        log.error("%s", problem)
    if problems:
        log.error("%s: publish failed verification", args.dest)
        return 1
    print(f"{args.dest}: published and verified")
    return 0
