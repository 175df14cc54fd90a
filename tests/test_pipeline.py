"The configured pipeline: `dataalchemy build` offline on the course example, with a model (FakeOpenAI), resuming after SIGKILL."
import json, os, re, shutil, signal, subprocess, sys, time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import dataalchemy.pipeline as pl
from dataalchemy.cli import load_commands
from dataalchemy.core import read_records
from dataalchemy.formats import validate
from dataalchemy.qa import offline_doc_qa
from dataalchemy.testing import FakeOpenAI, last_user

ROOT = Path(__file__).resolve().parents[1]
COURSE = ROOT / 'examples' / 'course.toml'
DOCS = ROOT / 'examples' / 'docs'


def fake_doc_qa(messages, params):
    "A 'model' for the doc_qa task: the offline generator's pairs, with a summary that says who wrote it."
    text = last_user(messages)
    m = re.search(r'Text:\n(.*)\n\nFirst summarise', text, re.S) or re.search(r'文本：\n(.*)\n\n请先用一句话', text, re.S)
    n = re.search(r'write (\d+) question|再写 (\d+) 个', text)
    if not m: return 'I cannot help with that.'
    obj = json.loads(offline_doc_qa({'text': m.group(1), 'n': int(next(g for g in n.groups() if g)) if n else 3}))
    obj['summary'] = 'fake model: ' + obj['summary']
    return 'Sure! Here is the JSON:\n```json\n' + json.dumps(obj, ensure_ascii=False) + '\n```'


def write_config(path: Path, docs, **sections) -> Path:
    "A small build config: `sections` maps section -> {key: value} (TOML written by hand, values JSON-encoded)."
    lines = ['[build]', f'documents = {json.dumps([str(d) for d in docs])}', 'out = "run"',
             'formats = ["alpaca", "sharegpt", "messages", "prompt-completion"]']
    for k, v in sections.pop('build', {}).items(): lines.append(f'{k} = {json.dumps(v)}')
    for s, kv in sections.items():
        lines.append(f'[{s}]')
        lines += [f'{k} = {json.dumps(v)}' for k, v in kv.items()]
    path.write_text('\n'.join(lines) + '\n', encoding='utf-8')
    return path


SMALL = dict(qa={'chunk_by': 'sentences', 'chunk_size': 60, 'chunk_overlap': 0, 'pairs_per_chunk': 3},
             toxicity={'backend': 'lexicon'}, dedup={'workers': 1}, topk={'k': 3})


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for k in ('DATAALCHEMY_BASE_URL', 'OPENAI_API_KEY', 'DATAALCHEMY_LLM_BASE_URL', 'DATAALCHEMY_BACKEND', 'DATAALCHEMY_MODEL'):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv('DATAALCHEMY_CACHE_DIR', str(tmp_path / 'cache'))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def texts_of(path):
    return [json.dumps(r, ensure_ascii=False) for r in read_records(path, allow_empty=True)]


