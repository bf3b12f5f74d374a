"""`export --format llava`: a pipeline-built dataset -> LLaVA training files LLaVA's loader accepts."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from chimed_pipeline.cli import main as cli_main
from chimed_pipeline.export import IMAGES_DIR, STAGE1_FILE, STAGE2_FILE, export_llava, iter_samples, llava_problems, shard_paths
from chimed_pipeline.qa_report import CHIMED_VL_REFERENCE, qa_stats, qa_stats_markdown
from schemas import release
from schemas.records import GPT, HUMAN, IMAGE_TOKEN


def _samples(dataset: Path) -> list:
    return [sample for shard in shard_paths(dataset) for sample in iter_samples(shard)]


@pytest.fixture(scope="module")
def exported(built_release, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("llava")
    assert cli_main(["export", "--format", "llava", str(built_release), str(dest)]) == 0
    return dest


def assert_llava_entry(entry: dict, image_folder: Path) -> None:
    """What LLaVA's LazySupervisedDataset relies on."""
    assert set(entry) == {"id", "image", "conversations"}
    assert isinstance(entry["id"], str) and entry["id"]
    assert not Path(entry["image"]).is_absolute() and (image_folder / entry["image"]).is_file()
    turns = entry["conversations"]
    assert turns and len(turns) % 2 == 0
    assert [t["from"] for t in turns] == [HUMAN, GPT] * (len(turns) // 2)
    assert all(set(t) == {"from", "value"} and isinstance(t["value"], str) and t["value"].strip() for t in turns)
    assert turns[0]["value"].startswith(IMAGE_TOKEN + "\n")
    assert sum(t["value"].count(IMAGE_TOKEN) for t in turns) == 1


def test_export_writes_llava_files_for_every_kept_sample(built_release, exported):
    manifest = json.loads((built_release / release.MANIFEST).read_text())
    kept = manifest["counts"]["status"]["kept"]
    samples = {s.record["id"]: s for s in _samples(built_release)}
    assert len(samples) == kept
    images = exported / IMAGES_DIR
    for name in (STAGE1_FILE, STAGE2_FILE):
        entries = json.loads((exported / name).read_text(encoding="utf-8"))
        assert [e["id"] for e in entries] == sorted(samples)  # the demo gives every sample both stages
        for entry in entries:
            assert_llava_entry(entry, images)
            sample = samples[entry["id"]]
            assert (images / entry["image"]).read_bytes() == sample.image
            with Image.open(images / entry["image"]) as image:
                assert image.size == (sample.record["width"], sample.record["height"])
    stage1 = json.loads((exported / STAGE1_FILE).read_text(encoding="utf-8"))
    assert all(e["conversations"][1]["value"] == samples[e["id"]].record["caption_zh"] for e in stage1)
    stage2 = {e["id"]: e for e in json.loads((exported / STAGE2_FILE).read_text(encoding="utf-8"))}
    assert stage2["chimed_demo_qa_1"]["conversations"][1]["value"] == "这是彩色眼底照相。"  # ingested QA kept
    assert sorted(p.name for p in images.iterdir()) == sorted(e["image"] for e in stage1)


def test_export_is_byte_for_byte_repeatable(built_release, exported, tmp_path):
    again = tmp_path / "again"
    export_llava(built_release, again)
    for name in (STAGE1_FILE, STAGE2_FILE):
        assert (again / name).read_bytes() == (exported / name).read_bytes()


def test_qa_stats_of_the_demo_build(built_release):
    records = [s.record for s in _samples(built_release)]
    stats = qa_stats(records)
    assert stats["samples"] == stats["samples_with_qa"] == len(records)
    assert stats["qa_pairs"] == sum(len(r["conversations"]) // 2 for r in records)
    assert 1 <= stats["qa_pairs_per_sample"]["median"] <= 5
    assert 3 <= stats["question_tokens"]["median"] <= 20 and 2 <= stats["answer_tokens"]["median"] <= 30
    assert sum(stats["modality"].values()) == len(records) and "ct" in stats["modality"]
    table = qa_stats_markdown(stats)
    assert f"{CHIMED_VL_REFERENCE['qa_pairs']:,}" in table and "| ct |" in table


def _tiny_release(root: Path, samples: list[dict]) -> None:
    """A one-shard release written by hand, to exercise what the pipeline never produces."""
    shard = root / release.shard_name(0)
    shard.parent.mkdir(parents=True)
    with wds.TarWriter(str(shard)) as writer:
        for sample in samples:
            writer.write(sample)
    data = shard.read_bytes()
    entry = {"name": release.shard_name(0), "samples": len(samples), "bytes": len(data),
             "sha256": hashlib.sha256(data).hexdigest()}
    (root / release.MANIFEST).write_text(json.dumps({"version": 1, "shards": [entry], "files": []}))


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (40, 80, 120)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_samples_with_malformed_turns_are_left_out_and_counted(tmp_path):
    good = [{"from": HUMAN, "value": f"{IMAGE_TOKEN}\n这是什么？"}, {"from": GPT, "value": "CT。"}]
    twice = [{"from": HUMAN, "value": f"{IMAGE_TOKEN}\n这是什么？"}, {"from": GPT, "value": f"{IMAGE_TOKEN} CT。"}]
    samples = [
        {"__key__": "a", "png": _png(), "json": json.dumps({"id": "a", "alignment": good, "conversations": good})},
        {"__key__": "b", "png": _png(), "json": json.dumps({"id": "b", "alignment": good, "conversations": twice})},
        {"__key__": "c", "png": _png(), "json": json.dumps({"id": "c", "alignment": good, "conversations": []})},
    ]
    _tiny_release(tmp_path / "src", samples)
    summary = export_llava(tmp_path / "src", tmp_path / "out")
    assert (summary.samples, summary.stage1, summary.stage2) == (3, 3, 1)
    assert summary.skipped == {STAGE1_FILE: 0, STAGE2_FILE: 1} and "1 left out of stage2.json" in str(summary)
    [entry] = json.loads((tmp_path / "out" / STAGE2_FILE).read_text())
    assert entry == {"id": "a", "image": "a.png", "conversations": good}


def test_llava_problems_name_each_shape_error():
    assert llava_problems([]) and llava_problems([{"from": GPT, "value": "x"}, {"from": HUMAN, "value": "y"}])
    assert llava_problems([{"from": HUMAN, "value": "no image"}, {"from": GPT, "value": "a"}])
    assert llava_problems([{"from": HUMAN, "value": f"{IMAGE_TOKEN}\nq"}, {"from": GPT, "value": "a"}]) == []


def test_export_of_a_directory_without_a_dataset_fails_cleanly(tmp_path, caplog):
    assert cli_main(["export", str(tmp_path / "nothing"), str(tmp_path / "out")]) == 1
    assert "cannot export" in caplog.text
