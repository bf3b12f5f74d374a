"""Run statistics and the dataset card (pure: from index rows, shard infos and options)."""
from __future__ import annotations

import collections
import json

from schemas import IndexRow, ShardInfo, Status
from schemas.records import SAMPLE_FIELD_NAMES

# Hugging Face license ids for the classes we keep.
HF_LICENSE_IDS = {
    "cc-by": "cc-by-4.0", "cc0": "cc0-1.0", "pd": "other", "cc-by-sa": "cc-by-sa-4.0", "cc-by-nd": "cc-by-nd-4.0",
    "cc-by-nc": "cc-by-nc-4.0", "cc-by-nc-sa": "cc-by-nc-sa-4.0", "cc-by-nc-nd": "cc-by-nc-nd-4.0",
}


def count_rows(rows: list[IndexRow]) -> dict:
    """Totals per status, per reason and per stage (for rows not kept), and licenses of kept rows."""
    status = collections.Counter(row.status for row in rows)
    reasons = collections.Counter(row.reason for row in rows if row.reason)
    stages = collections.Counter(row.stage for row in rows if row.stage)
    licenses = collections.Counter(row.license or "unknown" for row in rows if row.status == Status.KEPT.value)
    return {
        "input_records": len(rows),
        "status": {s.value: status.get(s.value, 0) for s in Status},
        "reason": dict(sorted(reasons.items())),
        "stage": dict(sorted(stages.items())),
        "kept_license": dict(sorted(licenses.items())),
    }


def stats_json(counts: dict, shards: list[ShardInfo], options: dict, details: dict | None = None) -> bytes:
    """`details`: the run report's distributions (transforms.run_report.report_details)."""
    stats = {
        "counts": counts,
        "shards": len(shards),
        "samples": sum(s.samples for s in shards),
        "bytes": sum(s.bytes for s in shards),
        "options": options,
        **(details or {}),
    }
    return (json.dumps(stats, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def _size_category(samples: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if samples < limit:
            return name
    return "1M<n<10M"


def dataset_card(counts: dict, shards: list[ShardInfo], options: dict) -> bytes:
    """README.md in the Hugging Face Hub format: YAML header, then what the data is and how it was built."""
    samples = sum(s.samples for s in shards)
    licenses = sorted({HF_LICENSE_IDS.get(name, "other") for name in counts["kept_license"]}) or ["other"]
    status = counts["status"]
    reasons = "\n".join(f"| {reason} | {n} |" for reason, n in counts["reason"].items()) or "| (none) | 0 |"
    header = "\n".join(
        ["---", "license:", *[f"- {name}" for name in licenses], "language:", "- zh", "- en",
         "size_categories:", f"- {_size_category(samples)}", "task_categories:", "- image-to-text",
         "- visual-question-answering", "tags:", "- medical", "- webdataset", "configs:", "- config_name: default",
         "  data_files:", "  - split: train", "    path: shards/*.tar", "---"]
    )
    body = f"""
# ChiMed-VL-style Chinese medical image-text data

Figure/caption pairs from PubMed Central Open Access articles (and pair manifests), with Chinese
captions and LLaVA-style instruction turns, built by the chimed-pipeline.

## Construction

Ingest (JATS figures or manifest rows) -> image validation and normalization -> license filter
(`{options["license"]}`) -> exact and near-duplicate removal -> caption cleaning and language detection
-> Chinese normalization (OpenCC) / EN->ZH translation (translation memory first, then the LLM
`{options["llm_model"] or "none"}`) -> instruction turns -> WebDataset shards.

| input records | kept | duplicate | rejected | shards | samples |
|---|---|---|---|---|---|
| {counts["input_records"]} | {status["kept"]} | {status["duplicate"]} | {status["rejected"]} | {len(shards)} | {samples} |

| reason | records |
|---|---|
{reasons}

Every input record has one row in `index/*.parquet` (status, reason, detail, duplicate_of, shard).
Distributions (modality, caption lengths, duplicate clusters, licenses, translations) and plots:
`report/index.html`, `report/stats.json`.

## Fields

Each sample: `<key>.{options["image_format"]}` (at most {options["image_max_side"]} px on the longest side),
`<key>.txt` (Chinese caption) and `<key>.json` with {", ".join(f"`{name}`" for name in SAMPLE_FIELD_NAMES)}.

## Loading

```python
import webdataset as wds
dataset = wds.WebDataset("shards/chimed-vl-{{000000..{max(len(shards) - 1, 0):06d}}}.tar").decode("pil")
# or: datasets.load_dataset("webdataset", data_files={{"train": "shards/*.tar"}})
```

## Intended use and limitations

For research on medical vision-language models; not for clinical decisions. Captions were written
for readers of the article, and machine translation can be wrong. Licenses are per record
(`source.license` in each sample); respect them when redistributing.
"""
    return (header + "\n" + body).encode("utf-8")
