"One way to fail: every file-reading verb, fed hostile input, ends with one `error:` line and exit 2 (or a complete result), never a traceback."
import gzip, json, os, stat, subprocess, sys
from pathlib import Path

import pytest

from dataalchemy.cli import load_commands, run

GOOD = [{'instruction': 'What is overfitting?', 'input': '', 'output': 'Overfitting is when a model memorises its training data.'},
        {'instruction': '什么是过拟合？', 'input': '', 'output': '过拟合是指模型记住了训练数据中的噪声。'}]


def hostile(d: Path) -> dict:
    "Fixtures a new user produces by mistake: name -> path."
    d.mkdir(parents=True, exist_ok=True)
    f = {}
    (f_empty := d / 'empty.jsonl').write_bytes(b''); f['empty'] = f_empty
    (f_bad := d / 'badline.jsonl').write_text(json.dumps(GOOD[0]) + '\n{"instruction": "broken\n', encoding='utf-8'); f['bad line'] = f_bad
    (f_dir := d / 'adir.jsonl').mkdir(exist_ok=True); f['directory'] = f_dir
    f['missing'] = d / 'missing.jsonl'
    z = gzip.compress(json.dumps(GOOD[0]).encode() * 200)
    (f_gz := d / 'corrupt.jsonl.gz').write_bytes(z[:12] + bytes(range(256)) + z[12:60]); f['corrupt gz'] = f_gz
    (f_tr := d / 'truncated.jsonl.gz').write_bytes(gzip.compress((json.dumps(GOOD[0]) + '\n').encode() * 50)[:-6]); f['truncated gz'] = f_tr
    (f_wf := d / 'wrongfields.jsonl').write_text('{"a": 1}\n{"b": "x"}\n', encoding='utf-8'); f['wrong fields'] = f_wf
    (f_arr := d / 'array.jsonl').write_text(json.dumps(GOOD), encoding='utf-8'); f['array in jsonl'] = f_arr
    (f_enc := d / 'latin1.jsonl').write_bytes(json.dumps({'instruction': 'caf\u00e9', 'output': 'ok'}, ensure_ascii=False).encode('latin-1') + b'\n'); f['not utf-8'] = f_enc
    (f_scalar := d / 'scalars.jsonl').write_text('1\n"two"\n', encoding='utf-8'); f['not records'] = f_scalar
    return f


def verbs(d: Path) -> dict:
    "verb -> function of the input path giving its argv (outputs in `d`)."
    bench = d / 'bench.jsonl'
    bench.write_text(json.dumps({'id': 'b1', 'question': 'What is the capital of France? Paris is the capital of France.'}) + '\n', encoding='utf-8')
    o = lambda name: str(d / f'out.{name}.jsonl')
    good = d / 'good.jsonl'
    good.write_text(''.join(json.dumps({**r, 'id': str(i), 'text': r['output']}, ensure_ascii=False) + '\n' for i, r in enumerate(GOOD)), encoding='utf-8')
    return {
        'convert': lambda p: ['convert', str(p), o('convert'), '--to', 'sharegpt'],
        'validate': lambda p: ['validate', str(p)],
        'stats': lambda p: ['stats', str(p)],
        'estimate': lambda p: ['estimate', str(p)],
        'filter': lambda p: ['filter', str(p), o('filter')],
        'pii': lambda p: ['pii', str(p), o('pii')],
        'audit': lambda p: ['audit', str(p)],
        'dedup': lambda p: ['dedup', str(p), o('dedup')],
        'augment': lambda p: ['augment', str(p), o('augment'), '--method', 'synonym', '-n', '4'],
        'balance': lambda p: ['balance', str(p), o('balance')],
        'decontam': lambda p: ['decontam', str(p), o('decontam'), '--benchmark', str(bench)],
        'judge': lambda p: ['judge', str(p), o('judge'), '--judge', 'heuristic'],
        'evol': lambda p: ['evol', str(p), o('evol')],
        'topk': lambda p: ['topk', str(p), o('topk')],
        'taskdata code': lambda p: ['taskdata', 'code', str(p), o('code')],
        'taskdata math': lambda p: ['taskdata', 'math', str(p), o('math')],
        'grpo score': lambda p: ['grpo', 'score', str(p)],
        'review --summary': lambda p: ['review', '--summary', str(p)],
        'generate': lambda p: ['generate', str(p), o('generate')],
        'cross-encoder': lambda p: ['cross-encoder', str(p), o('ce')],
        'retrieval-scores': lambda p: ['retrieval-scores', str(p), str(good), o('rs')],
        'taskdata route': lambda p: ['taskdata', 'route', str(p)],
        'eval-retrieval': lambda p: ['eval-retrieval', str(p), str(good), '--model', str(d)],
        'train-retriever': lambda p: ['train-retriever', str(p), '--out', str(d / 'ret')],
        'train-reranker': lambda p: ['train-reranker', str(p), '--out', str(d / 'rr')],
        'ab': lambda p: ['ab', str(p), str(good), '--eval', str(good), '--steps', '1'],
        'qa': lambda p: ['qa', str(p), o('qa')],
    }


