"Retriever and reranker training: data checks, the held-out split, hand-checked metrics, loss falls on CPU, CLI."
import json, math, warnings

import numpy as np
import pytest
from typer.testing import CliRunner

import dataalchemy.retriever_train as rt
from dataalchemy.core import RecordError, Stats, write_records
from dataalchemy.cli import load_commands

DOCS = {'cat': ['Cats sleep sixteen hours a day', '猫每天睡十六个小时'],
        'tea': ['Green tea is brewed at eighty degrees', '绿茶用八十度的水泡'],
        'rail': ['High speed trains run at 350 km per hour', '高铁时速三百五十公里'],
        'rag': ['RAG retrieves passages before answering', '检索增强生成先检索再回答']}
QUERIES = {'cat': ['how long do cats sleep', '猫睡多久'], 'tea': ['what temperature for green tea', '绿茶水温多少'],
           'rail': ['how fast is high speed rail', '高铁有多快'], 'rag': ['what does RAG retrieve', '检索增强生成是什么']}
TOPICS = list(DOCS)


def listwise():
    return [{'query': q, 'pos': [DOCS[t][k], DOCS[TOPICS[(i + 1) % 4]][k], DOCS[TOPICS[(i + 2) % 4]][k]],
             'scores': [0.8, 0.15, 0.05]} for i, t in enumerate(TOPICS) for k, q in enumerate(QUERIES[t])]


def triples():
    return [{'question': r['query'], 'answer': '', 'long_answer': '', 'positive': r['pos'][0], 'negative': r['pos'][1]}
            for r in listwise()]


def corpus():
    return [{'id': f'{t}-{k}', 'text': x} for t in TOPICS for k, x in enumerate(DOCS[t])]


def texts():
    return [x for r in listwise() for x in [r['query'], *r['pos']]]


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    import torch
    torch.set_num_threads(1)          # tiny models on a shared machine: one thread is much faster
    d = tmp_path_factory.mktemp('models')
    return {'bi': rt.build_tiny_retriever(texts(), d / 'bi'), 'ce': rt.build_tiny_reranker(texts(), d / 'ce'), 'dir': d}


# ---------------------------------------------------------------- data, split, metrics (no torch)

def test_import_is_light():
    import subprocess, sys
    code = ("import sys, dataalchemy.retriever_train; "
            "print([m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules])")
    assert subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.strip() == '[]'


def test_load_listwise_checks_and_normalises(tmp_path):
    st = Stats('l')
    out = list(rt.load_listwise([{'query': 'q', 'pos': ['a', 'b'], 'scores': [2, 2]},
                                 {'query': '问题', 'pos': [], 'scores': []}], stats=st))
    assert out[0]['scores'] == [0.5, 0.5] and st.reasons['no_documents'] == 1 and st.counts['renormalised'] == 1
    p = tmp_path / 'bad.jsonl'
    write_records([{'query': 'ok', 'pos': ['a'], 'scores': [1]}, {'query': '', 'pos': ['a'], 'scores': [1]}], p)
    with pytest.raises(RecordError, match=r'bad.jsonl:2: query: missing'):
        list(rt.load_listwise(p))
    st = Stats('l', rejected=tmp_path / 'rej.jsonl')
    assert len(list(rt.load_listwise(p, strict=False, stats=st))) == 1
    st.close()
    assert json.loads((tmp_path / 'rej.jsonl').read_text().splitlines()[0])['reason'] == 'bad_record'
    with pytest.raises(RecordError, match='negative: missing'):
        list(rt.load_triples([{'question': 'q', 'positive': 'p'}]))


