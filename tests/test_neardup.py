"""Near dedup: pigeonhole block keys, bucket search vs brute force, hot buckets, groups, exclusions, Beam."""
from __future__ import annotations

import dataclasses
import itertools

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from schemas import Reason, Record, Source, Stage, Status
from transforms.licenses import CC_BY, CC_BY_NC
from transforms.neardup import (
    LAYOUT_HAMMING,
    LEAF_SIZE,
    DuplicateGroups,
    ExcludedHashIndex,
    Layouts,
    across_articles,
    SearchStats,
    block_keys,
    block_masks,
    bucket_links,
    near_pairs,
    parse_hash_lines,
    survivor_rank,
)
from transforms.neardup_beam import ExcludeHashesFn, NearDeduplicate, record_layouts
from transforms.phash import to_hex

ALL = (1 << 64) - 1


def random_hashes(rng, count: int) -> np.ndarray:
    return rng.integers(0, 2**64, count, dtype=np.uint64, endpoint=False)


def flip(value: int, bits, rng) -> int:
    for bit in rng.choice(64, bits, replace=False):
        value ^= 1 << int(bit)
    return value


def components(count: int, pairs) -> set[frozenset]:
    groups = DuplicateGroups()
    for a, b in pairs:
        groups.link((int(a),), (int(b),))
    members: dict[int, set] = {}
    for node, kept in groups.survivors():
        members.setdefault(kept, {kept}).add(node)
    return {frozenset(m) for m in members.values()}


def brute_force(hashes: np.ndarray, threshold: int) -> list[tuple[int, int]]:
    values = [int(h) for h in hashes]
    return [(i, j) for i, j in itertools.combinations(range(len(values)), 2)
            if (values[i] ^ values[j]).bit_count() <= threshold]


@pytest.mark.parametrize("threshold", [0, 3, 4, 6])
def test_blocks_partition_the_bits_and_pairs_within_threshold_share_a_key(threshold):
    masks = block_masks(threshold)
    assert len(masks) == max(threshold + 1, 2) and sum(masks) == ALL and sum(m.bit_count() for m in masks) == 64
    rng = np.random.default_rng(threshold)
    a = random_hashes(rng, 2000)
    b = np.array([flip(int(v), threshold, rng) for v in a], dtype=np.uint64)  # exactly at the threshold
    keys_a, keys_b = block_keys(a, threshold), block_keys(b, threshold)
    assert (keys_a == keys_b).any(axis=1).all()


