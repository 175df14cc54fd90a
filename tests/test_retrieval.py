"Retriever scores (BM25/embeddings, HF and completions LM scoring, softmax) and cross-encoder data (BM25 negatives, Parquet)."
import math
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

import dataalchemy.retrieval as rt
from dataalchemy.cli import load_commands
from dataalchemy.core import Stats, read_records, write_records
from dataalchemy.testing import FakeOpenAI

CORPUS = ['Transformer 于 2017 年提出，完全基于注意力机制。', '机器学习是人工智能的一个分支。',
          'The Transformer was introduced in 2017 by researchers at Google.', 'Dropout randomly disables neurons during training.',
          'BM25 ranks documents by term frequency.', '梯度下降沿着负梯度方向更新参数。', 'Tokyo is the capital of Japan.',
          '东京是日本的首都。']
QUERIES = [{'query': 'Transformer 是哪一年提出的？', 'answer': '2017 年'},
           {'question': 'When was the Transformer introduced?', 'golden_answers': ['in 2017']},
           {'query': 'What is the capital of Japan?', 'answers': ['Tokyo']},
           {'query': '日本的首都是哪里？', 'answer': '东京'}]


@pytest.fixture(scope='module')
def tiny():
    import torch
    from tokenizers import Tokenizer, models, trainers, pre_tokenizers, decoders
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer, tk.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tk.train_from_iterator(CORPUS * 5, trainers.BpeTrainer(vocab_size=300, special_tokens=['<pad>'],
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token='<pad>')
    torch.manual_seed(1)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=16, n_layer=1, n_head=2)).eval()
    return model, tok


def test_bm25_cjk_and_english():
    ix = rt.Bm25Index(CORPUS)
    assert ix.top('日本的首都是哪里？', 1) == [7]
    assert ix.top('capital of Japan', 1) == [6]
    assert ix.top('When was the Transformer introduced?', 1) == [2] and 0 in ix.top('Transformer introduced', 2)
    assert ix.scores('').tolist() == [0.0] * len(CORPUS)


def test_softmax_and_temperature():
    s = rt.softmax([-3.0, -1.0, -2.0], 0.5)
    assert math.isclose(sum(s), 1.0, abs_tol=1e-12) and np.argmax(s) == 1
    assert rt.softmax([-1.0, -2.0], 0.1)[0] > rt.softmax([-1.0, -2.0], 1)[0] > rt.softmax([-1.0, -2.0], 100)[0] > 0.5
    assert all(math.isfinite(x) for x in rt.softmax([-1e6, -1e6 - 1]))


def test_hf_scores_sum_to_one_and_loglik_is_exact(tiny):
    import torch
    model, tok = tiny
    sc = rt.HFScorer(model, tok, batch_size=3)
    st = Stats('retrieval')
    recs = rt.retrieval_scores(QUERIES, CORPUS, sc, top_n=3, temperature=0.7, stats=st, score='seq_logprob')
    assert len(recs) == 4 and st.n_out == 4
    for r in recs:
        assert set(r) >= {'query', 'pos', 'scores'} and 1 <= len(r['pos']) <= 3 and len(r['scores']) == len(r['pos'])
        assert math.isclose(sum(r['scores']), 1.0, abs_tol=1e-9)
        ll = r['meta']['loglik']
        np.testing.assert_allclose(r['scores'], rt.softmax(ll, 0.7), atol=1e-3)
    seed = rt.retrieval_scores(QUERIES, CORPUS, sc, top_n=3)           # default: the seed's mean token probability, T=1
    for r in seed:
        toks = sc.loglik([(rt.lm_prompt(d, r['query']), rt.lm_continuation(r['meta']['answer'], r['query'])) for d in r['pos']],
                         tokens=True)
        means = np.array([np.exp(t).mean() for t in toks])
        np.testing.assert_allclose(r['scores'], np.exp(means) / np.exp(means).sum(), atol=1e-6)
        assert r['meta']['score'] == 'mean_prob' and max(r['scores']) / min(r['scores']) <= math.e
    # one pair by hand, with a prefix longer than the model's 64 positions (cut from the left)
    prefix, cont = rt.lm_prompt('很长的文档。' * 40, '问题？'), rt.lm_continuation('答案', '问题？')
    got = sc.loglik([(prefix, cont)])[0]
    p, c = tok(prefix)['input_ids'], tok(cont)['input_ids']
    p = p[-(64 - len(c)):]
    with torch.no_grad(): lp = torch.log_softmax(model(torch.tensor([p + c])).logits[0], -1)
    assert math.isclose(got, sum(float(lp[len(p) - 1 + j, t]) for j, t in enumerate(c)), rel_tol=1e-4)


