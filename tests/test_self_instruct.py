"Self-Instruct: ROUGE-L, filters, reply parsing and the full bootstrap loop with a scripted generator."
import random, re
from types import SimpleNamespace

import pytest

import dataalchemy.self_instruct as si
from dataalchemy.core import Stats, is_cjk


# ---------------------------------------------------------------- ROUGE-L
@pytest.mark.parametrize("target,pred,expected", [
    ("Write a poem about the sea", "Write a poem about the mountains", 10 / 12),   # LCS 5 of 6 and 6
    ("the cat sat on the mat", "the cat on the mat", 2 * 5 / 11),                  # LCS 5: the cat on the mat
    ("Dog bites man", "man bites dog", 1 / 3),                                      # word order matters
    ("写一首关于春天的诗", "写一首关于秋天的诗", 16 / 18),                              # characters: LCS 8 of 9 and 9
    ("把下面的英文翻译成中文", "将以下英文句子译为中文", 12 / 22),                        # LCS 下英文译中文 = 6
    ("用 Python 写一个函数", "用Python写函数", 2 * 4 / 11),                          # mixed: 用 python 写 函 数 vs ... LCS 5?
])
def test_rouge_l_hand_checked(target, pred, expected):
    if target.startswith("用 Python"):
        # tokens: [用, python, 写, 一, 个, 函, 数] (7) and [用, python, 写, 函, 数] (5): LCS 5 -> F = 10/12
        expected = 10 / 12
    assert si.rouge_l(target, pred) == pytest.approx(expected)


def test_rouge_l_edge_cases():
    assert si.rouge_l("", "x y") == 0.0 and si.rouge_l("x y", "") == 0.0
    assert si.rouge_l("Same Words.", "same words") == 1.0          # lowercased, punctuation is not a token
    assert si.lcs_len("ABCBDAB", "BDCABA") == 4


def test_pool_matches_dp_exactly():
    rng = random.Random(1)
    vocab = list("abcdefg") + ["的", "是", "学", "习"]
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(0, 80))) for _ in range(140)]
    pool = si.RougeLPool(texts[:80], merge_every=16)
    for t in texts[80:120]: pool.add(t)                                # some in the sorted block, some in the tail
    for q in texts[120:140] + ["a " * 130, ""]:                        # up to 3 machine words per bit vector
        fast = pool.scores(q)
        slow = [si.rouge_l(q, p) for p in texts[:120]]
        assert fast.tolist() == slow                                   # bit-identical floats


def test_pool_matches_rouge_score_package():
    rs = pytest.importorskip("rouge_score.rouge_scorer")
    class Tok:
        def tokenize(self, text): return si.rouge_tokens(text)
    scorer = rs.RougeScorer(["rougeL"], tokenizer=Tok())
    pool_texts = [t["instruction"] for t in si.load_seed_tasks()]
    pool = si.RougeLPool(pool_texts)
    for q in ["Classify the sentiment of a tweet.", "判断下面这句话的情感倾向。", "Translate the sentence into French."]:
        assert pool.scores(q).tolist() == [scorer.score(q, p)["rougeL"].fmeasure for p in pool_texts]


def test_tokens_are_rouge_scores_default_tokenizer():
    "On text without Chinese the pool scores exactly what rouge-score's default RougeScorer does (tokenizer included)."
    rs = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rs.RougeScorer(["rougeL"])
    pool_texts = ["Make a to-do list.", "Don't e-mail the café's owner.", "Round 3.14 up.", "Explain U.S. history in 5 points.",
                  "Write a to do list for a trip", "Ｆｕｌｌｗｉｄｔｈ letters, naïve résumé"]
    pool = si.RougeLPool(pool_texts)
    for q in ["Make a to do list", "Do not email the cafe owner", "round 3 14 up", "Explain US history in five points",
              "naive resume with fullwidth letters"]:
        assert si.rouge_tokens(q) == scorer._tokenizer.tokenize(q)
        assert pool.scores(q).tolist() == [scorer.score(q, p)["rougeL"].fmeasure for p in pool_texts]


def test_most_similar():
    pool = si.RougeLPool(["Write a poem about the sea.", "写一首关于春天的诗"])
    s, i = pool.most_similar("写一首关于秋天的诗")
    assert i == 1 and s == pytest.approx(16 / 18)
    assert si.RougeLPool().most_similar("x") == (0.0, -1)


