"""The LLM engine against a real local OpenAI-compatible server (dataalchemy.testing.FakeOpenAI), never a mocked client.

Covers retries (429 with Retry-After, 500, timeouts), fail-fast errors (401, 404), the persistent cache (a second run
sends nothing), the API key never reaching cache files, outputs, logs or errors, and resuming `dataalchemy generate`
after it was killed with SIGKILL mid-run."""
import json, logging, os, shutil, signal, subprocess, sys, time
from pathlib import Path

import pytest

from dataalchemy.llm import Engine, Request
from dataalchemy.testing import FakeOpenAI

KEY = "sk-test-TOPSECRET-4242424242"
EXE = Path(sys.executable).parent / "dataalchemy"
EXE = str(EXE) if EXE.exists() else shutil.which("dataalchemy")


@pytest.fixture
def srv():
    s = FakeOpenAI(api_key=KEY).start()
    yield s
    s.stop()


def engine(srv, tmp_path, **kw):
    kw = {"base_url": srv.url, "api_key": KEY, "model": "fake-model", "backoff": 0.01, "progress": False,
          "cache_dir": tmp_path / "cache", **kw}
    return Engine(**kw)


def cli_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATAALCHEMY_", "OPENAI_"))}
    env.update(OPENAI_API_KEY=KEY, **extra)
    return env


def write_inputs(path, n, prefix="item"):
    path.write_text("".join(json.dumps({"id": f"{prefix}-{i}", "prompt": f"{prefix} {i}"}) + "\n" for i in range(n)))
    return path


def read_out(path):
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


# -- retries ---------------------------------------------------------------------------------------------------------

def test_retry_429_honours_retry_after(srv, tmp_path):
    srv.fail("429:1")
    t0 = time.monotonic()
    r = engine(srv, tmp_path).chat("hello")
    assert r.ok and r.text == "Answer: hello"
    assert r.attempts == 2 and time.monotonic() - t0 >= 1.0
    assert srv.count("hello") == 2


def test_retry_5xx_and_malformed_and_dropped(srv, tmp_path):
    srv.fail("500", "503", "malformed", "drop")
    e = engine(srv, tmp_path, concurrency=1)
    res = e.generate([f"p{i}" for i in range(3)])
    assert [r.text for r in res] == [f"Answer: p{i}" for i in range(3)]
    assert res[0].attempts == 5 and e.usage.retries == 4 and e.usage.failed == 0


def test_retry_timeout(srv, tmp_path):
    srv.fail("slow:5")
    t0 = time.monotonic()
    r = engine(srv, tmp_path, timeout=0.5).chat("slow")
    assert r.ok and r.attempts == 2 and time.monotonic() - t0 < 3


def test_retries_give_up_after_max_retries(srv, tmp_path):
    srv.fail(*["500"] * 10)
    r = engine(srv, tmp_path, max_retries=3).chat("doomed")
    assert not r.ok and r.attempts == 4 and "gave up after 4 attempts" in r.error
    assert srv.count("doomed") == 4


# -- fail fast -------------------------------------------------------------------------------------------------------

def test_401_fails_fast_without_leaking_the_key(srv, tmp_path, caplog):
    wrong = "sk-wrong-NOTTHEKEY-987654321"
    caplog.set_level(logging.DEBUG)
    r = engine(srv, tmp_path, api_key=wrong).chat("who am i")
    assert not r.ok and r.attempts == 1 and srv.count("who am i") == 1
    assert "authentication failed" in r.error and "OPENAI_API_KEY" in r.error
    assert srv.requests[-1]["status"] == 401
    assert "NOTTHEKEY" not in r.error and "NOTTHEKEY" not in caplog.text


def test_404_unknown_model_fails_fast(tmp_path):
    with FakeOpenAI(models=["qwen-turbo"]) as s:
        r = Engine(base_url=s.url, api_key="k", model="gpt-9", progress=False, cache_dir=tmp_path).chat("hi")
        assert not r.ok and r.attempts == 1 and s.n_requests == 1
        assert "not found" in r.error and "'gpt-9'" in r.error and "(404, not retried)" in r.error


# -- cache -----------------------------------------------------------------------------------------------------------

def test_cache_second_run_sends_nothing(srv, tmp_path):
    prompts = [f"cache me {i}" for i in range(30)]
    first = engine(srv, tmp_path, concurrency=8).generate(prompts)
    assert srv.n_requests == 30 and not any(r.cached for r in first)
    srv.reset()
    e2 = engine(srv, tmp_path, concurrency=8)                 # a new engine, same cache directory
    second = e2.generate(prompts)
    assert srv.n_requests == 0
    assert all(r.cached for r in second) and [r.text for r in second] == [r.text for r in first]
    assert e2.usage.cached == 30 and e2.usage.requests == 0
    third = engine(srv, tmp_path, use_cache=False).generate(prompts[:2])    # --no-cache really asks again
    assert srv.n_requests == 2 and not any(r.cached for r in third)


