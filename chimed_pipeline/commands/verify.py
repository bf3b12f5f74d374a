"""`verify DEST`: re-check every file of a local copy of a release against its manifest (size, sha256).

Exit status 0 when all selected files are intact; 1 otherwise, listing each missing or bad file.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from chimed_pipeline.release import ManifestError, check_copy, read_local_manifest, release_files, select

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("dest", type=Path, help="local copy of a release (holds manifest.json)")
    parser.add_argument("--include", action="append", metavar="GLOB", help="check only matching paths (as download)")
    parser.add_argument("--workers", type=int, default=4, help="files hashed in parallel (default 4)")


def main(args: argparse.Namespace) -> int:
    try:
        files = select(release_files(read_local_manifest(args.dest)), args.include)
        problems = check_copy(args.dest, files, args.workers)
    except ManifestError as exc:
        log.error("%s", exc)
        return 1
    for problem in problems:
        log.error("%s", problem)
    print(f"{args.dest}: {len(files) - len(problems)} of {len(files)} files verified, {len(problems)} bad or missing")
    return 1 if problems else 0