def test_split_never_shares_a_query_and_warns_on_overlap():
    recs = [{'query': f'Query {i}?'} for i in range(100)] + [{'query': 'query 3'}, {'query': 'QUERY  5!'}]
    tr, ev = rt.split_by_query(recs, 0.3, seed=2)
    assert not rt.query_ids(tr) & rt.query_ids(ev) and len(tr) + len(ev) == 102
    assert 10 < len(ev) < 50
    # the decision depends on the query only: other datasets of the same queries split the same way
    tr2, ev2 = rt.split_by_query([{'question': r['query'], 'x': 1} for r in recs[::-1]], 0.3, seed=2)
    assert rt.query_ids(ev2) == rt.query_ids(ev)
    with pytest.warns(rt.QueryOverlapWarning, match='2 of 2 evaluation queries'):
        assert rt.check_overlap(tr, [tr[0]['query'].upper(), tr[1]['query'] + ' ?']) == 2
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert rt.check_overlap(tr, ev) == 0


def test_metrics_hand_checked():
    # ranks of the relevant documents: 2 and 4 of 5
    m = rt.rank_metrics(['x', 'a1', 'y', 'a2', 'z'], {'a1': 1, 'a2': 1}, ks=(1, 3, 5))
    assert (m['recall@1'], m['recall@3'], m['recall@5'], m['mrr']) == (0.0, 0.5, 1.0, 0.5)
    l3, l5 = math.log2(3), math.log2(5)
    assert m['ndcg@3'] == pytest.approx((1 / l3) / (1 + 1 / l3), abs=1e-12) == pytest.approx(0.38685, abs=1e-5)
    assert m['ndcg@5'] == pytest.approx((1 / l3 + 1 / l5) / (1 + 1 / l3), abs=1e-12) == pytest.approx(0.65092, abs=1e-5)
    # graded gains: 0.7 at rank 1, the 0.3 one missing
    g = rt.rank_metrics(['b1', 'x', 'y'], {'b1': 0.7, 'b2': 0.3}, ks=(1, 3))
    assert (g['recall@1'], g['mrr'], g['ndcg@1']) == (0.5, 1.0, 1.0)
    assert g['ndcg@3'] == pytest.approx(0.7 / (0.7 + 0.3 / l3), abs=1e-12)
    # graded relevance rewards the better order: the same two documents swapped lose nDCG
    assert rt.rank_metrics(['b2', 'b1'], {'b1': 0.7, 'b2': 0.3}, ks=(2,))['ndcg@2'] < 1
    mean = rt.retrieval_metrics([['x', 'a1', 'y', 'a2', 'z'], ['b1', 'x', 'y'], ['n']],
                                [{'a1': 1, 'a2': 1}, {'b1': 0.7, 'b2': 0.3}, {'zz': 1}], ks=(1, 3))
    assert mean['queries'] == 3 and mean['recall@3'] == pytest.approx((0.5 + 0.5 + 0) / 3)
    assert mean['mrr'] == pytest.approx((0.5 + 1 + 0) / 3)
    table = rt.eval_table({'a': mean}, ['mrr'])
    assert '| a | 3 | 0.500 |' in table


def test_eval_queries_formats():
    docs = [{'id': 'a', 'text': 'Alpha passage'}, {'id': 'b', 'text': '第二段'}]
    st = Stats('q')
    qs = rt.load_eval_queries([{'query': 'q1', 'relevant': ['a', 'New text']},
                               {'query': 'q2', 'qrels': {'b': 2}},
                               {'question': 'q3', 'positive': '第二段', 'negative': 'x'},
                               {'query': 'q4', 'pos': ['Alpha  passage', '第二段'], 'scores': [0.2, 0.8]},
                               {'query': 'q5', 'pos': ['Alpha passage'], 'scores': [0.0]}], docs, 0.5, st)
    assert [q['gains'] for q in qs][1:] == [{'b': 2.0}, {'b': 1.0}, {'b': 0.8}]
    assert set(qs[0]['gains']) == {'a', docs[-1]['id']} and st.counts['docs_added'] == 1 and len(docs) == 3
    assert st.reasons['no_relevant_document'] == 1
    with pytest.raises(RecordError, match='2: relevant: no relevance'):
        rt.load_eval_queries([{'query': 'a', 'relevant': ['a']}, {'query': 'b'}], docs)


