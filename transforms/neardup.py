"""Near-duplicate search over 64-bit perceptual hashes, without all-pairs comparison (pure, no Beam).

Pigeonhole: cut the 64 bits into `threshold + 1` blocks; two hashes within `threshold` bits differ
in at most `threshold` blocks, so they agree exactly on at least one, and so on that block's leading
`KEY_BITS` bits. (block index, those bits) is a *block key*; hashes are grouped by block key (a
GroupByKey in Beam) and only hashes in one bucket are compared. KEY_BITS sets how many buckets there
are: enough for every worker, few enough that a bucket amortizes its fixed cost. A bucket too large
to compare all-pairs is split again the same way on its remaining free bits (same guarantee, one
level down), so the work stays near-linear; a part that does not shrink (thousands of distinct,
mutually close hashes: near-blank figures) is compared only within sorted chunks of HOT_CHUNK and
counted, so one key cannot stall a worker (pairs across chunks of such a cluster may be missed).

A pair within the threshold is then verified by the two regions' layout hashes (transforms/phash.py):
it links only when they are within LAYOUT_HAMMING too, and never when both records come from one
article. A pair shared by several blocks is reported
only by the first block the two hashes agree on, so each pair is found once however many buckets
hold it. Pairs become a graph whose connected components are the duplicate groups; each group keeps
its best record by `survivor_rank`, and every other member names that record, whatever path linked
it.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from schemas import Record
from transforms.licenses import COMMERCIAL_USE
from transforms.phash import HASH_BITS, from_hex, hamming, to_hex

DEFAULT_HAMMING = 3  # set by benchmarks/eval_dedup.py; see docs/dedup.md
LAYOUT_HAMMING = 8  # the layout check on a matched pair: see docs/dedup.md (benchmarks/eval_dedup.py)
MAX_HAMMING = 12  # 13 blocks of ~5 bits: wider searches leave each bucket a large share of all hashes
KEY_BITS = 10  # leading bits of a block in its key: (threshold + 1) * 1024 buckets at most
LEAF_SIZE = 256  # compare all pairs at or below this many distinct hashes
SPLIT_DEPTH = 2  # levels of re-splitting a large bucket before comparing it in chunks
HOT_CHUNK = 512  # a part that splitting does not shrink is compared only within chunks this long

_ALL_BITS = (1 << HASH_BITS) - 1


def survivor_rank(record: Record) -> tuple:
    """The order every dedup step keeps by (smallest first): commercial-use license, larger image,
    richer (longer) caption, then the smaller id, so the choice is deterministic."""
    return (
        record.source.license not in COMMERCIAL_USE,
        -(record.original_width * record.original_height),
        -len(record.caption),
        record.id,
    )


def rank_id(rank: tuple) -> str:
    return rank[-1]


@functools.lru_cache(maxsize=None)
def block_masks(threshold: int, free_mask: int = _ALL_BITS) -> tuple[int, ...]:
    """`threshold + 1` (at least 2) masks of contiguous runs of the free bits, most significant first."""
    bits = [b for b in range(HASH_BITS - 1, -1, -1) if free_mask >> b & 1]
    count = max(threshold + 1, 2)
    sizes = [len(bits) // count + (i < len(bits) % count) for i in range(count)]
    starts = np.cumsum([0, *sizes])
    return tuple(sum(1 << b for b in bits[start:end]) for start, end in zip(starts[:-1], starts[1:]))


@functools.lru_cache(maxsize=None)
def key_masks(threshold: int) -> tuple[int, ...]:
    """Per block, the mask of its leading KEY_BITS bits: the bits a block key fixes."""
    masks = []
    for mask in block_masks(threshold):
        top = mask.bit_length()
        width = min(KEY_BITS, mask.bit_count())
        masks.append(((1 << width) - 1) << (top - width))
    return tuple(masks)


_KIND_SHIFT = 40


def block_keys(hashes: np.ndarray, threshold: int, kinds: np.ndarray | None = None) -> np.ndarray:
    """(n, blocks) block keys: the hash kind (transforms/phash.py) above bit 40, the block index in
    bits 32-39, the block's key bits below; hashes of different kinds never share a bucket."""
    kind_bits = 0 if kinds is None else np.asarray(kinds, dtype=np.int64) << _KIND_SHIFT
    keys = []
    for index, mask in enumerate(key_masks(threshold)):
        shift = (mask & -mask).bit_length() - 1
        values = (hashes & np.uint64(mask)) >> np.uint64(shift)
        keys.append(values.astype(np.int64) | (index << 32) | kind_bits)
    return np.stack(keys, axis=1)


