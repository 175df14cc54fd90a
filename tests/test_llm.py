"""The LLM engine against a real local OpenAI-compatible server (dataalchemy.testing.FakeOpenAI), never a mocked client.

Covers retries (429 with Retry-After, 500, timeouts), fail-fast errors (401, 404), the persistent cache (a second run
sends nothing), the API key never reaching cache files, outputs, logs or errors, and resuming `dataalchemy generate`
after it was killed with SIGKILL mid-run."""
import json, logging, os, shutil, signal, subprocess, sys, time
from pathlib import Path

import pytest

from dataalchemy.llm import Engine
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


# -- real local servers (issue 23): single-stream, per-token embeddings, one-prompt completions, FastAPI errors ----

def test_single_stream_server_defaults_leave_nothing_abandoned(tmp_path):
    # 30 requests, 0.1 s each, one at a time; a 1 s timeout. Fixed at 16 in flight, the queue outgrows the timeout:
    # requests time out, the server finishes them anyway (abandoned) and the run stops; the defaults adapt instead.
    with FakeOpenAI(latency=0.1, quirks={"single_stream"}) as s:
        e = engine(s, tmp_path, timeout=1, use_cache=False)
        t0 = time.monotonic(); res = e.generate([f"q{i}" for i in range(30)]); dt = time.monotonic() - t0
        time.sleep(0.2)
        st = s.stats()
        assert all(r.ok for r in res) and st["n_requests"] == 30
        assert st["cancelled"] == 0 and st["abandoned"] == 0
        assert dt < 30 * 0.1 * 1.6, dt                          # about the time of one request after another
        s.reset()
        fixed = engine(s, tmp_path, timeout=1, use_cache=False, adaptive=False)
        res = fixed.generate([f"p{i}" for i in range(30)])
        time.sleep(0.3)
        assert s.stats()["abandoned"] > 0 and not all(r.ok for r in res)


def test_backs_off_on_503_and_grows_back(tmp_path):
    with FakeOpenAI(latency=0.05) as s:
        s.rule = lambda path, body: "503" if s.in_flight > 3 else None     # overloaded beyond 3 in flight
        e = engine(s, tmp_path, concurrency=16, use_cache=False, retry_budget=100)   # the budget is tested elsewhere; a loaded machine retries more
        res = e.generate([f"q{i}" for i in range(80)])
        assert all(r.ok for r in res)
        assert e.limit.cuts >= 1 and e.limit.limit < 16
        assert e.usage.retries < 40                               # a fixed 16 in flight would see ~13 503s per round


def test_timed_out_request_is_cancelled_before_the_retry(srv, tmp_path):
    srv.fail("slow:5")
    r = engine(srv, tmp_path, timeout=0.5).chat("cancel me")
    assert r.ok and r.attempts == 2
    time.sleep(0.1)
    assert srv.stats()["cancelled"] == 1 and srv.requests[0]["status"] == "cancelled"


def test_dead_server_ends_the_run_with_one_line(tmp_path, caplog):
    dead = FakeOpenAI().start(); url = dead.url; dead.stop()
    caplog.set_level(logging.INFO)
    e = Engine(base_url=url, api_key=KEY, model="m", progress=False, cache_dir=tmp_path, backoff=0.05)
    t0 = time.monotonic(); res = e.generate([f"q{i}" for i in range(200)])
    assert time.monotonic() - t0 < 15
    assert not any(r.ok for r in res) and e.stopped and "cannot connect" in e.stopped
    assert sum("stopping the run" in m for m in caplog.messages) == 1
    assert e.usage.not_sent > 150 and all("run stopped" in r.error or "gave up" in r.error for r in res)


