"SFT formats: round-trip properties (hypothesis), every example file to every format and back, and the CLI verbs."
import json, shutil, subprocess, sys
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

import dataalchemy.formats as F
from dataalchemy.core import read_records, write_records

ROOT = Path(__file__).resolve().parents[1]
EX = ROOT / "examples"
EXE = Path(sys.executable).parent / "dataalchemy"
EXE = str(EXE) if EXE.exists() else shutil.which("dataalchemy")


def run(*args, cwd=None):
    assert EXE, "the dataalchemy console script is not installed"
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, cwd=cwd)


# ---------------------------------------------------------------- strategies
# text in Chinese, English, digits, punctuation and whitespace (including newlines and full-width characters)
ALPHABET = st.one_of(
    st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),          # CJK ideographs
    st.sampled_from("abcxyz ABC 012 .,!?;:'\"-_\n\t，。！？：“”（）　"),   # English, digits, ASCII and full-width punctuation
    st.characters(codec="utf-8", exclude_categories=("Cs",)),          # anything else
)
TEXT = st.text(ALPHABET, max_size=30)
NONEMPTY = st.text(ALPHABET, min_size=1, max_size=30).filter(lambda s: s.strip())
EXTRA = st.dictionaries(st.sampled_from(["id", "meta", "source", "lang"]),
                        st.one_of(st.integers(), TEXT, st.dictionaries(st.sampled_from(["k", "score"]), st.integers(), max_size=2)),
                        max_size=2)


@st.composite
def chats(draw, tools=False):
    "A canonical messages record: optional system, 1-4 user/assistant exchanges (optionally with a tool call), extras."
    msgs, calls = [], 0
    if draw(st.booleans()): msgs.append({"role": "system", "content": draw(NONEMPTY)})
    for _ in range(draw(st.integers(1, 4))):
        msgs.append({"role": "user", "content": draw(TEXT)})
        if tools and draw(st.booleans()):
            args = draw(st.dictionaries(st.sampled_from(["city", "q", "n"]), st.one_of(TEXT, st.integers()), max_size=2))
            cid = f"call_{calls}"; calls += 1
            msgs.append({"role": "assistant", "content": "", "tool_calls": [{"id": cid, "type": "function", "function": {
                "name": draw(st.sampled_from(["get_weather", "search", "计算器"])), "arguments": json.dumps(args, ensure_ascii=False)}}]})
            msgs.append({"role": "tool", "content": draw(TEXT), "tool_call_id": cid})
        msgs.append({"role": "assistant", "content": draw(TEXT)})
    rec = {"messages": msgs}
    if tools: rec["tools"] = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    rec.update(draw(EXTRA))
    return rec


FMTS = ["alpaca", "sharegpt", "messages", "prompt-completion"]
WRITE = {"alpaca": F.to_alpaca, "sharegpt": F.to_sharegpt, "messages": F.to_messages, "prompt-completion": F.to_prompt_completion}
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- properties
@SETTINGS
@given(chats(), st.sampled_from(FMTS), st.sampled_from(FMTS))
def test_round_trip_is_lossless(rec, a, b):
    "A record in format a, converted to b and back, is unchanged (system prompt, history, extra fields included)."
    ra = WRITE[a](rec)
    back = WRITE[a](WRITE[b](ra))
    assert back == ra
    assert F.to_messages(ra) == rec


@SETTINGS
@given(chats(tools=True), st.sampled_from(["sharegpt", "messages", "prompt-completion"]),
       st.sampled_from(["sharegpt", "messages", "prompt-completion"]))
def test_tool_calls_round_trip(rec, a, b):
    ra = WRITE[a](rec)
    assert WRITE[a](WRITE[b](ra)) == ra
    assert F.to_messages(ra) == rec
    if any(m.get("tool_calls") for m in rec["messages"]):
        with pytest.raises(F.RecordError, match="cannot be represented in alpaca"): F.to_alpaca(rec)


