"""The LLM QA generator: prompt and schema, the turn checks, batching / bisection / retry with an
injected fake client, then the real client against the local fake server (replies that break the
schema included), and the instruct stage's `--qa llm` path on Beam."""
from __future__ import annotations

import json

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

import fakellm
from chimed_pipeline.llm import Counters, LlmClient, LlmConfig, LlmError
from schemas import Reason, Record, Stage
from schemas.records import GPT, HUMAN, IMAGE_TOKEN
from transforms.instruct import QA_LLM, BuildInstructions
from transforms.qa_llm import (
    BISECTIONS,
    CITES_SOURCE,
    FAILED,
    MAX_PAIRS,
    MEDICAL_ADVICE,
    MIN_PAIRS,
    REFUSAL,
    SCHEMA_NAME,
    SYSTEM_PROMPT,
    TURNS_DROPPED,
    QaGenerator,
    QaSource,
    build_messages,
    qa_source,
    reply_schema,
    turn_problems,
    validate_pairs,
)
from transforms.qa_pairs import QaPair
from transforms.qa_template import template_qa

KEY = "sk-test-qa-0123456789"
CT = QaSource("ct", "Contrast-enhanced axial CT of the abdomen shows a 3.2 cm hypodense lesion in the right hepatic lobe.",
              "腹部增强轴位CT显示肝右叶一个3.2 cm的低密度病灶。", ("A hypodense lesion was found (Figure 1).",))
HISTOLOGY = QaSource("he", "Renal biopsy, H&E stain (×200): glomeruli with mesangial proliferation and tubular atrophy.")
XRAY = QaSource("xr", "Posteroanterior chest X-ray showing bilateral hilar enlargement without pleural effusion.")


def pair(question: str, answer: str) -> dict:
    return {"question": question, "answer": answer}


GOOD = [pair("这是什么类型的影像？", "这是一张腹部增强CT影像。"), pair("病灶有多大？", "病灶约3.2 cm，位于肝右叶。")]


# --- prompt, schema, checks ----------------------------------------------------------------------


def test_schema_names_every_item_and_bounds_the_pairs():
    schema = reply_schema(["1", "2"])
    assert schema["required"] == ["1", "2"] and schema["additionalProperties"] is False
    pairs = schema["properties"]["1"]
    assert (pairs["minItems"], pairs["maxItems"]) == (MIN_PAIRS, MAX_PAIRS)
    assert pairs["items"]["required"] == ["question", "answer"]


def test_prompt_holds_caption_and_mentions_never_an_image():
    messages = build_messages({"1": CT}, {})
    assert messages[0]["content"] == SYSTEM_PROMPT and "根据图注" in SYSTEM_PROMPT  # the rule names the phrasing
    item = json.loads(messages[1]["content"])["1"]
    assert item == {"caption": CT.caption, "caption_zh": CT.caption_zh, "mentions": list(CT.mentions)}
    retry = build_messages({"1": CT}, {"1": "2× cites the caption or context"})
    assert "cites the caption" in retry[0]["content"]


@pytest.mark.parametrize(
    "question, answer, problem",
    [
        ("根据图注，病灶在哪里？", "位于肝右叶。", CITES_SOURCE),
        ("病灶在哪里？", "上下文中提到病灶位于肝右叶。", CITES_SOURCE),
        ("What does the caption say?", "图中可见病灶。", CITES_SOURCE),
        ("病灶的性质是什么？", "无法确定病灶的性质。", REFUSAL),
        ("病灶的病理类型？", "文中未提及。", REFUSAL),
        ("患者应该怎么办？", "建议患者尽快就医。", MEDICAL_ADVICE),
        ("下一步？", "请咨询专业医生。", MEDICAL_ADVICE),
        ("病灶有多大？", "病灶约4.5 cm。", "number not in the source: 4.5"),
        ("这是什么检查？", "这是磁共振检查。", "concept not in the source: modality:mri"),
        ("这是哪个方位？", "这是矢状位图像。", "concept not in the source: view:sagittal"),
        ("标志物？", "HER2阳性。", "term not in the source: HER2"),
        ("What is it?", "A CT image.", "not Chinese"),
    ],
)
def test_turn_checks_drop_what_the_source_does_not_support(question, answer, problem):
    assert problem in turn_problems(QaPair(question, answer), CT)


