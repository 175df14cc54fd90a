"Documents -> QA: ingestion of every format (PDF/PPTX made here), chunking, answer support, the engine (offline and FakeOpenAI), the CLI."
import json

import pytest
from typer.testing import CliRunner

import dataalchemy.qa as qa
from dataalchemy.cli import load_commands
from dataalchemy.core import RecordError, Stats, read_records, text_len, token_spans, write_records
from dataalchemy.llm import Engine
from dataalchemy.testing import FakeOpenAI, last_user

ZH = ("机器学习是人工智能的一个分支。Transformer 于 2017 年提出。编码器负责理解输入序列。解码器负责生成输出序列。"
      "数据管道包括清洗、去重和过滤。它让模型更可靠。")
EN = ("Machine learning is a subset of artificial intelligence. The Transformer was introduced in 2017. "
      "A tokenizer consists of a vocabulary and merge rules. Dropout randomly disables neurons during training.")


def make_pdf(path, pages):
    from fpdf import FPDF
    pdf = FPDF()
    pdf.set_font('Helvetica', size=12)
    for t in pages:
        pdf.add_page(); pdf.multi_cell(0, 8, t)
    pdf.output(str(path))


def make_pptx(path, slides):
    from pptx import Presentation
    prs = Presentation()
    for title, body in slides:
        s = prs.slides.add_slide(prs.slide_layouts[1])
        s.shapes.title.text = title
        s.placeholders[1].text = body
    prs.save(str(path))


@pytest.fixture
def docdir(tmp_path):
    make_pdf(tmp_path / 'a.pdf', ["Machine learning is a subset of artificial intelligence.", "Dropout randomly disables neurons."])
    make_pptx(tmp_path / 'b.pptx', [('数据工程', '数据清洗包括去重、过滤和脱敏。'), ('Tokenizers', 'A tokenizer consists of a vocabulary.')])
    (tmp_path / 'c.txt').write_text(ZH, encoding='utf-8')
    (tmp_path / 'd.md').write_text('# Notes\n\n' + EN, encoding='utf-8')
    write_records([{'doc': 'j1', 'body': EN}, {'doc': 'j2', 'body': ''}, {'doc': 'j3'}], tmp_path / 'e.jsonl')
    (tmp_path / 'skip.csv').write_text('not a document')
    return tmp_path


def test_load_every_format(docdir):
    st = Stats('load')
    docs = list(qa.load_documents(docdir, text_field='body', id_field='doc', stats=st))
    ids = [d['doc_id'] for d in docs]
    assert ids == ['a.pdf', 'b.pptx', 'c.txt', 'd.md', 'j1']                     # csv ignored in a folder
    by = {d['doc_id']: d['text'] for d in docs}
    assert 'subset of artificial intelligence' in by['a.pdf'] and 'disables neurons' in by['a.pdf']
    assert '数据清洗包括去重、过滤和脱敏。' in by['b.pptx'] and 'Tokenizers' in by['b.pptx']
    assert by['c.txt'] == ZH
    assert st.reasons == {'empty document': 1, "no text field 'body'": 1}
    with pytest.raises(RecordError, match='unsupported document type'):
        list(qa.load_documents([docdir / 'skip.csv']))


def test_unreadable_files_name_the_file(tmp_path):
    (tmp_path / 'x.pdf').write_bytes(b'%PDF-broken')
    with pytest.raises(RecordError, match=r'x\.pdf: cannot read PDF'):
        qa.read_pdf(tmp_path / 'x.pdf')
    (tmp_path / 'y.pptx').write_bytes(b'PK not a zip')
    with pytest.raises(RecordError, match=r'y\.pptx: cannot read PowerPoint'):
        qa.read_pptx(tmp_path / 'y.pptx')


@pytest.mark.parametrize('by,size,overlap', [('chars', 40, 8), ('chars', 25, 0), ('tokens', 12, 3), ('tokens', 5, 4),
                                             ('sentences', 15, 6), ('sentences', 1, 0)])