@pytest.mark.parametrize("count", [150, LEAF_SIZE * 6])  # one leaf; a bucket that has to be split
def test_near_pairs_match_brute_force(count):
    rng = np.random.default_rng(count)
    hashes = random_hashes(rng, count)
    for i in range(0, count // 2, 5):  # planted copies at 0..4 bits, and some exact repeats
        hashes[count - 1 - i] = flip(int(hashes[i]), i % 5, rng)
    stats = SearchStats()
    found = near_pairs(hashes, 4, stats=stats)
    assert components(count, found) == components(count, brute_force(hashes, 4))
    assert stats.compared < count * (count - 1) // 2 or count <= LEAF_SIZE


def test_identical_hashes_link_as_a_star_not_all_pairs():
    hashes = np.full(5000, 0x8000000000000000, dtype=np.uint64)  # 5,000 blank figures
    pairs = near_pairs(hashes, 4)
    assert len(pairs) == 4999 and set(pairs[:, 0].tolist()) == {0}


def test_a_hot_bucket_is_compared_in_bounded_chunks():
    """Thousands of distinct hashes all within a few bits of one another: splitting cannot shrink
    them, so the guard compares them in sorted chunks of HOT_CHUNK instead of all pairs."""
    rng = np.random.default_rng(7)
    base = int(random_hashes(rng, 1)[0])
    flips = rng.integers(0, 64, (3000, 3))
    dense = np.unique(np.array([base ^ (1 << a) ^ (1 << b) ^ (1 << c) for a, b, c in flips.tolist()], dtype=np.uint64))
    stats = SearchStats()
    pairs = near_pairs(dense, 4, stats=stats)
    assert stats.hot_buckets >= 1
    assert stats.compared < len(dense) ** 2 // 2  # fewer than all pairs, though most pairs match
    assert len(components(len(dense), pairs)) == 1  # still one group


def test_hashes_of_different_kinds_never_share_a_bucket():
    hashes = np.array([0x0F0F_3C3C_A5A5_5A5A] * 2, dtype=np.uint64)
    keys = block_keys(hashes, 3, np.array([0, 1]))
    assert not set(keys[0]) & set(keys[1])
    assert (block_keys(hashes, 3, np.array([0, 0]))[0] == block_keys(hashes[:1], 3)[0]).all()


def test_each_pair_is_reported_by_one_bucket_only():
    rng = np.random.default_rng(11)
    hashes = random_hashes(rng, 400)
    hashes[200:] = [flip(int(h), 1, rng) for h in hashes[:200]]  # agree on all but one block
    owners = np.arange(len(hashes))
    keys = block_keys(hashes, 4)
    reported = []
    for key in np.unique(keys):
        rows = np.flatnonzero((keys == key).any(axis=1))
        reported += [tuple(p) for p in bucket_links(int(key), hashes[rows], owners[rows], 4).tolist()]
    assert sorted(reported) == sorted(set(reported)) and len(reported) >= 200


def test_hashes_of_one_record_never_link_it_to_itself():
    hashes = np.array([1, 1, 3], dtype=np.uint64)
    owners = np.array([0, 0, 0])
    assert bucket_links(int(block_keys(hashes, 4)[0, 0]), hashes, owners, 4).size == 0


def links_with_layouts(hashes, layouts, known=None) -> list[tuple[int, int]]:
    hashes = np.array(hashes, dtype=np.uint64)
    known = np.ones(len(hashes), bool) if known is None else np.array(known)
    check = Layouts(np.array(layouts, dtype=np.uint64), known)
    key = int(block_keys(hashes, 4)[0, 0])
    return [tuple(pair) for pair in bucket_links(key, hashes, np.arange(len(hashes)), 4, layouts=check).tolist()]


def test_layouts_veto_pairs_the_hashes_matched_unless_a_record_has_none():
    base, layout = 0x0F0F_3C3C_A5A5_5A5A, 0x1234_5678_9ABC_DEF0
    far = layout ^ (((1 << (LAYOUT_HAMMING + 1)) - 1) << 8)  # one bit past the limit
    hashes = [base, base ^ 0b11, base ^ 0b101]
    assert links_with_layouts(hashes, [layout, layout ^ 0b1, far]) == [(0, 1)]
    assert links_with_layouts(hashes, [layout, layout ^ 0b1, 0], known=[True, True, False]) == [(0, 1), (0, 2), (1, 2)]


def test_identical_hashes_with_other_layouts_are_each_compared():
    """Identical hashes are linked through their first occurrence only when their layouts are equal too."""
    value, layout = 0x0F0F_3C3C_A5A5_5A5A, 0x1234_5678_9ABC_DEF0
    far = layout ^ ((1 << 32) - 1)
    assert links_with_layouts([value, value, value], [far, layout, layout]) == [(1, 2)]


def test_record_layouts_go_with_its_hashes_or_are_absent():
    hashed = dataclasses.replace(record("r", 0x1234, companions=[0x5678]), phash_layouts=("00000000000000ff", "000000000000000f"))
    assert record_layouts(hashed) == (0xFF, 0x0F)
    windowed = dataclasses.replace(hashed, phashes_windowed=("0000000000009abc",),
                                   phash_layouts=(*hashed.phash_layouts, "0000000000000001"))
    assert record_layouts(windowed) == (0xFF, 0x0F, 0x01)
    assert record_layouts(dataclasses.replace(hashed, phash_layouts=("00000000000000ff",))) == ()


def rank(record_id: str, license: str = CC_BY, side: int = 100, caption: str = "") -> tuple:
    return survivor_rank(Record(id=record_id, caption=caption, original_width=side, original_height=side,
                                source=Source(license=license)))


def test_survivor_order_license_then_size_then_caption_then_id():
    ordered = [rank("z", CC_BY, 200), rank("y", CC_BY, 100, "long caption"), rank("x", CC_BY, 100, "short"),
               rank("a", CC_BY, 100, "short!"[:5]), rank("b", CC_BY_NC, 900, "the longest caption of all")]
    assert sorted(ordered[::-1]) == [ordered[0], ordered[1], ordered[3], ordered[2], ordered[4]]


def test_groups_name_the_best_member_whatever_the_link_order():
    a, b, c, d = rank("a", side=50), rank("b", side=300), rank("c", side=100), rank("d", side=10)
    links = [(a, c), (c, d), (d, b)]  # a chain: a and b are not linked directly
    expected = [("a", "b"), ("c", "b"), ("d", "b")]
    for order in itertools.permutations(links):
        groups = DuplicateGroups()
        for link in order:
            groups.link(*link)
        assert list(groups.survivors()) == expected
    first, second = DuplicateGroups(), DuplicateGroups()
    first.link(a, c)
    second.link(d, b)
    second.link(c, d)
    assert list(first.merge(second).survivors()) == expected


def test_exclusion_list_parsing_and_matching():
    lines = ["# evaluation images", "", "ffff000000000000  bench/img1.png", "0123456789abcdef  bench/img2.png"]
    index = ExcludedHashIndex(parse_hash_lines(lines), 4)
    assert len(index) == 2
    distance, entry = index.match([0x0123456789ABCDE0, 0xFFFF000000000007])
    assert (distance, entry.label) == (3, "bench/img1.png")
    assert index.match([0x7777777777777777]) is None
    with pytest.raises(ValueError, match="line 2"):
        parse_hash_lines(["ffff000000000000  a.png", "not-a-hash  b.png"])


def record(record_id: str, value: int, side: int = 100, license: str = CC_BY, companions=(), windowed=(),
           pmcid: str = "") -> Record:
    return Record(id=record_id, phash=to_hex(value), phashes=tuple(to_hex(c) for c in companions),
                  phashes_windowed=tuple(to_hex(w) for w in windowed),
                  original_width=side, original_height=side, source=Source(license=license, pmcid=pmcid))


def test_figures_of_one_article_never_link():
    links = np.array([[0, 1], [0, 2], [1, 3], [2, 3]])
    assert across_articles(links, ["PMC1", "PMC1", "PMC2", ""]).tolist() == [[0, 2], [1, 3], [2, 3]]
    assert across_articles(links[:0], []).shape == (0, 2)


def test_near_dedup_on_beam_marks_duplicates_of_the_final_survivor():
    base, other = 0x0F0F_3C3C_A5A5_5A5A, 0x1234_5678_9ABC_DEF0
    records = [
        record("small", base, side=100),
        record("large", base ^ 0b111, side=400),  # 3 bits from small: kept, it is larger
        record("noncommercial", base ^ 0b1, side=900, license=CC_BY_NC),  # largest, but ranked after
        record("crop", 0x7FFF_0000_0000_0000, companions=[other ^ 0b11]),  # a companion is near `other`
        record("other", other, side=200),
        record("alone", 0xFFFF_FFFF_0000_0000),
        Record(id="no-image"),
        # windowed hashes link their own kind only: texture-b is near texture-a by a windowed hash;
        # cross-kind's windowed hash equals other's plain pHash, which is no match
        record("texture-a", 0x00FF_00FF_00FF_00FF, side=300, windowed=[0x5555_AAAA_5555_AAAA]),
        record("texture-b", 0xFF00_FF00_FF00_FF00, windowed=[0x5555_AAAA_5555_AAAB]),
        record("cross-kind", 0x3333_3333_CCCC_CCCC, windowed=[other]),
        # two survival curves of one article hash alike, yet are two figures; a reprint elsewhere
        # links (it is 5 bits from fig3: a figure near both would still join them, docs/dedup.md)
        record("km-fig2", 0x0123_4567_89AB_CDEF, side=300, pmcid="PMC1"),
        record("km-fig3", 0x0123_4567_89AB_CDEF ^ 0b0011, pmcid="PMC1"),
        record("km-reprint", 0x0123_4567_89AB_CDEF ^ 0b11100, pmcid="PMC2"),
    ]
    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        result = pipeline | beam.Create(records) | NearDeduplicate(4)
        kept = result.records | "KeptIds" >> beam.Map(lambda r: r.id)
        rows = result.rows | "Rows" >> beam.Map(
            lambda row: (row.id, row.status, row.stage, row.reason, row.duplicate_of))
        near = (Status.DUPLICATE.value, Stage.DEDUP.value, Reason.NEAR_DUPLICATE.value)
        assert_that(kept, equal_to(["large", "other", "alone", "no-image", "texture-a", "cross-kind",
                                    "km-fig2", "km-fig3"]), label="kept")
        assert_that(rows, equal_to([("small", *near, "large"), ("noncommercial", *near, "large"),
                                    ("crop", *near, "other"), ("texture-b", *near, "texture-a"),
                                    ("km-reprint", *near, "km-fig2")]), label="rows")


def test_exclusion_rejects_records_near_a_listed_hash():
    index = ExcludedHashIndex(parse_hash_lines(["0f0f3c3ca5a55a5a  eval/x.png"]), 4)
    outcomes = list(ExcludeHashesFn(index).process(record("contaminated", 0x0F0F_3C3C_A5A5_5A5B)))
    row = outcomes[0].value
    assert (row.status, row.stage, row.reason) == (Status.REJECTED.value, Stage.DEDUP.value, Reason.EXCLUDED_HASH.value)
    assert row.detail == "1 bits from excluded 0f0f3c3ca5a55a5a eval/x.png"
    assert list(ExcludeHashesFn(index).process(record("clean", 0x1234))) == [record("clean", 0x1234)]
    windowed_only = record("windowed-only", 0x1234, windowed=[0x0F0F_3C3C_A5A5_5A5A])  # another hash space
    assert list(ExcludeHashesFn(index).process(windowed_only)) == [windowed_only]


def test_dedup_stage_excludes_then_repoints_exact_duplicates_to_the_final_survivor():
    from transforms.dedup import Deduplicate

    base = 0x0F0F_3C3C_A5A5_5A5A
    records = [
        dataclasses.replace(record("a", base), sha256="x"),
        dataclasses.replace(record("a-copy", base), sha256="x"),  # exact copy of a
        dataclasses.replace(record("b", base ^ 0b11, side=400), sha256="y"),  # near a, larger: kept
        dataclasses.replace(record("benchmark", 0x1234_5678_9ABC_DEF0), sha256="z"),
    ]
    excluded = tuple(parse_hash_lines(["123456789abcdef1  eval/img.png"]))
    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        result = pipeline | beam.Create(records) | Deduplicate(4, excluded)
        kept = result.records | "KeptIds" >> beam.Map(lambda r: r.id)
        rows = result.rows | "Rows" >> beam.Map(lambda row: (row.id, row.reason, row.duplicate_of, row.detail))
        assert_that(kept, equal_to(["b"]), label="kept")
        assert_that(rows, equal_to([
            ("a", Reason.NEAR_DUPLICATE.value, "b", ""),
            ("a-copy", Reason.NEAR_DUPLICATE.value, "b", "byte-identical to a"),
            ("benchmark", Reason.EXCLUDED_HASH.value, "", "1 bits from excluded 123456789abcdef1 eval/img.png"),
        ]), label="rows")


def test_demo_release_drops_the_resized_copy_as_a_near_duplicate(built_release):
    import pyarrow.parquet as pq

    parts = sorted((built_release / "index").glob("part-*.parquet"))
    rows = [row for part in parts for row in pq.read_table(part).to_pylist()]
    near = {row["id"]: row["duplicate_of"] for row in rows if row["reason"] == Reason.NEAR_DUPLICATE.value}
    assert near == {"pairs_L4": "pairs_L3"}  # mri_brain_followup.jpg: half size, JPEG q75
    assert all(len(row["phash"]) == 16 for row in rows if row["status"] == Status.KEPT.value)


def test_near_dedup_on_beam_keeps_apart_records_whose_layouts_disagree():
    base, layout = 0x0F0F_3C3C_A5A5_5A5A, 0x1234_5678_9ABC_DEF0
    records = [
        dataclasses.replace(record("a", base), phash_layouts=(to_hex(layout),)),
        dataclasses.replace(record("b", base ^ 0b11, side=400), phash_layouts=(to_hex(layout ^ 0xFFFF_FFFF),)),
        dataclasses.replace(record("c", base ^ 0b1), phash_layouts=(to_hex(layout ^ 0b1),)),
    ]
    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        result = pipeline | beam.Create(records) | NearDeduplicate(4)
        kept = result.records | "KeptIds" >> beam.Map(lambda r: r.id)
        rows = result.rows | "Rows" >> beam.Map(lambda row: (row.id, row.duplicate_of))
        assert_that(kept, equal_to(["a", "b"]), label="kept")
        assert_that(rows, equal_to([("c", "a")]), label="rows")