@SETTINGS
@given(TEXT, NONEMPTY, TEXT, st.one_of(st.none(), NONEMPTY), st.sampled_from(FMTS))
def test_alpaca_input_joins_instruction(ins, inp, out, system, via):
    rec = {"instruction": ins, "input": inp, "output": out}
    if system: rec["system"] = system
    back = F.to_alpaca(WRITE[via](rec))
    if via == "alpaca":                                    # alpaca -> alpaca keeps instruction and input apart
        assert back == rec; return
    assert back["instruction"] == (f"{ins}\n{inp}" if ins else inp) and back["input"] == "" and back["output"] == out
    assert back.get("system") == system
    assert F.to_messages(back) == F.to_messages(rec)


@SETTINGS
@given(chats(), st.one_of(st.none(), NONEMPTY))
def test_split_gives_one_sample_per_user_turn(rec, default_system):
    out = list(F.convert([rec], "alpaca", frm="messages", multiturn="split", system=default_system))
    users = [m for m in rec["messages"] if m["role"] == "user"]
    assert [r["instruction"] for r in out] == [m["content"] for m in users]
    sys_ = rec["messages"][0]["content"] if rec["messages"][0]["role"] == "system" else default_system
    assert all(r.get("system") == (sys_ or None) for r in out) and all("history" not in r for r in out)
    hist = list(F.convert([rec], "alpaca", multiturn="history", system=default_system))
    assert len(hist) == 1 and len(hist[0].get("history", [])) == len(users) - 1


@SETTINGS
@given(chats())
def test_chatml_spans_are_exactly_the_assistant_turns(rec):
    r = F.render(rec)
    assert r.trained == [m["content"] + "<|im_end|>" for m in rec["messages"] if m["role"] == "assistant"]
    assert F.render(F.to_alpaca(rec)).trained == [m["content"] for m in rec["messages"] if m["role"] == "assistant"]


def test_chat_template_labels_with_a_local_tokenizer():
    pytest.importorskip("transformers")
    rec = json.loads((EX / "sharegpt_multiturn.jsonl").read_text(encoding="utf-8").splitlines()[0])
    texts = [m["content"] for m in F.to_messages(rec)["messages"]]
    tok = F.toy_tokenizer(texts)
    r = F.render(rec, tok)
    assert r.text == F.render(rec).text
    got = tok.decode([t for t, l in zip(r.input_ids, r.labels) if l != -100]).replace(" ", "")
    want = "".join(m["value"] + "<|im_end|>" for m in rec["conversations"] if m["from"] == "gpt").replace(" ", "")
    assert got == want
    assert r.labels[0] == -100 and r.labels[-1] != -100


# ---------------------------------------------------------------- example files
EXAMPLES = {"alpaca_en.jsonl": "alpaca", "alpaca_zh.json": "alpaca", "sharegpt_multiturn.jsonl": "sharegpt",
            "messages.jsonl": "messages", "prompt_completion.jsonl": "prompt-completion",
            "prompt_completion_chat.jsonl": "prompt-completion"}


def canon(rec):
    "The conversation of a record, without what some formats cannot hold (tool-call ids, message weights)."
    msgs = F.to_messages(rec)["messages"]
    for m in msgs:
        for k in ("tool_call_id", "weight"): m.pop(k, None)
        if m.get("content") is None: m["content"] = ""
        for c in m.get("tool_calls") or []: c.pop("id", None)
    return msgs


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_files_detect_validate_and_stats(name):
    assert F.detect_file_format(EX / name) == EXAMPLES[name]
    assert list(F.validate(EX / name)) == []
    d = F.dataset_stats(EX / name)
    assert 8 <= d["count"] <= 20 and d["format"] == EXAMPLES[name]