def test_course_offline(clean_env):
    "The README's main job: the course example builds offline, every output validates, the report is self-contained."
    out = clean_env / 'course'
    t0 = time.perf_counter()
    r = CliRunner().invoke(load_commands(), ['build', str(COURSE), '--out', str(out), '--quiet'])
    assert r.exit_code == 0, r.output
    assert time.perf_counter() - t0 < 120
    for fmt in ('alpaca', 'sharegpt', 'messages', 'prompt-completion'):
        f = out / f'sft.{fmt}.jsonl'
        recs = list(read_records(f))
        assert len(recs) > 100 and not list(validate(f, fmt)), fmt
        assert all('meta' not in x for x in recs)
    for x in read_records(out / 'sft.alpaca.jsonl'):                            # self-contained: a question about
        if re.search(r'\b(?:the text|the passage)\b|这段文字|文中', x['instruction']):  # the passage carries it
            assert x['input'].strip(), x
        assert x['generator'].startswith('offline:dataalchemy-rules-1'), x       # every record names its generator
    for fmt in ('sharegpt', 'messages', 'prompt-completion'):
        assert all(x['generator'] for x in read_records(out / f'sft.{fmt}.jsonl'))
    alltext = '\n'.join(texts_of(out / 'sft.alpaca.jsonl'))
    assert 'course-help@dataalchemy.example.org' not in alltext and '13812345678' not in alltext   # PII scrubbed
    assert '<EMAIL_ADDRESS>' in alltext or '<EMAIL>' in alltext
    assert 'idiot' not in alltext                                                                 # toxicity dropped it
    assert any('\u4e00' <= ch <= '\u9fff' for ch in alltext)                                      # Chinese made it through
    st = json.loads((out / 'stats.json').read_text())
    stages = {s['stage']: s for s in st['stages']}
    assert list(stages) == ['ingest', 'safety', 'qa', 'alpaca', 'filters', 'exact', 'pii', 'toxicity', 'dedup', 'augment', 'topk']
    assert st['audit']['findings'] == 0 and (out / 'audit.jsonl').exists()
    assert stages['exact']['reasons'].get('exact_duplicate', 0) >= 2 and st['clusters']['n'] >= 1
    assert stages['augment']['records_out'] > stages['augment']['records_in']
    assert {d.split(':')[0] for d in stages['ingest']['counts']} == {'chunks'} and stages['ingest']['records_out'] >= 30
    assert st['lengths']['zh']['output']['n'] > 10 and st['lengths']['en']['output']['n'] > 10
    assert st['engine']['backend'] == 'offline' and st['engine']['cost_usd'] == 0
    for s in stages.values():                                                       # every drop is in a rejected file, with its reason
        if s['dropped']:
            rej = list(read_records(s['rejected_file']))
            assert len(rej) == s['dropped'] and all(x['reason'] and x['step'] == s['stage'] for x in rej)
    top = list(read_records(out / 'topk.jsonl'))
    assert all(len(x['docs']) == 3 and 0 <= x['pos_index'][0] < 3 for x in top)
    page = (out / 'report.html').read_text(encoding='utf-8')
    assert page.count('data:image/png;base64,') == 4 and 'Generated offline' in page
    assert not re.search(r'(src|href)=["\']https?://', page)                        # nothing loaded from the network
    # a second run skips every stage and writes the same files
    before = {f.name: f.read_bytes() for f in out.glob('*.jsonl')}
    r = CliRunner().invoke(load_commands(), ['build', str(COURSE), '--out', str(out), '--quiet'])
    assert r.exit_code == 0 and r.output.count('finished earlier, skipped') == 11, r.output
    assert before == {f.name: f.read_bytes() for f in out.glob('*.jsonl')}


def test_config_errors_name_the_key(clean_env):
    run = CliRunner().invoke
    bad = {'[dedup]\nthreshhold = 0.7': "dedup.threshhold: unknown key (did you mean 'threshold'?)",
           '[dedup]\nthreshold = 1.2': 'dedup.threshold: threshold must be in (0, 1]',
           '[topk]\nk = "five"': 'topk.k: expected an integer',
           '[augment]\nenabled = true\nmethod = "magic"': 'augment.method: unknown augmentation method',
           '[qa]\nchunk_by = "pages"': 'qa.chunk_by: chunk_by must be chars, tokens or sentences',
           '[toxicity]\nbackend = "perspective"': 'toxicity.backend: unknown toxicity backend',
           '[llm]\nconcurency = 4': "llm.concurency: unknown key (did you mean 'concurrency'?)",
           '[outputs]\nformats = ["alpaca"]': 'outputs: unknown key'}
    for body, msg in bad.items():
        f = clean_env / 'c.toml'
        f.write_text(f'[build]\ndocuments = ["{DOCS}"]\n{body}\n', encoding='utf-8')
        r = run(load_commands(), ['build', str(f)])
        assert r.exit_code == 2 and f'{f}: {msg}' in r.output, (body, r.output)
    f.write_text('[build]\nformats = ["alpaca"]\n', encoding='utf-8')
    r = run(load_commands(), ['build', str(f)])
    assert r.exit_code == 2 and 'build.documents: missing' in r.output
    r = run(load_commands(), ['build', str(clean_env / 'nope.toml')])
    assert r.exit_code == 2 and 'no such configuration file' in r.output


