"""Near-duplicate dedup on Beam: block keys -> GroupByKey -> links in each bucket -> duplicate groups.

Scale (tens of millions of figures): no step holds every hash. Records are batched, each batch cuts
its hashes into block keys and sends one packed part per key (so the shuffle carries a few thousand
elements per batch, not one per hash); a GroupByKey gathers each key's bucket on one worker, where
`bucket_links` compares only within the bucket, bounded by its split-and-chunk guard. Only the links
found (records with a near duplicate) go through the one global step, a union-find combined from
per-bundle partial groups; its survivor map joins back to the records by id.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator

import apache_beam as beam
import numpy as np

from schemas import IndexRow, Reason, Record, Stage, Status
from transforms.base import RECORDS, ROWS, RecordFn, counter, split_outputs
from transforms.neardup import (
    DuplicateGroups,
    ExcludedHashIndex,
    Layouts,
    SearchStats,
    across_articles,
    block_keys,
    bucket_links,
    rank_id,
    survivor_rank,
)
from transforms.inkcheck import same_line_art
from transforms.phash import PLAIN, WINDOWED, from_hex, to_hex

BATCH = 50_000  # records cut into block keys together: fewer, fuller parts per key; bounds batch memory


@dataclasses.dataclass(frozen=True)
class HashedItem:
    rank: tuple  # survivor_rank of the record; its last element is the id
    hashes: tuple[int, ...]
    kinds: tuple[int, ...]  # the kind of each hash (transforms/phash.py PLAIN / WINDOWED)
    layouts: tuple[int, ...]  # one per hash, or empty for a record hashed without layouts
    article: str  # the record's PMCID, "" when unknown: figures of one article never link


@dataclasses.dataclass(frozen=True)
class BucketPart:
    """The hashes one batch sends to one block key, with their layouts and the rank of the record
    each belongs to."""

    values: np.ndarray  # uint64
    layouts: np.ndarray  # uint64, one per value
    known: np.ndarray  # bool: the value's record has layouts
    ranks: tuple  # one per value
    articles: tuple  # one per value


def record_hashes(record: Record) -> tuple[int, ...]:
    """A record's plain hashes, imagehash's kind: the pHash, then its companions (empty without an
    image). The exclusion list, made of imagehash pHashes, is compared with these only."""
    return tuple(from_hex(h) for h in (record.phash, *record.phashes) if h)


def record_windowed_hashes(record: Record) -> tuple[int, ...]:
    return tuple(from_hex(h) for h in record.phashes_windowed)


def record_layouts(record: Record) -> tuple[int, ...]:
    """The layout hash of each plain then windowed hash, or () when the record has none for them."""
    layouts = tuple(from_hex(h) for h in record.phash_layouts)
    expected = len(record_hashes(record)) + len(record.phashes_windowed)
    return layouts if len(layouts) == expected else ()


def hashed_item(record: Record) -> HashedItem:
    plain, windowed = record_hashes(record), record_windowed_hashes(record)
    kinds = (PLAIN,) * len(plain) + (WINDOWED,) * len(windowed)
    return HashedItem(survivor_rank(record), plain + windowed, kinds, record_layouts(record), record.source.pmcid)


def bucket_parts(items: list[HashedItem], threshold: int) -> Iterator[tuple[int, BucketPart]]:
    """(block key, part) for each block key the batch's hashes fall in."""
    values = np.array([h for item in items for h in item.hashes], dtype=np.uint64)
    layouts = np.array([layout for item in items for layout in item.layouts or [0] * len(item.hashes)],
                       dtype=np.uint64)
    known = np.array([bool(item.layouts) for item in items for _ in item.hashes], dtype=bool)
    kinds = np.array([kind for item in items for kind in item.kinds], dtype=np.int64)
    ranks = [item.rank for item in items for _ in item.hashes]
    articles = [item.article for item in items for _ in item.hashes]
    if not len(values):
        return
    for column in block_keys(values, threshold, kinds).T:
        order = np.argsort(column, kind="stable")
        starts = np.flatnonzero(np.r_[True, column[order][1:] != column[order][:-1]])
        for run in np.split(order, starts[1:]):
            part = BucketPart(values[run], layouts[run], known[run], tuple(ranks[i] for i in run),
                              tuple(articles[i] for i in run))
            yield int(column[run[0]]), part


