"""`export --format llava SRC_DIR DEST_DIR`: LLaVA / Qilin-Med-VL training files from a built dataset.

Writes DEST_DIR/stage1.json (alignment), DEST_DIR/stage2.json (instruction QA) — JSON lists of
{"id", "image", "conversations"} — and DEST_DIR/images/, the folder their `image` paths are
relative to (LLaVA's --image_folder). Exit status 1 when SRC_DIR is not a readable dataset.
"""
from __future__ import annotations

import argparse
import logging
import tarfile
from pathlib import Path

from chimed_pipeline.export import FORMATS, LLAVA, export_llava
from chimed_pipeline.release import ManifestError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("--format", choices=FORMATS, default=LLAVA, help="output format (default llava)")
    parser.add_argument("src", type=Path, help="dataset directory (holds manifest.json and shards/)")
    parser.add_argument("dest", type=Path, help="where the training files and images/ go")


def main(args: argparse.Namespace) -> int:
    try:
        summary = export_llava(args.src, args.dest)
    except (ManifestError, OSError, tarfile.TarError, ValueError) as exc:
        log.error("cannot export %s: %s", args.src, exc)
        return 1
    print(f"{summary}\noutput: {args.dest}")
    return 0