# ---------------------------------------------------------------- training on CPU (tiny models)

def test_listwise_kl_matches_numpy():
    import torch
    q = torch.tensor([[1., 0.]]); d = torch.tensor([[[1., 0.], [0., 1.], [3., 4.]]]); p = [0.5, 0.3, 0.2]
    cos = np.array([1, 0, 0.6]); r = np.exp(cos / 0.2); r /= r.sum()
    want = float(np.sum(np.array(p) * np.log(np.array(p) / r)))
    assert rt.listwise_kl(q, d, torch.tensor([p]), temperature=0.2).item() == pytest.approx(want, rel=1e-5)


def test_train_retriever_loss_falls(models, tmp_path):
    res = rt.train_retriever(listwise(), tmp_path / 'lw', model=str(models['bi']), eval_frac=0.0, max_steps=20,
                             batch_size=4, learning_rate=1e-3, temperature=0.1, verbose=False)
    assert res.steps == 20 and res.mean_loss('last') < 0.5 * res.mean_loss('first')
    assert (tmp_path / 'lw' / 'modules.json').exists() and len((tmp_path / 'lw' / 'train_log.jsonl').read_text().splitlines()) == 20
    info = json.loads((tmp_path / 'lw' / rt.TRAIN_INFO).read_text())
    assert info['loss'] == 'listwise' and set(info['train_query_ids']) == rt.query_ids(listwise())
    # the baseline: contrastive with in-batch negatives
    nr = rt.train_retriever(listwise(), tmp_path / 'nr', model=str(models['bi']), loss='mnrl', eval_frac=0.0,
                            max_steps=20, batch_size=4, learning_rate=1e-3, temperature=0.1, verbose=False)
    assert nr.mean_loss('last') < 0.5 * nr.mean_loss('first')
    # trained queries are found; evaluating on them warns
    with pytest.warns(rt.QueryOverlapWarning):
        after = rt.evaluate_retrieval([{'query': r['query'], 'positive': r['pos'][0]} for r in listwise()], corpus(),
                                      tmp_path / 'lw', name='after', ks='1,3')
    before = rt.evaluate_retrieval([{'query': r['query'], 'positive': r['pos'][0]} for r in listwise()], corpus(),
                                   models['bi'], name='before', ks='1,3')
    assert after['after']['mrr'] > before['before']['mrr']


def test_listwise_loss_module(models):
    import torch
    m = rt.load_retriever(models['bi'], 'cpu')
    loss = rt.ListwiseDistillationLoss(m, temperature=0.1)
    feats = [rt._prep(m, ['猫睡多久', 'how fast is rail']), rt._prep(m, DOCS['cat'][1:] + DOCS['rail'][:1]),
             rt._prep(m, DOCS['tea'][1:] + DOCS['tea'][:1])]
    val = loss(feats, torch.tensor([[0.9, 0.1], [0.7, 0.3]]))
    val.backward()
    assert val.item() >= 0 and any(p.grad is not None for p in m.parameters())


def test_train_reranker_loss_falls_and_reranks(models, tmp_path):
    res = rt.train_reranker(triples(), tmp_path / 'ce', reranker_model=str(models['ce']), eval_frac=0.0,
                            reranker_max_steps=25, reranker_batch_size=4, reranker_learning_rate=3e-3, verbose=False)
    assert res.mean_loss('last') < 0.5 * res.mean_loss('first')
    t = triples()[0]
    s = rt.rerank_scores(tmp_path / 'ce', t['question'], [t['positive'], t['negative']])
    assert s[0] > s[1]
    from sentence_transformers import CrossEncoder           # the saved directory is a CrossEncoder too
    assert CrossEncoder(str(tmp_path / 'ce'), device='cpu').predict([(t['question'], t['positive'])]).shape == (1,)
    with pytest.warns(rt.QueryOverlapWarning):
        r = rt.evaluate_retrieval([{'query': t['question'], 'positive': t['positive']} for t in triples()], corpus(),
                                  models['bi'], reranker=tmp_path / 'ce', name='tiny', ks='1,3')
    assert list(r) == ['tiny', 'tiny + reranker'] and r['tiny + reranker']['mrr'] > r['tiny']['mrr']


