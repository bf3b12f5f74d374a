"""WebDataset shards -> batches of pixels, token ids and labels, and a count of every sample's fate.

Stages, per epoch: shard list -> deterministic shard shuffle (same order on every rank) -> split by
node -> split by worker -> tar members grouped into samples -> seeded sample shuffle -> skip what a
resumed run already consumed -> decode + preprocess + tokenize -> batches of `micro_batch` usable
samples. Samples that give no training signal never reach a batch, but every batch carries the
count of what its worker read since its previous batch (by `Verdict`), so the trainer knows about
every sample it did not train on; a worker whose samples are all unusable still reports them
every `micro_batch * COUNT_ONLY_EVERY` samples, so a broken template shows up in minutes.
"""
from __future__ import annotations

import collections
import dataclasses
import enum
import glob
import json
import os
import random
import tarfile
from pathlib import Path

from chimed_pipeline.train.formatting import (
    IGNORE_INDEX,
    MASKED_VERDICTS,
    Encoded,
    TextEncoder,
    TextFormat,
    Verdict,
    normalize_turns,
)
from chimed_pipeline.train.images import ImageGeometry, load_square
from schemas.records import GPT, HUMAN, IMAGE_TOKEN, SAMPLE_FIELD_NAMES, turn
from schemas.release import M_SHARDS, MANIFEST, SHARDS_DIR, ShardInfo

# Forked workers each run the tokenizer single-threaded; its own thread pool would oversubscribe.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

IMAGE_EXTENSIONS = ("jpg", "png")
CAPTION_EXTENSION = "txt"
RECORD_EXTENSION = "json"
COUNT_ONLY_EVERY = 16  # batches' worth of unusable samples after which a worker reports anyway
_URL_SCHEME = "://"


class TurnSource(str, enum.Enum):
    """Where a stage's turns come from: the caption member or a list field of the sample JSON."""

    CAPTION = CAPTION_EXTENSION
    ALIGNMENT = "alignment"
    CONVERSATIONS = "conversations"


assert {TurnSource.ALIGNMENT.value, TurnSource.CONVERSATIONS.value} <= set(SAMPLE_FIELD_NAMES)


def stage_text(stage: int, stage1_format: str) -> tuple[TurnSource, TextFormat]:
    """Stage 1: LLaVA's plain caption format, or the alignment turns as a chat; stage 2: the QA chat."""
    if stage == 2:
        return TurnSource.CONVERSATIONS, TextFormat.CHAT
    if TextFormat(stage1_format) is TextFormat.PLAIN:
        return TurnSource.CAPTION, TextFormat.PLAIN
    return TurnSource.ALIGNMENT, TextFormat.CHAT


# ---------------------------------------------------------------------------------------------
# Shard lists


def resolve_shards(specs: list[str]) -> list[str]:
    """`--data` values -> shard URLs: a directory (or a release root holding `shards/`), a glob,
    a brace pattern (`shards/chimed-vl-{000000..000009}.tar`), a URL, or several of these."""
    import braceexpand

    urls = []
    for spec in specs:
        for item in spec.split("::"):  # WebDataset's separator for URL lists
            for expanded in braceexpand.braceexpand(item):
                urls.extend(_resolve_one(expanded))
    if not urls:
        raise ValueError(f"no shards found in {' '.join(specs)}")
    return urls


def _resolve_one(item: str) -> list[str]:
    if _URL_SCHEME in item or item.startswith("pipe:"):
        return [item]
    path = Path(item)
    if path.is_dir():
        if (path / SHARDS_DIR).is_dir():
            path = path / SHARDS_DIR
        return sorted(str(p) for p in path.glob("*.tar"))
    if glob.has_magic(item):
        return sorted(glob.glob(item))
    if not path.is_file():
        raise ValueError(f"no such shard or directory: {item}")
    return [item]


def count_samples(urls: list[str]) -> int | None:
    """Samples in the shards, from the release manifest when one is beside them, else by reading
    the local tars' headers; None for remote shards without a manifest."""
    if any(_URL_SCHEME in url or url.startswith("pipe:") for url in urls):
        return None
    by_manifest = _manifest_counts(Path(urls[0]).resolve().parent.parent)
    total = 0
    for url in urls:
        path = Path(url).resolve()
        if path in by_manifest:
            total += by_manifest[path]
        else:
            with tarfile.open(path) as tar:
                total += sum(1 for m in tar if m.name.endswith(f".{RECORD_EXTENSION}"))
    return total