def key_block(key: int) -> int:
    return (key >> 32) & ((1 << (_KIND_SHIFT - 32)) - 1)


def first_shared_block(a: np.ndarray, b: np.ndarray, threshold: int) -> np.ndarray:
    """Index of the first block on which a[i] and b[i] agree (blocks when none)."""
    masks = block_masks(threshold)
    first = np.full(a.shape, len(masks), dtype=np.int64)
    for index in range(len(masks) - 1, -1, -1):
        mask = np.uint64(masks[index])
        first = np.where((a & mask) == (b & mask), index, first)
    return first


@dataclasses.dataclass
class SearchStats:
    compared: int = 0  # hash pairs whose distance was computed
    hot_buckets: int = 0  # buckets compared in chunks only (pairs across chunks not searched)
    layout_rejected: int = 0  # hash pairs within the threshold whose layouts disagree


_NO_PAIRS = np.empty((0, 2), dtype=np.int64)


def _close(values: np.ndarray, i: np.ndarray, j: np.ndarray, threshold: int, stats: SearchStats) -> np.ndarray:
    stats.compared += len(i)
    keep = np.bitwise_count(values[i] ^ values[j]) <= threshold
    return np.stack([i[keep], j[keep]], axis=1)


def _pairs_all(values: np.ndarray, threshold: int, stats: SearchStats) -> np.ndarray:
    i, j = np.triu_indices(len(values), 1)
    return _close(values, i, j, threshold, stats)


