"""`hash FILE...`: print `<16-hex pHash>  <path>` per image, like sha256sum; the `--exclude-hashes` format.

The hash is imagehash.phash's (same bit order and hex), computed at reduced decode scale. A file
that cannot be read or decoded is named on stderr and makes the exit status 1; the others are
still hashed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transforms.phash import phash, to_hex


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="image files (JPEG, PNG, GIF, TIFF, ...)")


def main(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        try:
            value = phash(path.read_bytes())
        except Exception as error:  # the command's edge: Pillow raises many types for bad images
            reason = error.strerror if isinstance(error, OSError) and error.strerror else type(error).__name__
            print(f"hash: {path}: {reason}", file=sys.stderr)
            status = 1
            continue
        print(f"{to_hex(value)}  {path}")
    return status