@pytest.mark.parametrize('text', [ZH, EN, ZH + '\n\n' + EN])
def test_chunk_properties(text, by, size, overlap):
    sp = qa.chunk_spans(text, size, overlap, by)
    assert sp and sp[0][0] == 0
    covered = set()
    for s, e in sp:
        assert 0 <= s < e <= len(text)
        covered.update(range(s, e))
    # every token is inside some chunk
    assert all(s in covered for s, _ in token_spans(text))
    for (s1, e1), (s2, e2) in zip(sp, sp[1:]):
        assert s1 < s2 and e1 < e2 and (s2 <= e1 or text_len(text[e1:s2]) == 0)     # forward, no token skipped
    if by == 'chars': assert all(e - s <= size for s, e in sp)
    if by == 'tokens': assert all(text_len(text[s:e]) <= size for s, e in sp)
    if by == 'sentences':
        ends = {e for _, e in qa.sentence_spans(text)}
        assert all(e in ends for _, e in sp)


def test_chunk_overlap_shares_text():
    sp = qa.chunk_spans(ZH, 10, 4, 'tokens')
    for (s1, e1), (s2, e2) in zip(sp, sp[1:]):
        assert text_len(ZH[s2:e1]) == 4


def test_chunk_records_and_options():
    ch = list(qa.chunk_documents([{'doc_id': 'zh', 'text': ZH}], chunk_size=20, chunk_overlap=5, chunk_by='tokens'))
    assert [c['chunk_index'] for c in ch] == list(range(len(ch)))
    assert all(ZH[c['start']:c['end']] == c['text'] and c['chunk_id'] == f"zh#{c['chunk_index']}" for c in ch)
    with pytest.raises(ValueError, match='smaller than chunk_size'): qa.qa_options(chunk_size=5, chunk_overlap=9)


def test_support_cjk_and_english():
    assert qa.support_score('Transformer 于 2017 年提出', ZH) == 1.0
    assert qa.support_score('Transformer 于 2019 年由微软提出并推广', ZH) < 0.5
    assert qa.support_score('dropout disables neurons during training', EN) >= 0.5
    assert qa.support_score('The Eiffel Tower is in Paris, France.', EN) < 0.3
    assert qa.is_supported('巴黎是法国的首都。', ZH) == (False, 'unsupported answer')


def test_offline_is_the_default_without_endpoint(monkeypatch, tmp_path):
    for k in ('DATAALCHEMY_BASE_URL', 'OPENAI_API_KEY', 'DATAALCHEMY_LLM_BASE_URL', 'DATAALCHEMY_BACKEND'): monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(tmp_path)
    ch = list(qa.chunk_documents([{'doc_id': 'zh', 'text': ZH}, {'doc_id': 'en', 'text': EN}], chunk_size=400, chunk_overlap=0))
    st = Stats('qa')
    recs = qa.generate_qa(ch, stats=st, pairs_per_chunk=3)
    assert recs and all(r['meta']['backend'] == 'offline' for r in recs)
    qs = [r['instruction'] for r in recs]
    assert '什么是机器学习？' in qs and 'What is machine learning?' in qs
    assert sum(r['meta']['doc_id'] == 'zh' for r in recs) <= 3
    for r in recs:
        assert set(r) == {'id', 'instruction', 'input', 'output', 'meta'} and r['input'] == ''
        assert r['output'] in r['meta']['context'] and r['meta']['summary']
        assert {'doc_id', 'chunk_id', 'start', 'end', 'backend', 'model'} <= set(r['meta'])
    assert st.n_out == len(recs) and st.counts['chunks'] == 2