def test_grounded_turns_pass_in_either_language_of_the_source():
    for answer in ("这是一张腹部增强CT影像。", "病灶约3.2 cm。", "这是轴位图像。", "是计算机断层扫描（CT）。"):
        assert turn_problems(QaPair("问题？", answer), CT) == [], answer
    assert turn_problems(QaPair("染色方法？", "苏木精-伊红染色，放大200倍。"), HISTOLOGY) == []
    assert turn_problems(QaPair("这是什么图像？", "这是一张组织病理切片。"), HISTOLOGY) == []  # H&E implies it


def test_validate_pairs_keeps_good_turns_and_rejects_bad_shapes():
    judged = validate_pairs([*GOOD, pair("根据描述，这是什么？", "这是CT。"), pair("这是什么类型的影像？", "CT影像。")], CT)
    assert [p.question for p in judged.kept] == [g["question"] for g in GOOD]
    assert (judged.problems, judged.dropped) == ([CITES_SOURCE, "repeats an earlier question"], 2)
    one = validate_pairs([GOOD[0]], CT)
    assert (one.kept, one.problems) == ([], [f"reply has 1 QA pairs, expected {MIN_PAIRS}-{MAX_PAIRS}"])
    assert validate_pairs("这是CT。", CT).kept == []
    assert validate_pairs([GOOD[0], "not an object"], CT).problems == ["empty question or answer"]


def test_qa_source_of_a_record():
    record = Record(id="r", caption_en="Axial CT.", caption_zh="轴位CT。", inline_mentions_en=["See Figure 1."])
    assert qa_source(record) == QaSource("r", "Axial CT.", "轴位CT。", ("See Figure 1.",))
    chinese = Record(id="z", caption_zh="轴位CT。", inline_mentions_zh=["见图1。"])
    assert qa_source(chinese) == QaSource("z", "轴位CT。", "轴位CT。", ("见图1。",))


# --- the generator with an injected client ----------------------------------------------------------


class ScriptedClient:
    """`request_json` answers from a script: one callable(items, corrections) per request, in order."""

    def __init__(self, *script) -> None:
        self.script = list(script)
        self.calls: list[tuple[dict, dict]] = []
        self.counters = Counters()

    def request_json(self, messages, schema, *, name):
        assert name == SCHEMA_NAME and set(schema["required"]) == set(json.loads(messages[1]["content"]))
        items = json.loads(messages[1]["content"])
        self.calls.append((items, messages[0]["content"]))
        return self.script.pop(0)(items, messages[0]["content"])

    def map_concurrent(self, fn, inputs):
        return [fn(x) for x in inputs]


def config(**overrides) -> LlmConfig:
    return LlmConfig(model="m", **overrides)


def grounded(items, _system):
    return {key: GOOD if "hepatic" in item["caption"] else [pair("这是什么？", "这是一张X线影像。"),
                                                          pair("是否有胸腔积液？", "未见胸腔积液。")]
            for key, item in items.items()}


def test_generate_returns_grounded_pairs_in_order():
    client = ScriptedClient(grounded)
    results = QaGenerator(client, config()).generate([CT, XRAY])
    assert [r.item_id for r in results] == ["ct", "xr"] and all(r.ok and not r.detail for r in results)
    assert results[0].pairs[1] == QaPair("病灶有多大？", "病灶约3.2 cm，位于肝右叶。")
    assert len(client.calls) == 1 and set(client.calls[0][0]) == {"1", "2"}


