"""`train --stage 1|2 --data SHARDS --output DIR`: LLaVA-1.5-style training from the shards.

Stage 1 aligns the projector (vision tower and LLM frozen); stage 2 (`--init STAGE1_DIR`) tunes the
projector and the LLM (or LoRA adapters on it) on the QA conversations. One process per GPU:
`torchrun --nproc-per-node N -m chimed_pipeline train ...`. Exit status 1 when the run must not
pass: more samples fully masked than --max-masked-fraction, nothing usable, a bad configuration.
torch and transformers are imported only when this command runs.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_VISION = "openai/clip-vit-large-patch14-336"
DEFAULT_LLM = "Qwen/Qwen2.5-7B-Instruct"
# LLaVA-1.5: learning rate, global batch, per-GPU batch on 8 GPUs.
STAGE_DEFAULTS = {1: (1e-3, 256, 32), 2: (2e-5, 128, 16)}
LORA_LR = 2e-4  # LLaVA-1.5's LoRA recipe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("--stage", type=int, choices=(1, 2), required=True)
    parser.add_argument(
        "--data", nargs="+", required=True, metavar="SHARDS",
        help="a directory of shards (or a release root), a glob, a brace pattern "
        "(DIR/shards/chimed-vl-{000000..000009}.tar) or URLs; several allowed",
    )
    parser.add_argument("--output", type=Path, required=True, help="model directory (Hugging Face format)")
    parser.add_argument("--init", help="stage 2: the stage-1 output directory (its projector; its models by default)")
    models = parser.add_argument_group("models")
    models.add_argument("--vision-model", help=f"CLIP checkpoint, path or hub id (default {DEFAULT_VISION})")
    models.add_argument("--llm", help=f"causal LM with its tokenizer, path or hub id (default {DEFAULT_LLM})")
    models.add_argument("--tokenizer", help="path or hub id, when not the LLM's own")
    models.add_argument("--tiny", action="store_true", help="tiny random models and an in-code tokenizer (smoke runs)")
    models.add_argument("--random-init", action="store_true", help="random weights from the models' configs")
    models.add_argument("--chat-template", type=Path, metavar="FILE", help="Jinja chat template replacing the LLM's")
    models.add_argument("--lora", action="store_true", help="stage 2: LoRA adapters on the LLM instead of full tuning")
    models.add_argument("--lora-r", type=int, default=128)
    models.add_argument("--lora-alpha", type=int, default=256)
    models.add_argument("--lora-dropout", type=float, default=0.05)
    data = parser.add_argument_group("data")
    data.add_argument(
        "--stage1-format", choices=("plain", "chat"), default="plain",
        help="stage 1 text: LLaVA's plain `<image>caption` (default) or the `alignment` turns as a chat",
    )
    data.add_argument("--max-length", type=int, default=2048, help="tokens per sample, image tokens included")
    data.add_argument(
        "--max-masked-fraction", type=float, default=0.01,
        help="fail when more of the samples with turns than this end up with no label (default 0.01)",
    )
    data.add_argument("--num-workers", type=int, default=4, help="data-loader processes per GPU")
    data.add_argument("--shuffle-buffer", type=int, default=1000, help="samples per worker's shuffle buffer")
    data.add_argument("--seed", type=int, default=42)
    optim = parser.add_argument_group("optimization")
    optim.add_argument("--lr", type=float, help="default: 1e-3 in stage 1, 2e-5 in stage 2, 2e-4 with --lora")
    optim.add_argument("--global-batch-size", type=int, help="default: 256 in stage 1, 128 in stage 2")
    optim.add_argument("--micro-batch-size", type=int, help="per GPU and forward pass (default 32, 16)")
    optim.add_argument("--epochs", type=int, default=1)
    optim.add_argument("--max-steps", type=int, default=0, help="exactly this many steps, repeating the data as needed")
    optim.add_argument("--warmup-ratio", type=float, default=0.03)
    optim.add_argument("--weight-decay", type=float, default=0.0)
    optim.add_argument(
        "--precision", choices=("auto", "bf16", "fp32"), default="auto", help="auto: bf16 on GPUs that have it"
    )
    optim.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    runs = parser.add_argument_group("progress")
    runs.add_argument("--log-every", type=int, default=10, help="steps between metrics.jsonl records")
    runs.add_argument("--save-every", type=int, default=500, help="steps between checkpoints (0: none)")
    runs.add_argument("--keep-checkpoints", type=int, default=2)
    runs.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output")


def config_from_args(args: argparse.Namespace):
    """The TrainConfig for these arguments; stage 2 takes stage 1's models unless told otherwise."""
    from chimed_pipeline.train.loop import ARGS_FILE, TrainConfig
    from chimed_pipeline.train.model import LoraOptions, ModelSource

    if args.stage == 2 and not args.init:
        raise ValueError("stage 2 needs --init STAGE1_DIR (the projector it starts from)")
    inherited = {}
    if args.init and not (args.vision_model or args.llm or args.tiny):
        stage1_args = Path(args.init) / ARGS_FILE
        if not stage1_args.is_file():
            raise ValueError(f"--init {args.init}: no {ARGS_FILE}; pass --vision-model and --llm")
        inherited = json.loads(stage1_args.read_text())["source"]
    source = ModelSource(
        vision=args.vision_model or inherited.get("vision") or ("" if args.tiny else DEFAULT_VISION),
        llm=args.llm or inherited.get("llm") or ("" if args.tiny else DEFAULT_LLM),
        tokenizer=args.tokenizer or inherited.get("tokenizer", ""),
        tiny=args.tiny or inherited.get("tiny", False),
        random_init=args.random_init or inherited.get("random_init", False),
        chat_template=args.chat_template.read_text(encoding="utf-8") if args.chat_template else "",
    )
    lr, global_batch, micro_batch = STAGE_DEFAULTS[args.stage]
    global_batch = args.global_batch_size or global_batch
    return TrainConfig(
        stage=args.stage,
        data=list(args.data),
        output=str(args.output),
        source=source,
        init=args.init or "",
        stage1_format=args.stage1_format,
        lora=LoraOptions(args.lora_r, args.lora_alpha, args.lora_dropout) if args.lora else None,
        lr=args.lr or (LORA_LR if args.lora else lr),
        global_batch_size=global_batch,
        micro_batch_size=args.micro_batch_size or min(micro_batch, global_batch),
        epochs=args.epochs,
        max_steps=args.max_steps,
        warmup_ratio=args.warmup_ratio,
        weight_decay=args.weight_decay,
        max_length=args.max_length,
        max_masked_fraction=args.max_masked_fraction,
        num_workers=args.num_workers,
        shuffle_buffer=args.shuffle_buffer,
        seed=args.seed,
        precision=args.precision,
        gradient_checkpointing=args.gradient_checkpointing,
        log_every=args.log_every,
        save_every=args.save_every,
        keep_checkpoints=args.keep_checkpoints,
        resume=args.resume,
    )


def main(args: argparse.Namespace) -> int:
    from chimed_pipeline.train.loop import TrainingFailed, train

    try:
        summary = train(config_from_args(args))
    except (TrainingFailed, ValueError) as exc:
        log.error("training failed: %s", exc)
        return 1
    print(json.dumps(summary))
    return 0