def test_cache_key_depends_on_params_and_endpoint_not_key(srv, tmp_path):
    e = engine(srv, tmp_path)
    e.chat("same", temperature=0.1)
    e.chat("same", temperature=0.9)
    assert srv.count("same") == 2                              # different parameters: a different request
    engine(srv, tmp_path, api_key=KEY).chat("same", temperature=0.1)
    assert srv.count("same") == 2                              # same request: cached
    with FakeOpenAI() as other:                                # another endpoint: not the same cache entry
        Engine(base_url=other.url, api_key="k", model="fake-model", progress=False, cache_dir=tmp_path / "cache").chat("same", temperature=0.1)
        assert other.count("same") == 1


# -- the key never leaks ---------------------------------------------------------------------------------------------

def test_key_never_in_cache_outputs_logs_or_errors(srv, tmp_path):
    inp = write_inputs(tmp_path / "in.jsonl", 5)
    srv.fail("429:0", "500")
    r = subprocess.run([EXE, "generate", str(inp), str(tmp_path / "out.jsonl"), "--base-url", srv.url, "--model", "fake-model",
                        "--cache-dir", str(tmp_path / "cache"), "--no-progress"], capture_output=True, text=True,
                       env=cli_env(DATAALCHEMY_LLM_BACKOFF="0.01"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # a wrong key: the server echoes it back in its 401 message
    r2 = subprocess.run([EXE, "generate", str(inp), str(tmp_path / "out2.jsonl"), "--base-url", srv.url, "--model", "fake-model",
                         "--cache-dir", str(tmp_path / "cache2"), "--no-progress"], capture_output=True, text=True,
                        env={**cli_env(), "OPENAI_API_KEY": "sk-bad-LEAKME-123456789"}, cwd=tmp_path)
    assert r2.returncode == 1 and "authentication failed" in r2.stderr
    assert all(srv.requests[i]["auth"] for i in range(len(srv.requests)))
    for p in tmp_path.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            assert KEY.encode() not in data and b"LEAKME" not in data, f"key found in {p}"
    for out in (r.stdout, r.stderr, r2.stdout, r2.stderr):
        assert KEY not in out and "LEAKME" not in out
    errs = [rec["error"] for rec in read_out(tmp_path / "out2.jsonl")]
    assert len(errs) == 5 and all(e and "LEAKME" not in e for e in errs)


# -- resume after SIGKILL --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cache", [False, True])
def test_resume_after_sigkill(tmp_path, cache):
    n = 120
    inp = write_inputs(tmp_path / "in.jsonl", n)
    out = tmp_path / "out.jsonl"
    cmd = [EXE, "generate", str(inp), str(out), "--model", "fake-model", "--concurrency", "4", "--no-progress",
           "--cache-dir", str(tmp_path / "cache")] + ([] if cache else ["--no-cache"])
    with FakeOpenAI(latency=0.05, api_key=KEY) as s:
        p = subprocess.Popen(cmd + ["--base-url", s.url], env=cli_env(), cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if out.exists() and out.read_text().count("\n") >= 30: break
            if p.poll() is not None: break
            time.sleep(0.02)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        assert p.returncode == -signal.SIGKILL, "the run finished before it could be killed"
        finished = {rec["id"] for rec in read_out(out) if rec.get("error") is None} if out.exists() else set()
        assert 30 <= len(finished) < n
        first_run = s.stats()["prompt_counts"]
        s.reset()

        r = subprocess.run(cmd + ["--base-url", s.url], env=cli_env(), cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        recs = read_out(out)
        ids = [rec["id"] for rec in recs]
        assert len(ids) == n and len(set(ids)) == n                     # exactly N unique outputs
        assert set(ids) == {f"item-{i}" for i in range(n)}
        assert all(rec["error"] is None and rec["reply"] == "Answer: " + rec["id"].replace("-", " ") for rec in recs)
        second_run = s.stats()["prompt_counts"]
        for rid in finished:                                            # no second request for a finished item
            assert second_run.get(rid.replace("-", " "), 0) == 0, rid
        # everything not finished before the kill was sent in the rerun (or answered from the cache)
        assert sum(second_run.values()) <= n - len(finished)
        assert sum(first_run.values()) + sum(second_run.values()) >= n