def _manifest_counts(root: Path) -> dict:
    manifest = root / MANIFEST
    if not manifest.is_file():
        return {}
    shards = [ShardInfo(**entry) for entry in json.loads(manifest.read_text())[M_SHARDS]]
    return {(root / shard.name).resolve(): shard.samples for shard in shards}


# ---------------------------------------------------------------------------------------------
# Counting


@dataclasses.dataclass
class SampleCounts:
    """How many samples met each `Verdict`; adds up across batches, workers and ranks."""

    by_verdict: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def add(self, verdict: Verdict, n: int = 1) -> None:
        self.by_verdict[Verdict(verdict).value] += n

    def merge(self, other: "SampleCounts") -> None:
        self.by_verdict.update(other.by_verdict)

    @property
    def read(self) -> int:
        return sum(self.by_verdict.values())

    @property
    def used(self) -> int:
        return self.by_verdict[Verdict.USED.value]

    @property
    def skipped_no_turns(self) -> int:
        return self.by_verdict[Verdict.NO_TURNS.value]

    @property
    def masked(self) -> int:
        """Samples with turns whose labels ended up fully masked or truncated to nothing."""
        return sum(self.by_verdict[v.value] for v in MASKED_VERDICTS)

    @property
    def unreadable(self) -> int:
        return self.by_verdict[Verdict.UNREADABLE.value]

    @property
    def with_turns(self) -> int:
        return self.read - self.skipped_no_turns

    @property
    def masked_fraction(self) -> float:
        return self.masked / self.with_turns if self.with_turns else 0.0

    def as_vector(self) -> list:
        return [self.by_verdict[v.value] for v in Verdict]

    @classmethod
    def from_vector(cls, vector) -> "SampleCounts":
        return cls(collections.Counter({v.value: int(n) for v, n in zip(Verdict, vector) if n}))

    def summary(self) -> dict:
        return {
            "read": self.read,
            "used": self.used,
            "skipped_no_turns": self.skipped_no_turns,
            "masked": self.masked,
            "unreadable": self.unreadable,
            "masked_fraction": round(self.masked_fraction, 6),
            "by_verdict": dict(sorted(self.by_verdict.items())),
        }


# ---------------------------------------------------------------------------------------------
# One sample


@dataclasses.dataclass
class Example:
    encoded: Encoded
    pixels: object  # uint8 numpy array (3, H, W)


class SampleDecoder:
    """A raw WebDataset sample (bytes per member) -> `Example` or the `Verdict` saying why not."""

    def __init__(self, encoder: TextEncoder, geometry: ImageGeometry, turn_source: TurnSource):
        self.encoder = encoder
        self.geometry = geometry
        self.turn_source = TurnSource(turn_source)

    def __call__(self, raw: dict) -> Example | Verdict:
        try:
            turns = self._turns(raw)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):  # json.JSONDecodeError is a ValueError
            return Verdict.UNREADABLE
        encoded = self.encoder.encode(turns) if turns else Verdict.NO_TURNS
        if not isinstance(encoded, Encoded):
            return encoded
        image = next((raw[ext] for ext in IMAGE_EXTENSIONS if ext in raw), None)
        if image is None:
            return Verdict.UNREADABLE
        try:
            pixels = self.pixels(image)
        except (OSError, ValueError, SyntaxError):  # what Pillow raises on bad image bytes
            return Verdict.UNREADABLE
        return Example(encoded=encoded, pixels=pixels)

    def pixels(self, image: bytes):
        return load_square(image, self.geometry)

    def _turns(self, raw: dict) -> list:
        if self.turn_source is TurnSource.CAPTION:
            caption = raw[CAPTION_EXTENSION].decode("utf-8").strip()
            return normalize_turns([turn(HUMAN, IMAGE_TOKEN), turn(GPT, caption)]) if caption else []
        turns = json.loads(raw[RECORD_EXTENSION])[self.turn_source.value]
        if not isinstance(turns, list):
            raise ValueError(f"{self.turn_source.value} is not a list")
        return normalize_turns(turns) if turns else []


# ---------------------------------------------------------------------------------------------
# Batches


@dataclasses.dataclass
class Batch:
    """Up to `micro_batch` usable examples (none in a count-only batch) and the worker's counts."""

    input_ids: object  # LongTensor (B, T), right-padded; None in a count-only batch
    attention_mask: object
    labels: object
    pixels: object  # uint8 tensor (B, 3, H, W)
    counts: SampleCounts  # what the worker read since its previous batch
    worker: int
    consumed: int  # samples this worker has read in this epoch, through this batch

    @property
    def size(self) -> int:
        return 0 if self.input_ids is None else int(self.input_ids.shape[0])

    def pin_memory(self) -> "Batch":
        """Called by the DataLoader (pin_memory=True on GPUs): page-locked, copied asynchronously."""
        if self.size:
            for field in ("input_ids", "attention_mask", "labels", "pixels"):
                setattr(self, field, getattr(self, field).pin_memory())
        return self


