"""One way to fail for every verb that calls a model (issue 18), against the real local OpenAI-compatible server.

A run whose every request fails exits 1 and says the server's first message once on stderr, with the API key and a
URL's password redacted, no traceback; a run where some requests fail exits 0 and counts them in its summary."""
import json, os, shutil, subprocess, sys
from pathlib import Path

import pytest

import test_self_instruct as tsi
from dataalchemy.testing import FakeOpenAI, task_responder

KEY, WRONG = "sk-right-key-0123456789", "sk-wrong-SECRET-987654321"
EXE = Path(sys.executable).parent / "dataalchemy"
EXE = str(EXE) if EXE.exists() else shutil.which("dataalchemy")


def env(tmp_path, key=WRONG, **extra):
    e = {k: v for k, v in os.environ.items() if not k.startswith(("DATAALCHEMY_", "OPENAI_"))}
    e.update(OPENAI_API_KEY=key, DATAALCHEMY_CACHE_DIR=str(tmp_path / "cache"), DATAALCHEMY_LLM_BACKOFF="0.01", **extra)
    return e


def jsonl(path, recs):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    return str(path)


TEXTS = ["Machine learning is a subset of artificial intelligence that learns patterns from data.",
         "过拟合是指模型记住了训练数据，而没有学到可以推广的规律。",
         "Dropout randomly disables neurons during training to reduce overfitting.",
         "The tide is caused by the gravitational pull of the moon and the sun on the oceans.",
         "光合作用是植物利用阳光把二氧化碳和水变成葡萄糖的过程。",
         "A hash table maps keys to values through a hash function and buckets."]


def args_for(verb, tmp_path):
    "The command line of `verb` on small inputs in `tmp_path`."
    t = tmp_path
    if verb == "self-instruct": return ["self-instruct", str(t / "out.jsonl"), "--num", "4", "--batch", "1"]
    if verb == "evol":
        return ["evol", jsonl(t / "in.jsonl", [{"id": f"i{i}", "instruction": x} for i, x in enumerate(TEXTS)]),
                str(t / "out.jsonl"), "--rounds", "1"]
    if verb == "generate":
        return ["generate", jsonl(t / "in.jsonl", [{"id": f"r{i}", "prompt": x} for i, x in enumerate(TEXTS)]),
                str(t / "out.jsonl"), "--no-progress"]
    if verb == "qa":
        (t / "docs").mkdir(exist_ok=True); (t / "docs" / "a.txt").write_text("\n\n".join(TEXTS), encoding="utf-8")
        return ["qa", str(t / "docs"), str(t / "out.jsonl"), "--chunk-size", "80", "--overlap", "0"]
    if verb == "taskdata classify": return ["taskdata", "classify", str(t / "out.jsonl"), "--n", "6", "--per-request", "2"]
    if verb == "augment":
        recs = [{"instruction": f"Explain this: {x}", "input": "", "output": x} for x in TEXTS]
        return ["augment", jsonl(t / "in.jsonl", recs), str(t / "out.jsonl"), "-m", "paraphrase", "-n", "12"]
    if verb == "filter --toxicity llm":
        return ["filter", jsonl(t / "in.jsonl", [{"instruction": f"Explain this text to a student: {x}", "output": x + " " + x} for x in TEXTS]),
                str(t / "out.jsonl"), "--toxicity", "llm"]
    if verb == "topk":
        recs = [{"question": f"What is said in text {i}?", "answer": x.split()[0], "context": x} for i, x in enumerate(TEXTS)]
        return ["topk", jsonl(t / "qa.jsonl", recs), str(t / "out.jsonl"), "--k", "2", "--negatives", "hard",
                "--embedder", "engine"]
    if verb == "retrieval-scores":
        q = jsonl(t / "q.jsonl", [{"query": "What does dropout do?", "answer": "disables neurons"}])
        c = jsonl(t / "c.jsonl", [{"id": f"d{i}", "text": x} for i, x in enumerate(TEXTS)])
        return ["retrieval-scores", q, c, str(t / "out.jsonl"), "--lm-backend", "openai", "--retriever", "bm25"]
    raise ValueError(verb)


VERBS = ["self-instruct", "evol", "generate", "qa", "taskdata classify", "augment", "filter --toxicity llm", "topk",
         "retrieval-scores"]


@pytest.mark.parametrize("verb", VERBS)
def test_every_request_refused_exits_1_with_the_servers_message_once(verb, tmp_path):
    with FakeOpenAI(api_key=KEY, responder=task_responder) as s:
        r = subprocess.run([EXE, *args_for(verb, tmp_path), "--base-url", s.url, "--model", "fake-model"],
                           env=env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=300)
        sent = s.n_requests
    said = r.stdout + r.stderr
    assert r.returncode == 1, said
    assert "Traceback" not in said and WRONG not in said and "SECRET" not in said
    assert r.stderr.count("Incorrect API key provided") == 1, r.stderr     # the server's own words, once
    assert "authentication failed" in r.stderr and "OPENAI_API_KEY" in r.stderr
    assert 1 <= sent <= 16                                                # a wrong key stops the run: no request after