def test_overloaded_server_spends_the_retry_budget(tmp_path):
    with FakeOpenAI(rule=lambda path, body: "503") as s:
        e = engine(s, tmp_path, retry_budget=10)
        res = e.generate([f"q{i}" for i in range(100)])
        assert not any(r.ok for r in res) and e.stopped
        assert s.n_requests <= 10 + 16                           # the budget, plus what was in flight
    r = subprocess.run([EXE, "generate", str(write_inputs(tmp_path / "in.jsonl", 3)), str(tmp_path / "o.jsonl"),
                        "--base-url", s.url, "--model", "m", "--no-progress"], capture_output=True, text=True,
                       env=cli_env(DATAALCHEMY_LLM_BACKOFF="0.01"), cwd=tmp_path)     # now a dead server
    assert r.returncode == 1 and "stopped: " in r.stderr and "cannot connect" in r.stderr


def test_wrong_key_stops_after_one_request(srv, tmp_path):
    res = engine(srv, tmp_path, api_key="sk-wrong-0000000000").generate([f"q{i}" for i in range(20)])
    assert srv.n_requests == 1 and all("authentication failed" in r.error for r in res)


def test_per_token_embeddings_are_rejected_and_not_cached(tmp_path):
    with FakeOpenAI(quirks={"per_token_embeddings"}, embed_dim=64) as s:
        e = engine(s, tmp_path)
        with pytest.raises(RuntimeError) as ex: e.embed(["machine learning", "x"])
        msg = str(ex.value)
        assert s.url in msg and "nested vectors" in msg and "(2, 64), (1, 64)" in msg and "--pooling mean" in msg
        assert len(e.cache) == 0


def test_embedding_dimension_must_not_change(srv, tmp_path):
    e = engine(srv, tmp_path)
    assert e.embed(["a"]).shape == (1, 256)
    srv.embed_dim = 64
    with pytest.raises(RuntimeError, match="64-dimensional vectors after 256-dimensional ones"): e.embed(["b"])
    assert e.cache.get(__import__("dataalchemy.llm").llm.cache_key(srv.url, e.embed_model, {"embed": "b"})) is None


def test_embedding_404_names_embed_model(tmp_path):
    with FakeOpenAI(models=["chat-model"]) as s:
        e = Engine(base_url=s.url, api_key="k", model="chat-model", embed_model="no-such-embedder", progress=False,
                   cache_dir=tmp_path)
        with pytest.raises(RuntimeError) as ex: e.embed(["x"])
        assert "embed_model 'no-such-embedder'" in str(ex.value) and "chat-model" not in str(ex.value)


def test_fastapi_error_bodies_give_the_reason(tmp_path):
    with FakeOpenAI(quirks={"fastapi_errors"}, models=["x"]) as s:
        r = Engine(base_url=s.url, api_key="k", model="m", progress=False, cache_dir=tmp_path).chat("hi")
        assert "(404, not retried): The model `m` does not exist" in r.error and "None" not in r.error


def test_fewer_choices_than_n_are_counted_and_warned(tmp_path, caplog):
    with FakeOpenAI(quirks={"one_choice"}) as s:
        e = engine(s, tmp_path)
        res = e.generate([{"prompt": f"q{i}", "n": 3} for i in range(4)])
        assert [len(r.texts) for r in res] == [1] * 4
        assert (e.usage.short_choices, e.usage.missing_choices) == (4, 8)
        assert any("1 of n=3 choices" in m for m in caplog.messages)


def test_loglik_falls_back_to_one_prompt_per_request(tmp_path):
    pairs = [(f"Question {i}: what is ML?\nAnswer:", " a field of AI") for i in range(10)]
    with FakeOpenAI() as ok:
        want = engine(ok, tmp_path / "a").loglik(pairs)
    with FakeOpenAI(quirks={"one_prompt"}) as s:                        # llama.cpp: an empty 500 for a list
        e = engine(s, tmp_path / "b")
        assert e.loglik(pairs) == want
        st = s.stats()["status_counts"]
        assert st == {500: 1, 200: 10}                                  # one failed batch, no retries of it
        e.loglik([(p + "!", c) for p, c in pairs[:4]])
        assert s.stats()["status_counts"] == {500: 1, 200: 14}          # known now: no more batches


