"""The companion trainer on CPU with `--tiny`: shards built by the pipeline, tiny random models.

Budget: about a minute on two shared cores after the session's `built_release` (torch runs one
thread: two would fight the data-loader workers and the other tests for the cores).
"""
from __future__ import annotations

import io
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the trainer needs the `train` extra")
pytest.importorskip("transformers", reason="the trainer needs the `train` extra")

from chimed_pipeline.cli import main as cli  # noqa: E402
from chimed_pipeline.train.data import (  # noqa: E402
    LoaderSpec,
    SampleCounts,
    SampleDecoder,
    TurnSource,
    count_samples,
    epoch_loader,
    resolve_shards,
)
from chimed_pipeline.train.formatting import (  # noqa: E402
    IGNORE_INDEX,
    Encoded,
    TextEncoder,
    TextFormat,
    Verdict,
    normalize_turns,
)
from chimed_pipeline.train.images import ImageGeometry, load_square, normalize  # noqa: E402
from chimed_pipeline.train.synthetic import figure_jpeg, write_synthetic_release  # noqa: E402
from chimed_pipeline.train.tiny import tiny_image_processor, tiny_tokenizer  # noqa: E402
from schemas.records import GPT, HUMAN, IMAGE_TOKEN, turn  # noqa: E402

# Renders an assistant turn under a different header than its generation prompt: LLaVA's
# "tokenization mismatch" in its simplest form.
MISMATCHED_TEMPLATE = (
    "{% for m in messages %}{% set role = 'bot' if m['role'] == 'assistant' else m['role'] %}"
    "{{ '<|im_start|>' + role + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_RUN = ("--tiny", "--global-batch-size", "4", "--num-workers", "0", "--save-every", "0")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train(*args) -> int:
    return cli(["train", *map(str, args)])


def metrics(output: Path) -> list:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def stage1(built_release, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("stage1") / "model"
    assert train("--stage", 1, "--data", built_release, "--output", output, *TINY_RUN,
                 "--max-steps", 30, "--log-every", 3) == 0
    return output


@pytest.fixture(scope="module")
def tokenizer():
    tok = tiny_tokenizer()
    tok.add_tokens([IMAGE_TOKEN], special_tokens=True)
    return tok


# -- end to end ---------------------------------------------------------------------------------


def test_stage1_loss_falls_and_projector_is_saved(stage1, built_release):
    records = metrics(stage1)
    assert [r["step"] for r in records] == list(range(3, 31, 3))
    assert all({"step", "loss", "lr", "samples_per_s", "tokens_per_s"} <= set(r) for r in records)
    assert records[-1]["loss"] < records[0]["loss"]
    assert (stage1 / "projector.safetensors").is_file()
    summary = json.loads((stage1 / "summary.json").read_text())["samples"]
    # Every step trains a global batch of 4, but an epoch's short last micro-batch trains too.
    assert 30 < summary["used"] <= 30 * 4 and summary["masked"] == 0
    assert count_samples(resolve_shards([str(built_release)])) > 0


def test_stage2_from_stage1_trains_saves_reloads_and_generates(stage1, built_release, tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    output = tmp_path / "stage2"
    assert train("--stage", 2, "--init", stage1, "--data", built_release, "--output", output, "--max-steps", 4,
                 "--global-batch-size", 4, "--micro-batch-size", 2, "--num-workers", 2, "--log-every", 2) == 0
    assert len(metrics(output)) == 2
    model = LlavaForConditionalGeneration.from_pretrained(output)
    processor = AutoProcessor.from_pretrained(output)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": f"{IMAGE_TOKEN}\n这张图像显示了什么？"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    image = _image(seed=1)
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 4
    # Inference preprocessing (the saved processor) is the training preprocessing.
    geometry = ImageGeometry.from_processor(tiny_image_processor())
    trained_on = normalize(torch.from_numpy(load_square(_png(image), geometry))[None], geometry, torch.float32)
    torch.testing.assert_close(trained_on, inputs["pixel_values"], atol=1e-5, rtol=0)


def test_stage2_lora_saves_a_merged_model(stage1, built_release, tmp_path):
    from transformers import LlavaForConditionalGeneration

    output = tmp_path / "lora"
    assert train("--stage", 2, "--init", stage1, "--data", built_release, "--output", output, *TINY_RUN,
                 "--max-steps", 2, "--lora", "--lora-r", 4) == 0
    model = LlavaForConditionalGeneration.from_pretrained(output)
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_mismatched_chat_template_fails_with_the_count(stage1, built_release, tmp_path, caplog):
    template = tmp_path / "template.jinja"
    template.write_text(MISMATCHED_TEMPLATE)
    output = tmp_path / "mismatch"
    assert train("--stage", 2, "--init", stage1, "--data", built_release, "--output", output, *TINY_RUN,
                 "--max-steps", 2, "--chat-template", template) == 1
    summary = json.loads((output / "summary.json").read_text())["samples"]
    assert summary["masked"] == summary["read"] > 0 and summary["by_verdict"] == {"template_mismatch": summary["read"]}
    assert f"{summary['masked']} of {summary['read']} samples with turns" in caplog.text
    assert not (output / "model.safetensors").exists()


def test_samples_without_conversations_are_skipped_and_counted_apart(stage1, tmp_path):
    release = tmp_path / "release"
    write_synthetic_release(release, samples=24, shard_samples=8, without_conversations=8)
    output = tmp_path / "stage2"
    assert train("--stage", 2, "--init", stage1, "--data", release, "--output", output, *TINY_RUN,
                 "--epochs", 1) == 0
    summary = json.loads((output / "summary.json").read_text())
    assert summary["steps"] == 16 // 4  # the epoch ends with the usable samples
    assert summary["samples"]["skipped_no_turns"] == 8 and summary["samples"]["masked"] == 0
    assert summary["samples"]["used"] == 16


def test_resume_continues_exactly_where_the_checkpoint_left(tmp_path):
    from safetensors.torch import load_file

    release = tmp_path / "release"
    write_synthetic_release(release, samples=16, shard_samples=4)
    run = ("--stage", 1, "--data", release, "--tiny", "--global-batch-size", 4, "--num-workers", 1,
           "--max-steps", 6, "--save-every", 3, "--shuffle-buffer", 8)
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert train(*run, "--output", straight) == 0
    assert train(*run, "--output", interrupted) == 0
    shutil.rmtree(interrupted / "checkpoints" / "step-00000006")
    (interrupted / "model.safetensors").unlink()
    assert train(*run, "--output", interrupted) == 1  # refuses to overwrite without --resume
    assert train(*run, "--output", interrupted, "--resume") == 0
    assert [r["step"] for r in metrics(interrupted)][-1] == 6
    expected, resumed = (load_file(str(d / "projector.safetensors")) for d in (straight, interrupted))
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name])


def test_train_command_imports_torch_lazily():
    code = (
        "import sys, chimed_pipeline.commands.train, chimed_pipeline.cli; "
        "assert not {'torch', 'transformers'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- text ---------------------------------------------------------------------------------------


def conversation() -> list:
    return normalize_turns(
        [turn(HUMAN, "图中是什么？<image>"), turn(GPT, "胸部CT。"), turn(HUMAN, "有结节吗？"), turn(GPT, "有。")]
    )


def test_normalize_turns_puts_one_image_first():
    turns = conversation()
    assert turns[0]["value"] == f"{IMAGE_TOKEN}\n图中是什么？"
    assert sum(t["value"].count(IMAGE_TOKEN) for t in turns) == 1
    with pytest.raises(ValueError):
        normalize_turns([{"from": "robot", "value": "x"}])


def test_chat_labels_cover_exactly_the_assistant_turns(tokenizer):
    encoder = TextEncoder(tokenizer, TextFormat.CHAT, num_image_tokens=3, max_length=512)
    encoded = encoder.encode(conversation())
    assert isinstance(encoded, Encoded)
    assert encoded.input_ids.count(encoder.image_token_id) == 3
    learned = tokenizer.decode([t for t in encoded.labels if t != IGNORE_INDEX])
    assert learned == "胸部CT。<|im_end|>\n有。<|im_end|>\n"


def test_plain_format_learns_the_caption_and_eos(tokenizer):
    encoder = TextEncoder(tokenizer, TextFormat.PLAIN, num_image_tokens=2, max_length=512)
    encoded = encoder.encode(normalize_turns([turn(HUMAN, IMAGE_TOKEN), turn(GPT, "眼底照片。")]))
    assert tokenizer.decode([t for t in encoded.labels if t != IGNORE_INDEX]) == "眼底照片。<|im_end|>"
    assert encoded.input_ids[: encoded.labels.index(next(t for t in encoded.labels if t != IGNORE_INDEX))] == [
        encoder.image_token_id
    ] * 2


def test_masked_verdicts(tokenizer):
    chat = TextEncoder(tokenizer, TextFormat.CHAT, num_image_tokens=3, max_length=512)
    assert chat.encode(normalize_turns([turn(HUMAN, "只有问题")])) is Verdict.NO_TURNS
    tokenizer_copy = tiny_tokenizer()
    tokenizer_copy.add_tokens([IMAGE_TOKEN], special_tokens=True)
    tokenizer_copy.chat_template = MISMATCHED_TEMPLATE
    mismatched = TextEncoder(tokenizer_copy, TextFormat.CHAT, num_image_tokens=3, max_length=512)
    assert mismatched.encode(conversation()) is Verdict.TEMPLATE_MISMATCH
    short = TextEncoder(tokenizer, TextFormat.CHAT, num_image_tokens=3, max_length=20)
    assert short.encode(conversation()) is Verdict.TRUNCATED


# -- data ---------------------------------------------------------------------------------------


def test_resolve_shards_accepts_dirs_globs_braces_and_urls(tmp_path):
    paths = [str(p) for p in write_synthetic_release(tmp_path, samples=6, shard_samples=2)]
    shards = tmp_path / "shards"
    assert resolve_shards([str(tmp_path)]) == paths
    assert resolve_shards([str(shards)]) == paths
    assert resolve_shards([str(shards / "*.tar")]) == paths
    assert resolve_shards([str(shards / "chimed-vl-{000000..000001}.tar")]) == paths[:2]
    assert resolve_shards(["https://example.org/a.tar", paths[2]]) == ["https://example.org/a.tar", paths[2]]
    assert count_samples(paths) == 6
    with pytest.raises(ValueError):
        resolve_shards([str(tmp_path / "missing")])


def test_unreadable_samples_are_counted_not_fatal(tmp_path, tokenizer):
    import tarfile

    path = write_synthetic_release(tmp_path, samples=4, shard_samples=4)[0]
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for number, (member, data) in enumerate(members):
            data = b"not an image" if number == 0 else data  # the first sample's jpg
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    geometry = ImageGeometry.from_processor(tiny_image_processor())
    encoder = TextEncoder(tokenizer, TextFormat.PLAIN, num_image_tokens=16, max_length=512)
    spec = LoaderSpec(urls=[str(path)], decoder=SampleDecoder(encoder, geometry, TurnSource.CAPTION),
                      micro_batch=2, pad_id=tokenizer.pad_token_id, seed=0)
    counts = SampleCounts()
    batches = list(epoch_loader(spec, epoch=1, num_workers=0))
    for batch in batches:
        counts.merge(batch.counts)
    assert counts.summary()["by_verdict"] == {"unreadable": 1, "used": 3}
    assert [b.size for b in batches] == [2, 1] and batches[-1].consumed == 4


def test_pad_to_square_uses_the_processor_mean():
    geometry = ImageGeometry.from_processor(tiny_image_processor())
    wide = _png(_image(seed=2, size=(112, 56)))
    pixels = load_square(wide, geometry)
    assert pixels.shape == (3, 56, 56)
    assert tuple(pixels[:, 0, 28]) == geometry.background  # the top padding band


def _image(seed: int, size: tuple = (96, 72)):
    from PIL import Image

    return Image.open(io.BytesIO(figure_jpeg(random.Random(seed), *size))).convert("RGB")


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
