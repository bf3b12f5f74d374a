from __future__ import annotations

import collections
import io
import tarfile

from schemas import Record
from transforms.shards import HashingWriter, member_order, sample_members, shard_count, shard_of, write_tar


def test_shard_assignment_is_stable_and_roughly_even():
    assert shard_count(0, 10) == 0 and shard_count(10, 10) == 1 and shard_count(11, 10) == 2
    sizes = collections.Counter(shard_of(f"PMC{n}_F1", 20) for n in range(20_000))
    assert set(sizes) == set(range(20))
    assert max(sizes.values()) < 1.15 * 1000 and min(sizes.values()) > 0.85 * 1000
    assert shard_of("PMC1_F1", 20) == shard_of("PMC1_F1", 20)


def test_tar_is_deterministic_with_fixed_metadata():
    records = [Record(id=f"k{n}", caption_zh="图") for n in range(3)]

    def build() -> tuple[bytes, str, int]:
        sink = io.BytesIO()
        hashing = HashingWriter(sink)
        write_tar(hashing, [sample_members(r, b"\xff\xd8img", "jpg") for r in records])
        return sink.getvalue(), hashing.sha256, hashing.size

    first, second = build(), build()
    assert first == second and first[2] == len(first[0])
    with tarfile.open(fileobj=io.BytesIO(first[0])) as tar:
        members = tar.getmembers()
    assert [m.name for m in members[:3]] == ["k0.jpg", "k0.json", "k0.txt"]
    assert {m.mtime for m in members} == {0} and {m.uname for m in members} == {"chimed"}


def test_member_order_lets_hugging_face_infer_list_fields(tmp_path):
    """Empty lists in the first samples would make HF's loader type them list<null> and fail later."""
    datasets = __import__("pytest").importorskip("datasets")
    records = [Record(id=f"a{n}", caption_zh="图") for n in range(8)]
    records.append(Record(id="z1", caption_zh="图", inline_mentions_en=["Fig. 1 shows"], conversations=[{"from": "human", "value": "<image>\n问"}, {"from": "gpt", "value": "答"}]))
    records.append(Record(id="z2", caption_zh="图", inline_mentions_zh=["图1"], alignment=[{"from": "gpt", "value": "答"}]))
    ordered = member_order(records)
    assert {r.id for r in ordered[:2]} == {"z1", "z2"} and [r.id for r in ordered[2:]] == [f"a{n}" for n in range(8)]
    path = tmp_path / "shard.tar"
    with open(path, "wb") as sink:
        write_tar(sink, [sample_members(r, b"img", "jpg") for r in ordered])
    loaded = datasets.load_dataset("webdataset", data_files={"train": [str(path)]}, split="train", cache_dir=str(tmp_path / "c"))
    assert loaded.num_rows == 10