# ---------------------------------------------------------------- seeds
def test_seed_pool():
    seeds = si.load_seed_tasks()
    assert len(seeds) >= 120
    langs = [si.task_lang(t["instruction"]) for t in seeds]
    assert 0.4 < langs.count("zh") / len(seeds) < 0.6
    assert {t["category"] for t in seeds} == set(si.SEED_CATEGORIES)
    pool = si.RougeLPool()
    for t in seeds:
        assert t["instances"] and all(x["output"].strip() for x in t["instances"])
        if len(pool): assert pool.most_similar(t["instruction"])[0] <= 0.7, t["instruction"]
        pool.add(t["instruction"])


def test_seed_errors(tmp_path):
    f = tmp_path / "s.jsonl"
    f.write_text('{"id": "a", "instruction": "Do it.", "instances": [{"input": "", "output": "ok"}]}\n'
                 '{"id": "b", "instruction": "", "instances": [{"input": "", "output": "ok"}]}\n')
    with pytest.raises(si.RecordError) as e: si.load_seed_tasks(f)
    assert (e.value.line, e.value.field) == (2, "instruction") and str(f) in str(e.value)


# ---------------------------------------------------------------- filters
@pytest.mark.parametrize("inst,reason", [
    ("Sort these numbers", "too short"),
    ("写诗吧", "too short"),
    ("word " * 151, "too long"),
    ("Describe the pictures in the gallery.", "blacklisted keyword"),
    ("Plot the monthly sales for last year.", "blacklisted keyword"),
    ("Compose some music for a birthday party.", None),        # not one of Self-Instruct's 13 keywords (Alpaca's 18 has it)
    ("Go to the nearest shop and buy milk.", "blacklisted keyword"),
    ("为下面的地图写一段导览说明。", "blacklisted keyword"),
    ("请根据示意图解释电路原理。", "blacklisted keyword"),
    ("Write a program to reverse a linked list.", 'starts with "Write a program"'),
    ("* Name three rivers in Africa.", "starts with punctuation"),
    ("《红楼梦》的主要人物有哪些？", "starts with punctuation"),
    ("Écrivez un poème sur la mer, s'il vous plaît.", "not English or Chinese"),
    ("Name three rivers in Africa.", None),
    ("列出三种常见的水果。", None),
    ("Explain how bitmaps store pixel colours.", None),
])
def test_instruction_filter(inst, reason):
    assert si.instruction_filter(inst) == (reason is None, reason)


def test_blacklists_and_word_counts_as_published():
    "Self-Instruct's 13 English keywords (default), Alpaca's 18; length in whitespace words as both originals count it."
    for w in ("video", "audio", "music", "flowchart", "diagram"):
        inst = f"Describe the {w} for the school concert."
        assert si.instruction_filter(inst) == (True, None)
        assert si.instruction_filter(inst, blacklist="alpaca") == (False, "blacklisted keyword")
    assert si.instruction_filter("Make a to-do list") == (True, None)          # 4 whitespace words (the original splits on spaces)
    assert si.instruction_filter("Fix this to-do") == (False, "too short")


@pytest.mark.parametrize("inst,reason", [
    ({"input": "x", "output": "x"}, "input equals output"),
    ({"input": "x", "output": ""}, "empty output"),
    ({"input": "Here is the list:", "output": "a"}, "ends with colon"),
    ({"input": "", "output": "答案如下："}, "ends with colon"),
    ({"input": "", "output": "42"}, None),
])
def test_instance_filter(inst, reason):
    assert si.instance_filter(inst) == (reason is None, reason)


def test_filter_instances_conflict_and_duplicates():
    st = Stats("x")
    assert si.filter_instances([{"input": "q", "output": "a"}, {"input": "q", "output": "b"}], st) == []
    assert st.reasons["same input, different outputs"] == 2
    got = si.filter_instances([{"input": "q", "output": "a"}, {"input": "q", "output": "a"}, {"input": "", "output": "c"}], st)
    assert got == [{"input": "q", "output": "a"}, {"input": "", "output": "c"}] and st.reasons["duplicate instance"] == 1