class LinkBucketFn(beam.DoFn):
    """One block key's bucket -> (rank, rank) links between records within the threshold."""

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.threshold = threshold
        self.compared = counter("dedup.near.pairs_compared")
        self.hot = counter("dedup.near.hot_buckets")
        self.layout_rejected = counter("dedup.near.layout_rejected")
        self.same_article = counter("dedup.near.same_article")
        self.links = counter("dedup.near.links")

    def process(self, element) -> Iterator[tuple[tuple, tuple]]:
        key, parts = element
        parts = list(parts)
        ranks = [rank for part in parts for rank in part.ranks]
        owner_of: dict[str, int] = {}
        owners = np.array([owner_of.setdefault(rank_id(rank), len(owner_of)) for rank in ranks], dtype=np.int64)
        article_of = dict(zip(owners.tolist(), (article for part in parts for article in part.articles)))
        stats = SearchStats()
        values = np.concatenate([part.values for part in parts])
        layouts = Layouts(np.concatenate([part.layouts for part in parts]),
                          np.concatenate([part.known for part in parts]))
        candidates = bucket_links(key, values, owners, self.threshold, stats, layouts)
        links = across_articles(candidates, article_of)
        self.same_article.inc(len(candidates) - len(links))
        self.compared.inc(stats.compared)
        self.hot.inc(stats.hot_buckets)
        self.layout_rejected.inc(stats.layout_rejected)
        self.links.inc(len(links))
        first_rank = {owner: rank for rank, owner in zip(ranks, owners.tolist())}
        for a, b in links.tolist():
            yield first_rank[a], first_rank[b]


def _with_first_map(element) -> Iterator[tuple[str, tuple]]:
    _, joined = element
    maps = list(joined["map"])
    for link in joined["link"]:
        yield rank_id(link[1]), (link, maps[0] if maps else b"")


class CheckLineArtFn(beam.DoFn):
    """(second id, [(link, first map)], [second map]) -> the links whose line art is one picture."""

    def __init__(self) -> None:
        super().__init__()
        self.rejected = counter("dedup.near.ink_rejected")

    def process(self, element) -> Iterator[tuple[tuple, tuple]]:
        _, joined = element
        maps = list(joined["map"])
        for link, first_map in joined["link"]:
            if same_line_art(first_map, maps[0] if maps else b""):
                yield link
            else:
                self.rejected.inc()


class VerifyLineArt(beam.PTransform):
    """Links -> those not between two line-art records, or whose ink maps show one picture
    (transforms/inkcheck.py). Only the links and the line-art records' maps are shuffled."""

    def __init__(self, maps: beam.PCollection) -> None:
        super().__init__()
        self.maps = maps

    def expand(self, links):
        with_first = (
            {"link": links | "ByFirst" >> beam.Map(lambda link: (rank_id(link[0]), link)), "map": self.maps}
            | "JoinFirst" >> beam.CoGroupByKey()
            | "WithFirstMap" >> beam.FlatMap(_with_first_map)
        )
        return (
            {"link": with_first, "map": self.maps}
            | "JoinSecond" >> beam.CoGroupByKey()
            | "Check" >> beam.ParDo(CheckLineArtFn())
        )


class DuplicateGroupsFn(beam.CombineFn):
    """Links -> DuplicateGroups, merged from per-bundle partial groups (combiner lifting)."""

    def create_accumulator(self) -> DuplicateGroups:
        return DuplicateGroups()

    def add_input(self, groups: DuplicateGroups, link: tuple[tuple, tuple]) -> DuplicateGroups:
        groups.link(*link)
        return groups

    def merge_accumulators(self, accumulators: Iterable[DuplicateGroups]) -> DuplicateGroups:
        merged, *rest = accumulators
        for groups in rest:
            merged.merge(groups)
        return merged

    def extract_output(self, groups: DuplicateGroups) -> DuplicateGroups:
        return groups


