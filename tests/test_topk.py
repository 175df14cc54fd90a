"Top-k CLaRa data: exactly k docs, valid pos_index, the false-negative guard, seeds, small corpora, hard mining, the CLI."
import numpy as np
import pytest
from typer.testing import CliRunner

import dataalchemy.topk as tk
from dataalchemy.cli import load_commands
from dataalchemy.core import Stats, read_records, write_records
from dataalchemy.llm import Engine
from dataalchemy.qa import chunk_documents, generate_qa
from dataalchemy.testing import FakeOpenAI, hash_embedding

TOPICS = ['过拟合', '学习率', '批归一化', '注意力', 'dropout', 'optimizer', 'tokenizer', 'embedding', 'gradient', 'pruning',
          '蒸馏', '量化']


def corpus(n_docs=12, chunks_per_doc=2):
    docs = []
    for i in range(n_docs):
        t = TOPICS[i % len(TOPICS)]
        if i % 2:
            text = ' '.join(f'The {t} method {i}-{j} is a technique described in section {i}{j}.' for j in range(chunks_per_doc))
        else:
            text = ''.join(f'{t}是第{i}章第{j}节介绍的一种方法。' for j in range(chunks_per_doc))
        docs.append({'doc_id': f'doc{i}', 'text': text})
    chunks = list(chunk_documents(docs, chunk_size=10, chunk_overlap=0, chunk_by="sentences"))
    return chunks


@pytest.fixture(scope='module')
def data():
    chunks = corpus()
    qa = generate_qa(chunks, Engine(backend='offline', progress=False))
    assert len(chunks) >= 20 and len(qa) >= 20
    return chunks, qa


@pytest.mark.parametrize('k', [1, 2, 5, 10])
@pytest.mark.parametrize('neg', ['random', 'mixed', 'hard'])
def test_exactly_k_and_valid_pos_index(data, k, neg):
    chunks, qa = data
    emb = lambda ts: [hash_embedding(t) for t in ts]
    recs = tk.build_topk(qa, k=k, negatives=neg, corpus=chunks, embedder=emb, seed=3)
    assert len(recs) == len(qa)
    by_q = {q['id']: q for q in qa}
    for r in recs:
        q = by_q[r['meta']['qa_id']]
        assert len(r['docs']) == k and len(set(r['meta']['chunk_ids'])) == k
        assert isinstance(r['pos_index'], list) and len(r['pos_index']) == 1 and 0 <= r['pos_index'][0] < k
        assert r['docs'][r['pos_index'][0]] == q['meta']['context']
        assert r['question'] == q['instruction'] and r['gold_answer'] == r['answer'] == q['output']
        if neg == 'random' and k > 1:                  # other documents first: plenty of them here
            p = r['pos_index'][0]
            assert all(d != r['meta']['doc_ids'][p] for i, d in enumerate(r['meta']['doc_ids']) if i != p)


def test_positions_are_spread_and_seeded(data):
    chunks, qa = data
    a = tk.build_topk(qa, k=5, corpus=chunks, seed=1)
    assert a == tk.build_topk(qa, k=5, corpus=chunks, seed=1)
    assert a != tk.build_topk(qa, k=5, corpus=chunks, seed=2)
    assert len({r['pos_index'][0] for r in a}) >= 3                 # the positive is not always first


def test_false_negative_guard():
    answer = 'Gradient clipping caps the norm of the gradients at a threshold.'
    chunks = [{'doc_id': 'pos', 'chunk_id': 'pos#0', 'text': answer + ' It prevents exploding gradients.'},
              {'doc_id': 'dup', 'chunk_id': 'dup#0', 'text': 'Summary slide. ' + answer},
              {'doc_id': 'para', 'chunk_id': 'para#0', 'text': 'Recall: gradient clipping caps the norm of gradients at a threshold.'}]
    chunks += [{'doc_id': f'o{i}', 'chunk_id': f'o{i}#0', 'text': f'Unrelated fact number {i} about cooking pasta.'} for i in range(6)]
    qa = [{'question': 'What does gradient clipping do?', 'answer': answer, 'context': chunks[0]['text'], 'chunk_id': 'pos#0', 'doc_id': 'pos'}]
    for neg in ('random', 'hard'):
        for seed in range(10):
            st = Stats('topk')
            recs = tk.build_topk(qa, k=7, negatives=neg, corpus=chunks, seed=seed, stats=st,
                                 embedder=lambda ts: [hash_embedding(t) for t in ts])
            assert len(recs) == 1
            assert not {'dup#0', 'para#0'} & set(recs[0]['meta']['chunk_ids']), (neg, seed)
            if neg == 'hard': assert st.counts['false negatives replaced'] == 2
    # with the guard off, the hardest negatives are exactly the false negatives
    recs = tk.build_topk(qa, k=3, negatives='hard', corpus=chunks, guard=0, embedder=lambda ts: [hash_embedding(t) for t in ts])
    assert {'dup#0', 'para#0'} <= set(recs[0]['meta']['chunk_ids'])
    # k larger than what the guard leaves: skipped with the reason
    st = Stats('topk')
    assert tk.build_topk(qa, k=9, corpus=chunks, stats=st) == []
    assert st.reasons == {'not enough negatives after the false-negative guard': 1}