# ---------------------------------------------------------------- parsing
def test_parse_numbered_messy():
    reply = ("Sure, here you go!\n\n9. First task about apples.\n10) Second task\nthat continues here.\n"
             "**11.** \"Third task in quotes.\"\nTask 12: Fourth task.\nInput: some input\nOutput: some output\n"
             "13. Instruction: Fifth task.\n十四、第六个任务。\n任务15：第七个任务。\n16 - Eighth task\n17. Ninth ta")
    got = si.parse_numbered(reply)
    assert got == ["First task about apples.", "Second task that continues here.", "Third task in quotes.",
                   "Fourth task.", "Fifth task.", "第六个任务。", "第七个任务。", "Eighth task", "Ninth ta"]
    assert si.parse_numbered(reply, truncated=True)[-1] == "Eighth task"
    assert si.parse_numbered("1、写一首诗\n2．翻译下面的话\n\n3) 总结") == ["写一首诗", "翻译下面的话", "总结"]
    assert si.parse_numbered("I cannot help with that.") == []


def test_parse_instances_and_clf():
    assert si.parse_instances("Example 1\nInput: a\nOutput: b\nExample 2\nOutput: c", False) == \
        [{"input": "a", "output": "b"}, {"input": "", "output": "c"}]
    assert si.parse_instances("类别标签：负面\n输入：太难吃了", True) == [{"input": "太难吃了", "output": "负面"}]
    assert [si.parse_is_classification(x) for x in ["Yes.", "No", "是的", "不是", "unsure"]] == [True, False, True, False, None]


# ---------------------------------------------------------------- the full loop
GOOD = ["Convert the temperature from Celsius to Fahrenheit and show the formula.",
        "Propose a catchy title for a podcast about personal finance.",
        "Summarise the main causes of the French Revolution in a paragraph.",
        "Tell whether the given year is a leap year or not.",
        "解释一下为什么月亮会有阴晴圆缺的变化。",
        "Classify each animal as a mammal, bird or reptile.",
        "Describe the water cycle to a curious eight-year-old.",
        "把下面这句客套话改写得更真诚自然一些。",
        "Give three arguments for and against school uniforms.",
        "列出去海边露营需要准备的五样东西，并说明理由。",
        "Outline a weekly study plan for learning basic Spanish.",
        "用一句话向老人解释什么是二维码支付。"]
BAD = ["Write a poem about the sea.", "Write a poem about the mountains.", "Sort numbers",
       "Draw a map of the town.", "Write a program that prints primes.", "- Explain black holes to me.",
       "Напишите рассказ о дружбе.", "根据下面的流程图说明报销步骤。", "Describe " + "every detail of the city " * 30]


class Scripted:
    "Deterministic stand-in for the LLM engine."
    def __init__(self): self.calls, self.k, self.b = [], 0, 0

    def reply(self, p):
        if p.startswith(("Come up with a series", "请想出一系列")):
            start = int(re.search(r"(?:numbered|编号从)\s*(\d+)", p).group(1))
            items = []
            for _ in range(3): items.append(BAD[self.b % len(BAD)]); self.b += 1
            for _ in range(3): items.append(GOOD[self.k % len(GOOD)]); self.k += 1
            fmt = ["{n}. {t}", "{n}) {t}", "Task {n}: {t}"]
            return "OK:\n" + "\n".join(fmt[i % 3].format(n=start + i, t=t) for i, t in enumerate(items))
        if p.startswith("Can the following task"):
            return "Yes" if re.search(r"classify|tell whether", p.rsplit("Task:", 1)[1], re.I) else "No"
        task = p.rsplit("Task:", 1)[1]
        if p.startswith("Given the classification"):
            if "leap year" in task: return "Class label: Leap\nInput: 2024\nClass label: Common\nInput: 2024"
            return "Class label: Mammal\nInput: dog\nClass label: Bird\nInput: robin"
        if "Celsius" in task: return "Example 1\nInput: 5 C\nOutput: 5 C\nExample 2\nInput: 0 C\nOutput: 32 F"
        if "podcast" in task: return "Output: Some titles:"
        if "French" in task: return "Example 1\nInput: x\nOutput:"
        if any(is_cjk(c) for c in task[:4]): return "示例1\n输出：这是答案。"
        return "Example 1\nInput: something\nOutput: A fine answer."

    def generate(self, requests):
        out = []
        for r in requests:
            self.calls.append(r)
            assert set(r) >= {"id", "messages", "temperature", "max_tokens"}
            out.append(SimpleNamespace(text=self.reply(r["messages"][-1]["content"]), error=None,
                                       backend="scripted", model="s-1", finish_reason="stop"))
        return out


