"""Classification data (`08_classify`: scripted engine and the real Engine against FakeOpenAI) and balance
(`08a_balance`: rebalancing, routing, topic clusters) with their CLI verbs. The sandbox is tested in test_sandbox.py,
the math checker in test_mathcheck.py."""
import json, re

import pytest
from typer.testing import CliRunner

import dataalchemy.classify as clf
import dataalchemy.balance as bal
from dataalchemy.core import Stats
from dataalchemy.cli import load_commands


# ---------------------------------------------------------------- a deterministic engine
ZH = {'Positive': ['{d}真不错，我很满意', '{d}超出预期，会再来', '{d}让人心情很好'],
      'Negative': ['{d}太让人失望了', '{d}质量很差，不推荐', '{d}等了很久还是不行'],
      'Neutral': ['{d}明天上午开门', '{d}有三种型号', '{d}的说明有十页']}
EN = {'Positive': ['The {d} was great', 'Loved the {d}, will return', 'The {d} exceeded my hopes'],
      'Negative': ['The {d} was awful', 'Poor {d}, not recommended', 'The {d} broke on day one'],
      'Neutral': ['The {d} opens at nine', 'The {d} comes in three sizes', 'The {d} manual has ten pages']}


def classification_reply(messages, params=None):
    "Answer a classification prompt from its Label/Domain/Language/Count lines."
    p = messages[-1]['content']
    get = lambda k: re.search(rf'^{k}: (.+)$', p, re.M).group(1).strip()
    label, domain, count = get('Label'), get('Domain'), int(get('Count'))
    bank = ZH if '(zh)' in get('Language') else EN
    items = [{'text': bank[label][i % 3].format(d=domain) + (f' #{i}' if i >= 3 else ''), 'label': label} for i in range(count)]
    return 'Here you go:\n```json\n' + json.dumps(items, ensure_ascii=False) + '\n```'


class ScriptedEngine:
    "Answers a whole batch with `reply(messages)` and records the batch sizes."
    def __init__(self, reply): self.reply, self.batches = reply, []
    def generate(self, requests):
        self.batches.append(len(requests))
        return [{'id': r['id'], 'text': self.reply(r['messages']), 'error': None, 'backend': 'scripted', 'model': 's-1'}
                for r in requests]


# ---------------------------------------------------------------- classification
def test_classification_scripted_engine_balanced():
    o = clf.ClassifyOptions(n=30, per_request=5)
    eng, st = ScriptedEngine(classification_reply), Stats('cls')
    recs = clf.generate_classification(eng, o, st)
    assert eng.batches == [len(clf.classification_plan(o))]
    b = clf.label_balance(recs, labels=['Positive', 'Negative', 'Neutral'])
    assert b['ratio'] == 1.0 and b['total'] >= 30 and not b['missing'], b
    schema = clf.classification_schema(o)
    assert all(clf.schema_errors(r, schema) == [] for r in recs)
    assert {r['lang'] for r in recs} == {'zh', 'en'}


def test_classification_through_engine_and_fake_openai():
    llm = pytest.importorskip('dataalchemy.llm')
    testing = pytest.importorskip('dataalchemy.testing')
    pytest.importorskip('aiohttp')
    o = clf.ClassifyOptions(n=12, per_request=4, overgenerate=1.0)
    with testing.FakeOpenAI(responder=classification_reply) as srv:
        eng = llm.Engine(backend='openai', base_url=srv.url, api_key='sk-test', model='gpt-4o-mini', use_cache=False,
                         progress=False, max_retries=0)
        st = Stats('cls')
        recs = clf.generate_classification(eng, o, st)
        assert srv.n_requests == len(clf.classification_plan(o))
    assert len(recs) == 12 and st.n_dropped == 0, st.table()
    assert clf.label_balance(recs)['ratio'] == 1.0
    assert {r['meta']['backend'] for r in recs} == {'openai'} and recs[0]['meta']['model'] == 'gpt-4o-mini'