class NearDuplicateSurvivors(beam.PTransform):
    """Light records -> (id, id of the record kept instead) for every near duplicate."""

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.threshold = threshold

    def expand(self, records):
        ink_maps = (
            records
            | "LineArt" >> beam.Filter(lambda record: bool(record.ink_map))
            | "InkMaps" >> beam.Map(lambda record: (record.id, record.ink_map))
        )
        return (
            records
            | "Hashes" >> beam.Map(hashed_item)
            | "Batch" >> beam.BatchElements(min_batch_size=BATCH, max_batch_size=BATCH)
            | "BlockKeys" >> beam.FlatMap(bucket_parts, self.threshold)
            | "GroupBuckets" >> beam.GroupByKey()
            | "LinkBuckets" >> beam.ParDo(LinkBucketFn(self.threshold))
            | "DistinctLinks" >> beam.Distinct()
            | "VerifyLineArt" >> VerifyLineArt(ink_maps)
            | "Groups" >> beam.CombineGlobally(DuplicateGroupsFn())
            | "Survivors" >> beam.FlatMap(DuplicateGroups.survivors)
        )


def _mark_duplicates(element) -> Iterator:
    _, joined = element
    kept = list(joined["kept"])
    for record in joined["record"]:
        if kept:
            yield beam.pvalue.TaggedOutput(
                ROWS, IndexRow.of(record, Status.DUPLICATE, Stage.DEDUP, Reason.NEAR_DUPLICATE, duplicate_of=kept[0]))
        else:
            yield dataclasses.replace(record, ink_map=b"")  # needed no further: later shuffles stay light


@dataclasses.dataclass
class NearDedupResult:
    records: beam.PCollection  # Record: kept
    rows: beam.PCollection  # IndexRow: near duplicates
    survivors: beam.PCollection  # (id, kept id) for each near duplicate


class NearDeduplicate(beam.PTransform):
    """Light records (exact duplicates already removed) -> kept records, near_duplicate rows."""

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.threshold = threshold

    def expand(self, records) -> NearDedupResult:
        survivors = records | "Survivors" >> NearDuplicateSurvivors(self.threshold)
        tagged = (
            {"record": records | "ById" >> beam.Map(lambda record: (record.id, record)), "kept": survivors}
            | "Join" >> beam.CoGroupByKey()
            | "Mark" >> beam.FlatMap(_mark_duplicates).with_outputs(ROWS, main=RECORDS)
        )
        split = split_outputs(tagged)
        return NearDedupResult(records=split.records, rows=split.rows, survivors=survivors)


def _repoint(element) -> Iterator[IndexRow]:
    _, joined = element
    kept = list(joined["kept"])
    for row in joined["row"]:
        if kept:  # the record this row named was itself dropped later: name the one finally kept
            yield dataclasses.replace(row, duplicate_of=kept[0], reason=Reason.NEAR_DUPLICATE.value,
                                      detail=f"byte-identical to {row.duplicate_of}")
        else:
            yield row


class RepointDuplicates(beam.PTransform):
    """Exact-duplicate rows -> the same rows, naming the final survivor when near dedup dropped theirs."""

    def __init__(self, survivors: beam.PCollection) -> None:
        super().__init__()
        self.survivors = survivors

    def expand(self, rows):
        return (
            {"row": rows | "ByDuplicateOf" >> beam.Map(lambda row: (row.duplicate_of, row)), "kept": self.survivors}
            | "Join" >> beam.CoGroupByKey()
            | "Repoint" >> beam.FlatMap(_repoint)
        )


class ExcludeHashesFn(RecordFn):
    """Rejects records whose image is within the threshold of a hash on the exclusion list."""

    stage_name = "dedup"

    def __init__(self, excluded: ExcludedHashIndex) -> None:
        super().__init__()
        self.excluded = excluded

    def handle(self, record: Record):
        match = self.excluded.match(record_hashes(record))
        if match is None:
            yield record
            return
        distance, entry = match
        yield IndexRow.rejected(record, Stage.DEDUP, Reason.EXCLUDED_HASH,
                                f"{distance} bits from excluded {to_hex(entry.value)} {entry.label}".strip()[:200])
