"""The LLaVA-1.5 model for a stage: build it, choose what trains, save what users and stage 2 load.

Architecture (transformers' `LlavaForConditionalGeneration`, v5 layout): a CLIP vision tower read
at its penultimate layer without the CLS feature, a 2-layer GELU MLP projector, a causal LLM.
The vision tower and LLM come from their own checkpoints (or configs, with `random_init`), and
the Llava shell is assembled around them on the meta device, so a 7B LLM is never initialized
twice.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from chimed_pipeline.train.images import ImageGeometry
from chimed_pipeline.train.tiny import (
    RANDOM_WEIGHTS_SEED,
    tiny_image_processor,
    tiny_text_config,
    tiny_tokenizer,
    tiny_vision_config,
)
from schemas.records import IMAGE_TOKEN

log = logging.getLogger(__name__)

PROJECTOR_FILE = "projector.safetensors"
VISION_FEATURE_LAYER = -2  # LLaVA-1.5: the penultimate layer
VISION_FEATURE_STRATEGY = "default"  # drop the CLS feature
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where the two halves come from."""

    vision: str = ""  # a CLIP checkpoint (path or hub id)
    llm: str = ""  # a causal LM checkpoint with its tokenizer
    tokenizer: str = ""  # the tokenizer from elsewhere than `llm`
    tiny: bool = False  # tiny random halves and an in-code tokenizer (no files, no hub)
    random_init: bool = False  # only the configs (and tokenizer) of `vision` / `llm`, random weights
    chat_template: str = ""  # overrides the tokenizer's own, when given


@dataclasses.dataclass
class Built:
    model: object  # LlavaForConditionalGeneration
    tokenizer: object
    image_processor: object
    geometry: ImageGeometry
    num_image_tokens: int


def build_model(source: ModelSource) -> Built:
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    tokenizer, image_processor, vision, llm = _halves(source)
    if source.chat_template:
        tokenizer.chat_template = source.chat_template
    vision_config = vision.config
    if image_processor.crop_size["height"] != vision_config.image_size:
        raise ValueError(
            f"image processor crops to {image_processor.crop_size['height']} px but the vision tower "
            f"expects {vision_config.image_size} px"
        )
    num_image_tokens = (vision_config.image_size // vision_config.patch_size) ** 2
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=llm.config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=num_image_tokens,
        vision_feature_layer=VISION_FEATURE_LAYER,
        vision_feature_select_strategy=VISION_FEATURE_STRATEGY,
        projector_hidden_act="gelu",
        tie_word_embeddings=bool(llm.config.tie_word_embeddings),
    )
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    model.model.vision_tower = vision
    model.model.language_model = llm.get_decoder()
    model.lm_head = llm.get_output_embeddings()
    with torch.random.fork_rng():
        torch.manual_seed(RANDOM_WEIGHTS_SEED)  # a deterministic projector start, whatever ran before
        model.model.multi_modal_projector = LlavaMultiModalProjector(config).to(llm.dtype)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    still_meta = [name for name, tensor in model.state_dict().items() if tensor.is_meta]
    if still_meta:
        raise RuntimeError(f"parameters left uninitialized: {still_meta[:5]}")
    return Built(
        model=model,
        tokenizer=tokenizer,
        image_processor=image_processor,
        geometry=ImageGeometry.from_processor(image_processor),
        num_image_tokens=num_image_tokens,
    )


def _halves(source: ModelSource):
    """Tokenizer (with `<image>` added), image processor, vision tower, causal LM."""
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
    )

    if source.tiny:
        tokenizer = tiny_tokenizer()
        tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
        with torch.random.fork_rng():
            torch.manual_seed(RANDOM_WEIGHTS_SEED)  # stage 2 must rebuild the LLM that stage 1 aligned to
            vision = CLIPVisionModel(tiny_vision_config())
            llm = AutoModelForCausalLM.from_config(tiny_text_config(len(tokenizer)))
        return tokenizer, tiny_image_processor(), vision, llm
    if not (source.vision and source.llm):
        raise ValueError("give --vision-model and --llm (or --tiny)")
    tokenizer = AutoTokenizer.from_pretrained(source.tokenizer or source.llm)
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked out of attention and loss
    image_processor = CLIPImageProcessor.from_pretrained(source.vision)
    if source.random_init:
        log.warning("random weights for %s and %s (--random-init)", source.vision, source.llm)
        with torch.random.fork_rng():
            torch.manual_seed(RANDOM_WEIGHTS_SEED)  # as with --tiny: stage 2 rebuilds stage 1's weights
            vision = CLIPVisionModel(CLIPVisionConfig.from_pretrained(source.vision))
            llm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source.llm))
    else:
        vision = CLIPVisionModel.from_pretrained(source.vision)
        llm = AutoModelForCausalLM.from_pretrained(source.llm)
    return tokenizer, image_processor, vision, llm


