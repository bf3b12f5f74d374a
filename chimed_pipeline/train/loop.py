"""The training loop: one stage, one process per GPU (torchrun), gradient accumulation to the
global batch, checkpoints that resume exactly, metrics per logged step, and the masked-sample check.

Loss normalization: each optimizer step averages the loss over every label token of the global
batch (all micro-batches, all ranks), not over micro-batch means, so short and long samples
weigh the same whatever the batching. Ranks stay in step: a step happens only when every rank has
its full number of micro-batches, so an epoch's last incomplete set of micro-batches is dropped; a
micro-batch cut short at the end of a worker's data is still trained (its tokens weigh as any).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from chimed_pipeline.train.data import (
    LoaderSpec,
    SampleCounts,
    SampleDecoder,
    count_samples,
    epoch_loader,
    resolve_shards,
    stage_text,
)
from chimed_pipeline.train.formatting import IGNORE_INDEX, TextEncoder
from chimed_pipeline.train.images import normalize
from chimed_pipeline.train.model import (
    Built,
    LoraOptions,
    ModelSource,
    build_model,
    enable_activation_checkpointing,
    freeze_in_eval,
    load_projector,
    save_final,
    set_trainable,
)

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
ARGS_FILE = "train_args.json"
CHECKPOINTS_DIR = "checkpoints"
EARLY_CHECK_SAMPLES = 1000  # a rank fails fast once it has read this many samples with turns
# What a resumed run must share with the run it resumes, for the data order to be the same.
RESUME_INVARIANTS = ("stage", "data", "seed", "micro_batch_size", "global_batch_size", "num_workers", "stage1_format")


class TrainingFailed(Exception):
    """A run that must not pass: too many masked samples, nothing usable, a bad configuration."""


@dataclasses.dataclass
class TrainConfig:
    stage: int
    data: list
    output: str
    source: ModelSource
    init: str = ""
    stage1_format: str = "plain"
    lora: LoraOptions | None = None
    lr: float = 1e-3
    global_batch_size: int = 256
    micro_batch_size: int = 32
    epochs: int = 1
    max_steps: int = 0  # when > 0: exactly this many steps, the data repeating as needed
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 2048
    max_masked_fraction: float = 0.01
    num_workers: int = 2
    shuffle_buffer: int = 1000
    seed: int = 42
    precision: str = "auto"  # auto | bf16 | fp32
    gradient_checkpointing: bool = True
    log_every: int = 10
    save_every: int = 0  # steps between checkpoints; 0: none
    keep_checkpoints: int = 2
    resume: bool = False

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Progress:
    """What a checkpoint restores."""

    step: int = 0
    epoch: int = 1
    consumed: dict = dataclasses.field(default_factory=dict)  # this rank: worker -> samples read this epoch
    counts: SampleCounts = dataclasses.field(default_factory=SampleCounts)  # this rank, since the start


class Distributed:
    """torchrun's environment, or a single process."""

    def __init__(self):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
            self.device = torch.device("cuda", local_rank)
        else:
            self.device = torch.device("cpu")
        if self.world_size > 1:
            torch.distributed.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list) -> list:
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def all_true(self, flag: bool) -> bool:
        return self.sum([0.0 if flag else 1.0])[0] == 0.0

    def gather(self, obj) -> list:
        if self.world_size == 1:
            return [obj]
        gathered = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.world_size > 1:
            torch.distributed.destroy_process_group()


def train(config: TrainConfig) -> dict:
    """Run one stage; returns the summary it also writes to OUTPUT/summary.json. Raises
    TrainingFailed when the data gave (too little) nothing to train on."""
    dist = Distributed()
    try:
        return _Trainer(config, dist).run()
    finally:
        dist.close()


