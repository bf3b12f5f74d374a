"""A release on disk: its manifest, the files it lists, where they may land, and whether they are intact.

A release root holds `manifest.json`, whose `shards` and `files` lists name every other file with its
size and sha256. `download`, `verify` and `publish` all work from that list. Names in a manifest come
from whoever serves it, so they are checked before they touch a file system: an entry is a plain
relative POSIX path that stays inside the destination, or the whole manifest is refused.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

from schemas.release import M_FILES, M_SHARDS, M_VERSION, MANIFEST, MANIFEST_VERSION, FileInfo, ShardInfo

PART_SUFFIX = ".part"  # a file being fetched; it takes its final name only once verified
HASH_CHUNK = 1 << 20

_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ManifestError(ValueError):
    """The manifest cannot be used: unreadable, wrong shape, or naming unsafe paths."""


def unsafe_reason(name: object) -> str:
    """Why a manifest name may not be used as a path under the destination; "" when it may.

    Refused: non-strings, empty names, absolute paths, drive letters, backslashes (a separator on
    Windows), control characters, empty / `.` / `..` components, and names a download itself uses.
    """
    if not isinstance(name, str) or not name:
        return "not a non-empty string"
    if name.startswith("/") or _DRIVE.match(name):
        return "absolute path"
    if "\\" in name:
        return "backslash in path"
    if _CONTROL.search(name):
        return "control character in path"
    parts = name.split("/")
    if ".." in parts:
        return "'..' component"
    if any(part in ("", ".") for part in parts):
        return "empty or '.' component"
    if name == MANIFEST:
        return "collides with the manifest"
    if name.endswith(PART_SUFFIX):
        return f"collides with the '{PART_SUFFIX}' temporary names"
    return ""


def inside(root: Path, name: str) -> Path:
    """`root/name`, refusing names that are unsafe or that resolve (through symlinks too) outside root."""
    reason = unsafe_reason(name)
    if reason:
        raise ManifestError(f"unsafe path {name!r}: {reason}")
    base = root.resolve()
    target = (base / name).resolve()
    if not target.is_relative_to(base):
        raise ManifestError(f"unsafe path {name!r}: resolves outside {root}")
    return target


def parse_manifest(data: bytes) -> dict:
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{MANIFEST} is not JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ManifestError(f"{MANIFEST} is not a JSON object")
    version = manifest.get(M_VERSION)
    if isinstance(version, int) and version > MANIFEST_VERSION:
        raise ManifestError(
            f"{MANIFEST} version {version} is newer than this tool reads ({MANIFEST_VERSION}); upgrade chimed-pipeline"
        )
    return manifest


def _entries(manifest: dict, key: str, entry_type: type, name_field: str) -> list:
    raw = manifest.get(key, [])
    if not isinstance(raw, list):
        raise ManifestError(f"{MANIFEST} {key!r} is not a list")
    fields = {f.name for f in dataclasses.fields(entry_type)}
    entries = []
    for item in raw:
        if not isinstance(item, dict) or not fields <= item.keys():
            raise ManifestError(f"{MANIFEST} {key!r} entry {item!r} lacks one of {sorted(fields)}")
        entry = entry_type(**{f: item[f] for f in fields})
        if not isinstance(entry.bytes, int) or entry.bytes < 0 or not re.fullmatch(r"[0-9a-f]{64}", str(entry.sha256)):
            raise ManifestError(f"{MANIFEST} {key!r} entry {getattr(entry, name_field)!r} has a bad size or sha256")
        entries.append(entry)
    return entries


def release_files(manifest: dict) -> list[FileInfo]:
    """Every file the release lists (shards, then other files), each with a safe path; names unique.

    All unsafe or duplicate names are reported together, so one look at the error shows the damage.
    """
    shards: list[ShardInfo] = _entries(manifest, M_SHARDS, ShardInfo, "name")
    files: list[FileInfo] = _entries(manifest, M_FILES, FileInfo, "path")
    listed = [FileInfo(path=s.name, bytes=s.bytes, sha256=s.sha256) for s in shards] + files
    problems = [f"{f.path!r}: {unsafe_reason(f.path)}" for f in listed if unsafe_reason(f.path)]
    seen: set[str] = set()
    for f in listed:
        if f.path in seen:
            problems.append(f"{f.path!r}: listed twice")
        seen.add(f.path)
    if problems:
        raise ManifestError(f"{MANIFEST} refused: " + "; ".join(problems))
    return listed


def select(files: Sequence[FileInfo], include: Sequence[str] | None) -> list[FileInfo]:
    """The files whose path matches any of the globs (fnmatch: `*` also crosses `/`); all when none given."""
    if not include:
        return list(files)
    return [f for f in files if any(fnmatch.fnmatchcase(f.path, pattern) for pattern in include)]


def hash_stream(digest, stream):
    """`digest` updated with everything left in the binary stream; returned for chaining."""
    while chunk := stream.read(HASH_CHUNK):
        digest.update(chunk)
    return digest


def sha256_of(path: Path) -> str:
    with open(path, "rb") as stream:
        return hash_stream(hashlib.sha256(), stream).hexdigest()


def mismatch(path: Path, expected: FileInfo) -> str:
    """What is wrong with the local file against its manifest entry; "" when it is intact."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if size != expected.bytes:
        return f"size {size} != {expected.bytes}"
    actual = sha256_of(path)
    if actual != expected.sha256:
        return f"sha256 {actual} != {expected.sha256}"
    return ""


@dataclasses.dataclass(frozen=True)
class Problem:
    path: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}"


def check_copy(root: Path, files: Iterable[FileInfo], workers: int = 4) -> list[Problem]:
    """Re-hash a local copy against its manifest entries; the problems, in manifest order.

    hashlib releases the GIL on large buffers, so a few threads hash several files at disk speed.
    """
    files = list(files)

    def check(entry: FileInfo) -> str:
        return mismatch(inside(root, entry.path), entry)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        details = list(pool.map(check, files))
    return [Problem(f.path, d) for f, d in zip(files, details) if d]


def read_local_manifest(root: Path) -> dict:
    try:
        return parse_manifest((root / MANIFEST).read_bytes())
    except FileNotFoundError as exc:
        raise ManifestError(f"no {MANIFEST} in {root}") from exc


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + PART_SUFFIX)
    temp.write_bytes(data)
    os.replace(temp, path)