def test_an_item_whose_turns_all_fail_is_retried_with_the_problems_named():
    def first(items, _system):
        return {key: [pair("根据图注，这是什么？", "这是CT。"), pair("建议？", "建议患者尽快就医。")] for key in items}

    client = ScriptedClient(first, grounded)
    [result] = QaGenerator(client, config()).generate([CT])
    assert result.ok and result.pairs[0].question == GOOD[0]["question"]
    assert "cites the caption" in client.calls[1][1] and "medical advice" in client.calls[1][1]
    assert client.counters.get(TURNS_DROPPED) == 2


def test_an_item_failing_twice_is_a_failure_with_the_reasons():
    refuse = lambda items, _s: {key: [pair("性质？", "无法确定。"), pair("大小？", "约9.9 cm。")] for key in items}  # noqa: E731
    client = ScriptedClient(refuse, refuse)
    [result] = QaGenerator(client, config()).generate([CT])
    assert not result.ok
    assert result.detail.startswith("no valid QA turn:") and "9.9" in result.detail and "refuses" in result.detail
    assert client.counters.get(FAILED) == 1


def test_some_dropped_turns_keep_the_item_and_say_so():
    partly = lambda items, _s: {key: [*GOOD, pair("意义？", "文中未提及。")] for key in items}  # noqa: E731
    [result] = QaGenerator(ScriptedClient(partly), config()).generate([CT])
    assert len(result.pairs) == 2 and result.detail == f"dropped 1× {REFUSAL}"


def test_a_failing_batch_is_split_down_to_the_item_that_breaks_it():
    def breaks_on_xray(items, system):
        if any("X-ray" in item["caption"] for item in items.values()):
            raise LlmError("reply breaks the schema: $.2: expected array", splittable=True)
        return grounded(items, system)

    client = ScriptedClient(*[breaks_on_xray] * 3)
    results = QaGenerator(client, config(batch_items=8)).generate([CT, XRAY])
    assert [r.ok for r in results] == [True, False]
    assert results[1].detail.startswith("QA request failed: reply breaks the schema")
    assert client.counters.get(BISECTIONS) >= 1


def test_an_unsplittable_error_fails_the_whole_batch_without_splitting():
    def overloaded(items, _system):
        raise LlmError("HTTP 503: overloaded (after 7 attempts)", splittable=False)

    client = ScriptedClient(overloaded, overloaded)
    results = QaGenerator(client, config()).generate([CT, XRAY])
    assert [r.detail for r in results] == ["QA request failed: HTTP 503: overloaded (after 7 attempts)"] * 2
    assert client.counters.get(BISECTIONS) == 0


# --- the real client against the local fake server ------------------------------------------------

CITE = "CITESOURCE"  # markers in a caption that make the fake answer badly
INVENT = "INVENTNUMBER"
ONE_PAIR = "ONEPAIR"
BAD_SHAPE = "BADSHAPE"


class FakeQaLlm(fakellm.FakeLlm):
    """The translation fake, answering QA requests instead: grounded pairs from the offline
    templates, spoiled on request by markers in the caption, plus the base server's faults."""

    @staticmethod
    def _content(messages: list, fault: str) -> str:
        if fault == fakellm.NOT_JSON_CONTENT:
            return "Sure! Here are some questions about the figure."
        items = json.loads(messages[-1]["content"])
        retrying = "上一次" in messages[0]["content"]
        reply = {}
        for key, item in items.items():
            pairs = [pair(p.question, p.answer) for p in template_qa(key, item["caption"], item.get("caption_zh", ""))]
            if CITE in item["caption"] and not retrying:
                pairs = [pair("根据图注，" + p["question"], p["answer"]) for p in pairs]
            if INVENT in item["caption"]:
                pairs[-1] = pair("病灶有多大？", "约12.5 cm。")
            if ONE_PAIR in item["caption"]:
                pairs = pairs[:1]
            reply[key] = "这是CT。" if BAD_SHAPE in item["caption"] else pairs
        if fault == fakellm.MISSING_ID and reply:
            reply.pop(next(iter(reply)))
        elif fault == fakellm.EXTRA_ID:
            reply["invented"] = [pair("问题？", "答案。")] * 2
        return json.dumps(reply, ensure_ascii=False)


