"""Per-key rate limits (serve/ratelimit.py) through the FastAPI app over the scripted router:
the keys-file syntax, 429s as OpenAI sends them (headers, error type, audit), tokens charged at
admission with hand-computed numbers, the keys file re-read without a redeploy. The two-replica
case runs on Ray: tests/serve/test_app.py::test_a_key_limit_holds_across_two_router_replicas."""

import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from mortgagellm.config import ServeConfig
from mortgagellm.serve import app as serve_app
from mortgagellm.serve.door import ApiKey, hash_key, parse_keys
from mortgagellm.serve.http import build_api
from mortgagellm.serve.ratelimit import duration
from tests.serve.fake_router import AUTH, FakeRouter

CHAT = {"model": "mortgagellm-chat", "max_tokens": 2,
        "messages": [{"role": "user", "content": "What is escrow?"}]}


def client(router):
    return TestClient(build_api(router), raise_server_exceptions=False)


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


def test_keys_file_entries_carry_their_own_limits():
    text = (f"# team keys\nteam-a:{hash_key('a')} rpm=60 tpm=40000\n"
            f"team-b:{hash_key('b')}   tpm=0  # unlimited tokens\n"
            f"team-a:{hash_key('a2')} rpm=60 tpm=40000, ops:{hash_key('o')}\n")
    keys = parse_keys(text, "keys")
    assert sorted(keys.values()) == [ApiKey("ops"), ApiKey("team-a", 60, 40000),
                                     ApiKey("team-a", 60, 40000), ApiKey("team-b", None, 0)]


@pytest.mark.parametrize("line, what", [
    (f"a:{hash_key('a')} rpm=fast", "keys, line 2: 'rpm=fast' after key 'a' is not rpm=<n>"),
    (f"a:{hash_key('a')} burst=5", "keys, line 2: 'burst=5' after key 'a'"),
    (f"a:{hash_key('a')} rpm=1 rpm=2", "keys, line 2: 'rpm=2' after key 'a' is not rpm=<n> or "
                                       "tpm=<n> given once"),
    (f"a:{hash_key('a')} rpm=-1", "keys, line 2: 'rpm=-1'"),
    ("a:mllm-plaintext rpm=5", "keys, line 2: entry 'a:mllm-plaintext rpm=5'... is not"),
    (f"ops:{hash_key('x')} rpm=5", "keys, line 2: key id 'ops' has other limits than on line 1 "
                                   "(rpm=5 vs no limits of its own)"),
])
def test_a_bad_entry_names_the_file_and_line(line, what):
    with pytest.raises(ValueError) as err:
        parse_keys(f"ops:{hash_key('o')}\n{line}\n", "keys")
    assert what in str(err.value)


def test_the_key_maker_still_writes_a_line_that_parses():
    made = subprocess.run([sys.executable, "-m", "mortgagellm.serve.door", "team-c"],
                          capture_output=True, text=True, check=True)
    secret = made.stderr.strip().rsplit(" ", 1)[-1]
    ((digest, key),) = parse_keys(made.stdout.strip() + " rpm=5", "keys").items()
    assert key == ApiKey("team-c", rpm=5) and f"sha256:{digest}" == hash_key(secret)


