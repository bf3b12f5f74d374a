"""End-to-end throughput: 2,000 generated figures through `run`, in-process vs multi_processing;
optionally the ingest->shard path against img2dataset on the same images.

Figures are drawn with `chimed_pipeline.sample_images.render` (seven PMC-like kinds), captions are
distinct English ones, and every caption is translated by the LLM: the local OpenAI-compatible fake
server from tests/fakellm.py, answering each request after a fixed latency. QA is the offline
template. Each mode runs `python -m chimed_pipeline run` in its own process into a fresh output
(no TM, so both pay the same LLM requests); the time includes start-up, as a user sees it. Prints
samples/s for both and their ratio; checks the two outputs are byte-identical.

With `--img2dataset BIN` (img2dataset's command in a venv of its own: it needs webdataset < 0.3,
e.g. `python3 -m venv /tmp/i2d && /tmp/i2d/bin/pip install img2dataset`), both tools then turn the
same files (file:// URLs for img2dataset) into JPEG WebDataset shards of 1,000 samples, longest
side at most 1,024, one process each: img2dataset downloads, resizes and writes; the pipeline
(in-process, captions from a translation memory, no LLM, no QA) also validates, hashes, dedups,
cleans captions and writes its index, report and manifest.

    .venv/bin/python benchmarks/bench_e2e.py [--figures 2000] [--workers 2] [--latency 0.2] [--img2dataset BIN]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import fakellm  # noqa: E402
from chimed_pipeline.sample_images import KINDS, render  # noqa: E402


def make_inputs(root: Path, figures: int) -> Path:
    """`figures` PNG figures (sizes vary 320-575 px) and a PMC-OA style manifest naming them."""
    images = root / "images"
    images.mkdir(parents=True)
    kinds = sorted(KINDS)
    rows = []
    for number, caption in enumerate(fakellm.figure_captions(figures)):
        kind = kinds[number % len(kinds)]
        size = (320 + (number * 37) % 256, 320 + (number * 53) % 256)
        name = f"fig{number:05d}.png"
        render(kind, number, size).save(images / name)
        rows.append({"image": name, "caption": caption, "license": "cc-by", "pmcid": f"PMC{9_100_000 + number}"})
    manifest = root / "figures.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return manifest


def run(manifest: Path, output: Path, fake: fakellm.FakeLlm, beam_args: list[str]) -> tuple[float, dict]:
    command = [
        sys.executable, "-m", "chimed_pipeline", "run", "--input", str(manifest), "--images", str(manifest.parent / "images"),
        "--output", str(output), "--llm-model", "fake", "--llm-base-url", fake.base_url, "--qa", "template",
        *beam_args,
    ]
    env = {**os.environ, "OPENAI_API_KEY": fakellm.TEST_KEY}
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    return seconds, json.loads((output / "manifest.json").read_text())


def img2dataset_run(binary: str, manifest: Path, output: Path) -> tuple[float, int]:
    """img2dataset on the manifest's images as file:// URLs; (seconds, samples written)."""
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    urls = manifest.parent / "urls.jsonl"
    urls.write_text("".join(
        json.dumps({"url": (manifest.parent / "images" / row["image"]).as_uri(), "caption": row["caption"]}) + "\n"
        for row in rows
    ))
    command = [
        binary, f"--url_list={urls}", "--input_format=jsonl", "--url_col=url", "--caption_col=caption",
        "--output_format=webdataset", f"--output_folder={output}", "--processes_count=1", "--thread_count=4",
        "--image_size=1024", "--resize_mode=keep_ratio_largest", "--resize_only_if_bigger=True",
        "--encode_format=jpg", "--number_sample_per_shard=1000", "--enable_wandb=False",
    ]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    stats = [json.loads(p.read_text()) for p in output.glob("*_stats.json")]
    return seconds, sum(s["successes"] for s in stats)


def compare_with_img2dataset(binary: str, manifest: Path, root: Path) -> None:
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    tm = root / "tm.jsonl"
    tm.write_text("".join(
        json.dumps({"source": row["caption"], "target": fakellm.fake_translate(row["caption"])}, ensure_ascii=False) + "\n"
        for row in rows
    ))
    command = [
        sys.executable, "-m", "chimed_pipeline", "run", "--input", str(manifest), "--images", str(manifest.parent / "images"),
        "--output", str(root / "shard_path"), "--tm", str(tm), "--qa", "none",
    ]
    env = {key: value for key, value in os.environ.items() if not key.startswith("OPENAI_")}
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ours_s = time.perf_counter() - started
    ours = json.loads((root / "shard_path" / "manifest.json").read_text())["counts"]["status"]["kept"]
    theirs_s, theirs = img2dataset_run(binary, manifest, root / "img2dataset")
    print(f"ingest->shard, chimed-pipeline {ours_s:7.1f}s  {ours} samples  {ours / ours_s:6.1f} samples/s")
    print(f"ingest->shard, img2dataset     {theirs_s:7.1f}s  {theirs} samples  {theirs / theirs_s:6.1f} samples/s")
    print(f"chimed-pipeline / img2dataset throughput: {(ours / ours_s) / (theirs / theirs_s):.2f}x", flush=True)


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def compare_modes(manifest: Path, root: Path, workers: int, latency: float) -> None:
    results = {}
    with fakellm.FakeLlm(delay_s=latency) as fake:
        modes = {
            "in_process": [],
            "multi_processing": ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"],
        }
        for mode, beam_args in modes.items():
            seconds, manifest_json = run(manifest, root / mode, fake, beam_args)
            kept = manifest_json["counts"]["status"]["kept"]
            results[mode] = seconds
            print(f"{mode:17s} {seconds:7.1f}s  kept {kept}  {kept / seconds:6.1f} samples/s", flush=True)
        print(f"LLM requests (both runs): {fake.totals()['requests']}, latency {latency}s each")
    identical = tree_digest(root / "in_process") == tree_digest(root / "multi_processing")
    print(f"multi_processing / in_process throughput: {results['in_process'] / results['multi_processing']:.2f}x "
          f"({workers} workers, {os.cpu_count()} CPUs); outputs byte-identical: {identical}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figures", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2, help="--direct_num_workers for multi_processing")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the fake LLM takes per request")
    parser.add_argument("--img2dataset", default="", metavar="BIN", help="img2dataset command (its own venv)")
    parser.add_argument("--skip-modes", action="store_true", help="only the img2dataset comparison")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        manifest = make_inputs(root / "in", args.figures)
        print(f"{args.figures} figures generated in {time.perf_counter() - started:.1f}s (not timed below)", flush=True)
        if not args.skip_modes:
            compare_modes(manifest, root, args.workers, args.latency)
        if args.img2dataset:
            compare_with_img2dataset(args.img2dataset, manifest, root)


if __name__ == "__main__":
    main()
