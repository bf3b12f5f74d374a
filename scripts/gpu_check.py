"""One-GPU check of the trainer: both stages on a random-init ~0.8B LLaVA, bf16, ~50 steps each.

Run through scripts/gpu_check.sh. Builds its own shards (stdlib tarfile, no Beam), writes model
configs (CLIP ViT-L/14-336 and a Qwen2-0.5B-shaped LLM with the in-code tokenizer) and trains
them with `--random-init` through the real CLI. Prints per stage: samples/s, tokens/s, peak GPU
memory and an MFU estimate (model FLOPs, activation recomputation not counted, against the GPU's
dense bf16 peak). `--cpu-smoke`: the same path with tiny dimensions on the CPU, for checking the
script before spending device time.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chimed_pipeline.cli import main as cli  # noqa: E402
from chimed_pipeline.train.loop import METRICS_FILE, SUMMARY_FILE  # noqa: E402
from chimed_pipeline.train.synthetic import write_synthetic_release  # noqa: E402
from chimed_pipeline.train.tiny import tiny_tokenizer  # noqa: E402

# Dense bf16 peak, FLOP/s, by a substring of torch.cuda.get_device_name().
PEAK_BF16 = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12), ("L40S", 362e12))


@dataclasses.dataclass(frozen=True)
class Plan:
    image_size: int
    vision: dict  # CLIPVisionConfig fields
    llm: dict  # Qwen2Config fields
    samples: int  # in the synthetic shards (the data repeats to fill the steps)
    picture: tuple  # synthetic figure size, px
    steps: int
    batches: dict  # stage -> (global batch, micro-batch)
    workers: int
    precision: str


GPU = Plan(
    image_size=336,
    vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                image_size=336, patch_size=14),
    llm=dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
             num_key_value_heads=2, vocab_size=151936, max_position_embeddings=4096, tie_word_embeddings=True),
    samples=2048, picture=(640, 512), steps=50, batches={1: (128, 32), 2: (64, 16)}, workers=10, precision="bf16",
)
CPU_SMOKE = Plan(
    image_size=56,
    vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                image_size=56, patch_size=14),
    llm=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=512, max_position_embeddings=4096, tie_word_embeddings=True),
    samples=48, picture=(96, 72), steps=4, batches={1: (8, 4), 2: (8, 4)}, workers=2, precision="fp32",
)


def write_model_configs(plan: Plan, root: Path) -> tuple:
    """Directories for the CLIP tower (config + image processor), the LLM (config) and the
    tokenizer (apart: beside a Qwen2 config, AutoTokenizer would rebuild it as Qwen's)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, Qwen2Config

    vision, llm, tokenizer = root / "vision", root / "llm", root / "tokenizer"
    CLIPVisionConfig(**plan.vision).save_pretrained(vision)
    side = plan.image_size
    CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}).save_pretrained(vision)
    Qwen2Config(**plan.llm).save_pretrained(llm)
    tiny_tokenizer().save_pretrained(tokenizer)
    return vision, llm, tokenizer


def model_flops_per_sample(output: Path, stage: int, tokens_per_sample: float) -> float:
    """Forward 2N per token; backward 2N for activation gradients plus 2N where weights train.
    The frozen vision tower runs forward only, on its patches plus CLS."""
    config = json.loads((output / "config.json").read_text())
    text, vision = config["text_config"], config["vision_config"]
    d, layers = text["hidden_size"], text["num_hidden_layers"]
    kv = d // text["num_attention_heads"] * text["num_key_value_heads"]
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * text["intermediate_size"]
    llm = layers * per_layer + d * text["vocab_size"]  # + the LM head's matmul
    attention = 2 * layers * tokens_per_sample * d  # causal QK^T and AV, per token, forward
    passes = 3 if stage == 2 else 2  # forward + activation grads (+ weight grads in stage 2)
    text_flops = passes * (2 * llm + attention) * tokens_per_sample
    dv = vision["hidden_size"]
    vision_params = vision["num_hidden_layers"] * (4 * dv * dv + 2 * dv * vision["intermediate_size"])
    patches = (vision["image_size"] // vision["patch_size"]) ** 2 + 1
    return text_flops + 2 * vision_params * patches


def run_stage(plan: Plan, stage: int, data: Path, models: tuple, output: Path, init: Path | None) -> dict:
    import torch

    global_batch, micro_batch = plan.batches[stage]
    args = ["train", "--stage", str(stage), "--data", str(data), "--output", str(output), "--random-init",
            "--max-steps", str(plan.steps), "--global-batch-size", str(global_batch),
            "--micro-batch-size", str(micro_batch), "--num-workers", str(plan.workers),
            "--precision", plan.precision, "--log-every", "5", "--save-every", "0"]
    vision, llm, tokenizer = models
    if init:
        args += ["--init", str(init)]
    else:
        args += ["--vision-model", str(vision), "--llm", str(llm), "--tokenizer", str(tokenizer)]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    if cli(args) != 0:
        raise SystemExit(f"stage {stage} failed")
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in (output / METRICS_FILE).read_text().splitlines()]
    steady = records[1:] or records  # the first interval holds worker start-up and warm-up
    samples_per_s = sum(r["samples"] for r in steady) / sum(r["samples"] / r["samples_per_s"] for r in steady)
    tokens_per_s = sum(r["tokens"] for r in steady) / sum(r["tokens"] / r["tokens_per_s"] for r in steady)
    tokens_per_sample = tokens_per_s / samples_per_s
    result = {
        "stage": stage,
        "wall_s": round(wall, 1),
        "samples_per_s": round(samples_per_s, 1),
        "tokens_per_s": round(tokens_per_s),
        "tokens_per_sample": round(tokens_per_sample),
        "final_loss": records[-1]["loss"],
        "masked": json.loads((output / SUMMARY_FILE).read_text())["samples"]["masked"],
    }
    if torch.cuda.is_available():
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        name = torch.cuda.get_device_name()
        peak = float(os.environ.get("GPU_PEAK_FLOPS", 0)) or next((f for key, f in PEAK_BF16 if key in name), 0.0)
        achieved = model_flops_per_sample(output, stage, tokens_per_sample) * samples_per_s
        result["model_tflops_per_s"] = round(achieved / 1e12, 1)
        result["mfu"] = round(achieved / peak, 3) if peak else "unknown peak: set GPU_PEAK_FLOPS"
        result["device"] = name
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny dimensions on the CPU")
    parser.add_argument("--workdir", type=Path, help="keep shards and models here (default: a temporary dir)")
    args = parser.parse_args()
    plan = CPU_SMOKE if args.cpu_smoke else GPU
    with tempfile.TemporaryDirectory() as scratch:
        root = args.workdir or Path(scratch)
        started = time.perf_counter()
        release = root / "release"
        write_synthetic_release(release, plan.samples, shard_samples=plan.samples // 8, image_size=plan.picture)
        models = write_model_configs(plan, root)
        print(f"shards and configs: {time.perf_counter() - started:.1f} s", flush=True)
        results = []
        stage1 = root / "stage1"
        results.append(run_stage(plan, 1, release, models, stage1, init=None))
        results.append(run_stage(plan, 2, release, models, root / "stage2", init=stage1))
    for result in results:
        print("GPU_CHECK " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