def test_with_endpoint_uses_the_model(clean_env, monkeypatch):
    "DATAALCHEMY_BASE_URL set: the QA stage asks the model (one batch), the report shows tokens and cost; reruns are free."
    cfg = write_config(clean_env / 'c.toml', [DOCS / 'overfitting.md', DOCS / 'metrics_zh.txt'], **SMALL,
                       build={'report': 'both'})
    with FakeOpenAI(responder=fake_doc_qa) as srv:
        monkeypatch.setenv('DATAALCHEMY_BASE_URL', srv.url)
        monkeypatch.setenv('OPENAI_API_KEY', 'sk-test')
        monkeypatch.setenv('DATAALCHEMY_MODEL', 'gpt-4o-mini')
        res = pl.build(cfg, progress=False, log=lambda m: None)
        n_chunks = res['stages'][0]['records_out']
        assert srv.n_requests == n_chunks                                        # one request per chunk, no repairs needed
        qa_recs = list(read_records(res['pipeline'].output('qa')))
        assert qa_recs and all(r['meta']['backend'] == 'openai' and r['meta']['model'] == 'gpt-4o-mini' for r in qa_recs)
        assert all(r['meta']['summary'].startswith('fake model: ') for r in qa_recs)
        e = res['engine']
        assert e['backend'] == 'openai' and e['usage']['completion_tokens'] > 0 and e['cost_usd'] > 0
        page = (clean_env / 'run' / 'report.html').read_text(encoding='utf-8')
        assert 'Generated by <code>gpt-4o-mini</code>' in page and 'Model calls, tokens and cost' in page
        assert (clean_env / 'run' / 'report.md').exists() and (clean_env / 'run' / 'report_files' / 'lengths.png').exists()
        # rerun: every stage skipped, no request; --fresh: every stage runs, replies come from the cache
        res2 = pl.build(cfg, progress=False, log=lambda m: None)
        assert all(s['skipped'] for s in res2['stages']) and srv.n_requests == n_chunks
        res3 = pl.build(cfg, progress=False, fresh=True, log=lambda m: None)
        assert not any(s['skipped'] for s in res3['stages']) and srv.n_requests == n_chunks
        qa3 = [s for s in res3['stages'] if s['stage'] == 'qa'][0]
        assert qa3['engine']['usage']['cached'] == n_chunks
    # without the endpoint the engine changes, so QA (and what follows) runs again, offline
    monkeypatch.delenv('DATAALCHEMY_BASE_URL'); monkeypatch.delenv('OPENAI_API_KEY')
    res4 = pl.build(cfg, progress=False, log=lambda m: None)
    skipped = {s['stage']: s['skipped'] for s in res4['stages']}
    assert skipped['ingest'] and not skipped['qa'] and res4['engine']['backend'] == 'offline'


def _build_args(cfg, out):
    return [sys.executable, '-c', 'from dataalchemy.cli import main; main()', 'build', str(cfg), '--out', str(out)]