def test_completions_scorer_prefers_the_answering_document():
    with FakeOpenAI() as srv:
        sc = rt.CompletionsScorer('fake-model', srv.url, 'k', batch_size=2)
        recs = rt.retrieval_scores([{'query': 'What does dropout do to neurons in the Transformer during training?',
                                     'answer': 'Dropout randomly disables neurons'}], CORPUS, sc, top_n=5)
        bodies = [r['body'] for r in srv.requests]
    assert all(b['echo'] is True and b['logprobs'] == 1 for b in bodies) and len(bodies) == math.ceil(len(recs[0]['pos']) / 2)
    r = recs[0]
    assert len(r['pos']) >= 3 and math.isclose(sum(r['scores']), 1.0, abs_tol=1e-9)
    assert r['pos'][int(np.argmax(r['scores']))] == CORPUS[3]
    assert r['meta']['backend'] == 'openai-completions' and r['meta']['model'] == 'fake-model'


def test_completions_needs_endpoint(monkeypatch):
    monkeypatch.delenv('DATAALCHEMY_BASE_URL', raising=False)
    with pytest.raises(ValueError, match='needs a base_url'):
        rt.CompletionsScorer('m', None)


def test_test_split_warning(tiny):
    sc = rt.HFScorer(*tiny)
    with pytest.warns(UserWarning, match='test split'):
        rt.retrieval_scores([{**QUERIES[0], 'split': 'test'}], CORPUS, sc, top_n=2)
    with pytest.warns(UserWarning, match='nq_test.jsonl'):
        rt.retrieval_scores(QUERIES[:1], CORPUS, sc, top_n=2, source='/data/nq_test.jsonl')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        rt.retrieval_scores(QUERIES[:1], CORPUS, sc, top_n=2, source='/data/nq_train.jsonl')


def test_embedding_retriever(tiny):
    from dataalchemy.testing import hash_embedding
    recs = rt.retrieval_scores(QUERIES[3:], CORPUS, rt.HFScorer(*tiny), top_n=2, retriever='embed',
                               embedder=lambda ts: [hash_embedding(t) for t in ts])
    assert recs[0]['pos'][0] == CORPUS[7] and len(recs[0]['pos']) == 2


NQ = [{'question': 'capital of japan', 'answer': 'Tokyo', 'long_answer': 'Tokyo is the capital of Japan.',
       'documents': ['Tokyo is the capital of Japan.', 'Kyoto was the capital of Japan for a thousand years.',
                     'Bread rises because of yeast.', 'Japan is an island country.'], 'gold_document_id': 0},
      {'question': '日本的首都', 'answer': '东京', 'long_answer': '东京是日本的首都。',
       'documents': [{'id': 'a', 'text': '京都曾是日本的首都。'}, {'id': 'b', 'text': '东京是日本的首都。'},
                     {'id': 'c', 'text': '面包因酵母而发酵。'}], 'gold_document_id': 'b'}]
BAD = [{'question': 'x', 'documents': 'not a list', 'gold_document_id': 0},
       {'question': 'x', 'documents': ['a', 'b'], 'gold_document_id': 'zz'},
       {'question': 'x', 'documents': ['a', {'no': 'text'}], 'gold_document_id': 0},
       {'question': 'x', 'documents': ['a', 'b']},
       {'question': 'x', 'documents': ['same', 'same'], 'gold_document_id': 0}]


def test_least_vs_hardest_negatives(tmp_path):
    st = Stats('ce', rejected=tmp_path / 'rej.jsonl')
    least = list(rt.cross_encoder_triples(NQ + BAD, 'least', st)); st.close()
    hardest = list(rt.cross_encoder_triples(NQ, 'hardest'))
    assert [t['negative'] for t in least] == ['Bread rises because of yeast.', '面包因酵母而发酵。']
    assert [t['negative'] for t in hardest] == ['Kyoto was the capital of Japan for a thousand years.', '京都曾是日本的首都。']
    assert [t['positive'] for t in least] == ['Tokyo is the capital of Japan.', '东京是日本的首都。']
    assert {k for t in least for k in t} >= {'question', 'answer', 'long_answer', 'positive', 'negative'}
    for a, b in zip(least, hardest): assert a['meta']['bm25'][1] < b['meta']['bm25'][1]
    assert st.n_in == 7 and st.n_out == 2 and st.n_dropped == 5
    assert [r['reason'] for r in read_records(tmp_path / 'rej.jsonl')] == [
        'fewer than two documents', 'gold document id matches no document', 'a document without text', 'no gold document id',
        'no non-gold document']