# ---------------------------------------------------------------- balance and routing
def _records():
    simple = [{'id': f's{i}', 'instruction': f'What is {i} + {i}?', 'output': f'{2 * i}'} for i in range(30)]
    medium = [{'id': f'm{i}', 'instruction': f'解释第{i}个概念，并说明它在训练神经网络时的作用。',
               'output': '它是重要概念。\n1. 影响训练。\n2. 影响泛化。'} for i in range(10)]
    complex_ = [{'id': f'c{i}', 'tier': 'complex', 'instruction': f'Task {i}', 'output': 'x'} for i in range(10)]
    return simple + medium + complex_


def test_rebalance_to_mix_and_shortfall():
    recs = _records()
    rb = bal.rebalance(recs, '3:5:2')
    assert rb.available == {'simple': 30, 'medium': 10, 'complex': 10}
    assert rb.kept == {'simple': 6, 'medium': 10, 'complex': 4} and sum(rb.shortfall.values()) == 0
    ask = bal.rebalance(recs, '3:5:2', n=100, seed=1)
    assert ask.shortfall == {'simple': 0, 'medium': 40, 'complex': 10} and len(ask.records) == 50
    assert bal.rebalance(recs, '3:5:2', seed=5).records == bal.rebalance(recs, '3:5:2', seed=5).records


def test_route_cost_orders_plans():
    rc = bal.route_cost(_records(), bal.RouteOptions(), output_tokens=300)
    p = rc.plans
    assert p['all cheap']['cost'] < p['routed']['cost'] < p['all strong']['cost']
    assert rc.counts == {'gpt-4o-mini': 40, 'gpt-4o': 10}


def test_topic_clusters_flags_big_cluster():
    from dataalchemy.testing import hash_embedding
    texts = ['python string upper method'] * 12 + ['bake bread at home', 'tax rules for freelancers', 'train a puppy'] * 2
    cr = bal.topic_clusters(texts, k=3, embedder=lambda ts: [hash_embedding(t, 64) for t in ts])
    big = max(range(cr.k), key=lambda c: cr.sizes[c])
    assert cr.sizes[big] >= 12 and big in cr.over and cr.over == [big]


@pytest.mark.slow
def test_topic_clusters_minilm():
    texts = ['How do I reverse a list in Python?', 'Sort a list in Python', 'Python list comprehension example',
             'How long to boil an egg?', 'Recipe for tomato soup', 'How to bake sourdough bread']
    cr = bal.topic_clusters(texts, k=2)
    assert sorted(cr.sizes) == [3, 3] and len(set(cr.labels[:3])) == 1


# ---------------------------------------------------------------- CLI
def test_cli_balance(tmp_path):
    src, dst = tmp_path / 'in.jsonl', tmp_path / 'out.jsonl'
    src.write_text('\n'.join(json.dumps(r, ensure_ascii=False) for r in _records()), encoding='utf-8')
    runner = CliRunner()
    r = runner.invoke(load_commands(), ['balance', str(src), str(dst), '--mix', '3:5:2', '--n', '40'])
    assert r.exit_code == 0, r.output
    assert 'medium needs 10 more' in r.output and len(dst.read_text().splitlines()) == 30


def test_cli_classify_against_fake_openai(tmp_path):
    testing = pytest.importorskip('dataalchemy.testing')
    pytest.importorskip('aiohttp')
    out = tmp_path / 'cls.jsonl'
    with testing.FakeOpenAI(responder=classification_reply) as srv:
        env = {'DATAALCHEMY_BASE_URL': srv.url, 'OPENAI_API_KEY': 'sk-test', 'DATAALCHEMY_CACHE_DIR': str(tmp_path / 'cache'),
               'DATAALCHEMY_LLM_BACKEND': 'openai', 'DATAALCHEMY_LLM_MAX_RETRIES': '0'}
        r = CliRunner().invoke(load_commands(), ['taskdata', 'classify', str(out), '--n', '6', '--per-request', '2', '--sft'], env=env)
    assert r.exit_code == 0, r.output
    recs = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(recs) >= 6 and {x['output'] for x in recs} == {'Positive', 'Negative', 'Neutral'}
    assert 'largest/smallest = 1.00' in r.output