def test_full_bootstrap_loop(tmp_path):
    llm = Scripted()
    res = si.self_instruct(llm, num=12, request_batch_size=2, rejected=tmp_path / "rej.jsonl")
    r = res.instruction_stats.reasons
    for reason in ["too short", "too long", "blacklisted keyword", 'starts with "Write a program"',
                   "starts with punctuation", "not English or Chinese", "rouge-l > 0.7"]:
        assert r[reason] > 0, (reason, res.table())
    for reason in ["input equals output", "empty output", "ends with colon", "same input, different outputs"]:
        assert res.instance_stats.reasons[reason] > 0, (reason, res.table())
    assert len(res.tasks) == 12
    seed_ids = {s["id"] for s in si.load_seed_tasks()}
    for t in res.tasks:
        m = t["meta"]
        assert len(m["prompt_ids"]) == 8
        assert sum(i not in seed_ids for i in m["prompt_ids"]) == (0 if m["round"] == 1 else 2)
        assert m["rouge_l"] <= 0.7 and m["most_similar"] and m["backend"] == "scripted" and m["model"] == "s-1"
    assert any(t["meta"]["round"] > 1 for t in res.tasks)
    clf = {t["instruction"]: t["meta"]["is_classification"] for t in res.tasks}
    assert clf["Classify each animal as a mammal, bird or reptile."] is True
    for rec in res.records:
        assert set(rec) == {"instruction", "input", "output", "meta"} and rec["output"]
    # output-first prompts only for classification tasks
    for c in llm.calls:
        if c["id"].startswith("instances/"):
            t = next(t for t in res.tasks if t["id"] == c["id"].split("/", 1)[1])
            assert c["messages"][-1]["content"].startswith("Given the classification") == t["meta"]["is_classification"]
    assert (tmp_path / "rej.instructions.jsonl").exists() and (tmp_path / "rej.instances.jsonl").exists()


def test_settings_drive_prompt_mix(monkeypatch):
    monkeypatch.setenv("DATAALCHEMY_SELF_INSTRUCT_NUM_HUMAN_IN_PROMPT", "4")
    monkeypatch.setenv("DATAALCHEMY_SELF_INSTRUCT_NUM_PROMPT_INSTRUCTIONS", "5")
    llm = Scripted()
    tasks = si.bootstrap_instructions(llm, 8, request_batch_size=2)
    seed_ids = {s["id"] for s in si.load_seed_tasks()}
    for t in tasks:
        assert len(t["meta"]["prompt_ids"]) == 5
        assert sum(i not in seed_ids for i in t["meta"]["prompt_ids"]) == (0 if t["meta"]["round"] == 1 else 1)


def test_patience_stops_a_stuck_model():
    class Stuck:
        def generate(self, reqs):
            return [SimpleNamespace(text="1. Write a poem about the sea.", error=None, backend="b", model="m") for _ in reqs]
    st = Stats("x")
    tasks = si.bootstrap_instructions(Stuck(), 50, stats=st, patience=2, request_batch_size=1)
    assert len(tasks) == 1 and st.counts["rounds"] == 3 and st.reasons["rouge-l > 0.7"] == 2


# ---------------------------------------------------------------- Evol-Instruct elimination rules and lineage
import dataalchemy.evol as ev


def test_evol_rules_local():
    assert ev.copies_prompt("#Rewritten Prompt#: do X") == "rewritten prompt"
    assert ev.copies_prompt("根据给定提示，写一首诗。") == "给定提示"
    assert ev.copies_prompt("Write a poem about rain.") is None
    assert ev.is_refusal("I'm sorry, but I cannot answer that.") and ev.is_refusal("很抱歉，这个问题我无法回答。")
    assert not ev.is_refusal("Sorry to hear that! " + "Here is a long helpful answer. " * 20)
    assert ev.only_stopwords("... the of, and!") and ev.only_stopwords("的了。") and not ev.only_stopwords("Paris.")
    assert [ev.parse_equal(x) for x in ["Equal", "Not Equal", "不相等", "相等", "?"]] == [True, False, False, True, None]