def test_pipeline_metrics_exact(monkeypatch):
    class Fake:
        vecs = {'q1': [1, 0], 'q2': [0, 1], 'A': [0.9, 0.1], 'B': [0.6, 0.4], 'C': [0.1, 0.9]}
        def encode(self, xs, **kw):
            v = np.array([self.vecs[x] for x in xs], float)
            return v / np.linalg.norm(v, axis=1, keepdims=True)
    monkeypatch.setattr(rt, 'load_retriever', lambda *a, **k: Fake())
    docs = [{'id': 'a', 'text': 'A'}, {'id': 'b', 'text': 'B'}, {'id': 'c', 'text': 'C'}]
    # q1 ranks a, b, c (relevant b: rank 2); q2 ranks c, b, a (relevant a: rank 3)
    m = rt.evaluate_retrieval([{'query': 'q1', 'relevant': ['b']}, {'query': 'q2', 'relevant': ['a']}], docs, 'fake',
                              name='f', ks='1,2')['f']
    assert (m['recall@1'], m['recall@2'], m['mrr']) == (0.0, 0.5, pytest.approx((1 / 2 + 1 / 3) / 2))
    assert m['ndcg@2'] == pytest.approx((1 / math.log2(3)) / 2)


# ---------------------------------------------------------------- CLI

def test_cli_train_and_eval(models, tmp_path):
    write_records(listwise(), tmp_path / 'lm.jsonl'); write_records(triples(), tmp_path / 'tri.jsonl')
    write_records(corpus(), tmp_path / 'corpus.jsonl')
    app, run = load_commands(), CliRunner().invoke
    r = run(app, ['train-retriever', str(tmp_path / 'lm.jsonl'), '--model', str(models['bi']), '--out', str(tmp_path / 'bi'),
                  '--max-steps', '3', '--batch-size', '4', '--eval-frac', '0.25', '--lr', '1e-3'])
    assert r.exit_code == 0, r.output
    assert '3 steps' in r.output and (tmp_path / 'bi' / 'heldout.jsonl').exists()
    r = run(app, ['train-reranker', str(tmp_path / 'tri.jsonl'), '--model', str(models['ce']), '--out', str(tmp_path / 'ce'),
                  '--max-steps', '2', '--eval-frac', '0.25'])
    assert r.exit_code == 0, r.output
    held = [json.loads(x)['query'] for x in (tmp_path / 'bi' / 'heldout.jsonl').read_text().splitlines()]
    held_ce = [json.loads(x)['question'] for x in (tmp_path / 'ce' / 'heldout.jsonl').read_text().splitlines()]
    assert sorted(held) == sorted(held_ce)
    with warnings.catch_warnings():
        warnings.simplefilter('error', rt.QueryOverlapWarning)
        r = run(app, ['eval-retrieval', str(tmp_path / 'bi' / 'heldout.jsonl'), str(tmp_path / 'corpus.jsonl'),
                      '--model', str(tmp_path / 'bi'), '--base', str(models['bi']), '--reranker', str(tmp_path / 'ce'),
                      '--k', '1,3', '--out', str(tmp_path / 'm.json')])
    assert r.exit_code == 0, r.output
    assert '| base: bi |' in r.output and '| bi + reranker |' in r.output
    got = json.loads((tmp_path / 'm.json').read_text())
    assert set(got) == {'base: bi', 'bi', 'bi + reranker'} and got['bi']['queries'] == len(held)
    r = run(app, ['train-retriever', str(tmp_path / 'lm.jsonl'), '--out', str(tmp_path / 'x'), '--model', str(tmp_path / 'nope')])
    assert r.exit_code != 0 and 'no such model directory' in str(r.exception)
