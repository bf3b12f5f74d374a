"""File names and manifest entries of a built dataset (a "release")."""
from __future__ import annotations

import dataclasses

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
SHARDS_DIR = "shards"
INDEX_DIR = "index"
TM_DIR = "tm"
REPORT_DIR = "report"
DATASET_CARD = "README.md"
SHARD_PREFIX = "chimed-vl-"

# Manifest keys.
M_VERSION = "version"
M_OPTIONS = "options"
M_COUNTS = "counts"
M_SHARDS = "shards"
M_FILES = "files"


def shard_name(number: int) -> str:
    return f"{SHARDS_DIR}/{SHARD_PREFIX}{number:06d}.tar"


def index_part_name(number: int) -> str:
    return f"{INDEX_DIR}/part-{number:05d}.parquet"


def tm_part_name(number: int) -> str:
    return f"{TM_DIR}/part-{number:05d}.jsonl"


@dataclasses.dataclass(frozen=True, order=True)
class ShardInfo:
    name: str  # relative to the dataset root: shards/chimed-vl-000000.tar
    samples: int
    bytes: int
    sha256: str


@dataclasses.dataclass(frozen=True, order=True)
class FileInfo:
    path: str  # relative to the dataset root
    bytes: int
    sha256: str
