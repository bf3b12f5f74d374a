"""A built dataset -> LLaVA / Qilin-Med-VL training files.

LLaVA's trainer reads a JSON list of `{"id", "image", "conversations"}` and an image folder that
`image` is relative to. From a dataset directory (shards + manifest, built here or downloaded)
this writes, under DEST:

    images/<key>.<jpg|png>   every sample's image, as stored in the shards
    stage1.json              alignment: one "describe the image" turn pair per sample (its caption)
    stage2.json              instruction tuning: the samples' multi-turn QA

Entries are sorted by id, and the JSON is written the same way every time, so one dataset always
exports to the same bytes. A sample whose turns do not have the shape LLaVA expects (human first,
alternating, `<image>` exactly once, in the first human turn) is left out of that file and counted.
"""
from __future__ import annotations

import dataclasses
import json
import tarfile
from pathlib import Path
from typing import Iterator

from chimed_pipeline.release import inside, read_local_manifest, release_files, write_atomically
from schemas.records import GPT, HUMAN, IMAGE_TOKEN, TURN_FROM, TURN_VALUE
from schemas.release import M_SHARDS

LLAVA = "llava"
FORMATS = (LLAVA,)
IMAGES_DIR = "images"
STAGE1_FILE = "stage1.json"
STAGE2_FILE = "stage2.json"
IMAGE_EXTENSIONS = ("jpg", "png")
JSON_MEMBER = "json"


@dataclasses.dataclass(frozen=True)
class Sample:
    key: str
    record: dict  # the `<key>.json` member
    image_ext: str
    image: bytes


@dataclasses.dataclass(frozen=True)
class ExportSummary:
    samples: int
    stage1: int
    stage2: int
    skipped: dict  # file name -> samples left out of it (bad turn shape)

    def __str__(self) -> str:
        skipped = "".join(f"  ({n} left out of {name}: malformed turns)" for name, n in self.skipped.items() if n)
        return f"samples: {self.samples}  {STAGE1_FILE}: {self.stage1}  {STAGE2_FILE}: {self.stage2}{skipped}"


def shard_paths(root: Path) -> list[Path]:
    """The dataset's shards, in manifest order, each checked to be a safe path inside `root`."""
    manifest = read_local_manifest(root)
    shard_names = {entry["name"] for entry in manifest.get(M_SHARDS, [])}
    return [inside(root, f.path) for f in release_files(manifest) if f.path in shard_names]


def iter_samples(shard: Path) -> Iterator[Sample]:
    """The samples of one WebDataset shard (members grouped by key: the name up to its first dot)."""
    members: dict[str, dict[str, bytes]] = {}
    with tarfile.open(shard, "r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            members.setdefault(key, {})[ext] = tar.extractfile(member).read()
    for key, files in members.items():
        image_ext = next((ext for ext in IMAGE_EXTENSIONS if ext in files), "")
        if JSON_MEMBER not in files or not image_ext:
            raise ValueError(f"{shard.name}: sample {key!r} lacks its json or image member")
        yield Sample(key, json.loads(files[JSON_MEMBER]), image_ext, files[image_ext])


def llava_problems(turns: object) -> list[str]:
    """Why `turns` is not a LLaVA conversation (empty when it is)."""
    if not isinstance(turns, list) or not turns or len(turns) % 2:
        return ["conversation is not a non-empty list of question/answer pairs"]
    problems = []
    for number, item in enumerate(turns):
        expected = HUMAN if number % 2 == 0 else GPT
        if not isinstance(item, dict) or item.get(TURN_FROM) != expected or not isinstance(item.get(TURN_VALUE), str):
            problems.append(f"turn {number} is not a {expected} turn with a text value")
    if not problems:
        values = [item[TURN_VALUE] for item in turns]
        if IMAGE_TOKEN not in values[0] or sum(value.count(IMAGE_TOKEN) for value in values) != 1:
            problems.append(f"{IMAGE_TOKEN} must appear exactly once, in the first human turn")
    return problems


def llava_entry(sample: Sample, turns: list) -> dict:
    return {"id": sample.record["id"], "image": f"{sample.key}.{sample.image_ext}", "conversations": turns}


def _dump(entries: list[dict]) -> bytes:
    entries = sorted(entries, key=lambda entry: entry["id"])
    return (json.dumps(entries, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def export_llava(src: Path, dest: Path) -> ExportSummary:
    """Write LLaVA training files for the dataset at `src` into `dest` (created if needed)."""
    images = dest / IMAGES_DIR
    images.mkdir(parents=True, exist_ok=True)
    stage1, stage2 = [], []
    skipped = {STAGE1_FILE: 0, STAGE2_FILE: 0}
    samples = 0
    for shard in shard_paths(src):
        for sample in iter_samples(shard):
            samples += 1
            (images / f"{sample.key}.{sample.image_ext}").write_bytes(sample.image)
            for name, field, entries in ((STAGE1_FILE, "alignment", stage1), (STAGE2_FILE, "conversations", stage2)):
                turns = sample.record.get(field) or []
                if not turns:
                    continue  # no alignment caption / no QA for this sample: nothing to train on
                if llava_problems(turns):
                    skipped[name] += 1
                else:
                    entries.append(llava_entry(sample, turns))
    write_atomically(dest / STAGE1_FILE, _dump(stage1))
    write_atomically(dest / STAGE2_FILE, _dump(stage2))
    return ExportSummary(samples=samples, stage1=len(stage1), stage2=len(stage2), skipped=skipped)