@pytest.fixture
def wordtok(tmp_path):
    from tokenizers import Tokenizer, models, trainers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    wl = Tokenizer(models.WordLevel(unk_token='[UNK]'))
    wl.pre_tokenizer = pre_tokenizers.Whitespace()
    wl.train_from_iterator([' '.join(d if isinstance(d, str) else d['text'] for d in r['documents']) + ' ' + r['question'] for r in NQ],
                           trainers.WordLevelTrainer(special_tokens=['[PAD]', '[CLS]', '[SEP]', '[UNK]']))
    tok = PreTrainedTokenizerFast(tokenizer_object=wl, pad_token='[PAD]', cls_token='[CLS]', sep_token='[SEP]', unk_token='[UNK]')
    tok.save_pretrained(tmp_path / 'tok')
    return tok, tmp_path / 'tok'


@pytest.mark.parametrize('num_proc', [1, 2])
def test_tokenized_parquet_layout(wordtok, tmp_path, num_proc):
    import pyarrow.parquet as pq
    tok, path = wordtok
    triples = list(rt.cross_encoder_triples(NQ)) * 40                    # enough rows for 2 processes
    st = Stats('tok')
    ds = rt.tokenize_cross_encoder(triples, str(path), tmp_path / 'x.parquet', max_length=10, sep_id=5, cls_id=6, pad_id=4,
                                   num_proc=num_proc, stats=st)
    rows = pq.read_table(tmp_path / 'x.parquet').to_pylist()
    assert len(rows) == ds.num_rows == 2 * len(triples) and st.n_out == len(rows)
    assert [r['labels'] for r in rows[:4]] == [1, 0, 1, 0]
    for r, t in zip(rows[:4], [triples[0]['positive'], triples[0]['negative'], triples[1]['positive'], triples[1]['negative']]):
        q = tok(triples[0 if r is rows[0] or r is rows[1] else 1]['question'], add_special_tokens=False)['input_ids']
        d = tok(t, add_special_tokens=False)['input_ids']
        body = (q + [5] + d)[:9] + [6] if len(q) + len(d) + 2 > 10 else q + [5] + d + [6]
        assert r['input_ids'] == body + [4] * (10 - len(body))
        assert r['attention_mask'] == [1] * len(body) + [0] * (10 - len(body))


def test_drop_instead_of_truncate(wordtok):
    tok, _ = wordtok
    triples = list(rt.cross_encoder_triples(NQ))
    st = Stats('tok')
    ds = rt.tokenize_cross_encoder(triples, tok, max_length=9, truncate=False, num_proc=1, stats=st)
    lens = [len(tok(t['question'], add_special_tokens=False)['input_ids']) + len(tok(d, add_special_tokens=False)['input_ids']) + 2
            for t in triples for d in (t['positive'], t['negative'])]
    pairs_ok = [a <= 9 and b <= 9 for a, b in zip(lens[::2], lens[1::2])]       # a pair goes whole
    assert ds.num_rows == 2 * sum(pairs_ok) and st.reasons['longer than max_length'] == sum(n > 9 for n in lens) > 0
    assert ds['labels'] == [1, 0] * sum(pairs_ok)
    assert all(r['input_ids'][r['length'] - 1] == tok.cls_token_id for r in ds)


def test_cli_verbs(wordtok, tmp_path):
    _, path = wordtok
    write_records(NQ + BAD, tmp_path / 'nq.jsonl')
    r = CliRunner().invoke(load_commands(), ['cross-encoder', str(tmp_path / 'nq.jsonl'), str(tmp_path / 'tr.jsonl'), '--negative',
                                             'hardest', '--tokenizer', str(path), '--max-length', '12', '--num-proc', '1'])
    assert r.exit_code == 0, r.output
    assert len(list(read_records(tmp_path / 'tr.jsonl'))) == 2 and len(list(read_records(tmp_path / 'tr.rejected.jsonl'))) == 5
    assert (tmp_path / 'tr.parquet').exists()
    write_records([{'id': i, 'contents': t} for i, t in enumerate(CORPUS)], tmp_path / 'corpus.jsonl')
    write_records(QUERIES, tmp_path / 'q.jsonl')
    with FakeOpenAI() as srv:
        r = CliRunner().invoke(load_commands(), ['retrieval-scores', str(tmp_path / 'q.jsonl'), str(tmp_path / 'corpus.jsonl'),
                                                 str(tmp_path / 'out.jsonl'), '--top-n', '3', '--base-url', srv.url, '--lm', 'fake-model',
                                                 '--temperature', '2'], env={'OPENAI_API_KEY': 'k'})
    assert r.exit_code == 0, r.output
    out = list(read_records(tmp_path / 'out.jsonl'))
    assert len(out) == 4 and all(math.isclose(sum(x['scores']), 1, abs_tol=1e-9) for x in out)
    r = CliRunner().invoke(load_commands(), ['retrieval-scores', str(tmp_path / 'q.jsonl'), str(tmp_path / 'corpus.jsonl'),
                                             str(tmp_path / 'o2.jsonl'), '--lm-backend', 'hf'])
    assert r.exit_code == 2 and 'needs --lm PATH' in r.output