def load_projector(model, init_dir: str) -> None:
    """Stage 2 starts from stage 1's projector."""
    from safetensors.torch import load_file

    path = Path(init_dir) / PROJECTOR_FILE
    if not path.is_file():
        raise ValueError(f"--init {init_dir}: no {PROJECTOR_FILE} (is it a stage-1 output directory?)")
    projector = model.model.multi_modal_projector
    state = load_file(str(path))
    expected = {name: tuple(t.shape) for name, t in projector.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in state.items()}
    if expected != found:
        raise ValueError(
            f"--init {init_dir}: projector shapes {found} do not fit this model's {expected} "
            "(stage 2 must use stage 1's vision tower and LLM)"
        )
    projector.load_state_dict({name: t.to(projector.linear_1.weight.dtype) for name, t in state.items()})


def projector_state(model) -> dict:
    projector = model.model.multi_modal_projector
    return {name: t.detach().float().cpu().contiguous() for name, t in projector.state_dict().items()}


def set_trainable(model, stage: int, lora: "LoraOptions | None"):
    """Stage 1: the projector. Stage 2: projector + LLM (or + LoRA adapters on the LLM).
    The vision tower stays frozen (and in eval mode) in both. Returns the model to train."""
    model.requires_grad_(False)
    if stage == 2 and lora is not None:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=LORA_TARGETS),
        )
    elif stage == 2:
        _inner(model).language_model.requires_grad_(True)
        llava(model).lm_head.requires_grad_(True)
    _inner(model).multi_modal_projector.requires_grad_(True)
    return model


@dataclasses.dataclass(frozen=True)
class LoraOptions:
    r: int = 128  # LLaVA-1.5's LoRA recipe
    alpha: int = 256
    dropout: float = 0.05


def llava(model):
    """The LlavaForConditionalGeneration inside DDP and/or PEFT wrappers."""
    if hasattr(model, "module"):  # DistributedDataParallel
        model = model.module
    if hasattr(model, "get_base_model"):  # PeftModel
        model = model.get_base_model()
    return model


def _inner(model):
    return llava(model).model


def enable_activation_checkpointing(model) -> None:
    """Recompute the LLM's activations in the backward pass (non-reentrant: frozen inputs are fine)."""
    kwargs = {"use_reentrant": False}
    model = llava(model)
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; older: the v4 name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def freeze_in_eval(model) -> None:
    """Frozen towers run in eval mode: no dropout, and no gradient checkpointing to pay for."""
    _inner(model).vision_tower.eval()


def save_final(model, built: Built, output: Path, dtype) -> None:
    """A Hugging Face model directory: weights, config, tokenizer, processor (pads to square as in
    training), plus the projector alone for `--init`."""
    from safetensors.torch import save_file
    from transformers import LlavaProcessor

    if hasattr(model, "merge_and_unload"):  # PEFT: fold the adapters into the LLM's weights
        model = model.merge_and_unload()
    model = llava(model).to(dtype)
    model.save_pretrained(output)
    processor = LlavaProcessor(
        image_processor=inference_image_processor(built.image_processor),
        tokenizer=built.tokenizer,
        patch_size=model.config.vision_config.patch_size,
        vision_feature_select_strategy=VISION_FEATURE_STRATEGY,
        num_additional_image_tokens=1,  # CLS, dropped by the "default" strategy
        chat_template=built.tokenizer.chat_template,
    )
    processor.save_pretrained(output)
    save_file(projector_state(model), str(output / PROJECTOR_FILE))


def inference_image_processor(clip_processor):
    """The LLaVA image processor with the training geometry, padding to square included."""
    from transformers import LlavaImageProcessor

    return LlavaImageProcessor(
        do_pad=True,
        size=dict(shortest_edge=clip_processor.size["shortest_edge"]),
        crop_size=dict(height=clip_processor.crop_size["height"], width=clip_processor.crop_size["width"]),
        resample=clip_processor.resample,
        rescale_factor=clip_processor.rescale_factor,
        image_mean=list(clip_processor.image_mean),
        image_std=list(clip_processor.image_std),
    )
