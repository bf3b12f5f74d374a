"""The run report (`report/`): the numbers behind it, its plots and index.html (pure: no Beam).

Inputs are the run's index rows, the counts of per-record caption facts (`caption_facts`), and the
translation memory rows the run used or produced. Output files are byte-identical across reruns:
SVG with a fixed hash salt and no date, HTML without timestamps, everything sorted.
"""
from __future__ import annotations

import collections
import html
import io
from typing import Callable, Iterable

from schemas import IndexRow, Record, ShardInfo, Stage, Status, TmRow, release
from chimed_pipeline.qa_report import CHIMED_VL_REFERENCE, jieba_tokens, qa_pairs_of
from transforms.report import dataset_card, stats_json

MODALITY = "modality"
EN_WORDS = "caption_en_words"
ZH_TOKENS = "caption_zh_tokens"
QA_PAIRS = "qa_pairs_per_sample"
QUESTION_TOKENS = "question_tokens"
ANSWER_TOKENS = "answer_tokens"
NO_MODALITY = "unknown"
GIVEN_TM = "given"  # a TM row without a model: supplied by --tm (human or earlier runs of unknown origin)
LENGTH_BIN = 5  # caption lengths are counted in bins of this many words / tokens
SVG_SALT = "chimed-report"  # fixes the ids matplotlib writes into SVG, so reruns give the same bytes


