"""End-to-end: the pipeline on the bundled sample and on broken inputs, read back by other tools."""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import run_pipeline
from schemas import INDEX_COLUMNS, Reason, Status, release
from schemas.records import IMAGE_TOKEN, SAMPLE_FIELD_NAMES
from chimed_pipeline.sample_images import render


def read_index(output: Path) -> list[dict]:
    rows = []
    for part in sorted((output / release.INDEX_DIR).glob("part-*.parquet")):
        rows.extend(pq.read_table(part).to_pylist())
    return rows


def read_manifest(output: Path) -> dict:
    return json.loads((output / release.MANIFEST).read_text())


def test_demo_keeps_samples_and_indexes_every_record(built_release):
    manifest = read_manifest(built_release)
    rows = read_index(built_release)
    counts = manifest["counts"]
    assert counts["input_records"] == len(rows) == 27  # 20 manifest records + 7 figures of 2 PMC-style articles
    assert counts["status"][Status.KEPT.value] >= 10
    assert sum(counts["status"].values()) == len(rows)
    assert len({row["id"] for row in rows}) == len(rows)
    assert [row["id"] for row in rows] == sorted(row["id"] for row in rows)
    assert set(INDEX_COLUMNS) <= set(rows[0])
    by_id = {row["id"]: row for row in rows}
    assert by_id["pairs_L2"]["status"] == Status.DUPLICATE.value
    assert by_id["pairs_L2"]["duplicate_of"] == "pairs_L1"
    assert by_id["pairs_L15"]["reason"] == Reason.LICENSE_EXCLUDED.value
    assert by_id["pairs_L16"]["reason"] == Reason.UNTRANSLATED.value
    kept = [row for row in rows if row["status"] == Status.KEPT.value]
    assert all(row["shard"].startswith("shards/chimed-vl-") for row in kept)


def test_manifest_checksums_every_file(built_release):
    import hashlib

    manifest = read_manifest(built_release)
    listed = [(s["name"], s["bytes"], s["sha256"]) for s in manifest["shards"]]
    listed += [(f["path"], f["bytes"], f["sha256"]) for f in manifest["files"]]
    for path, size, digest in listed:
        data = (built_release / path).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (size, digest), path
    paths = {path for path, _, _ in listed}
    assert {"README.md", "report/stats.json", "tm/part-00000.jsonl", "index/part-00000.parquet"} <= paths
    on_disk = {str(p.relative_to(built_release)) for p in built_release.rglob("*") if p.is_file()}
    assert on_disk == paths | {release.MANIFEST}
    assert not any(key in json.dumps(manifest["options"]) for key in ("/tmp", "runner", "direct"))


def test_shards_read_back_with_webdataset(built_release):
    import webdataset as wds

    shards = sorted(str(p) for p in (built_release / release.SHARDS_DIR).glob("*.tar"))
    samples = list(wds.WebDataset(shards, shardshuffle=False).decode("pil"))
    assert len(samples) == read_manifest(built_release)["counts"]["status"]["kept"]
    for sample in samples:
        assert set(sample) >= {"__key__", "jpg", "txt", "json"}
        record = sample["json"]
        assert list(record) == list(SAMPLE_FIELD_NAMES)
        assert record["key"] == sample["__key__"] and "." not in record["key"]
        assert sample["txt"] == record["caption_zh"] and record["caption_zh"]
        assert max(sample["jpg"].size) <= 1024 and sample["jpg"].size == (record["width"], record["height"])
        assert record["alignment"][0]["value"].startswith(IMAGE_TOKEN)
        assert all(value is not None for value in record.values())
    merged = next(s["json"] for s in samples if s["__key__"] == "chimed_demo_qa_1")
    turns = merged["conversations"]
    assert [t["from"] for t in turns] == ["human", "gpt", "human", "gpt"]
    assert turns[0]["value"].startswith(IMAGE_TOKEN + "\n")
    assert sum(IMAGE_TOKEN in t["value"] for t in turns) == 1


