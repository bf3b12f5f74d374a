"""`--tiny`: a random CLIP-vision tower, a small Qwen2-style LLM and a tokenizer built in code.

Smoke runs (tests, CI, the CPU mode of scripts/gpu_check.sh) need models without the hub. The
tokenizer has one token per printable ASCII character and falls back to UTF-8 bytes for
everything else (a Chinese character is three tokens), so any text round-trips through a
vocabulary of a few hundred: the LM head, the largest layer of a tiny LLM, stays cheap on a CPU.
Its chat template is ChatML, as Qwen's.
"""
from __future__ import annotations

import dataclasses

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_SPECIAL_TOKENS = ("<pad>", "<s>", "<unk>", "<|im_start|>", "<|im_end|>")
_CHARACTERS = "\n\t" + "".join(chr(c) for c in range(0x20, 0x7F))  # the rest: UTF-8 bytes

# Random weights (--tiny, --random-init) are drawn from this seed, so stage 2 rebuilds the very
# LLM that stage 1 aligned its projector to.
RANDOM_WEIGHTS_SEED = 0


@dataclasses.dataclass(frozen=True)
class TinySizes:
    """Dimensions small enough for a few dozen CPU steps in seconds."""

    image_size: int = 56
    patch_size: int = 14  # 56 / 14 = 4 x 4 = 16 image tokens
    vision_hidden: int = 32
    vision_layers: int = 2
    vision_heads: int = 2
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 128


def tiny_tokenizer():
    """A fast tokenizer with ChatML specials, one token per ASCII character, bytes otherwise."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for token in _SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for char in _CHARACTERS:
        vocab[char] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    backend.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    tokenizer.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_image_processor(sizes: TinySizes = TinySizes()):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": sizes.image_size},
        crop_size={"height": sizes.image_size, "width": sizes.image_size},
    )


def tiny_vision_config(sizes: TinySizes = TinySizes()):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=sizes.vision_hidden,
        intermediate_size=2 * sizes.vision_hidden,
        num_hidden_layers=sizes.vision_layers,
        num_attention_heads=sizes.vision_heads,
        image_size=sizes.image_size,
        patch_size=sizes.patch_size,
    )


def tiny_text_config(vocab_size: int, sizes: TinySizes = TinySizes()):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=sizes.text_hidden,
        intermediate_size=sizes.text_intermediate,
        num_hidden_layers=sizes.text_layers,
        num_attention_heads=sizes.text_heads,
        num_key_value_heads=sizes.text_kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