class Evolver:
    def __init__(self): self.calls = []

    def reply(self, p):
        m = re.search(r"(?:#The Given Prompt#:|#给定提示#：)\n(.*)\n\n#", p, re.S)
        if m:
            g = m.group(1)
            if "haiku" in g: return "#The Rewritten Prompt#: " + g
            if "prime" in g: return g
            return g + (" 并说明理由。" if p.startswith("请") else " Give two examples.")
        if p.startswith(("Here are two instructions", "下面是")):
            a, b = re.search(r"(?:The first prompt: |第一条：)(.*)\n\n(?:The second prompt: |第二条：)(.*)\n\n", p, re.S).groups()
            return "Equal" if a == b else "Not Equal"
        if "impossible" in p: return "Sorry, no."
        if "filler" in p: return "the and of."
        return "A real answer about " + p[:30]

    def generate(self, requests):
        self.calls += requests
        return [SimpleNamespace(text=self.reply(r["messages"][-1]["content"]), error=None, backend="b", model="m")
                for r in requests]


def test_evolve_all_rules_and_lineage(tmp_path):
    recs = [{"id": "a", "instruction": "Explain tides."}, {"id": "b", "instruction": "Write a haiku about snow."},
            {"id": "c", "instruction": "List two prime numbers."}, {"id": "d", "instruction": "Do the impossible thing."},
            {"id": "e", "instruction": "Reply with filler only."}, {"id": "f", "instruction": "解释潮汐现象。"}]
    st = Stats("evol", rejected=tmp_path / "rej.jsonl")
    out = list(ev.evolve(recs, Evolver(), stats=st, rounds=2, ops="add_constraints,deepen"))
    st.close()
    for reason in ["copies the evolving prompt", "no information gain", "response is an apology (sorry, < 80 words)",
                   "response only punctuation and stop words"]:
        assert st.reasons[reason] == 2, (reason, st.table())          # each fails in both rounds: back to the pool
    assert st.n_in == 12 and {r["meta"]["root_id"] for r in out} == {"a", "f"}
    r2 = [r for r in out if r["meta"]["round"] == 2 and r["meta"]["root_id"] == "a"][0]
    r1 = [r for r in out if r["meta"]["round"] == 1 and r["meta"]["root_id"] == "a"][0]
    assert r2["meta"]["parent_id"] == r1["meta"]["id"] and r2["meta"]["parent"] == r1["instruction"]
    assert r2["meta"]["operation"] in ("add_constraints", "deepen") and r2["output"].startswith("A real answer")
    assert r2["meta"]["verdicts"] == {"copies_prompt": None, "equal": "not equal", "near_duplicate": None, "refusal": False,
                                      "stopwords_only": False}
    f = [r for r in out if r["meta"]["root_id"] == "f"][0]
    assert f["instruction"].endswith("并说明理由。")
    assert len(list(si.read_records(tmp_path / "rej.jsonl"))) == st.n_dropped


# ---------------------------------------------------------------- the CLI verbs, against the local OpenAI-compatible server
def _server(responder):
    pytest.importorskip("aiohttp")
    testing = pytest.importorskip("dataalchemy.testing")
    return testing.FakeOpenAI(responder=lambda messages, params: responder(messages[-1]["content"]))


def _cli():
    from typer.testing import CliRunner
    from dataalchemy.cli import load_commands
    return CliRunner(), load_commands()