@pytest.mark.parametrize("name", sorted(EXAMPLES))
@pytest.mark.parametrize("to", FMTS)
def test_every_example_to_every_format_and_back(name, to, tmp_path):
    src, frm = EX / name, EXAMPLES[name]
    orig = list(read_records(src))
    plain = frm == "prompt-completion" and isinstance(orig[0]["prompt"], str)
    errs = tmp_path / "errors.jsonl"
    n = write_records(F.convert(src, to, strict=False, errors=errs, conversational=not (plain and to == frm)), tmp_path / f"out.{to}.jsonl")
    bad = {e["line"] for e in read_records(errs)} if errs.exists() else set()
    # the only records that may fail are those with tool calls, which Alpaca cannot hold
    tool_lines = {i for i, r in enumerate(orig, 1)
                  if any(m.get("tool_calls") or m.get("role") == "tool" for m in F.to_messages(r)["messages"])}
    assert bad == (tool_lines if to == "alpaca" else set())
    assert F.detect_file_format(tmp_path / f"out.{to}.jsonl") == to
    back = list(F.convert(tmp_path / f"out.{to}.jsonl", frm, conversational=not plain))
    kept = [r for i, r in enumerate(orig, 1) if i not in bad]
    assert n == len(back) == len(kept)
    for o, b in zip(kept, back):
        assert canon(b) == canon(o)
        if not (frm == "alpaca" and o.get("input")) and not (frm == "messages" and to != "messages"):
            assert b == o


def test_example_readme_lists_every_file():
    readme = (EX / "README.md").read_text(encoding="utf-8")
    for name in [*EXAMPLES, "bad.jsonl"]: assert f"`{name}`" in readme, name


# ---------------------------------------------------------------- CLI, as a user runs it
def test_cli_convert_history_and_split(tmp_path):
    # record 5 of the ShareGPT example calls a tool, which Alpaca cannot hold: --lenient logs it and goes on
    r = run("convert", EX / "sharegpt_multiturn.jsonl", tmp_path / "a.jsonl", "--to", "alpaca", "--lenient")
    assert r.returncode == 0, r.stderr
    assert "wrote 9 alpaca records" in r.stdout and "1 could not be converted" in r.stdout
    assert [e["line"] for e in read_records(tmp_path / "a.errors.jsonl")] == [5]
    out = list(read_records(tmp_path / "a.jsonl"))
    assert out[0]["system"] and out[0]["history"][0][0] == "什么是过拟合？"
    r = run("convert", EX / "sharegpt_multiturn.jsonl", tmp_path / "s.json", "--to", "alpaca", "--multiturn", "split",
            "--lenient", "--errors", tmp_path / "err.jsonl")
    assert r.returncode == 0, r.stderr
    recs = [rec for i, rec in enumerate(read_records(EX / "sharegpt_multiturn.jsonl"), 1) if i != 5]
    humans = sum(t["from"] == "human" for rec in recs for t in rec["conversations"])
    assert len(list(read_records(tmp_path / "s.json"))) == humans
    r = run("convert", EX / "alpaca_zh.json", tmp_path / "pc.jsonl.gz", "--to", "prompt-completion", "--system", "你好")
    assert r.returncode == 0, r.stderr
    pcs = list(read_records(tmp_path / "pc.jsonl.gz"))
    assert pcs[0]["prompt"][0] == {"role": "system", "content": "你好"}
    assert pcs[5]["prompt"][0]["content"].startswith("你是一位耐心的机器学习老师")     # an existing system prompt wins


