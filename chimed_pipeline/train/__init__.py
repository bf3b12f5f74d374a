"""The companion trainer: LLaVA-1.5-style two-stage training straight from the release's shards.

`commands/train.py` is the CLI; `loop` runs a stage, `model` builds and saves the model, `data`
turns shards into batches (with `formatting` for text and `images` for pixels), `tiny` makes
hub-free models for smoke runs, `synthetic` writes release-format shards for tests and benchmarks.
Nothing here is imported by `run` or `download`.
"""
