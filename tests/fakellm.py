"""A local OpenAI-compatible chat-completions server for tests and benchmarks.

`FakeLlm` listens on 127.0.0.1 (ephemeral port) in a background thread. It "translates" the JSON
object of a translation request deterministically: each English word becomes a Chinese character
(glossary terms their glossary Chinese), while numbers, panel labels and abbreviations are kept,
so its output passes the translation checks. Faults are injected two ways:

- `inject(*faults)`: the next requests, one fault each (see FAULTS);
- markers inside a text: `UNTRANSLATABLE` (the text comes back in English, every time),
  `DROPNUMBER` (numbers dropped unless the prompt asks for a correction), `POISON` (a batch holding
  it gets a reply without that item).

Every request is recorded (`requests`) with its usage, as a server's bill would count it.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import re
import threading
import time
import zlib
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from chimed_pipeline.llm import LlmConfig
from transforms.glossary import load_glossary
from transforms.translation import CORRECTIONS_HEADING

RATE_LIMIT = "rate_limit"  # 429 with Retry-After
SERVER_ERROR = "server_error"  # 500 with a JSON error body
HTML_BODY = "html_body"  # 200 with an HTML page (a proxy in the way)
MISSING_ID = "missing_id"  # a reply without one of the batch's keys
EXTRA_ID = "extra_id"  # a reply with an invented key
MERGED_IDS = "merged_ids"  # two items merged under one key ("1,2")
NOT_JSON_CONTENT = "not_json_content"  # the message content is prose, not JSON
TRUNCATED = "truncated"  # finish_reason "length" with cut-off content
SLOW = "slow"  # replies only after `slow_s` (beyond the client's timeout)
UNAUTHORIZED = "unauthorized"  # 401
ECHO_AUTH = "echo_auth"  # 400 whose error message repeats the Authorization header
FAULTS = (
    RATE_LIMIT, SERVER_ERROR, HTML_BODY, MISSING_ID, EXTRA_ID, MERGED_IDS,
    NOT_JSON_CONTENT, TRUNCATED, SLOW, UNAUTHORIZED, ECHO_AUTH,
)

UNTRANSLATABLE = "UNTRANSLATABLE"
DROPNUMBER = "DROPNUMBER"
POISON = "POISON"

# Simplified-Chinese medical words the fake maps English words onto.
_WORDS = (
    "显示 患者 病灶 细胞 表达 分析 治疗 组织 图像 实验 结果 检测 部位 明显 区域 周围 增强 信号 密度 结构 "
    "形态 改变 正常 异常 水平 数据 对照 处理 观察 提示 位于 伴有 边界 清晰 大小 范围 内部 呈现 相关 比较 "
    "显著 降低 升高 病理 临床 影像 标记 阳性 阴性 染色 切片 样本 组别 时间 剂量 浓度 反应 功能 血管 进行"
).split()
_TOKEN = re.compile(r"\(\s*[A-Za-z]{1,4}(?:\s*[-–,]\s*[A-Za-z]{1,4})*\s*\)|\d+(?:[.,]\d+)*|[A-Za-z][A-Za-z'-]*|\S")
_PUNCTUATION = {".": "。", ",": "，", ";": "；", ":": "：", "(": "（", ")": "）"}
_CJK_OR_WORD = re.compile(r"[\u4e00-\u9fff]|[A-Za-z]+|\d+|[^\sA-Za-z\d]")


def count_tokens(text: str) -> int:
    """The fake's tokenizer: one token per Chinese character, word, digit run or symbol."""
    return len(_CJK_OR_WORD.findall(text))


@functools.lru_cache(maxsize=1)
def _glossary_terms() -> tuple[re.Pattern, dict]:
    terms = {term.en.lower(): term.zh for term in load_glossary().terms}
    alternatives = "|".join(re.escape(en) for en in sorted(terms, key=len, reverse=True))
    return re.compile(rf"(?<![\w-])({alternatives})(?:s|es)?(?![\w-])", re.IGNORECASE), terms


def fake_translate(text: str, drop_numbers: bool = False) -> str:
    pattern, terms = _glossary_terms()
    text = pattern.sub(lambda match: terms[match.group(1).lower()], text)
    out = []
    for token in _TOKEN.findall(text):
        if token[0].isdigit():
            out.append("" if drop_numbers else token)
        elif token.startswith("(") and len(token) > 1 or re.fullmatch(r"[A-Z][A-Z0-9&-]*", token):
            out.append(token)  # panel label or abbreviation
        elif re.fullmatch(r"[A-Za-z][A-Za-z'-]*", token):
            code = zlib.crc32(token.lower().encode())
            out.append(_WORDS[code % len(_WORDS)])
        else:
            out.append(_PUNCTUATION.get(token, token))
    return "".join(out)


