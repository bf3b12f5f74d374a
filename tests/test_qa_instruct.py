"""Stage-2 wiring without Beam: the instruct stage's template / none modes, QA that comes with the
input (PMC-CaseReport rows, LLaVA conversations in English or Traditional Chinese), and `--qa`."""
from __future__ import annotations

import argparse
import json

import pytest

from chimed_pipeline.commands import run as run_command
from schemas import IndexRow, Reason, Record, Stage, TmKind
from schemas.records import GPT, HUMAN, IMAGE_TOKEN, turn
from transforms.instruct import QA_LLM, QA_NONE, QA_TEMPLATE, with_template_qa
from transforms.manifests import read_manifest
from transforms.translate import QA_SLOT, SlotResult, apply_results, text_requests

CT_EN = "Axial contrast-enhanced CT of the abdomen shows a 3.2 cm hypodense lesion in the right hepatic lobe."
CT_ZH = "腹部增强轴位CT显示肝右叶一个3.2 cm的低密度病灶。"


def test_template_mode_sets_modality_alignment_and_qa():
    record = with_template_qa(Record(id="PMC1_F1", caption_en=CT_EN, caption_zh=CT_ZH), QA_TEMPLATE)
    assert record.modality == "ct"
    assert record.alignment[1] == turn(GPT, CT_ZH)
    turns = record.conversations
    assert [t["from"] for t in turns] == [HUMAN, GPT] * (len(turns) // 2) and 2 <= len(turns) // 2 <= 5
    assert turns[0]["value"].startswith(IMAGE_TOKEN + "\n") and sum(IMAGE_TOKEN in t["value"] for t in turns) == 1
    assert turns[1]["value"] == "这是一张CT影像。"


def test_none_mode_keeps_the_record_without_qa_but_with_its_modality():
    record = with_template_qa(Record(id="r", caption_en=CT_EN, caption_zh=CT_ZH), QA_NONE)
    assert isinstance(record, Record) and record.conversations == [] and record.modality == "ct"


def test_ingested_chinese_qa_is_kept_in_simplified_chinese():
    turns = [turn(HUMAN, "這是什麼檢查？<image>"), turn(GPT, "這是彩色眼底照相。"), turn(HUMAN, "視盤？"), turn(GPT, "視盤水腫。")]
    record = with_template_qa(Record(id="q", caption_zh="左眼眼底彩照。", conversations=turns), QA_TEMPLATE)
    assert [t["value"] for t in record.conversations] == [f"{IMAGE_TOKEN}\n这是什么检查？", "这是彩色眼底照相。", "视盘？", "视盘水肿。"]
    assert record.modality == "fundus"


def test_unanswered_ingested_qa_is_rejected_and_a_caption_with_nothing_to_ask_keeps_its_record():
    row = with_template_qa(Record(id="u", caption_zh="眼底。", conversations=[turn(HUMAN, "问题？")]), QA_TEMPLATE)
    assert isinstance(row, IndexRow)
    assert (row.status, row.stage, row.reason) == ("rejected", Stage.INSTRUCT.value, Reason.QA_FAILED.value)
    assert row.detail
    # Still a stage-1 alignment pair: kept, with no stage-2 turns (the trainer counts those apart).
    kept = with_template_qa(Record(id="n", caption_en="Effects of timing on lysis."), QA_TEMPLATE)
    assert isinstance(kept, Record) and kept.conversations == []


def test_pmc_case_report_rows_become_one_record_per_image():
    rows = [
        {"PMC_id": "PMC7000001", "context": "A 45-year-old man ...", "inline": "CT showed a mass (Fig. 1).",
         "question": "What does the CT show?", "answer": "A mass in the left kidney.", "img_ref": "['PMC7000001_F1.jpg']"},
        {"PMC_id": "PMC7000001", "context": "A 45-year-old man ...", "inline": "CT showed a mass (Fig. 1).",
         "question": "Which side?", "answer": "The left kidney.", "img_ref": ["PMC7000001_F1.jpg", "PMC7000001_F2.jpg"]},
        {"PMC_id": "PMC7000002", "question": "Q?", "answer": "A.", "img_ref": ""},
    ]
    out = read_manifest("\n".join(json.dumps(r) for r in rows), "/data/case_report.jsonl", "/images")
    record, rejected = out
    assert record.id == "case_report_L1" and record.source.pmcid == "PMC7000001"
    assert record.image_uri == "/images/PMC7000001_F1.jpg" and record.inline_mentions_en == ["CT showed a mass (Fig. 1)."]
    assert [t["value"] for t in record.conversations] == [
        "What does the CT show?", "A mass in the left kidney.", "Which side?", "The left kidney."]
    assert isinstance(rejected, IndexRow) and rejected.reason == Reason.MALFORMED_RECORD.value


def test_english_conversations_are_translated_through_the_tm_path():
    record = Record(id="e", conversations=[turn(HUMAN, "<image>\nWhat modality is this?"), turn(GPT, "It is a CT scan.")])
    requests = [r for r in text_requests(record) if r.slot.startswith(QA_SLOT)]
    assert [(r.slot, r.text, r.kind) for r in requests] == [
        ("qa:0", "What modality is this?", TmKind.QA.value), ("qa:1", "It is a CT scan.", TmKind.QA.value)]
    done = apply_results(record, [SlotResult("qa:0", "这是什么检查？"), SlotResult("qa:1", "这是CT扫描。")])
    assert [t["value"] for t in done.conversations] == ["这是什么检查？", "这是CT扫描。"]
    missing = apply_results(record, [SlotResult("qa:0", "这是什么检查？"),
                                     SlotResult("qa:1", reason=Reason.UNTRANSLATED, detail="no translation")])
    assert (missing.stage, missing.reason, missing.detail) == (
        Stage.TRANSLATE.value, Reason.UNTRANSLATED.value, "QA turn 1: no translation")
    chinese = Record(id="z", conversations=[turn(HUMAN, "这是什么检查？"), turn(GPT, "这是CT。")])
    assert not any(r.slot.startswith(QA_SLOT) for r in text_requests(chinese))


def _config(*argv: str):
    parser = argparse.ArgumentParser()
    run_command.add_arguments(parser)
    args, _ = parser.parse_known_args(["--input", __file__, *argv])
    return run_command.config_from_args(args)


def test_qa_flag_defaults_to_llm_only_with_a_model():
    assert _config().qa == QA_TEMPLATE
    assert _config("--llm-model", "m").qa == QA_LLM
    assert _config("--llm-dry-run").qa == QA_LLM
    assert _config("--llm-model", "m", "--qa", "template").qa == QA_TEMPLATE
    assert _config("--qa", "none").manifest_options()["qa"] == QA_NONE
    with pytest.raises(SystemExit, match="--qa llm needs --llm-model"):
        _config("--qa", "llm")
