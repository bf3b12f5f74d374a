"""Training data-loader throughput: shard read + decode + pad-to-square + resize + tokenize.

    .venv/bin/python benchmarks/bench_dataloader.py [--samples 512] [--workers 2] [--stage 2]

Writes synthetic shards in the release format (figures at the pipeline's default maximum side,
1024 px, as JPEG) to a temporary directory and times the trainer's loader over one epoch with
CLIP ViT-L/14-336 geometry, against a baseline in the same process: the same pipeline with
LLaVA's image path (full decode, expand2square, the CLIP image processor, float32 out). Prints,
for both, samples/s measured with the workers and CPU milliseconds per sample in one process
(which a busy shared machine does not distort), the rate that gives on free cores, and the
ratios. Target: >= 200 samples/s with 2 workers.
"""
from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from chimed_pipeline.train.data import LoaderSpec, SampleDecoder, epoch_loader, resolve_shards, stage_text
from chimed_pipeline.train.formatting import TextEncoder
from chimed_pipeline.train.images import ImageGeometry
from chimed_pipeline.train.synthetic import write_synthetic_release
from chimed_pipeline.train.tiny import tiny_tokenizer
from schemas.records import IMAGE_TOKEN

CLIP_L_336 = {"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}}
IMAGE_TOKENS = (336 // 14) ** 2


class LlavaImagePath(SampleDecoder):
    """Baseline: LLaVA-1.5's train-time image path, the processor run in the worker."""

    def __init__(self, *args, processor, **kwargs):
        super().__init__(*args, **kwargs)
        self.processor = processor

    def pixels(self, image: bytes) -> np.ndarray:
        picture = Image.open(io.BytesIO(image)).convert("RGB")
        side = max(picture.size)
        square = Image.new("RGB", (side, side), self.geometry.background)
        square.paste(picture, ((side - picture.width) // 2, (side - picture.height) // 2))
        return self.processor(images=square, return_tensors="np")["pixel_values"][0]


def samples_per_second(spec: LoaderSpec, workers: int) -> float:
    """Steady state: from the first batch (workers forked, buffers filled) to the end of the epoch."""
    started, samples = None, 0
    for batch in epoch_loader(spec, epoch=1, num_workers=workers):
        if started is None:
            started = time.perf_counter()
            continue
        samples += batch.counts.read
    return samples / (time.perf_counter() - started)


def cpu_ms_per_sample(spec: LoaderSpec) -> float:
    """The same work in this process, in CPU time: what the loader costs on a core of its own,
    whatever else the machine is running."""
    started, samples = time.process_time(), 0
    for batch in epoch_loader(spec, epoch=1, num_workers=0):
        samples += batch.counts.read
    return 1000 * (time.process_time() - started) / samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--stage", type=int, choices=(1, 2), default=2)
    parser.add_argument("--micro-batch", type=int, default=16)
    args = parser.parse_args()

    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(**CLIP_L_336)
    geometry = ImageGeometry.from_processor(processor)
    tokenizer = tiny_tokenizer()
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    turn_source, text_format = stage_text(args.stage, "plain")
    encoder = TextEncoder(tokenizer, text_format, IMAGE_TOKENS, max_length=2048)
    with tempfile.TemporaryDirectory() as root:
        write_synthetic_release(Path(root), args.samples, shard_samples=args.samples // 4, image_size=(1024, 768))
        urls = resolve_shards([root])

        def spec(decoder: SampleDecoder) -> LoaderSpec:
            return LoaderSpec(urls=urls, decoder=decoder, micro_batch=args.micro_batch,
                              pad_id=tokenizer.pad_token_id, seed=0)

        loaders = {
            "trainer loader (draft decode, uint8 out)": spec(SampleDecoder(encoder, geometry, turn_source)),
            "baseline (LLaVA image path, float32 out)": spec(
                LlavaImagePath(encoder, geometry, turn_source, processor=processor)
            ),
        }
        measured = {name: (samples_per_second(s, args.workers), cpu_ms_per_sample(s)) for name, s in loaders.items()}
    print(f"stage {args.stage}, {args.samples} samples of 1024x768 JPEG -> 336x336, {args.workers} workers, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for name, (rate, cpu_ms) in measured.items():
        print(f"{name}: {rate:7.1f} samples/s measured, {cpu_ms:5.2f} CPU ms/sample "
              f"-> {args.workers * 1000 / cpu_ms:7.1f} samples/s on {args.workers} free cores")
    (ours, ours_ms), (baseline, baseline_ms) = measured.values()
    projected = args.workers * 1000 / ours_ms
    print(f"ratio (trainer / baseline): {ours / baseline:.2f}x measured, {baseline_ms / ours_ms:.2f}x in CPU time; "
          f"target >= 200 samples/s with {args.workers} workers: {'met' if projected >= 200 else 'NOT met'} "
          f"on free cores")


if __name__ == "__main__":
    main()