def _pairs_chunked(values: np.ndarray, threshold: int, stats: SearchStats) -> np.ndarray:
    """The hot-bucket guard: neighbours in sorted order, HOT_CHUNK at a time, nothing across chunks."""
    stats.hot_buckets += 1
    order = np.argsort(values, kind="stable")
    chunks = np.array_split(order, -(-len(order) // HOT_CHUNK))
    return np.concatenate([chunk[_pairs_all(values[chunk], threshold, stats)] for chunk in chunks])


def _pairs_within_runs(
    values: np.ndarray, order: np.ndarray, run_of: np.ndarray, threshold: int, stats: SearchStats
) -> np.ndarray:
    """Pairs inside runs of equal sub-block value, all runs at once: offset d pairs the d-th next
    element of the sorted order when it is still in the same run."""
    found = []
    for offset in range(1, len(order)):
        same = run_of[:-offset] == run_of[offset:]
        if not same.any():
            break
        found.append(_close(values, order[:-offset][same], order[offset:][same], threshold, stats))
    return np.concatenate(found) if found else _NO_PAIRS


def _unique_pairs(pairs: np.ndarray) -> np.ndarray:
    """Distinct pairs, each as (smaller, larger), in sorted order."""
    pairs = np.sort(pairs, axis=1).astype(np.int64)
    width = int(pairs.max(initial=0)) + 1
    codes = np.sort(pairs[:, 0] * width + pairs[:, 1])
    codes = codes[np.r_[True, codes[1:] != codes[:-1]]] if len(codes) else codes
    return np.stack([codes // width, codes % width], axis=1)


def _distinct_pairs(values: np.ndarray, threshold: int, free_mask: int, depth: int, stats: SearchStats) -> np.ndarray:
    """Index pairs of `values` within `threshold` on the free bits (the others are equal); values are
    distinct, or repeated only with different layouts.

    Split on `threshold + 1` sub-blocks of the free bits: small runs of equal sub-block are compared
    at once, larger ones split again; a run holding most of the group (a dense cluster, which no
    split shrinks) or one past SPLIT_DEPTH is compared in chunks, so work stays linear in the group.
    """
    if len(values) <= LEAF_SIZE:
        return _pairs_all(values, threshold, stats)
    if depth >= SPLIT_DEPTH or free_mask.bit_count() <= threshold + 1:
        return _pairs_chunked(values, threshold, stats)
    found = []
    for mask in block_masks(threshold, free_mask):
        parts = values & np.uint64(mask)
        order = np.argsort(parts, kind="stable")
        starts = np.flatnonzero(np.r_[True, parts[order][1:] != parts[order][:-1]])
        lengths = np.diff(np.r_[starts, len(order)])
        small = np.repeat(lengths <= LEAF_SIZE, lengths)
        run_of = np.repeat(np.arange(len(starts)), lengths)
        found.append(_pairs_within_runs(values, order[small], run_of[small], threshold, stats))
        for start, length in zip(starts[lengths > LEAF_SIZE], lengths[lengths > LEAF_SIZE]):
            group = order[start:start + length]
            if 4 * length >= len(values):
                found.append(group[_pairs_chunked(values[group], threshold, stats)])
            else:
                found.append(group[_distinct_pairs(values[group], threshold, free_mask & ~mask, depth + 1, stats)])
    return _unique_pairs(np.concatenate(found))  # a pair agreeing on several sub-blocks is found again


def _first_occurrences(hashes: np.ndarray, layouts: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """np.unique's (index, inverse) over (hash, layout) pairs: the first index of each distinct pair
    and, per element, the number of its pair (a lexsort: unique with axis=0 is several times slower)."""
    order = np.lexsort((hashes,) if layouts is None else (layouts, hashes))
    keys = [hashes[order]] if layouts is None else [hashes[order], layouts[order]]
    new = np.r_[True, np.any([key[1:] != key[:-1] for key in keys], axis=0)] if len(order) else np.empty(0, bool)
    starts = np.flatnonzero(new)
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[order] = np.cumsum(new) - 1
    return order[starts], inverse


def near_pairs(
    hashes: np.ndarray,
    threshold: int,
    free_mask: int = _ALL_BITS,
    stats: SearchStats | None = None,
    layouts: np.ndarray | None = None,
) -> np.ndarray:
    """(k, 2) index pairs (i < j) of `hashes` (uint64) within `threshold` bits of each other; bits
    outside `free_mask` are known to be equal (the bucket's own block).

    Identical hashes are linked to their first occurrence (a star, not all pairs), so a bucket of
    identical blank-figure hashes costs linear time. Given `layouts` (one per hash), hashes are
    identical only when their layouts are too, so that every layout of a hash gets compared.
    """
    stats = stats if stats is not None else SearchStats()
    first, inverse = _first_occurrences(hashes, layouts)
    repeated = np.flatnonzero(first[inverse] != np.arange(len(hashes)))
    identical = np.stack([first[inverse[repeated]], repeated], axis=1)
    close = np.sort(first[_distinct_pairs(hashes[first], threshold, free_mask, 0, stats)], axis=1)
    return np.concatenate([identical, close]).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class Layouts:
    """The layout hash that goes with each hash of a bucket; `known[i]` is False for a record hashed
    without layouts, whose pairs are then linked on the pHash alone."""

    values: np.ndarray  # uint64
    known: np.ndarray  # bool
    limit: int = LAYOUT_HAMMING

    def agree(self, pairs: np.ndarray) -> np.ndarray:
        i, j = pairs[:, 0], pairs[:, 1]
        close = np.bitwise_count(self.values[i] ^ self.values[j]) <= self.limit
        return close | ~(self.known[i] & self.known[j])


def bucket_links(
    key: int,
    hashes: np.ndarray,
    owners: np.ndarray,
    threshold: int,
    stats: SearchStats | None = None,
    layouts: Layouts | None = None,
) -> np.ndarray:
    """Owner pairs (a < b) linked within one bucket of block key `key`.

    `owners[i]` numbers the record that hash i belongs to (a record has several hashes). A pair is
    kept only when this bucket's block is the first block its two hashes share, so no pair is
    reported by two buckets, and, given `layouts`, when the layouts of its two hashes agree.
    """
    if len(hashes) < 2:
        return _NO_PAIRS
    stats = stats if stats is not None else SearchStats()
    block = key_block(key)
    free_mask = _ALL_BITS & ~key_masks(threshold)[block]
    pairs = near_pairs(hashes, threshold, free_mask, stats, None if layouts is None else layouts.values)
    pairs = pairs[first_shared_block(hashes[pairs[:, 0]], hashes[pairs[:, 1]], threshold) == block]
    if layouts is not None:
        agree = layouts.agree(pairs)
        stats.layout_rejected += int((~agree).sum())
        pairs = pairs[agree]
    linked = owners[pairs]
    return _unique_pairs(linked[linked[:, 0] != linked[:, 1]])


def across_articles(links: np.ndarray, articles: Sequence[str] | Mapping[int, str]) -> np.ndarray:
    """The owner pairs of `links` that do not come from one article (`articles[owner]`; "" is
    unknown and never vetoes). An article does not reprint its own figures, and same-style charts
    of one paper (survival curves, blots) are the commonest pair that hashes cannot tell apart."""
    same = np.array([bool(articles[a]) and articles[a] == articles[b] for a, b in links.tolist()], dtype=bool)
    return links[~same] if len(links) else links


class DuplicateGroups:
    """Union-find over records, rooted at each group's best record (smallest `survivor_rank`).

    Mergeable, so Beam can build partial groups per bundle and combine them.
    """

    def __init__(self) -> None:
        self._parent: dict[str, str] = {}
        self._rank: dict[str, tuple] = {}

    def __len__(self) -> int:
        return len(self._parent)

    def _root(self, node: str) -> str:
        root = node
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[node] != root:  # path compression
            self._parent[node], node = root, self._parent[node]
        return root

    def _node(self, rank: tuple) -> str:
        node = rank_id(rank)
        if node not in self._parent:
            self._parent[node] = node
            self._rank[node] = rank
        return node

    def link(self, a: tuple, b: tuple) -> None:
        """Record ranks `a` and `b` are duplicates."""
        root_a, root_b = self._root(self._node(a)), self._root(self._node(b))
        if root_a == root_b:
            return
        if self._rank[root_b] < self._rank[root_a]:
            root_a, root_b = root_b, root_a
        self._parent[root_b] = root_a

    def merge(self, other: "DuplicateGroups") -> "DuplicateGroups":
        for node, rank in other._rank.items():
            self.link(rank, other._rank[other._root(node)])
        return self

    def survivors(self) -> Iterator[tuple[str, str]]:
        """(id, id of the record kept instead) for every record that is not its group's survivor."""
        for node in sorted(self._parent):
            kept = self._root(node)
            if kept != node:
                yield node, kept


@dataclasses.dataclass(frozen=True)
class ExcludedHash:
    value: int
    label: str  # the path the hash file names


def parse_hash_lines(lines: Iterable[str]) -> list[ExcludedHash]:
    """`<16-hex pHash>  <path>` lines (the `hash` command's output); blank and # lines skipped.

    Raises ValueError naming the first bad line: the file is an input checked before the run.
    """
    parsed = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        head, _, label = text.partition(" ")
        try:
            parsed.append(ExcludedHash(from_hex(head), label.strip()))
        except ValueError:
            raise ValueError(f"line {number}: not '<16-hex pHash>  <path>': {text[:80]!r}") from None
    return parsed


def exclusion_digest(excluded: Sequence[ExcludedHash]) -> str:
    """sha256 of the sorted distinct hashes ("" for none): names the list in the manifest, not its path."""
    if not excluded:
        return ""
    hexes = sorted({to_hex(entry.value) for entry in excluded})
    return hashlib.sha256("\n".join(hexes).encode("ascii")).hexdigest()


class ExcludedHashIndex:
    """An in-memory block-key index of an exclusion list (evaluation images), probed per record."""

    def __init__(self, excluded: Sequence[ExcludedHash], threshold: int) -> None:
        self.threshold = threshold
        self._masks = block_masks(threshold)
        self._buckets: dict[tuple[int, int], list[ExcludedHash]] = {}
        for entry in excluded:
            for index, mask in enumerate(self._masks):
                self._buckets.setdefault((index, entry.value & mask), []).append(entry)

    def __len__(self) -> int:
        return len({entry for bucket in self._buckets.values() for entry in bucket})

    def match(self, hashes: Iterable[int]) -> tuple[int, ExcludedHash] | None:
        """The closest excluded hash within the threshold of any of `hashes` (ties: smallest value)."""
        best = None
        for value in hashes:
            for index, mask in enumerate(self._masks):
                for entry in self._buckets.get((index, value & mask), ()):
                    distance = hamming(value, entry.value)
                    if distance <= self.threshold and (best is None or (distance, entry.value) < best[:2]):
                        best = (distance, entry.value, entry)
        return None if best is None else (best[0], best[2])