def test_shards_read_back_with_hugging_face_datasets(built_release, tmp_path):
    datasets = pytest.importorskip("datasets")
    shards = sorted(str(p) for p in (built_release / release.SHARDS_DIR).glob("*.tar"))
    loaded = datasets.load_dataset("webdataset", data_files={"train": shards}, split="train", cache_dir=str(tmp_path))
    assert loaded.num_rows == read_manifest(built_release)["counts"]["status"]["kept"]
    assert {"jpg", "txt", "json"} <= set(loaded.column_names)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height but holds a tiny (broken) IDAT: a decompression bomb stand-in."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture
def broken_inputs(tmp_path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    for number, kind in enumerate(("ct", "histology", "xray", "fundus")):
        render(kind, number, (320, 256)).save(images / f"good{number}.png")
    (images / "garbage.jpg").write_bytes(b"this is not an image at all")
    (images / "zero.jpg").write_bytes(b"")
    (images / "bomb.png").write_bytes(_png_header_only(100_000, 100_000))
    rows = [
        {"image": "good0.png", "caption": "Axial CT image of the chest.", "license": "cc-by"},
        {"image": "good1.png", "caption": "胸部CT图像。", "license": "cc-by"},
        {"image": "good2.png", "caption": "胸部X线片。", "license": "cc0"},
        {"image": "garbage.jpg", "caption": "胸部X线片二。", "license": "cc-by"},
        {"image": "nowhere.jpg", "caption": "胸部X线片三。", "license": "cc-by"},
        {"image": "zero.jpg", "caption": "胸部X线片四。", "license": "cc-by"},
        {"image": "good3.png", "caption": "   ", "license": "cc-by"},
        {"image": "bomb.png", "caption": "胸部X线片五。", "license": "cc-by"},
    ]
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    lines.insert(3, '{"image": "good0.png", "caption": broken json')
    manifest = tmp_path / "broken.jsonl"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tm = tmp_path / "tm.jsonl"
    tm.write_text(json.dumps({"source": "Axial CT image of the chest.", "target": "胸部轴位CT图像。"}, ensure_ascii=False) + "\n")
    return tmp_path


def test_broken_inputs_each_land_in_the_index_once_with_a_reason(broken_inputs, tmp_path):
    output = run_pipeline(
        tmp_path / "out", "--input", str(broken_inputs / "broken.jsonl"), "--images", str(broken_inputs / "images"),
        "--tm", str(broken_inputs / "tm.jsonl"),
    )
    rows = {row["id"]: row for row in read_index(output)}
    assert len(rows) == 9  # one per manifest line
    expected = {
        "broken_L4": Reason.MALFORMED_RECORD,
        "broken_L5": Reason.UNDECODABLE_IMAGE,
        "broken_L6": Reason.MISSING_IMAGE,
        "broken_L7": Reason.EMPTY_IMAGE,
        "broken_L8": Reason.EMPTY_CAPTION,
        "broken_L9": Reason.IMAGE_TOO_LARGE,
    }
    for record_id, reason in expected.items():
        assert rows[record_id]["status"] == Status.REJECTED.value, record_id
        assert rows[record_id]["reason"] == reason.value, record_id
        assert rows[record_id]["detail"], record_id
    assert {k for k, r in rows.items() if r["status"] == Status.KEPT.value} == {"broken_L1", "broken_L2", "broken_L3"}


def test_two_runs_give_identical_bytes(broken_inputs, tmp_path):
    args = ("--input", str(broken_inputs / "broken.jsonl"), "--images", str(broken_inputs / "images"),
            "--tm", str(broken_inputs / "tm.jsonl"), "--shard-samples", "1")
    first = run_pipeline(tmp_path / "a", *args)
    second = run_pipeline(tmp_path / "b", *args)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len([f for f in files if f.parts[0] == release.SHARDS_DIR]) == 3
    for relative in files:
        assert (first / relative).read_bytes() == (second / relative).read_bytes(), relative