@pytest.fixture
def fake_qa():
    with FakeQaLlm() as server:
        yield server


def http_config(fake, **overrides) -> LlmConfig:
    settings = dict(model="fake-model", base_url=fake.base_url, timeout_s=5.0, backoff_s=0.001,
                    backoff_max_s=0.005, throttle_delay_s=0.001, max_retries=2, concurrency=2)
    settings.update(overrides)
    return LlmConfig(**settings)


def sources(*markers: str) -> list[QaSource]:
    base = "Axial contrast-enhanced CT of the chest shows a 2 cm nodule in the right lung"
    return [QaSource(f"s{n}", f"{base} {marker}.".replace(" .", ".")) for n, marker in enumerate(markers)]


def generate(fake, items, **overrides):
    client = LlmClient(http_config(fake, **overrides), KEY)
    try:
        return QaGenerator(client, client.config).generate(items), client
    finally:
        client.close()


def test_fake_server_round_trip_with_spoiled_turns(fake_qa):
    results, client = generate(fake_qa, sources("", CITE, INVENT, ONE_PAIR), batch_items=4)
    clean, cited, invented, one = results
    assert clean.ok and clean.pairs[0].answer == "这是一张CT影像。"
    assert cited.ok and not cited.pairs[0].question.startswith("根据")  # retried with the problem named
    assert invented.ok and "12.5" not in " ".join(p.answer for p in invented.pairs)
    assert invented.detail == "dropped 1× number not in the source: 12.5"
    assert not one.ok and "reply has 1 QA pairs" in one.detail  # minItems broken, twice
    body = fake_qa.requests[0].body
    assert body["response_format"]["json_schema"]["name"] == SCHEMA_NAME
    assert set(body["response_format"]["json_schema"]["schema"]["required"]) == {"1", "2", "3", "4"}


@pytest.mark.parametrize("fault", [fakellm.MISSING_ID, fakellm.EXTRA_ID, fakellm.NOT_JSON_CONTENT])
def test_a_reply_breaking_the_schema_once_is_retried(fake_qa, fault):
    fake_qa.inject(fault)
    results, client = generate(fake_qa, sources("", ""), batch_items=2)
    assert all(r.ok for r in results)
    assert len(fake_qa.requests) == 2


def test_an_item_that_always_breaks_the_schema_fails_alone(fake_qa):
    results, client = generate(fake_qa, sources("", BAD_SHAPE, ""), batch_items=3)
    assert [r.ok for r in results] == [True, False, True]
    assert "breaks the schema" in results[1].detail
    assert client.counters.get(BISECTIONS) >= 1


# --- the instruct stage with --qa llm ----------------------------------------------------------------