def test_loglik_without_logprobs_says_what_is_missing(tmp_path):
    with FakeOpenAI(quirks={"one_prompt", "fastapi_errors", "no_logprobs"}) as s:   # transformers serve
        with pytest.raises(RuntimeError) as ex: engine(s, tmp_path).loglik([("a", " b"), ("c", " d")] * 20)
        msg = str(ex.value)
        assert "no prompt logprobs" in msg and "vLLM" in msg and "echo" in msg and "--lm-backend hf" in msg
        assert s.n_requests <= 3


def test_qa_takes_the_shared_model_options(tmp_path):
    docs = tmp_path / "docs"; docs.mkdir()
    (docs / "a.txt").write_text("Machine learning is a subset of artificial intelligence. " * 3 + "\n\n"
                                + "过拟合是指模型记住了训练数据。" * 5)
    from dataalchemy.testing import task_responder
    with FakeOpenAI(latency=0.05, quirks={"single_stream"}, responder=task_responder) as s:
        r = subprocess.run([EXE, "qa", str(docs), str(tmp_path / "qa.jsonl"), "--chunk-size", "80", "--overlap", "0",
                            "--base-url", s.url, "--model", "local-model", "--concurrency", "2", "--timeout", "7",
                            "--max-tokens", "50"], capture_output=True, text=True, env=cli_env(), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        bodies = [q["body"] for q in s.requests]
        assert len(bodies) >= 2 and all(b["max_tokens"] == 50 and b["model"] == "local-model" for b in bodies)
        assert s.stats()["max_in_flight"] <= 2


def test_batching_server_with_slow_replies_gets_full_concurrency(tmp_path):
    # replies take 0.3 of the timeout whatever the load (a batching server generating long replies): no queueing shows,
    # so the limit climbs to the ceiling instead of creeping up by 1/limit
    with FakeOpenAI(latency=0.3) as s:
        e = engine(s, tmp_path, timeout=1, concurrency=16, use_cache=False)
        t0 = time.monotonic(); res = e.generate([f"q{i}" for i in range(80)]); dt = time.monotonic() - t0
        assert all(r.ok for r in res) and e.limit.peak == 16 and s.stats()["max_in_flight"] == 16
        assert dt < 80 / 16 * 0.3 + 6 * 0.3 + 1, dt                # about 5 rounds of slow start, then 16 at a time


# -- every reply durable in the cache the moment it arrives (issue 18) -----------------------------------------------

def test_kill_resends_nothing(tmp_path):
    # replies come in pairs (2 in flight, 0.5 s each); the run is killed with SIGKILL 0.3 s after the 6th reply left the
    # server. A rerun writing a fresh output file can only skip a request through the cache: none answered before the
    # kill may be sent again. (With commits batched per 0.25 s and written when a later reply came, the second reply of
    # the last pair was lost.)
    from dataalchemy.testing import echo_responder
    answered, n = [], 20
    def responder(messages, params):
        answered.append(messages[-1]["content"])
        return echo_responder(messages, params)
    inp = write_inputs(tmp_path / "in.jsonl", n)
    cmd = [EXE, "generate", str(inp), "--model", "fake-model", "--concurrency", "2", "--no-progress",
           "--cache-dir", str(tmp_path / "cache")]
    with FakeOpenAI(latency=0.5, api_key=KEY, responder=responder) as s:
        p = subprocess.Popen(cmd[:3] + [str(tmp_path / "out1.jsonl")] + cmd[3:] + ["--base-url", s.url], env=cli_env(),
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while len(answered) < 6 and p.poll() is None and time.monotonic() < deadline: time.sleep(0.01)
        before = set(answered)
        time.sleep(0.3)
        os.kill(p.pid, signal.SIGKILL); p.wait()
        assert p.returncode == -signal.SIGKILL, "the run finished before it could be killed"
        assert 6 <= len(before) < n
        s.reset()
        r = subprocess.run(cmd[:3] + [str(tmp_path / "out2.jsonl")] + cmd[3:] + ["--base-url", s.url], env=cli_env(),
                           cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        again = {q for q in before if s.count(q)}
        assert not again, f"{len(again)} of {len(before)} replies received before the kill were requested again: {sorted(again)}"
        assert len(read_out(tmp_path / "out2.jsonl")) == n and s.n_requests <= n - len(before)