TEST_KEY = "sk-test-never-logged-0123456789"


def fast_config(fake: "FakeLlm", **overrides) -> LlmConfig:
    """A client configuration for `fake` with tiny timeouts and backoff, so faults cost milliseconds."""
    settings = dict(
        model="fake-model",
        base_url=fake.base_url,
        timeout_s=0.3,  # below FakeLlm's slow_s
        backoff_s=0.001,
        backoff_max_s=0.005,
        throttle_delay_s=0.001,
        max_retries=3,
    )
    settings.update(overrides)
    return LlmConfig(**settings)


@dataclasses.dataclass
class RecordedRequest:
    body: dict
    authorization: str
    fault: str = ""
    status: int = 200
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the default 5 refuses connections when many requests are in flight
    daemon_threads = True


class FakeLlm:
    def __init__(self, *, retry_after: str = "0", slow_s: float = 1.0, delay_s: float = 0.0) -> None:
        self.retry_after = retry_after
        self.slow_s = slow_s
        self.delay_s = delay_s  # every reply waits this long (to observe concurrency)
        self.requests: list[RecordedRequest] = []
        self.max_in_flight = 0
        self._faults: deque[str] = deque()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._server = _Server(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/v1"

    def __enter__(self) -> "FakeLlm":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def inject(self, *faults: str) -> None:
        assert all(f in FAULTS for f in faults), faults
        with self._lock:
            self._faults.extend(faults)

    def totals(self) -> dict:
        with self._lock:
            return {
                "requests": len(self.requests),
                "prompt_tokens": sum(r.prompt_tokens for r in self.requests),
                "completion_tokens": sum(r.completion_tokens for r in self.requests),
            }

    def _next_fault(self) -> str:
        with self._lock:
            return self._faults.popleft() if self._faults else ""

    def _handler_class(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                record = RecordedRequest(body, self.headers.get("Authorization", ""), fake._next_fault())
                with fake._lock:
                    fake.requests.append(record)
                    fake._in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake._in_flight)
                try:
                    fake._respond(self, record)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): as a real server would see it
                finally:
                    with fake._lock:
                        fake._in_flight -= 1

        return Handler

    def _respond(self, handler: BaseHTTPRequestHandler, record: RecordedRequest) -> None:
        time.sleep(self.delay_s)
        fault = record.fault
        if fault == SLOW:
            time.sleep(self.slow_s)
        if fault == RATE_LIMIT:
            error, headers = {"error": {"message": "rate limited"}}, {"Retry-After": self.retry_after}
            return self._send(handler, record, 429, error, headers)
        if fault == SERVER_ERROR:
            return self._send(handler, record, 500, {"error": {"message": "internal error"}})
        if fault == UNAUTHORIZED:
            return self._send(handler, record, 401, {"error": {"message": "invalid api key"}})
        if fault == ECHO_AUTH:
            return self._send(handler, record, 400, {"error": {"message": f"bad header {record.authorization}"}})
        if fault == HTML_BODY:
            return self._send(handler, record, 200, "<html><body>502 Bad Gateway</body></html>")
        messages = record.body["messages"]
        prompt = "\n".join(m["content"] for m in messages)
        content = self._content(messages, fault)
        finish_reason = "stop"
        if fault == TRUNCATED:
            content, finish_reason = content[: len(content) // 2], "length"
        record.prompt_tokens = count_tokens(prompt)
        record.completion_tokens = count_tokens(content)
        completion = {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": 0,
            "model": record.body.get("model", ""),
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}
            ],
            "usage": {
                "prompt_tokens": record.prompt_tokens,
                "completion_tokens": record.completion_tokens,
                "total_tokens": record.prompt_tokens + record.completion_tokens,
            },
        }
        self._send(handler, record, 200, completion)

    @staticmethod
    def _content(messages: list, fault: str) -> str:
        if fault == NOT_JSON_CONTENT:
            return "Sure! Here are the translations you asked for."
        items = json.loads(messages[-1]["content"] if messages[-1]["role"] == "user" else messages[-2]["content"])
        correcting = CORRECTIONS_HEADING in messages[0]["content"]
        reply = {}
        for key, text in items.items():
            if POISON in text:
                continue
            if UNTRANSLATABLE in text:
                reply[key] = text
            else:
                reply[key] = fake_translate(text, drop_numbers=DROPNUMBER in text and not correcting)
        keys = list(reply)
        if fault == MISSING_ID and keys:
            reply.pop(keys[-1])
        elif fault == EXTRA_ID:
            reply["invented"] = "多余"
        elif fault == MERGED_IDS and len(keys) >= 2:
            reply[f"{keys[0]},{keys[1]}"] = reply.pop(keys[0]) + reply.pop(keys[1])
        return json.dumps(reply, ensure_ascii=False)

    @staticmethod
    def _send(handler, record: RecordedRequest, status: int, payload, headers: dict | None = None) -> None:
        record.status = status
        is_text = isinstance(payload, str)
        data = (payload if is_text else json.dumps(payload, ensure_ascii=False)).encode("utf-8")
        handler.send_response(status)
        handler.send_header("Content-Type", "text/html" if is_text else "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)


# --- real-looking figure captions ----------------------------------------------------------------

_MODALITIES = (
    "Axial computed tomography", "Contrast-enhanced computed tomography",
    "Coronal T2-weighted magnetic resonance imaging",
    "Sagittal T1-weighted MRI", "Chest radiograph", "Doppler ultrasound", "Positron emission tomography",
    "Diffusion-weighted imaging", "Coronary angiography", "Transesophageal echocardiography",
)
_ANATOMY = (
    "abdomen", "chest", "brain", "pelvis", "liver", "left kidney", "right lung", "lumbar spine", "thyroid", "pancreas",
)
_FINDINGS = (
    "a {size} cm hypodense lesion", "a well-defined cystic mass measuring {size} cm", "multiple nodules up to {mm} mm",
    "ground-glass opacity in the lower lobe", "a pleural effusion of about {ml} mL", "diffuse wall thickening",
    "an aneurysm of {mm} mm", "a hyperintense lesion in the white matter", "calcification along the aorta",
)
_STAINS = ("Hematoxylin and eosin", "Masson's trichrome", "Periodic acid-Schiff", "Immunohistochemistry for Ki-67",
           "Immunohistochemistry for HER2", "Immunofluorescence for CD31")
_TISSUES = ("the resected tumor", "a liver biopsy", "the gastric mucosa", "a lymph node", "the renal cortex", "skin")
_DISEASES = ("hepatocellular carcinoma", "breast cancer", "rheumatoid arthritis", "tuberculosis", "glioblastoma",
             "colorectal cancer", "non-small cell lung cancer", "diabetes mellitus")
_PROTEINS = ("p53", "BRCA1", "EGFR", "phosphorylated AKT", "cleaved caspase-3", "PD-L1", "Bcl-2")
_CELLS = ("HepG2", "MCF-7", "A549", "HeLa", "U87", "SW480")
_DRUGS = ("cisplatin", "doxorubicin", "metformin", "paclitaxel", "gefitinib")


def figure_captions(count: int, seed: int = 0) -> list[str]:
    """`count` distinct English figure captions of the kinds PMC articles carry, deterministic."""
    import random

    rng = random.Random(seed)

    def finding() -> str:
        return rng.choice(_FINDINGS).format(
            size=f"{rng.randint(1, 9)}.{rng.randint(0, 9)}", mm=rng.randint(3, 40), ml=rng.randint(50, 900)
        )

    def imaging() -> str:
        return (
            f"{rng.choice(_MODALITIES)} of the {rng.choice(_ANATOMY)} in a {rng.randint(18, 90)}-year-old "
            f"{rng.choice(('man', 'woman'))} showing {finding()} (arrow)."
        )

    def histology() -> str:
        return (
            f"{rng.choice(_STAINS)} staining of {rng.choice(_TISSUES)} from a patient with {rng.choice(_DISEASES)}; "
            f"original magnification ×{rng.choice((40, 100, 200, 400))}. Scale bar = {rng.choice((20, 50, 100))} μm."
        )

    def survival() -> str:
        low = rng.randint(20, 60) / 100
        return (
            f"Kaplan-Meier curves of overall survival in {rng.randint(40, 2000)} patients with "
            f"{rng.choice(_DISEASES)} stratified by {rng.choice(_PROTEINS)} expression "
            f"(HR {low + 0.2:.2f}; 95% CI {low:.2f}–{low + 0.45:.2f}; p = 0.0{rng.randint(1, 4)})."
        )

    def blot() -> str:
        return (
            f"Western blot analysis of {rng.choice(_PROTEINS)} in {rng.choice(_CELLS)} cells treated with "
            f"{rng.choice(_DRUGS)} ({rng.choice((1, 5, 10, 20))} μM) for {rng.choice((6, 12, 24, 48))} h. "
            f"Data are shown as mean ± SD of {rng.randint(3, 5)} independent experiments."
        )

    kinds = (imaging, histology, survival, blot)
    captions: dict[str, None] = {}
    while len(captions) < count:
        panels = rng.choice((1, 1, 2, 3))
        if panels == 1:
            caption = rng.choice(kinds)()
        else:
            caption = " ".join(f"({'ABC'[n]}) {rng.choice(kinds)()}" for n in range(panels))
        captions.setdefault(caption)
    return list(captions)