def test_instruct_stage_with_llm_qa_on_beam(fake_qa, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    llm = http_config(fake_qa, batch_items=2, concurrency=1)
    carrying = [{"from": HUMAN, "value": "<image>\n這是什麼檢查？"}, {"from": GPT, "value": "這是CT。"}]
    records = [
        Record(id="ok", caption_en=sources("")[0].caption, caption_zh="胸部增强轴位CT示右肺2 cm结节。"),
        Record(id="broken", caption_en=sources(BAD_SHAPE)[0].caption, caption_zh="胸部CT。"),
        Record(id="carried", caption_zh="胸部CT。", conversations=carrying),
    ]
    with beam.Pipeline() as pipeline:
        result = pipeline | beam.Create(records) | BuildInstructions(QA_LLM, llm)
        kept = result.records | "Kept" >> beam.Map(
            lambda r: (r.id, r.modality, r.conversations[0]["value"].startswith(IMAGE_TOKEN + "\n"), len(r.conversations))
        )
        rows = result.rows | "Rows" >> beam.Map(lambda row: (row.id, row.stage, row.reason))
        assert_that(kept, equal_to([("ok", "ct", True, 10), ("carried", "ct", True, 2)]), label="kept")
        assert_that(rows, equal_to([("broken", Stage.INSTRUCT.value, Reason.QA_FAILED.value)]), label="rows")
    assert not any("胸部CT。" == json.loads(r.body["messages"][1]["content"]).get("1", {}).get("caption")
                   for r in fake_qa.requests)  # the record that came with QA keeps it: nothing is asked


def test_llm_mode_needs_a_model():
    with pytest.raises(ValueError, match="--llm-model"):
        BuildInstructions(QA_LLM, None)


def test_dry_run_estimates_and_calls_nothing():
    from transforms.base import FACTS, ROWS
    from transforms.instruct import DRY_RUN_DETAIL, GenerateQaFn
    from transforms.qa_llm import COMPLETION_TOKENS_PER_ITEM, estimate_cost

    estimate = estimate_cost([CT, XRAY, HISTOLOGY], config(batch_items=2))
    assert (estimate.items, estimate.requests) == (3, 2) and estimate.prompt_tokens > 0
    assert estimate.completion_tokens == 3 * COMPLETION_TOKENS_PER_ITEM
    fn = GenerateQaFn(config(dry_run=True))
    fn.setup()
    outputs = list(fn.process([Record(id="d", caption_en=CT.caption, caption_zh=CT.caption_zh)]))
    [row] = [out.value for out in outputs if out.tag == ROWS]
    assert (row.reason, row.detail) == (Reason.QA_FAILED.value, DRY_RUN_DETAIL)
    facts = dict(out.value for out in outputs if out.tag == FACTS)
    assert facts and all(name.startswith("qa.dry_run_") for name in facts)


def test_llm_qa_is_kept_in_the_tm_so_a_rerun_pays_nothing(fake_qa, monkeypatch, tmp_path):
    from schemas import TmRow
    from transforms.instruct import pairs_from_tm

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    llm = http_config(fake_qa, batch_items=2, concurrency=1)
    records = [Record(id="ok", caption_en=sources("")[0].caption, caption_zh="胸部增强轴位CT示右肺2 cm结节。")]

    def build(tm_rows: list, name: str) -> tuple[list, list]:
        with beam.Pipeline() as pipeline:
            memory = pipeline | "Tm" >> beam.Create([(row.lookup_key, ((0, "tm", n), row)) for n, row in enumerate(tm_rows)])
            result = pipeline | "Records" >> beam.Create(records) | BuildInstructions(QA_LLM, llm, memory)
            _ = (result.tm_rows | "TmJson" >> beam.Map(lambda row: json.dumps(row.as_dict(), ensure_ascii=False))
                 | "WriteTm" >> beam.io.WriteToText(str(tmp_path / f"{name}-tm")))
            _ = (result.records | "Turns" >> beam.Map(lambda r: json.dumps(r.conversations, ensure_ascii=False))
                 | "WriteTurns" >> beam.io.WriteToText(str(tmp_path / f"{name}-turns")))

        def lines(prefix: str) -> list:
            return [json.loads(line) for path in sorted(tmp_path.glob(f"{prefix}*")) for line in path.read_text().splitlines()]

        return [TmRow.from_dict(row) for row in lines(f"{name}-tm")], lines(f"{name}-turns")

    first_tm, first_turns = build([], "first")
    assert len(fake_qa.requests) == 1
    [row] = first_tm
    assert row.kind == "qa" and row.model == llm.model and pairs_from_tm(row)
    second_tm, second_turns = build(first_tm, "second")
    assert len(fake_qa.requests) == 1  # the QA came from the TM
    assert second_turns == first_turns and second_tm == first_tm