class _Trainer:
    def __init__(self, config: TrainConfig, dist: Distributed):
        self.config = config
        self.dist = dist
        self.output = Path(config.output)
        per_step = config.micro_batch_size * dist.world_size
        if config.global_batch_size % per_step:
            raise TrainingFailed(
                f"--global-batch-size {config.global_batch_size} is not a multiple of "
                f"--micro-batch-size x GPUs = {per_step}"
            )
        self.accumulation = config.global_batch_size // per_step
        use_bf16 = config.precision == "bf16" or (
            config.precision == "auto" and dist.device.type == "cuda" and torch.cuda.is_bf16_supported()
        )
        self.compute_dtype = torch.bfloat16 if use_bf16 else torch.float32
        self.progress = Progress()
        self._check_output_dir()

    # -- setup ------------------------------------------------------------------------------

    def _check_output_dir(self) -> None:
        checkpoints = self.output / CHECKPOINTS_DIR
        if checkpoints.is_dir() and any(checkpoints.iterdir()) and not self.config.resume:
            raise TrainingFailed(f"{self.output} holds checkpoints: pass --resume, or choose a new --output")
        if self.dist.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
        self.dist.barrier()

    def _build(self) -> Built:
        built = build_model(self.config.source)
        if self.config.stage == 2 and self.config.init:
            load_projector(built.model, self.config.init)
        model = set_trainable(built.model, self.config.stage, self.config.lora)
        # Frozen weights in the compute dtype, trainable ones (and so AdamW's states) in fp32;
        # cast on the device, where a 7B LLM's fp32 copy does not cost host memory per rank.
        model.to(self.dist.device, dtype=self.compute_dtype)
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.float()
        if self.config.gradient_checkpointing:
            enable_activation_checkpointing(model)
        model.train()
        freeze_in_eval(model)
        self.model = model
        self.geometry = built.geometry
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        if self.dist.world_size > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.dist.device.index] if self.dist.device.type == "cuda" else None
            )
        else:
            self.ddp = model
        return built

    def _loader_spec(self, built: Built) -> LoaderSpec:
        turn_source, text_format = stage_text(self.config.stage, self.config.stage1_format)
        encoder = TextEncoder(built.tokenizer, text_format, built.num_image_tokens, self.config.max_length)
        return LoaderSpec(
            urls=resolve_shards(self.config.data),
            decoder=SampleDecoder(encoder, built.geometry, turn_source),
            micro_batch=self.config.micro_batch_size,
            pad_id=built.tokenizer.pad_token_id,
            seed=self.config.seed,
            shuffle_buffer=self.config.shuffle_buffer,
        )

    def _total_steps(self, urls: list) -> int:
        if self.config.max_steps:
            return self.config.max_steps
        samples = count_samples(urls)
        if samples is None:
            raise TrainingFailed("cannot count samples of remote shards without a manifest: pass --max-steps")
        steps = self.config.epochs * samples // self.config.global_batch_size
        if steps == 0:
            raise TrainingFailed(
                f"{samples} samples make no full global batch of {self.config.global_batch_size}: "
                "lower --global-batch-size"
            )
        return steps

    def _optimizer(self, total_steps: int):
        optimizer = torch.optim.AdamW(
            self.trainable,
            lr=self.config.lr,
            weight_decay=self.config.weight_decay,
            betas=(0.9, 0.999),
            fused=self.dist.device.type == "cuda",
        )
        warmup = math.ceil(self.config.warmup_ratio * total_steps)

        def warmup_then_cosine(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_cosine)

    # -- run --------------------------------------------------------------------------------

    def run(self) -> dict:
        built = self._build()
        spec = self._loader_spec(built)
        total_steps = self._total_steps(spec.urls)
        self.optimizer, self.scheduler = self._optimizer(total_steps)
        if self.config.resume:
            self._restore()
        if self.dist.is_main:
            (self.output / ARGS_FILE).write_text(json.dumps(self.config.to_json(), indent=2) + "\n")
            log.info(
                "stage %d: %d shards, %d steps of %d samples (%d x %d micro-batches x %d ranks), "
                "%d trainable parameters of %d",
                self.config.stage, len(spec.urls), total_steps, self.config.global_batch_size,
                self.accumulation, self.config.micro_batch_size, self.dist.world_size,
                sum(p.numel() for p in self.trainable), sum(p.numel() for p in self.model.parameters()),
            )
        bar = tqdm(total=total_steps, initial=self.progress.step, disable=not self.dist.is_main, unit="step")
        meter = _Meter()
        max_epochs = math.inf if self.config.max_steps else self.config.epochs
        while self.progress.step < total_steps and self.progress.epoch <= max_epochs:
            steps_before, resumed_mid_epoch = self.progress.step, bool(self.progress.consumed)
            self._run_epoch(spec, total_steps, bar, meter)
            if self.progress.step == steps_before and not resumed_mid_epoch:
                break  # a whole epoch without a step: nothing usable, repeating will not help
            self.progress.epoch += 1
            self.progress.consumed = {}
        bar.close()
        counts = self._global_counts()
        summary = {"stage": self.config.stage, "steps": self.progress.step, "samples": counts.summary()}
        if self.dist.is_main:
            (self.output / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
            log.info("samples: %s", json.dumps(counts.summary()))
        self._check_counts(counts, final=True)
        if self.dist.is_main:
            save_final(self.model, built, self.output, self.compute_dtype)
            log.info("saved %s", self.output)
        self.dist.barrier()
        return summary

    def _run_epoch(self, spec: LoaderSpec, total_steps: int, bar, meter: "_Meter") -> None:
        batches = iter(epoch_loader(spec, self.progress.epoch, self.config.num_workers, self.progress.consumed))
        while self.progress.step < total_steps:
            window = self._next_window(batches)
            if not self.dist.all_true(len(window) == self.accumulation):
                return
            loss_sum, label_tokens, tokens, samples = self._step(window)
            self.progress.step += 1
            meter.add(loss_sum, label_tokens, tokens, samples)
            bar.update(1)
            if self.progress.step % self.config.log_every == 0 or self.progress.step == total_steps:
                self._log(meter, bar)
            if self.config.save_every and self.progress.step % self.config.save_every == 0:
                self._checkpoint()

    def _next_window(self, batches) -> list:
        """Up to `accumulation` non-empty micro-batches; count-only batches update the counts."""
        window = []
        for batch in batches:
            self.progress.counts.merge(batch.counts)
            self.progress.consumed[batch.worker] = batch.consumed
            self._check_counts(self.progress.counts, final=False)
            if batch.size:
                window.append(batch)
                if len(window) == self.accumulation:
                    break
        return window

    def _step(self, window: list) -> tuple:
        device = self.dist.device
        local_label_tokens = sum(int((b.labels[:, 1:] != IGNORE_INDEX).sum()) for b in window)
        global_label_tokens = self.dist.sum([local_label_tokens])[0]
        loss_sum = 0.0
        for i, batch in enumerate(window):
            last = i == len(window) - 1
            sync = contextlib.nullcontext() if last or self.ddp is self.model else self.ddp.no_sync()
            autocast = torch.autocast(
                device.type, dtype=self.compute_dtype, enabled=self.compute_dtype != torch.float32
            )
            with sync, autocast:
                output = self.ddp(
                    input_ids=batch.input_ids.to(device, non_blocking=True),
                    attention_mask=batch.attention_mask.to(device, non_blocking=True),
                    labels=batch.labels.to(device, non_blocking=True),
                    use_cache=False,
                    pixel_values=normalize(
                        batch.pixels.to(device, non_blocking=True), self.geometry, self.compute_dtype
                    ),
                )
                batch_label_tokens = int((batch.labels[:, 1:] != IGNORE_INDEX).sum())
                # DDP averages gradients over ranks; scale back up to a sum over the global batch.
                scaled = output.loss * batch_label_tokens * self.dist.world_size / global_label_tokens
                scaled.backward()
            loss_sum += float(output.loss.detach()) * batch_label_tokens
        self._grad_norm = float(torch.nn.utils.clip_grad_norm_(self.trainable, self.config.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        tokens = sum(int(b.attention_mask.sum()) for b in window)
        samples = sum(b.size for b in window)
        return loss_sum, local_label_tokens, tokens, samples

    # -- reporting --------------------------------------------------------------------------

    def _log(self, meter: "_Meter", bar) -> None:
        loss_sum, label_tokens, tokens, samples = self.dist.sum(meter.totals())
        elapsed = meter.elapsed()
        record = {
            "step": self.progress.step,
            "epoch": self.progress.epoch,
            "loss": round(loss_sum / max(label_tokens, 1), 6),
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": round(self._grad_norm, 6),
            "samples_per_s": round(samples / elapsed, 3),
            "tokens_per_s": round(tokens / elapsed, 1),
            "samples": int(samples),
            "tokens": int(tokens),
        }
        meter.reset()
        if self.dist.is_main:
            with open(self.output / METRICS_FILE, "a", encoding="utf-8") as metrics:
                metrics.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=record["loss"], lr=f"{record['lr']:.2e}", samples_s=record["samples_per_s"],
                            tokens_s=record["tokens_per_s"])
            log.info("%s", json.dumps(record))

    def _global_counts(self) -> SampleCounts:
        return SampleCounts.from_vector(self.dist.sum(self.progress.counts.as_vector()))

    def _check_counts(self, counts: SampleCounts, final: bool) -> None:
        if not final and counts.with_turns < EARLY_CHECK_SAMPLES:
            return
        if counts.masked_fraction > self.config.max_masked_fraction:
            raise TrainingFailed(
                f"{counts.masked} of {counts.with_turns} samples with turns "
                f"({counts.masked_fraction:.1%}) have fully masked labels, above "
                f"--max-masked-fraction {self.config.max_masked_fraction:g}: "
                f"{json.dumps(counts.summary()['by_verdict'])}. "
                "template_mismatch means the chat template does not render the conversation turn by "
                "turn (fix or pass --chat-template); truncated means --max-length is too short"
            )
        if final and counts.used == 0:
            raise TrainingFailed(
                f"no usable sample in {counts.read} read ({json.dumps(counts.summary()['by_verdict'])}): "
                f"stage {self.config.stage} has nothing to train on"
            )

    # -- checkpoints ------------------------------------------------------------------------

    def _checkpoint(self) -> None:
        root = self.output / CHECKPOINTS_DIR
        final = root / f"step-{self.progress.step:08d}"
        partial = root / f"{final.name}.partial"
        per_rank = self.dist.gather({"consumed": self.progress.consumed, "counts": self.progress.counts.as_vector()})
        if self.dist.is_main:
            partial.mkdir(parents=True, exist_ok=True)
            trainable = {n: p.detach().float().cpu().contiguous() for n, p in self._named_trainable()}
            save_file(trainable, str(partial / "trainable.safetensors"))
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                       partial / "optimizer.pt")
            state = {"step": self.progress.step, "epoch": self.progress.epoch, "ranks": per_rank,
                     "config": self.config.to_json()}
            (partial / "state.json").write_text(json.dumps(state) + "\n")
            partial.rename(final)
            for old in sorted(p for p in root.glob("step-*") if not p.name.endswith(".partial"))[
                : -self.config.keep_checkpoints or None
            ]:
                shutil.rmtree(old)
        self.dist.barrier()

    def _restore(self) -> None:
        found = sorted(p for p in (self.output / CHECKPOINTS_DIR).glob("step-*") if not p.name.endswith(".partial"))
        if not found:
            log.info("--resume: no checkpoint in %s, starting fresh", self.output)
            return
        latest = found[-1]
        state = json.loads((latest / "state.json").read_text())
        saved, current = state["config"], self.config.to_json()
        changed = [key for key in RESUME_INVARIANTS if saved[key] != current[key]]
        if changed or len(state["ranks"]) != self.dist.world_size:
            raise TrainingFailed(f"--resume from {latest}: changed {changed or ['number of GPUs']}")
        weights = load_file(str(latest / "trainable.safetensors"))
        named = dict(self._named_trainable())
        if set(weights) != set(named):
            raise TrainingFailed(f"--resume from {latest}: its trainable parameters are not this run's")
        with torch.no_grad():
            for name, parameter in named.items():
                parameter.copy_(weights[name])
        saved_optimizer = torch.load(latest / "optimizer.pt", map_location=self.dist.device, weights_only=True)
        self.optimizer.load_state_dict(saved_optimizer["optimizer"])
        self.scheduler.load_state_dict(saved_optimizer["scheduler"])
        mine = state["ranks"][self.dist.rank]
        self.progress = Progress(
            step=state["step"],
            epoch=state["epoch"],
            consumed={int(worker): n for worker, n in mine["consumed"].items()},
            counts=SampleCounts.from_vector(mine["counts"]),
        )
        log.info("resumed from %s (step %d)", latest, self.progress.step)

    def _named_trainable(self):
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]


class _Meter:
    """Sums between two logged steps."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.loss_sum = self.label_tokens = self.tokens = self.samples = 0.0
        self.started = time.perf_counter()

    def add(self, loss_sum: float, label_tokens: int, tokens: int, samples: int) -> None:
        self.loss_sum += loss_sum
        self.label_tokens += label_tokens
        self.tokens += tokens
        self.samples += samples

    def totals(self) -> list:
        return [self.loss_sum, self.label_tokens, self.tokens, self.samples]

    def elapsed(self) -> float:
        return max(time.perf_counter() - self.started, 1e-9)