def test_the_key_env_option_names_the_variable(tmp_path):
    with FakeOpenAI(api_key=KEY, responder=task_responder) as s:
        r = subprocess.run([EXE, *args_for("evol", tmp_path), "--base-url", s.url, "--api-key-env", "MY_LLM_KEY"],
                           env=env(tmp_path, MY_LLM_KEY=WRONG), cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert r.returncode == 1 and "MY_LLM_KEY" in r.stderr and WRONG not in r.stderr + r.stdout, r.stderr
        r = subprocess.run([EXE, *args_for("evol", tmp_path), "--base-url", s.url, "--api-key-env", "MY_LLM_KEY"],
                           env=env(tmp_path, MY_LLM_KEY=KEY), cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("verb", ["self-instruct", "evol"])
def test_a_url_password_is_redacted(verb, tmp_path):
    dead = FakeOpenAI().start(); port = dead.port; dead.stop()
    url = f"http://alice:pa55-w0rd-XYZ@127.0.0.1:{port}/v1"
    r = subprocess.run([EXE, *args_for(verb, tmp_path), "--base-url", url, "--max-retries", "1"],
                       env=env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "cannot connect" in r.stderr, r.stderr
    assert "pa55-w0rd-XYZ" not in r.stdout + r.stderr and "alice:***@" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("verb,responder", [("self-instruct", tsi.Scripted().reply), ("evol", tsi.Evolver().reply),
                                            ("generate", None)])
def test_some_requests_failing_are_counted(verb, responder, tmp_path):
    n = [0]
    def every_third(path, body):                      # a 400 is not retried: that request fails, the run goes on
        n[0] += 1
        return "400" if n[0] % 3 == 0 else None
    reply = (lambda messages, params: responder(messages[-1]["content"])) if responder else None
    with FakeOpenAI(api_key=KEY, responder=reply, rule=every_third) as s:
        r = subprocess.run([EXE, *args_for(verb, tmp_path), "--base-url", s.url], env=env(tmp_path, key=KEY), cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
        refused = s.stats()["status_counts"].get(400, 0)
    assert refused > 0
    assert r.returncode == (1 if verb == "generate" else 0), r.stderr           # generate: every request is an output
    line = next(l for l in r.stderr.splitlines() if "LLM requests failed" in l)
    assert line.split(" of ")[0].split()[-1] == str(refused), line              # counted: as many as the server refused
    assert "Bad request (injected fault)" in line and r.stderr.count("Bad request (injected fault)") == 1
    if verb == "self-instruct": assert "llm errors" in r.stdout
    if verb == "evol": assert "llm error" in r.stdout
    out = tmp_path / "out.jsonl"
    assert out.exists() and out.read_text().strip()                             # the rest was written


def test_every_llm_verb_spells_the_shared_options_the_same():
    import typer.main
    from dataalchemy.cli import load_commands
    from dataalchemy.llm import LLM_OPTIONS
    root = typer.main.get_command(load_commands())
    def cmd(path):
        c = root
        for p in path.split(): c = c.commands[p]
        return c
    want = None
    for verb in ["self-instruct", "evol", "generate", "qa", "taskdata classify", "augment", "filter", "topk", "retrieval-scores",
                 "grpo train"]:
        opts = {p.name: (tuple(p.opts), p.help) for p in cmd(verb).params if p.name in LLM_OPTIONS}
        assert set(opts) == set(LLM_OPTIONS), (verb, set(LLM_OPTIONS) - set(opts))
        want = want or opts
        assert opts == want, verb


def test_self_instruct_killed_resends_no_reply(tmp_path):
    # the cache keeps every reply the moment it arrives: killed with SIGKILL 0.3 s after its 6th reply left the server,
    # a rerun of the same self-instruct run (same seed: the same prompts) sends none of the prompts answered before
    import signal, time
    sc, answered = tsi.Scripted(), []
    def reply(messages, params):
        answered.append(messages[-1]["content"])
        return sc.reply(messages[-1]["content"])
    cmd = [EXE, "self-instruct", str(tmp_path / "si.jsonl"), "--num", "12", "--batch", "2", "--concurrency", "2"]
    with FakeOpenAI(latency=0.5, api_key=KEY, responder=reply) as s:
        p = subprocess.Popen(cmd + ["--base-url", s.url], env=env(tmp_path, key=KEY), cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while len(answered) < 6 and p.poll() is None and time.monotonic() < deadline: time.sleep(0.01)
        before = set(answered)
        time.sleep(0.3)
        os.kill(p.pid, signal.SIGKILL); p.wait()
        assert p.returncode == -signal.SIGKILL and len(before) >= 6
        s.reset()
        r = subprocess.run(cmd + ["--base-url", s.url], env=env(tmp_path, key=KEY), cwd=tmp_path, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        again = [q[:60] for q in before if s.count(q)]
        assert not again, f"{len(again)} of {len(before)} prompts answered before the kill were sent again"