def reply_for(messages, params):
    text = last_user(messages)
    if 'previous reply could not be used' in text:
        return json.dumps({'summary': '修复', 'qa_pairs': [{'question': '编码器负责什么？', 'answer': '编码器负责理解输入序列'}]},
                          ensure_ascii=False)
    if '编码器' in text and '文本：' in text: return '抱歉，我无法输出 JSON。'
    if '机器学习' in text:
        return 'Here you go:\n```json\n' + json.dumps({'summary': '机器学习简介', 'qa_pairs': [
            {'question': '什么是机器学习？', 'answer': '机器学习是人工智能的一个分支'},
            {'question': '谁发明了机器学习？', 'answer': '图灵在1950年于剑桥发明了机器学习'},
            {'question': '', 'answer': 'x'},
            {'question': '什么是机器学习？', 'answer': '人工智能的一个分支'}]}, ensure_ascii=False) + '\n```'
    return json.dumps([{'question': 'What is dropout?', 'answer': 'Dropout randomly disables neurons during training.'}])


def test_engine_batch_parse_repair_and_support():
    docs = [{'doc_id': 'ml', 'text': '机器学习是人工智能的一个分支。'}, {'doc_id': 'enc', 'text': '编码器负责理解输入序列。'},
            {'doc_id': 'dr', 'text': 'Dropout randomly disables neurons during training.'}]
    with FakeOpenAI(responder=reply_for) as srv:
        eng = Engine(base_url=srv.url, api_key='k', model='m1', progress=False, use_cache=False)
        st = Stats('qa')
        recs = qa.generate_qa(qa.chunk_documents(docs, chunk_size=200, chunk_overlap=0), eng, stats=st)
        assert srv.n_requests == 4                                              # 3 chunks in one batch + 1 repair
        assert srv.requests[0]['body']['messages'][-1]['content'].count('qa_pairs') == 1
    got = [(r['meta']['doc_id'], r['instruction']) for r in recs]
    assert got == [('ml', '什么是机器学习？'), ('enc', '编码器负责什么？'), ('dr', 'What is dropout?')]
    assert st.reasons == {'unsupported answer': 1, 'malformed pair': 1, 'duplicate question': 1}
    assert recs[0]['meta']['summary'] == '机器学习简介' and recs[2]['meta']['summary'] is None
    assert {r['meta']['model'] for r in recs} == {'m1'}


def test_failed_request_is_counted_not_lost(tmp_path):
    with FakeOpenAI(responder=reply_for) as srv:
        srv.fail('401')
        eng = Engine(base_url=srv.url, api_key='k', progress=False, use_cache=False, max_retries=0)
        st = Stats('qa', rejected=tmp_path / 'rej.jsonl')
        recs = qa.generate_qa([{'doc_id': 'd', 'chunk_id': 'd#0', 'chunk_index': 0, 'start': 0, 'end': 5, 'text': EN}], eng, stats=st)
        st.close()
    (reason, n), = st.reasons.items()
    assert recs == [] and n == 1 and reason.startswith('request failed: ') and '401' in reason, reason   # the server's reason is kept
    assert [r['reason'] for r in read_records(tmp_path / 'rej.jsonl')] == [reason]


def test_cli(docdir):
    out = docdir / 'out' / 'qa.jsonl'
    r = CliRunner().invoke(load_commands(), ['qa', str(docdir / 'c.txt'), str(docdir / 'a.pdf'), str(out), '--backend', 'offline',
                                             '--chunk-by', 'sentences', '--chunk-size', '30', '--overlap', '5', '--pairs', '2',
                                             '--chunks-out', str(docdir / 'out' / 'chunks.jsonl')])
    assert r.exit_code == 0, r.output
    recs = list(read_records(out))
    assert {x['meta']['doc_id'] for x in recs} == {'c.txt', 'a.pdf'}
    assert all(x['meta']['backend'] == 'offline' for x in recs)
    chunks = list(read_records(docdir / 'out' / 'chunks.jsonl'))
    assert len(chunks) >= 3 and all(text_len(c['text']) <= 30 or '。' not in c['text'][:-1] for c in chunks)
    r = CliRunner().invoke(load_commands(), ['qa', str(docdir / 'nope.txt'), str(out)])
    assert r.exit_code == 2 and 'no such file' in r.output