def test_over_the_rpm_limit_is_a_429_as_openai_sends_it_and_audited():
    router = FakeRouter({"limits": {"rpm": 2}})
    with client(router) as c:
        answers = [c.post("/v1/chat/completions", json=CHAT, headers=AUTH) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == ["1", "0", "0"]
    assert {a.headers["x-ratelimit-limit-requests"] for a in answers} == {"2"}
    assert all(a.headers["x-ratelimit-reset-requests"].endswith("s") for a in answers)
    assert "x-ratelimit-limit-tokens" not in answers[0].headers  # tpm is unlimited
    refused = answers[2]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert error["message"].startswith("Rate limit reached for key 'tester' on requests per min "
                                       "(RPM): Limit 2, Used 2, Requested 1. Please try again in")
    assert [(e, s, r.get("error_code")) for e, s, r in router.records] == [
        ("chat", 200, None), ("chat", 200, None), ("chat", 429, "rate_limit_exceeded")]
    assert router.decided == 2  # refused before any routing


def test_tokens_are_charged_at_admission_as_prompt_estimate_plus_max_tokens():
    """tpm=100. A 40-character prompt is ceil(40 / 4) = 10 tokens; with max_tokens 20 a request
    is charged 30: three fit (70, 40, 10 left), the fourth does not and costs nothing; a
    3-character prompt (1 token) with max_tokens 9 fits exactly the 10 left."""
    router = FakeRouter({"limits": {"tpm": 100}})

    def completion(c, prompt, max_tokens):
        return c.post("/v1/completions", headers=AUTH, json={
            "model": "mortgagellm", "prompt": prompt, "max_tokens": max_tokens})

    with client(router) as c:
        fits = [completion(c, "x" * 40, 20) for _ in range(3)]
        over = completion(c, "x" * 40, 20)
        exact = completion(c, "xyz", 9)
        never = completion(c, "x", 150)
    assert [a.status_code for a in fits] == [200, 200, 200]
    assert [a.headers["x-ratelimit-remaining-tokens"] for a in fits] == ["70", "40", "10"]
    assert over.status_code == 429 and over.json()["error"]["type"] == "tokens"
    assert "on tokens per min (TPM): Limit 100, Used 90, Requested 30." in \
        over.json()["error"]["message"]
    assert over.headers["x-ratelimit-remaining-tokens"] == "10"
    assert exact.status_code == 200 and exact.headers["x-ratelimit-remaining-tokens"] == "0"
    assert "Requested 151. " in never.json()["error"]["message"]
    assert "This request alone exceeds the limit" in never.json()["error"]["message"]


def test_each_key_has_its_own_limits_from_its_line_and_streams_carry_the_headers(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"one:{hash_key('k1')} rpm=1\nfree:{hash_key('k2')} rpm=0\n"
                    f"plain:{hash_key('k3')}\n")
    router = FakeRouter({"limits": {"rpm": 2}}, keys_file=str(keys))
    with client(router) as c:
        def statuses(key, n, **extra):
            return [c.post("/v1/chat/completions", json=CHAT | extra, headers=bearer(key))
                    for _ in range(n)]

        one, free, plain = statuses("k1", 2), statuses("k2", 4), statuses("k3", 3, stream=True)
    assert [a.status_code for a in one] == [200, 429]
    assert [a.status_code for a in free] == [200] * 4
    assert "x-ratelimit-limit-requests" not in free[0].headers
    assert [a.status_code for a in plain] == [200, 200, 429]  # the recipe's rpm=2
    assert plain[0].headers["content-type"].startswith("text/event-stream")
    assert plain[0].headers["x-ratelimit-remaining-requests"] == "1"


def test_a_store_that_cannot_answer_is_a_503_not_a_free_pass():
    class Down:
        async def admit(self, *args):
            raise ConnectionError("redis went away")

    router = FakeRouter({"limits": {"rpm": 5}})
    router.limiter = Down()
    with client(router) as c:
        response = c.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "rate_limits_unavailable"
    assert router.decided == 0 and router.records[0][1] == 503


def test_a_changed_keys_file_is_reread_and_an_invalid_one_keeps_the_last_good_keys(tmp_path):
    """serve.auth.reload_s=0: the file is looked at on every request. Each write below changes
    the file's size, so the change is seen whatever the file system's mtime resolution."""
    keys = tmp_path / "keys"
    keys.write_text(f"a:{hash_key('ka')}\nb:{hash_key('kb')}\n")
    router = FakeRouter({"auth": {"reload_s": 0}}, keys_file=str(keys))
    with client(router) as c:
        def status(key):
            return c.get("/v1/models", headers=bearer(key)).status_code

        assert (status("ka"), status("kb")) == (200, 200)
        keys.write_text(f"b:{hash_key('kb')}\n")  # a revoked
        assert (status("ka"), status("kb")) == (401, 200)
        keys.write_text(f"b:{hash_key('kb')} rpm=oops\n")  # invalid: b's key still serves
        assert (status("ka"), status("kb")) == (401, 200)
        assert router.metrics.keys_reload_failed.value == 1
        keys.unlink()  # gone: kept as well (an empty file revokes everything instead)
        assert status("kb") == 200 and router.metrics.keys_reload_failed.value == 2
        keys.write_text(f"a:{hash_key('ka')} rpm=1\n")
        assert (status("ka"), status("kb")) == (200, 401)
        keys.write_text("")
        assert status("ka") == 401


def test_reset_times_are_written_as_openai_does():
    assert [duration(s) for s in (0.02, 0.9994, 1.0, 20.2, 59.5, 360.0)] == [
        "20ms", "999ms", "1s", "21s", "1m0s", "6m0s"]


def test_counts_are_shared_unless_the_recipe_names_a_store_and_memory_needs_one_router():
    from mortgagellm.config import Recipe

    shared = serve_app.deployment_options(Recipe())
    assert shared[serve_app.RATE_LIMITS]["num_replicas"] == 1
    redis = Recipe.model_validate({"serve": {"limits": {"storage_uri": "redis://r:6379"}}})
    assert serve_app.RATE_LIMITS not in serve_app.deployment_options(redis)
    with pytest.raises(ValueError, match="counts inside each router replica, and the router "
                                         "runs up to 2"):
        ServeConfig.model_validate({"limits": {"storage_uri": "memory://"},
                                    "router": {"autoscaling": {"max_replicas": 2}}})
    assert ServeConfig.model_validate({"limits": {"storage_uri": "memory://"}})