def test_sigkill_mid_run_resumes(clean_env):
    "Kill the build with SIGKILL during the QA stage: the rerun skips ingest, gets the answered requests from the cache, and ends with the same files."
    cfg = write_config(clean_env / 'c.toml', [DOCS / 'gradient_descent.txt', DOCS / 'overfitting_zh.md', DOCS / 'attention.pdf'], **SMALL)
    with FakeOpenAI(responder=fake_doc_qa, latency=0.15) as srv:
        env = {**os.environ, 'DATAALCHEMY_BASE_URL': srv.url, 'OPENAI_API_KEY': 'sk-test', 'DATAALCHEMY_MODEL': 'fake-qa',
               'DATAALCHEMY_LLM_CONCURRENCY': '1', 'DATAALCHEMY_CACHE_DIR': str(clean_env / 'cache')}
        # the reference: one uninterrupted run with its own cache
        ref = subprocess.run(_build_args(cfg, clean_env / 'ref'), env={**env, 'DATAALCHEMY_CACHE_DIR': str(clean_env / 'refcache')},
                             capture_output=True, text=True)
        assert ref.returncode == 0, ref.stdout + ref.stderr
        n_chunks = json.loads((clean_env / 'ref' / 'stats.json').read_text())['stages'][0]['records_out']
        assert n_chunks >= 8
        srv.reset()
        out = clean_env / 'run'
        p = subprocess.Popen(_build_args(cfg, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        qa_dir = out / 'stages' / '03_qa'
        deadline = time.time() + 120
        while srv.n_requests < 4 and time.time() < deadline and p.poll() is None: time.sleep(0.05)
        time.sleep(0.4)                                                          # let the cache flush a few replies
        p.send_signal(signal.SIGKILL); p.wait()
        assert p.returncode == -signal.SIGKILL
        assert (out / 'stages' / '01_ingest' / 'done.json').exists() and not (qa_dir / 'done.json').exists()
        assert not (out / 'sft.alpaca.jsonl').exists()
        first = srv.n_requests
        assert first < n_chunks
        r = subprocess.run(_build_args(cfg, out), env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        log = r.stdout + r.stderr
        assert 'ingest: finished earlier, skipped' in log and 'qa: finished earlier' not in log
        again = srv.n_requests - first
        assert again < n_chunks and first + again >= n_chunks                     # answered requests were not sent again
    for f in ('sft.alpaca.jsonl', 'sft.sharegpt.jsonl', 'sft.messages.jsonl', 'sft.prompt-completion.jsonl', 'topk.jsonl'):
        assert (out / f).read_bytes() == (clean_env / 'ref' / f).read_bytes(), f
    assert not list(out.glob('stages/*/.*.tmp'))


def test_python_api_one_stage_at_a_time(clean_env):
    "A notebook runs the configured pipeline up to a stage, inspects it, changes an option and reruns from there."
    cfg = pl.load_config(write_config(clean_env / 'c.toml', [DOCS / 'data_cleaning_zh.md', DOCS / 'data_cleaning.txt'], **SMALL))
    p = pl.pipeline_from_config(cfg, progress=False, log=lambda m: None)
    p.run(until='filters')
    assert list(p.results) == ['ingest', 'safety', 'qa', 'alpaca', 'filters'] and p.marker('dedup') is None
    n = len(p.records('filters'))
    p.rerun('filters', min_output_length=20)
    assert [m['skipped'] for m in p.results.values()] == [True, True, True, True, False] + [False] * (len(p) - 5)
    dropped = p.rejected('filters')
    assert len(p.records('filters')) + len(dropped) == n and all(d['reason'] for d in dropped)
    assert any('\u4e00' <= c <= '\u9fff' for d in dropped for c in d['record']['output'])    # Chinese lengths are counted per character


PLANTED_DOCS = {
    'support_en.md': "# Support notes\n\nThe support lead wrote this page. Contact Jane Miller at jane.miller@example.com or call "
                     "+1 415 555 0134 for refunds. Card 4111 1111 1111 1111 was charged twice. The server 192.168.1.20 "
                     "logged the request. A forum reply said \"you are an idiot, read the manual\" to a beginner. "
                     "Gradient descent updates the weights against the gradient of the loss. A learning rate that is too "
                     "large makes training diverge; warmup and decay keep it stable.\n",
    'support_zh.md': "# 客服记录\n\n请联系李明，手机号 13987654321，身份证号 11010519491231002X。包裹寄到北京市海淀区中关村大街27号1号楼302室。"
                     "课程助教是王老师，邮箱是 wang.teacher@example.org。论坛里有人回答新手说“你这个白痴，自己去看文档”。"
                     "过拟合是指模型记住了训练数据中的噪声。正则化是在损失函数中加入惩罚项，可以减轻过拟合。\n",
}
PLANTED = ['jane.miller@example.com', '415 555 0134', '4111 1111 1111 1111', '192.168.1.20', 'idiot', 'Jane Miller',
           '13987654321', '11010519491231002X', '中关村大街27号', '李明', '王老师', 'wang.teacher@', '白痴']


def _planted(tmp: Path, **sections) -> Path:
    docs = tmp / 'docs'; docs.mkdir(exist_ok=True)
    for n, t in PLANTED_DOCS.items(): (docs / n).write_text(t, encoding='utf-8')
    return write_config(tmp / 'c.toml', [docs], **{'qa': {'chunk_by': 'sentences', 'chunk_size': 40, 'chunk_overlap': 0},
                                                   'toxicity': {'threshold': 0.4}, **sections})


def _leaks(out: Path) -> dict:
    "Planted values in every file the build wrote, except the documents as read (ingest) and the rejected files."
    found = {}
    for f in out.rglob('*'):
        if not f.is_file() or f.suffix == '.png' or '01_ingest' in f.parts or f.name.startswith('rejected'): continue
        text = f.read_text(encoding='utf-8', errors='replace')
        if hits := [v for v in PLANTED if v in text]: found[str(f.relative_to(out))] = hits
    return found


@pytest.mark.parametrize('action', ['replace', 'hash'])
def test_build_deliverables_hold_no_planted_pii(clean_env, action):
    "The promise: documents with PII and insults -> no file the build writes (4 formats with meta, top-k, stages, report) holds one."
    cfg = _planted(clean_env, build={'keep_meta': True, 'report': 'both'}, pii={'action': action}, topk={'k': 2},
                   augment={'enabled': True, 'factor': 1.3})
    env = {**os.environ, 'DATAALCHEMY_PII_SECRET': 'test-secret'}
    r = subprocess.run(_build_args(cfg, clean_env / 'out'), env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    out = clean_env / 'out'
    assert _leaks(out) == {}
    ingest = (out / 'stages' / '01_ingest' / 'records.jsonl').read_text(encoding='utf-8')
    assert all(v in ingest for v in PLANTED)                                   # they were there to be found
    st = json.loads((out / 'stats.json').read_text())
    assert st['audit']['findings'] == 0 and len(st['audit']['files']) >= 10
    alpaca = list(read_records(out / 'sft.alpaca.jsonl'))
    assert alpaca and all('meta' in x for x in alpaca)
    assert any(x['meta'].get('context') for x in alpaca)                       # meta.context is there, and scrubbed
    tag = r'<(?:EMAIL|PHONE|NAME|ID_NUMBER|ADDRESS|CREDIT_CARD|IP)' + ('_[0-9a-f]{16}>' if action == 'hash' else '>')
    assert re.search(tag, (out / 'topk.jsonl').read_text(encoding='utf-8'))
    for x in read_records(out / 'topk.jsonl'):                                  # answers and their documents agree
        pos = x['docs'][x['pos_index'][0]]
        assert all(t in pos for t in re.findall(r'<[A-Z_]+(?:_[0-9a-f]{16})?>', x['gold_answer']))


def test_build_audit_fails_on_a_leak(clean_env):
    "PII stage off: the audit finds the planted data in the deliverables and the build exits 1 (warn: 0, with the findings listed)."
    cfg = _planted(clean_env, pii={'enabled': False}, topk={'k': 2})
    r = subprocess.run(_build_args(cfg, clean_env / 'out'), capture_output=True, text=True)
    assert r.returncode == 1, r.stdout + r.stderr
    assert 'error: the safety audit found' in r.stderr and 'Traceback' not in r.stderr
    found = list(read_records(clean_env / 'out' / 'audit.jsonl'))
    kinds = {f['entity'] for f in found}
    assert {'EMAIL_ADDRESS', 'CN_MOBILE', 'CN_ID_CARD'} <= kinds
    assert not any(v in json.dumps(found, ensure_ascii=False) for v in PLANTED)   # findings name places, not values
    assert (clean_env / 'out' / 'sft.alpaca.jsonl').exists() and 'Safety audit' in (clean_env / 'out' / 'report.html').read_text()
    cfg = _planted(clean_env, pii={'enabled': False}, topk={'k': 2}, build={'audit': 'warn'})
    r = subprocess.run(_build_args(cfg, clean_env / 'out'), capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'findings of personal data or toxic text' in r.stdout


def test_build_against_the_test_server(clean_env):
    """`python -m dataalchemy.testing` answers the chapters' prompts: the main job runs end to end; a bad key or a server that
    only echoes ends with one line naming the stage and the reason, rc 1, and the report of what ran."""
    from dataalchemy.testing import FakeOpenAIProcess
    cfg = write_config(clean_env / 'c.toml', [DOCS / 'gradient_descent.txt', DOCS / 'overfitting_zh.md'], **SMALL)
    with FakeOpenAIProcess(extra_args=['--api-key', 'sk-right']) as srv:
        env = {**os.environ, 'DATAALCHEMY_BASE_URL': srv.url, 'OPENAI_API_KEY': 'sk-right', 'DATAALCHEMY_MODEL': 'fake-model'}
        r = subprocess.run(_build_args(cfg, clean_env / 'ok'), env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        st = json.loads((clean_env / 'ok' / 'stats.json').read_text())
        assert st['engine']['backend'] == 'openai' and st['outputs']['alpaca']['records'] > 10
        r = subprocess.run(_build_args(cfg, clean_env / 'bad'), env={**env, 'OPENAI_API_KEY': 'sk-wrong', 'DATAALCHEMY_CACHE_DIR': str(clean_env / 'cache2')},
                           capture_output=True, text=True)   # (a fresh cache: the replies of the first run are cached)
        assert r.returncode == 1 and 'Traceback' not in r.stderr
        err = [l for l in r.stderr.splitlines() if l.startswith('error:')]
        assert len(err) == 1 and 'qa: every request failed: authentication failed' in err[0] and '401' in err[0], r.stderr
        assert (clean_env / 'bad' / 'report.html').exists()
    with FakeOpenAIProcess(extra_args=['--echo']) as srv:
        env = {**os.environ, 'DATAALCHEMY_BASE_URL': srv.url, 'OPENAI_API_KEY': 'sk-x', 'DATAALCHEMY_MODEL': 'echo'}
        r = subprocess.run(_build_args(cfg, clean_env / 'echo'), env=env, capture_output=True, text=True)
        assert r.returncode == 1 and 'error: qa: all ' in r.stderr and 'none kept' in r.stderr and 'Traceback' not in r.stderr, r.stderr


def test_early_exact_same_deliverables(clean_env):
    "Exact copies leave before PII and toxicity (`exact` stage): fewer records scrubbed, byte-identical deliverables."
    docs = clean_env / 'docs'
    for k in range(3):                                  # every document three times: the QA pairs repeat
        shutil.copytree(DOCS, docs / f'copy{k}')
    outs = {}
    for early in (True, False):
        cfg = write_config(clean_env / f'early{early}.toml', [docs], **{**SMALL, 'dedup': {'workers': 1, 'early_exact': early}})
        res = pl.build(cfg, out=clean_env / f'run{early}', progress=False, log=lambda m: None)
        outs[early] = {s['stage']: s for s in res['stages']}
    on, off = outs[True], outs[False]
    assert 'exact' in on and 'exact' not in off
    assert on['exact']['reasons']['exact_duplicate'] >= 2 * on['exact']['records_out'] * 0.9   # two of three copies go
    assert on['pii']['records_in'] < off['pii']['records_in'] / 2                               # PII scrubs a third
    for f in sorted((clean_env / 'runFalse').glob('*.jsonl')):
        if f.name == 'audit.jsonl': continue
        assert f.read_bytes() == (clean_env / 'runTrue' / f.name).read_bytes(), f.name
    assert len(list((clean_env / 'runTrue').glob('sft.*.jsonl'))) == 4


def test_ray_engine_same_outputs(clean_env):
    "`build --engine ray`: the per-record stages run as Ray tasks over shards; every stage output and deliverable is byte-identical."
    ray = pytest.importorskip('ray')
    os.environ.setdefault('RAY_raylet_start_wait_time_s', '300')   # a loaded CI machine starts Ray slowly
    cfg = write_config(clean_env / 'b.toml', [DOCS], **{**SMALL, 'build': {'shard_size': 7}})
    local = pl.build(cfg, out=clean_env / 'local', progress=False, log=lambda m: None)
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        r = CliRunner().invoke(load_commands(), ['build', str(cfg), '--out', str(clean_env / 'ray'), '--engine', 'ray', '--quiet'])
    finally:
        ray.shutdown()
    assert r.exit_code == 0, r.output
    st = json.loads((clean_env / 'ray' / 'stats.json').read_text())
    stages = {s['stage']: s for s in st['stages']}
    assert stages['pii']['records_in'] > 7                                           # more than one shard
    for s in local['stages']:
        assert (s['records_in'], s['records_out'], s['reasons']) == (stages[s['stage']]['records_in'],
                stages[s['stage']]['records_out'], stages[s['stage']]['reasons']), s['stage']
    for f in sorted((clean_env / 'local').rglob('*.jsonl')):
        rel = f.relative_to(clean_env / 'local')
        if rel.name == 'audit.jsonl': continue
        g = clean_env / 'ray' / rel
        assert f.read_bytes() == g.read_bytes(), rel
    assert not list((clean_env / 'ray').rglob('shards'))                             # joined and removed
    bad = CliRunner().invoke(load_commands(), ['build', str(cfg), '--engine', 'spark', '--quiet'])
    assert bad.exit_code == 2 and '--engine' in bad.output and 'Traceback' not in bad.output


def test_ray_llm_stage_shards(clean_env, monkeypatch):
    "`--engine ray` with a model: the QA stage runs on shards, each with its own engine on the shared cache; outputs equal one process's; a rerun asks nothing."
    ray = pytest.importorskip('ray')
    os.environ.setdefault('RAY_raylet_start_wait_time_s', '300')
    cfg = write_config(clean_env / 'c.toml', [DOCS / 'overfitting.md', DOCS / 'metrics_zh.txt'], **{**SMALL, 'build': {'shard_size': 5}})
    with FakeOpenAI(responder=fake_doc_qa) as srv:
        monkeypatch.setenv('DATAALCHEMY_BASE_URL', srv.url)
        monkeypatch.setenv('OPENAI_API_KEY', 'sk-test')
        monkeypatch.setenv('DATAALCHEMY_MODEL', 'gpt-4o-mini')
        local = pl.build(cfg, out=clean_env / 'local', progress=False, log=lambda m: None)
        n_chunks = local['stages'][0]['records_out']
        assert n_chunks > 5 and srv.n_requests == n_chunks                        # more than one shard of chunks
        monkeypatch.setenv('DATAALCHEMY_CACHE_DIR', str(clean_env / 'cache-ray'))   # the Ray run asks the model itself
        ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
        try:
            res = pl.build(cfg, out=clean_env / 'ray', progress=False, log=lambda m: None, engine='ray')
            assert srv.n_requests == 2 * n_chunks                                  # each chunk asked once, by some shard
            qa = [s for s in res['stages'] if s['stage'] == 'qa'][0]
            assert qa['engine']['backend'] == 'openai' and qa['engine']['usage']['requests'] == n_chunks
            assert qa['engine']['usage']['completion_tokens'] > 0
            again = pl.build(cfg, out=clean_env / 'ray2', progress=False, log=lambda m: None, engine='ray')
            assert srv.n_requests == 2 * n_chunks                                  # the shards' cache answered everything
            qa2 = [s for s in again['stages'] if s['stage'] == 'qa'][0]
            assert qa2['engine']['usage']['cached'] == n_chunks
        finally:
            ray.shutdown()
    for f in sorted((clean_env / 'local').rglob('*.jsonl')):
        rel = f.relative_to(clean_env / 'local')
        if rel.name == 'audit.jsonl': continue
        assert f.read_bytes() == (clean_env / 'ray' / rel).read_bytes(), rel


def test_decontaminate_and_judge_stages(clean_env):
    "Optional `decontaminate` and `judge` stages: planted benchmark copies leave every deliverable; every record carries a judge score."
    from dataalchemy.decontam import load_benchmarks
    cfg = write_config(clean_env / 'plain.toml', [DOCS], **SMALL)
    pl.build(cfg, out=clean_env / 'plain', progress=False, log=lambda m: None)
    recs = list(read_records(clean_env / 'plain' / 'sft.alpaca.jsonl'))
    en = [r['output'] for r in recs if len(r['output'].split()) >= 14 and not any('\u4e00' <= c <= '\u9fff' for c in r['output'])][:2]
    zh = [r['output'] for r in recs if sum('\u4e00' <= c <= '\u9fff' for c in r['output']) >= 16][:1]
    assert len(en) == 2 and len(zh) == 1
    bench = clean_env / 'bench.jsonl'                    # copies inside longer benchmark items
    bench.write_text(''.join(json.dumps({'id': f'b{i}', 'question': f'Read this. {t} Then answer: why?'}, ensure_ascii=False) + '\n'
                             for i, t in enumerate(en + zh)), encoding='utf-8')
    cfg = write_config(clean_env / 'dj.toml', [DOCS], **SMALL, decontaminate={'enabled': True, 'benchmarks': [str(bench)]},
                       judge={'enabled': True, 'judge': 'heuristic'}, build={'keep_meta': True})
    res = pl.build(cfg, out=clean_env / 'dj', progress=False, log=lambda m: None)
    st = {s['stage']: s for s in res['stages']}
    assert [s for s in st if s in ('dedup', 'decontaminate', 'judge', 'topk')] == ['dedup', 'decontaminate', 'judge', 'topk']
    assert sum(v for k, v in st['decontaminate']['reasons'].items() if k.startswith('benchmark overlap: bench.jsonl:b')) >= 3
    tk = res['pipeline'].marker('topk')['stats']                    # documents copying an item: dropped, counted once
    assert tk['in'] - tk['dropped'] == tk['out'] == st['topk']['records_out']
    idx = load_benchmarks([bench])
    for f in sorted((clean_env / 'dj').glob('*.jsonl')):
        if f.name.startswith('audit'): continue
        for r in read_records(f):
            texts = [json.dumps({k: v for k, v in r.items() if k != 'meta'}, ensure_ascii=False)]
            assert not any(idx.match(t) for t in texts), (f.name, texts[0][:200])
    out = list(read_records(clean_env / 'dj' / 'sft.alpaca.jsonl'))
    assert out and all(r['meta']['judge']['method'] == 'heuristic' and 0 <= r['meta']['judge']['score'] <= 5 for r in out)
    bad = write_config(clean_env / 'bad.toml', [DOCS], decontaminate={'enabled': True})
    r = CliRunner().invoke(load_commands(), ['build', str(bad), '--quiet'])
    assert r.exit_code == 2 and 'decontaminate.benchmarks' in r.output and 'Traceback' not in r.output