def test_cli_self_instruct_every_filter_and_cache_resume(tmp_path):
    sc = Scripted()
    runner, app = _cli()
    out = tmp_path / "si.jsonl"
    with _server(sc.reply) as srv:
        env = {"DATAALCHEMY_BASE_URL": srv.url, "DATAALCHEMY_CACHE_DIR": str(tmp_path / "cache")}
        args = ["self-instruct", str(out), "--num", "12", "--batch", "2", "--rejected", str(tmp_path / "rej.jsonl")]
        r = runner.invoke(app, args, env=env)
        assert r.exit_code == 0, r.output
        for reason in ["too short", "too long", "blacklisted keyword", 'starts with "Write a program"',
                       "starts with punctuation", "not English or Chinese", "rouge-l > 0.7", "input equals output",
                       "empty output", "ends with colon", "same input, different outputs"]:
            assert f"dropped: {reason}" in r.output, (reason, r.output)
        recs = list(si.read_records(out))
        assert recs and all(x["meta"]["backend"] == "openai" and x["meta"]["model"] for x in recs)
        n = srv.n_requests
        r2 = runner.invoke(app, args, env=env)                       # same prompts: every reply from the cache
        assert r2.exit_code == 0, r2.output
        assert srv.n_requests == n and list(si.read_records(out)) == recs


def test_cli_evol_every_rule(tmp_path):
    runner, app = _cli()
    src, out = tmp_path / "in.jsonl", tmp_path / "ev.jsonl"
    si.write_records([{"id": "a", "instruction": "Explain tides."}, {"id": "b", "instruction": "Write a haiku about snow."},
                      {"id": "c", "instruction": "List two prime numbers."}, {"id": "d", "instruction": "Do the impossible thing."},
                      {"id": "e", "instruction": "Reply with filler only."}, {"id": "f", "instruction": "解释潮汐现象。"}], src)
    with _server(Evolver().reply) as srv:
        env = {"DATAALCHEMY_BASE_URL": srv.url, "DATAALCHEMY_CACHE_DIR": str(tmp_path / "cache")}
        r = runner.invoke(app, ["evol", str(src), str(out), "--rounds", "2", "--ops", "add_constraints,deepen",
                                "--rejected", str(tmp_path / "rej.jsonl")], env=env)
        assert r.exit_code == 0, r.output
    for reason in ["copies the evolving prompt", "no information gain", "response is an apology",
                   "response only punctuation and stop words"]:
        assert reason in r.output, (reason, r.output)
    recs = list(si.read_records(out))
    assert {x["meta"]["root_id"] for x in recs} == {"a", "f"} and max(x["meta"]["round"] for x in recs) == 2
    bad = runner.invoke(app, ["evol", str(src), str(out), "--ops", "shorten"])
    assert bad.exit_code != 0


def test_cli_self_instruct_classification_only(tmp_path):
    sc = Scripted()
    seen = []
    def reply(prompt):
        seen.append(prompt); return sc.reply(prompt)
    runner, app = _cli()
    out = tmp_path / "clf.jsonl"
    with _server(reply) as srv:
        env = {"DATAALCHEMY_BASE_URL": srv.url, "DATAALCHEMY_CACHE_DIR": str(tmp_path / "cache")}
        r = runner.invoke(app, ["self-instruct", str(out), "--num", "4", "--batch", "1", "--classification-only"], env=env)
    assert r.exit_code == 0, r.output
    gen = [p for p in seen if p.startswith("Come up with a series")]
    assert gen and all(p.startswith("Come up with a series of classification tasks") for p in gen)
    clf_seeds = {re.sub(r"\s+", " ", s["instruction"]).strip().rstrip(":：") for s in si.load_seed_tasks() if s["is_classification"]}
    shown = [line.split(". ", 1)[1] for p in gen[:1] for line in p.split("\n") if line[:1].isdigit() and ". " in line]
    assert shown and set(shown) <= clf_seeds
    assert all(x["meta"].get("classification_prompt") for x in si.read_records(out))


def test_evolve_near_duplicate_rule():
    body = ("work and why most coasts see two high tides every day, what the moon and the sun each contribute, and why "
            "the tidal range differs so much between a narrow bay and the open ocean.")
    twins = [{"id": "t1", "instruction": "Explain how ocean tides " + body},          # one word apart: near-duplicates
             {"id": "t2", "instruction": "Explain how sea tides " + body}]
    st = Stats("evol")
    out = list(ev.evolve(twins, Evolver(), stats=st, rounds=1, ops="deepen"))
    assert [r["meta"]["root_id"] for r in out] == ["t1"] and st.reasons["near-duplicate of an earlier instruction"] == 1
    assert len(list(ev.evolve(twins, Evolver(), rounds=1, ops="deepen", dedup_threshold=0))) == 2
