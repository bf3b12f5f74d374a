"""The run report: its numbers (pure functions), deterministic plots, and the files a run writes."""
from __future__ import annotations

import json
import re

from schemas import IndexRow, Record, Status, TmRow, release
from transforms.report import count_rows
from transforms.run_report import (
    ANSWER_TOKENS, EN_WORDS, MODALITY, NO_MODALITY, QA_PAIRS, QUESTION_TOKENS, ZH_TOKENS, caption_facts,
    duplicate_cluster_sizes, funnel, histogram_median, index_html, plots,
    report_details, translation_mix,
)


def rows_of(*specs: tuple[str, str, str, str]) -> list[IndexRow]:
    """(id, status, stage, duplicate_of) -> IndexRows."""
    return [IndexRow(id=i, key=i, status=s, stage=stage, duplicate_of=d) for i, s, stage, d in specs]


ROWS = rows_of(
    ("a", Status.KEPT.value, "", ""), ("b", Status.DUPLICATE.value, "dedup", "a"),
    ("c", Status.DUPLICATE.value, "dedup", "a"), ("d", Status.KEPT.value, "", ""),
    ("e", Status.DUPLICATE.value, "dedup", "d"), ("f", Status.REJECTED.value, "image", ""),
    ("g", Status.KEPT.value, "", ""),
)


def test_funnel_walks_the_stages_down_to_the_kept_records():
    steps = funnel(count_rows(ROWS))
    assert steps[0] == ("input", 7) and steps[-1] == ("write", 3)
    assert dict(steps)["image"] == 6 and dict(steps)["dedup"] == 3
    assert [n for _, n in steps] == sorted((n for _, n in steps), reverse=True)


def test_duplicate_clusters_count_the_survivor():
    assert duplicate_cluster_sizes(ROWS) == {2: 1, 3: 1}


def test_caption_facts_bin_lengths_and_name_missing_modality():
    record = Record(id="x", caption_en="one two three four five six seven", caption_zh="胸部 CT 图像")
    facts = caption_facts(record, lambda text: text.split(" ") + [" "])
    assert facts == [(MODALITY, NO_MODALITY), (EN_WORDS, 5), (ZH_TOKENS, 0), (QA_PAIRS, 0)]
    conversation = [{"from": "human", "value": "<image>\n这是什么类型的影像？"}, {"from": "gpt", "value": "CT影像"}]
    assert caption_facts(Record(id="y", modality="ct", conversations=conversation), str.split) == [
        (MODALITY, "ct"), (QA_PAIRS, 1), (QUESTION_TOKENS, 6), (ANSWER_TOKENS, 2)]


def test_histogram_median_matches_the_plain_median():
    import random
    import statistics

    generator = random.Random(7)
    for _ in range(500):
        values = [generator.randint(0, 6) for _ in range(generator.randint(1, 9))]
        histogram = {v: values.count(v) for v in set(values)}
        assert histogram_median(histogram) == statistics.median(values)
    assert histogram_median({}) == 0


def test_translation_mix_separates_given_memory_from_model_output():
    rows = [TmRow("a", "甲"), TmRow("b", "乙", kind="mention"), TmRow("c", "丙", model="qwen"), TmRow("d", "丁", model="qwen")]
    assert translation_mix(rows) == {"given": {"caption": 1, "mention": 1}, "qwen": {"caption": 2}}


def test_plots_are_byte_identical_and_undated():
    counts = count_rows(ROWS)
    facts = [((MODALITY, "ct"), 2), ((MODALITY, "mri"), 1), ((EN_WORDS, 10), 3), ((ZH_TOKENS, 15), 3)]
    details = report_details(counts, facts, ROWS, [TmRow("a", "甲")], {"translate.tm_hits": 1})
    first, second = plots(counts, details), plots(counts, details)
    assert first == second
    assert {"funnel.svg", "modality.svg", "caption_en_words.svg", "caption_zh_tokens.svg", "duplicate_clusters.svg",
            "translation_memory.svg", "licenses.svg"} <= set(first)
    assert "reasons.svg" not in first  # no plot without data
    for _, svg in first.values():
        assert b"<dc:date>" not in svg and svg.startswith(b"<?xml")
    page = index_html(counts, [], {"license": "commercial"}, first, details).decode()
    assert all(f'src="{name}"' in page for name in first)
    assert "translate.tm_hits" in page and "chimed_vl" in page


def test_run_writes_the_report_and_lists_it_in_the_manifest(built_release):
    manifest = json.loads((built_release / release.MANIFEST).read_text())
    listed = {entry["path"] for entry in manifest[release.M_FILES]}
    report = built_release / release.REPORT_DIR
    page = (report / "index.html").read_text()
    figures = re.findall(r'src="([^"]+)"', page)
    assert "funnel.svg" in figures and "caption_zh_tokens.svg" in figures
    assert {f"{release.REPORT_DIR}/{name}" for name in figures} | {f"{release.REPORT_DIR}/index.html"} <= listed
    stats = json.loads((report / "stats.json").read_text())
    kept = manifest[release.M_COUNTS]["status"][Status.KEPT.value]
    assert stats["funnel"]["input"] == manifest[release.M_COUNTS]["input_records"]
    assert stats["funnel"]["write"] == kept == sum(stats["modality"].values())
    assert sum(stats[ZH_TOKENS].values()) == kept
    run = stats["run"]  # facts the stages published, summed
    assert run["translate.tm_hits"] >= 1 and run["ingest.articles_read"] == 2
    qa = stats["instruction_data"]
    assert qa["qa_pairs"] > 0 and qa["question_tokens_median"] > 0 and qa["chimed_vl"]["qa_pairs"] == 469_441