def caption_facts(record: Record, zh_tokenize: Callable[[str], list[str]]) -> list[tuple[str, object]]:
    """(fact, value) pairs of one kept record; counted over the run they give every distribution."""
    facts = [(MODALITY, record.modality or NO_MODALITY)]
    if record.caption_en:
        facts.append((EN_WORDS, len(record.caption_en.split()) // LENGTH_BIN * LENGTH_BIN))
    if record.caption_zh:
        tokens = [token for token in zh_tokenize(record.caption_zh) if token.strip()]
        facts.append((ZH_TOKENS, len(tokens) // LENGTH_BIN * LENGTH_BIN))
    pairs = qa_pairs_of(record.conversations)
    facts.append((QA_PAIRS, len(pairs)))
    for question, answer in pairs:
        facts += [(QUESTION_TOKENS, jieba_tokens(question)), (ANSWER_TOKENS, jieba_tokens(answer))]
    return facts


def histogram_median(histogram: dict) -> float:
    """The median of the values a {value: count} histogram describes (0 when it is empty)."""
    total = sum(histogram.values())
    if not total:
        return 0

    def nth(k: int):  # the k-th smallest value, from 0
        seen = 0
        for value, n in sorted(histogram.items()):
            seen += n
            if seen > k:
                return value

    return (nth((total - 1) // 2) + nth(total // 2)) / 2


def qa_summary(facts: dict) -> dict:
    """Stage-2 QA figures from the per-record facts, beside ChiMed-VL's published ones."""
    pairs = facts[QA_PAIRS]
    return {
        "samples_with_qa": sum(n for count, n in pairs.items() if count),
        "qa_pairs": sum(count * n for count, n in pairs.items()),
        "qa_pairs_per_sample_median": histogram_median({k: v for k, v in pairs.items() if k}),
        "question_tokens_median": histogram_median(facts[QUESTION_TOKENS]),
        "answer_tokens_median": histogram_median(facts[ANSWER_TOKENS]),
        "chimed_vl": dict(CHIMED_VL_REFERENCE),
    }


def funnel(counts: dict) -> list[tuple[str, int]]:
    """Records still in the running after each stage, from the input count down to the kept ones."""
    remaining = counts["input_records"]
    steps = [("input", remaining)]
    for stage in Stage:
        remaining -= counts["stage"].get(stage.value, 0)
        steps.append((stage.value, remaining))
    return steps


def duplicate_cluster_sizes(rows: Iterable[IndexRow]) -> dict[int, int]:
    """Cluster size (survivor + its duplicates) -> number of clusters of that size."""
    members = collections.Counter(row.duplicate_of for row in rows if row.status == Status.DUPLICATE.value)
    return dict(sorted(collections.Counter(n + 1 for n in members.values()).items()))


def translation_mix(tm_rows: Iterable[TmRow]) -> dict[str, dict[str, int]]:
    """TM rows the run used or produced, by origin (the model, or `given`) and kind."""
    mix: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for row in tm_rows:
        mix[row.model or GIVEN_TM][row.kind] += 1
    return {origin: dict(sorted(kinds.items())) for origin, kinds in sorted(mix.items())}


def report_details(
    counts: dict, fact_counts: Iterable[tuple[tuple[str, object], int]], rows, tm_rows, run_facts: dict
) -> dict:
    """Everything the plots show, as plain JSON-able data (also written into stats.json)."""
    facts: dict[str, dict] = collections.defaultdict(dict)
    for (fact, value), n in fact_counts:
        facts[fact][value] = n
    return {
        "funnel": dict(funnel(counts)),
        "modality": dict(sorted(facts[MODALITY].items())),
        "caption_length_bin": LENGTH_BIN,
        EN_WORDS: {str(k): v for k, v in sorted(facts[EN_WORDS].items())},
        ZH_TOKENS: {str(k): v for k, v in sorted(facts[ZH_TOKENS].items())},
        "duplicate_cluster_sizes": {str(k): v for k, v in duplicate_cluster_sizes(rows).items()},
        "translation_memory": translation_mix(tm_rows),
        "instruction_data": qa_summary(facts),
        "run": run_facts,
    }


# --- plots --------------------------------------------------------------------------------------

def _bar_svg(title: str, labels: list[str], values: list[int], axis_label: str, horizontal: bool = False) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    with matplotlib.rc_context({"svg.hashsalt": SVG_SALT, "svg.fonttype": "path", "font.size": 9}):
        height = max(2.4, 0.32 * len(labels) + 1.2) if horizontal else 3.2
        figure, axes = plt.subplots(figsize=(6.4, height))
        positions = range(len(labels))
        if horizontal:
            axes.barh(positions, values, color="#4878a8")
            axes.set_yticks(positions, labels)
            axes.invert_yaxis()
            axes.set_xlabel(axis_label)
        else:
            axes.bar(positions, values, color="#4878a8")
            axes.set_xticks(positions, labels, rotation=45 if len(labels) > 8 else 0, ha="right" if len(labels) > 8 else "center")
            axes.set_ylabel(axis_label)
        (axes.xaxis if horizontal else axes.yaxis).set_major_locator(MaxNLocator(integer=True))
        axes.set_title(title)
        figure.tight_layout()
        sink = io.BytesIO()
        figure.savefig(sink, format="svg", metadata={"Date": None, "Creator": None})
        plt.close(figure)
    return sink.getvalue()


def _length_bins(histogram: dict[str, int]) -> list[tuple[str, int]]:
    return [(f"{start}-{int(start) + LENGTH_BIN - 1}", n) for start, n in histogram.items()]


def plots(counts: dict, details: dict) -> dict[str, tuple[str, bytes]]:
    """File name -> (caption, SVG bytes) for each plot that has data."""
    charts = {
        "funnel.svg": ("Records still in the running after each stage", list(details["funnel"].items()), "records", True),
        "reasons.svg": ("Records not kept, by reason", list(counts["reason"].items()), "records", True),
        "modality.svg": ("Kept samples by modality", list(details["modality"].items()), "samples", True),
        "licenses.svg": ("Kept samples by license", list(counts["kept_license"].items()), "samples", True),
        "caption_en_words.svg": (f"English caption length (words, bins of {LENGTH_BIN})",
                                 _length_bins(details[EN_WORDS]), "samples", False),
        "caption_zh_tokens.svg": (f"Chinese caption length (jieba tokens, bins of {LENGTH_BIN})",
                                  _length_bins(details[ZH_TOKENS]), "samples", False),
        "duplicate_clusters.svg": ("Duplicate clusters by size (survivor + duplicates)",
                                   list(details["duplicate_cluster_sizes"].items()), "clusters", False),
        "translation_memory.svg": (
            "Translations used or produced, by origin and kind",
            [(f"{origin} / {kind}", n) for origin, kinds in details["translation_memory"].items() for kind, n in kinds.items()],
            "texts", True,
        ),
    }
    return {
        name: (title, _bar_svg(title, [str(label) for label, _ in items], [n for _, n in items], axis, horizontal))
        for name, (title, items, axis, horizontal) in charts.items()
        if items
    }


def _table(header: tuple[str, str], items: Iterable[tuple[object, object]]) -> str:
    body = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in items)
    return f"<table><tr><th>{header[0]}</th><th>{header[1]}</th></tr>{body}</table>"


def index_html(
    counts: dict, shards: list[ShardInfo], options: dict, figures: dict[str, tuple[str, bytes]], details: dict
) -> bytes:
    """report/index.html: the headline numbers, then every plot (files beside it) with its caption."""
    status = counts["status"]
    headline = [
        ("input records", counts["input_records"]), *status.items(),
        ("shards", len(shards)), ("samples", sum(s.samples for s in shards)), ("bytes", sum(s.bytes for s in shards)),
    ]
    sections = "".join(
        f'<figure><img src="{name}" alt="{html.escape(title)}"><figcaption>{html.escape(title)}</figcaption></figure>'
        for name, (title, _) in figures.items()
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>chimed-pipeline run report</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:left}}figure{{margin:1.5em 0}}img{{max-width:100%}}</style>
</head><body>
<h1>Run report</h1>
<p>Every number comes from the index (<code>index/*.parquet</code>, one row per input record), the kept
samples and the translation memory; <code>stats.json</code> holds the same data.</p>
<h2>Totals</h2>{_table(("", "count"), headline)}
<h2>Not kept, by reason</h2>{_table(("reason", "records"), counts["reason"].items())}
<h2>Stage-2 instruction data (ChiMed-VL's published figures in <code>chimed_vl</code>)</h2>
{_table(("", "value"), details["instruction_data"].items())}
<h2>Run facts (articles read, translation memory hits, LLM requests, tokens, retries)</h2>
{_table(("fact", "count"), details["run"].items())}
<h2>Options that shaped the output</h2>{_table(("option", "value"), options.items())}
<h2>Plots</h2>{sections}
</body></html>
"""
    return page.encode("utf-8")


def report_files(
    fact_counts: list, rows: list[IndexRow], counts: dict, shards: list[ShardInfo], tm_rows: list[TmRow],
    run_facts: dict, options: dict,
) -> list[tuple[str, bytes]]:
    """(path relative to the dataset root, bytes) of every report file and of the dataset card."""
    details = report_details(counts, fact_counts, rows, tm_rows, run_facts)
    figures = plots(counts, details)
    return [
        (f"{release.REPORT_DIR}/stats.json", stats_json(counts, shards, options, details)),
        *[(f"{release.REPORT_DIR}/{name}", svg) for name, (_, svg) in figures.items()],
        (f"{release.REPORT_DIR}/index.html", index_html(counts, shards, options, figures, details)),
        (release.DATASET_CARD, dataset_card(counts, shards, options)),
    ]
