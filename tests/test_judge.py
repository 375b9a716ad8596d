"""judge.py: the rubric prompt and the score parser on hand-made inputs, and the client against a
tiny OpenAI-compatible server on 127.0.0.1 started (and stopped) by the test."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mortgagellm.config import JudgeSettings
from mortgagellm.judge import RUBRICS, Judge, judge_messages, parse_score


def test_judge_prompt_holds_request_reference_answer_and_the_task_rubric():
    system, user = judge_messages("qa", "What is the APR?\n\nAPR 6.912%", "The APR is 6.912%.",
                                  "6.9 percent")
    assert system["role"] == "system" and user["role"] == "user"
    body = user["content"]
    for part in ("What is the APR?", "The APR is 6.912%.", "6.9 percent", RUBRICS["qa"],
                 "Score: N"):
        assert part in body
    assert body.index("Reference answer") < body.index("Answer to grade")
    assert RUBRICS["decision"] in judge_messages("decision", "p", "approve", "deny")[1]["content"]
    with pytest.raises(ValueError, match="no judge rubric for task 'route'"):
        judge_messages("route", "p", "r", "a")


@pytest.mark.parametrize("text,expected", [
    ("Score: 3", 3), ("score:4", 4), ("**Score:** 5", 5), ("4/5", 4), ("I'd say 2 out of 5.", 2),
    ("Score: 4/5", 4), ("Score: 4.", 4), ("1", 1), (" 5. ", 5),
    ("garbage", None), ("", None), ("Score: 7", None), ("Score: 3.5", None), ("10/10", None),
    ("3 or 4", None),
])
def test_parse_score(text, expected):
    assert parse_score(text) == expected


class StubJudge(BaseHTTPRequestHandler):
    """POST /v1/chat/completions: 'Score: 5' when the graded answer says approve, else prose
    without a score. Requests are kept on the server for the test to read."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append({"path": self.path, "auth": self.headers["Authorization"],
                                 **body})
        graded = body["messages"][-1]["content"].split("Answer to grade:")[1]
        reply = "Score: 5" if "approve" in graded else "This answer is hard to grade."
        data = json.dumps({
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": reply}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub_judge():
    """The stub on a free loopback port, served from a thread; shut down after the test."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubJudge)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def judge_settings(server, **change):
    return JudgeSettings(**{"base_url": f"http://127.0.0.1:{server.server_port}/v1",
                            "model": "grader", "api_key_env": "MLLM_TEST_JUDGE_KEY",
                            "timeout_s": 10, "max_retries": 0} | change)


def test_judge_client_grades_caches_and_counts_unparseable(stub_judge, monkeypatch):
    monkeypatch.setenv("MLLM_TEST_JUDGE_KEY", "secret-1")
    judge = Judge(judge_settings(stub_judge))
    assert judge.grade("decision", "Decide.", "approve", "approve") == 5
    assert judge.grade("decision", "Decide.", "approve", "approve") == 5  # cached
    assert judge.grade("decision", "Decide.", "approve", "deny") is None  # no score in reply
    assert len(stub_judge.seen) == 2
    first = stub_judge.seen[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer secret-1"
    assert first["model"] == "grader" and first["temperature"] == 0.0
    assert first["messages"] == judge_messages("decision", "Decide.", "approve", "approve")
    assert judge.describe() == {"base_url": judge.cfg.base_url, "model": "grader"}


def test_judge_needs_its_key_variable(stub_judge, monkeypatch):
    monkeypatch.delenv("MLLM_TEST_JUDGE_KEY", raising=False)
    with pytest.raises(ValueError, match=r"\$MLLM_TEST_JUDGE_KEY is not set"):
        Judge(judge_settings(stub_judge))
    assert Judge(judge_settings(stub_judge, api_key_env=None)).grade(
        "intent", "Which intent?", "payoff", "approve") == 5


def test_judge_needs_a_model_with_its_url():
    with pytest.raises(ValueError, match="judge.model is not"):
        JudgeSettings(base_url="http://127.0.0.1:1/v1")