def test_cli_convert_strict_and_lenient(tmp_path):
    r = run("convert", EX / "messages.jsonl", tmp_path / "a.jsonl", "--to", "alpaca")
    assert r.returncode == 2                                   # a record the user gave: one error line, status 2
    assert "messages.jsonl:5: messages[2].role: cannot be represented in alpaca: a tool call" in r.stderr
    assert not (tmp_path / "a.jsonl").exists()
    r = run("convert", EX / "messages.jsonl", tmp_path / "a.jsonl", "--to", "alpaca", "--lenient", "--errors", tmp_path / "bad.jsonl")
    assert r.returncode == 0, r.stderr
    assert len(list(read_records(tmp_path / "a.jsonl"))) == 9
    assert [e["line"] for e in read_records(tmp_path / "bad.jsonl")] == [5]
    r = run("convert", EX / "bad.jsonl", tmp_path / "m.jsonl", "--to", "messages", "--lenient", "--errors", tmp_path / "e.jsonl")
    assert r.returncode == 0, r.stderr
    assert sorted(e["line"] for e in read_records(tmp_path / "e.jsonl")) == [4, 5, 8, 11, 12]
    r = run("convert", EX / "alpaca_en.jsonl", tmp_path / "x.jsonl", "--to", "dolly")
    assert r.returncode == 1 and "unknown format 'dolly'" in r.stderr


def test_cli_validate_bad_file():
    r = run("validate", "examples/bad.jsonl", cwd=ROOT)
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert [int(l.split(":")[1]) for l in lines] == [2, 3, 4, 5, 6, 8, 10, 11, 12]
    assert "examples/bad.jsonl:3: conversations[1].value: empty assistant turn" in lines
    assert "examples/bad.jsonl:2: conversations[1].from: roles not alternating: two user turns in a row" in lines
    assert "9 problems" in r.stderr
    r = run("validate", EX / "alpaca_zh.json")
    assert r.returncode == 0 and "10 records, no problems" in r.stdout


def test_cli_stats():
    r = run("stats", EX / "sharegpt_multiturn.jsonl")
    assert r.returncode == 0, r.stderr
    assert "sharegpt" in r.stdout and "records           10" in r.stdout
    for k in ("min", "median", "p90", "max", "prompt/instruction", "response/output", "exact duplicates"): assert k in r.stdout
    r = run("stats", EX / "alpaca_zh.json", "--json")
    d = json.loads(r.stdout)
    assert d["count"] == 10 and d["cjk_records"] == 10 and d["exact_duplicates"] == 0
    assert d["prompt_len"]["min"] <= d["prompt_len"]["median"] <= d["prompt_len"]["p90"] <= d["prompt_len"]["max"]


def test_cli_stats_counts_duplicates(tmp_path):
    recs = list(read_records(EX / "alpaca_en.jsonl"))
    dup = {**recs[0], "output": "  " + recs[0]["output"].replace(" ", "  "), "id": 1}
    write_records(recs + [dup, recs[1]], tmp_path / "d.parquet")
    r = run("stats", tmp_path / "d.parquet", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["exact_duplicates"] == 2
    (tmp_path / "x.jsonl").write_text('{"text": "raw"}\n')
    r = run("stats", tmp_path / "x.jsonl")
    assert r.returncode == 2 and "x.jsonl:1: not a known SFT format (fields: text)" in r.stderr


def test_line_numbers_in_gzip_and_json_arrays(tmp_path):
    good = {"instruction": "说出一种常见的激活函数", "input": "", "output": "ReLU。"}
    empty = {"instruction": "Name an optimiser.", "input": "", "output": ""}
    gz = tmp_path / "d.jsonl.gz"
    import gzip
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write(json.dumps(good, ensure_ascii=False) + "\n\n" + "{oops\n" + json.dumps(empty) + "\n")
    assert [(e.line, e.field) for e in F.validate(gz)] == [(3, None), (4, "output")]
    arr = tmp_path / "d.json"
    arr.write_text("[\n" + json.dumps(good, ensure_ascii=False) + ",\n\n" + json.dumps(empty) + "\n]", encoding="utf-8")
    assert [str(e) for e in F.validate(arr)] == [f"{arr}:4: output: empty assistant turn"]
    write_records([good, empty], tmp_path / "d.parquet")
    assert [e.line for e in F.validate(tmp_path / "d.parquet")] == [2]
    with pytest.raises(F.RecordError, match=r"d\.jsonl\.gz:3: invalid JSON"):
        list(F.convert(gz, "sharegpt"))