def test_small_corpus_skipped_with_recommendation(tmp_path):
    chunks = corpus(3, 2)
    qa = generate_qa(chunks, Engine(backend='offline', progress=False))
    st = Stats('topk', rejected=tmp_path / 'rej.jsonl')
    assert tk.build_topk(qa, k=8, corpus=chunks, stats=st) == []
    st.close()
    rej = list(read_records(tmp_path / 'rej.jsonl'))
    assert len(rej) == len(qa) and rej[0]['reason'] == 'corpus smaller than k (k=8)'
    assert rej[0]['recommendation'] == f'{len(chunks)} usable chunks: use k = 1-2 with random negatives'
    assert tk.recommend_k(30)['text'] == '30 usable chunks: use k = 3-5 with random negatives'
    assert tk.recommend_k(500)['negatives'] == 'hard'


@pytest.mark.parametrize('block', [1, 7, 64, 1000])
def test_blocked_mining_matches_naive(block):
    rng = np.random.default_rng(block)
    E = rng.standard_normal((150, 24)).astype(np.float32)
    idx, sims = tk.mine_hard_negatives(E, 8, block=block)
    assert (idx == tk.naive_hard_negatives(E, 8)).all()
    En = tk.normalize_rows(E)
    np.testing.assert_allclose(sims, np.take_along_axis(En @ En.T, idx, 1), rtol=1e-5, atol=1e-5)
    groups = np.arange(150) // 5
    idx2, _ = tk.mine_hard_negatives(E, 8, rows=np.arange(0, 150, 7), groups=groups, block=block)
    assert not (groups[idx2] == groups[np.arange(0, 150, 7)][:, None]).any()


def test_hard_negatives_through_embeddings_endpoint(data):
    chunks, qa = data
    with FakeOpenAI() as srv:
        eng = Engine(base_url=srv.url, api_key='k', progress=False, use_cache=False)
        recs = tk.build_topk(qa, k=4, negatives='hard', embedder='engine', engine=eng, corpus=chunks)
        assert {r['path'] for r in srv.requests} == {'embeddings'}
    texts = sorted({c['chunk_id']: c['text'] for c in chunks}.items())
    ids = [c for c, _ in texts]
    E = tk.normalize_rows([hash_embedding(t) for _, t in texts])
    groups = [i.split('#')[0] for i in ids]
    for r in recs[:10]:
        p = r['pos_index'][0]
        row = ids.index(r['meta']['chunk_ids'][p])
        pool, _ = tk.mine_hard_negatives(E, 30, rows=[row], groups=groups)
        want = [ids[j] for j in pool[0] if j >= 0 and not tk.is_false_negative(texts[j][1], r['answer'])][:3]
        assert sorted(c for i, c in enumerate(r['meta']['chunk_ids']) if i != p) == sorted(want)


def test_malformed_records_counted(data):
    chunks, qa = data
    st = Stats('topk')
    recs = tk.build_topk([{'question': 'no answer'}, {'instruction': 'q', 'output': 'a'}] + qa[:3], k=3, corpus=chunks, stats=st)
    assert len(recs) == 3 and st.n_dropped == 2


def test_cli_prints_generation_top_k(data, tmp_path):
    chunks, qa = data
    write_records(qa, tmp_path / 'qa.jsonl'); write_records(chunks, tmp_path / 'chunks.jsonl')
    r = CliRunner().invoke(load_commands(), ['topk', str(tmp_path / 'qa.jsonl'), str(tmp_path / 'e2e.jsonl'), '--k', '5',
                                             '--negatives', 'random', '--chunks', str(tmp_path / 'chunks.jsonl'),
                                             '--instruct-out', str(tmp_path / 'it.jsonl')])
    assert r.exit_code == 0, r.output
    assert 'train with: --generation_top_k 5' in r.output and 'use k = 3-5 with random negatives' in r.output
    recs = list(read_records(tmp_path / 'e2e.jsonl'))
    assert {len(x['docs']) for x in recs} == {5} and recs == list(read_records(tmp_path / 'it.jsonl'))
    assert all({'question', 'docs', 'gold_answer', 'answer', 'pos_index'} <= set(x) for x in recs)
    r = CliRunner().invoke(load_commands(), ['topk', str(tmp_path / 'qa.jsonl'), str(tmp_path / 'e2e.jsonl'), '--negatives', 'easy'])
    assert r.exit_code == 2 and 'random, hard or mixed' in r.output