def collate(examples: list, pad_id: int, pad_to_multiple: int):
    """Right-pad token ids (to a multiple, for tensor cores) and stack pixels. Built in numpy:
    torch.tensor() on Python lists costs more than the rest of the worker's work on a sample."""
    import numpy as np
    import torch

    longest = max(len(e.encoded.input_ids) for e in examples)
    width = -(-longest // pad_to_multiple) * pad_to_multiple
    input_ids = np.full((len(examples), width), pad_id, dtype=np.int64)
    labels = np.full((len(examples), width), IGNORE_INDEX, dtype=np.int64)
    attention_mask = np.zeros((len(examples), width), dtype=np.int64)
    for row, example in enumerate(examples):
        n = len(example.encoded.input_ids)
        input_ids[row, :n] = example.encoded.input_ids
        labels[row, :n] = example.encoded.labels
        attention_mask[row, :n] = 1
    pixels = np.stack([e.pixels for e in examples])
    return tuple(torch.from_numpy(array) for array in (input_ids, attention_mask, labels, pixels))


@dataclasses.dataclass
class LoaderSpec:
    """Everything the per-epoch pipeline needs; pickled into each data-loader worker."""

    urls: list
    decoder: SampleDecoder
    micro_batch: int
    pad_id: int
    seed: int
    shuffle_buffer: int = 1000
    pad_to_multiple: int = 8


class _Batcher:
    """Pipeline stage: decoded samples -> `Batch`es of usable examples plus counts."""

    def __init__(self, spec: LoaderSpec, worker: int, already_consumed: int):
        self.spec = spec
        self.worker = worker
        self.consumed = already_consumed

    def __call__(self, results):
        examples, counts, unusable_run = [], SampleCounts(), 0
        for result in results:
            self.consumed += 1
            if isinstance(result, Example):
                counts.add(Verdict.USED)
                examples.append(result)
                unusable_run = 0
            else:
                counts.add(result)
                unusable_run += 1
            if len(examples) == self.spec.micro_batch:
                yield self._batch(examples, counts)
                examples, counts = [], SampleCounts()
            elif unusable_run >= self.spec.micro_batch * COUNT_ONLY_EVERY and counts.read:
                yield self._batch([], counts)
                counts, unusable_run = SampleCounts(), 0
        if examples or counts.read:
            yield self._batch(examples, counts)

    def _batch(self, examples: list, counts: SampleCounts) -> Batch:
        tensors = collate(examples, self.spec.pad_id, self.spec.pad_to_multiple) if examples else (None,) * 4
        return Batch(*tensors, counts=counts, worker=self.worker, consumed=self.consumed)


def epoch_pipeline(spec: LoaderSpec, epoch: int, resume_consumed: dict | None = None):
    """The IterableDataset for one epoch. `resume_consumed` maps worker id -> samples that worker
    had read when the checkpoint was taken (same seed, world size and worker count)."""
    import webdataset as wds

    resume_consumed = resume_consumed or {}

    def seeded_shuffle_and_skip(samples):
        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        rng = random.Random(f"{spec.seed}/{epoch}/{rank}/{worker}")
        shuffled = wds.shuffle(spec.shuffle_buffer, min(100, spec.shuffle_buffer), rng=rng)(samples)
        skip = resume_consumed.get(worker, 0)
        for position, sample in enumerate(shuffled):
            if position >= skip:
                yield sample

    def decode_and_batch(samples):
        _, _, worker, _ = wds.utils.pytorch_worker_info()
        batcher = _Batcher(spec, worker, resume_consumed.get(worker, 0))
        yield from batcher(spec.decoder(sample) for sample in samples)

    return wds.DataPipeline(
        wds.SimpleShardList(spec.urls),
        wds.detshuffle(bufsize=len(spec.urls), initial=len(spec.urls), seed=spec.seed, epoch=epoch - 1),
        wds.split_by_node,
        wds.split_by_worker,
        wds.tarfile_to_samples(),
        seeded_shuffle_and_skip,
        decode_and_batch,
    )


def epoch_loader(spec: LoaderSpec, epoch: int, num_workers: int, resume_consumed: dict | None = None):
    """A DataLoader over one epoch's pipeline; batching happens in the workers."""
    import torch

    return torch.utils.data.DataLoader(
        epoch_pipeline(spec, epoch, resume_consumed),
        batch_size=None,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if num_workers else None,
        persistent_workers=False,
    )