@pytest.fixture(scope='module')
def cases(tmp_path_factory):
    d = tmp_path_factory.mktemp('bad')
    return hostile(d), verbs(d)


FIXTURES = ['empty', 'bad line', 'directory', 'missing', 'corrupt gz', 'truncated gz', 'wrong fields', 'array in jsonl', 'not utf-8', 'not records']
VERBS = ['convert', 'validate', 'stats', 'estimate', 'filter', 'pii', 'audit', 'dedup', 'augment', 'balance', 'decontam', 'judge',
         'evol', 'topk', 'taskdata code', 'taskdata math', 'grpo score', 'review --summary', 'generate', 'cross-encoder',
         'retrieval-scores', 'taskdata route', 'eval-retrieval', 'train-retriever', 'train-reranker', 'ab', 'qa']


@pytest.mark.parametrize('verb', VERBS)
def test_hostile_inputs(verb, cases, capsys, monkeypatch, tmp_path):
    "Each verb x each hostile file: exit 2 with one `error:` line, or exit 0 with a complete result; never a traceback or exit 1."
    for k in ('DATAALCHEMY_BASE_URL', 'OPENAI_API_KEY'): monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv('DATAALCHEMY_CACHE_DIR', str(tmp_path / 'cache'))
    monkeypatch.chdir(tmp_path)
    load_commands()
    files, argv_of = cases
    bad = []
    for name in FIXTURES:
        try: run(argv_of[verb](files[name])); rc = 0
        except SystemExit as e: rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
        out = capsys.readouterr()
        text = out.out + out.err
        errors = [l for l in out.err.splitlines() if l.startswith('error:')]
        must_fail = name in ('missing', 'directory', 'corrupt gz', 'truncated gz')      # nothing complete can come of these
        ok = 'Traceback' not in text and ((rc == 0 and not must_fail) or (rc == 2 and len(errors) == 1)
                                          or (verb == 'validate' and rc == 1 and 'problem' in text))   # validate's answer: the file is invalid
        if not ok: bad.append(f"{name}: rc {rc}: {text.strip()[-300:]}")
    assert not bad, f'{verb}:\n' + '\n'.join(bad)


def test_files_get_the_umask_mode(tmp_path):
    "Data files are created with the mode any new file gets (0644 under umask 022), not mkstemp's 0600."
    old = os.umask(0o022)
    try:
        code = "from dataalchemy.core import write_records; write_records([{'a': 1}], 'x.jsonl')"
        subprocess.run([sys.executable, '-c', code], cwd=tmp_path, check=True)
    finally: os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / 'x.jsonl').st_mode) == 0o644


def test_loading_a_retriever_leaves_the_environment_alone(tmp_path):
    "No process-wide HF_HUB_OFFLINE from a library call: a notebook can still download afterwards."
    pytest.importorskip('sentence_transformers')
    code = ("import os; os.environ.pop('HF_HUB_OFFLINE', None)\n"
            "from dataalchemy.retriever_train import load_retriever\n"
            "load_retriever(); print(repr(os.environ.get('HF_HUB_OFFLINE')))")
    env = {k: v for k, v in os.environ.items() if k != 'HF_HUB_OFFLINE'}
    r = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == 'None'
