"""Task data and balance: the code sandbox against hostile code (per isolation: bwrap, unshare, none), tests that must run, the math verifier (en/zh), classification generation
(scripted engine and the real Engine against FakeOpenAI), rebalancing, routing and the CLI verbs."""
import json, os, re, shutil, socket, subprocess, sys, time
from fractions import Fraction
from pathlib import Path

import pytest
from typer.testing import CliRunner

import dataalchemy.taskdata as td
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


# ---------------------------------------------------------------- sandbox (the done-when)
# Hostile samples, each run under every isolation this machine offers (CI installs bubblewrap), with the audit-hook
# tripwire switched off where the point is the isolation itself; `none` only where its hook claims to stop it.
KEY = 'sk-test-DO-NOT-LEAK-9f3a7c1e55'
ISOS = [i for i in ('bwrap', 'unshare') if td.isolation_available(i)]
ALL = ISOS + ['none']


def test_bubblewrap_present_in_ci():
    if os.environ.get('DATAALCHEMY_REQUIRE_BWRAP') or shutil.which('bwrap'): assert 'bwrap' in ISOS, 'bubblewrap missing or not starting'
    else: pytest.skip('bubblewrap is not installed here')


@pytest.fixture(autouse=True)
def fake_key(monkeypatch): monkeypatch.setenv('OPENAI_API_KEY', KEY)


def leaked(text): return any(x in text for x in (KEY, KEY.encode().hex(), KEY[::-1]))


def test_sandbox_passes_correct_code():
    r = td.run_sandboxed('def add(a, b):\n    return a + b', 'assert add(2, 3) == 5')
    assert r.status == 'passed' and r.passed and r.asserts == 1, r


@pytest.mark.parametrize('iso', ALL)
def test_uncalled_tests_and_early_exit(iso):
    bad, good = 'def add(a, b):\n    return a - b\n', 'def add(a, b):\n    return a + b\n'
    assert td.run_sandboxed(bad, 'def test_add():\n    assert add(1, 1) == 2', isolation=iso).status == 'failed'
    r = td.run_sandboxed(good, 'def test_add():\n    assert add(1, 1) == 2', isolation=iso)
    assert (r.status, r.tests, r.asserts, r.isolation) == ('passed', 1, 1, iso), r
    assert td.run_sandboxed(bad, 'import sys\nsys.exit(0)\nassert add(1, 1) == 2', isolation=iso).status == 'no_test_ran'
    assert td.run_sandboxed(bad, 'import os\nos._exit(0)\nassert add(1, 1) == 2', isolation=iso).status == 'no_test_ran'
    assert td.run_sandboxed(good, 'add(1, 1)', isolation=iso).status == 'no_test_ran'


ENV = '''import os
for k, v in os.environ.items(): print(k, v.encode().hex(), v[::-1])
for pid in os.listdir('/proc'):
    if pid.isdigit():
        try: print(pid, open(f'/proc/{pid}/environ', 'rb').read().hex())
        except OSError as e: print(pid, 'no', e)
print('ppid', os.getppid(), open(f'/proc/{os.getppid()}/environ', 'rb').read().hex())
assert False, 'rejected on purpose'
'''


@pytest.mark.parametrize('iso', ALL)
def test_key_never_leaves_through_the_cli(iso, tmp_path):
    "The key is in the CLI's own start-up environment (so in /proc/<ppid>/environ); no output file may hold it."
    src, dst, rej = tmp_path / 'in.jsonl', tmp_path / 'out.jsonl', tmp_path / 'rej.jsonl'
    recs = [{'instruction': 'env', 'output': ENV},
            {'instruction': 'ok', 'output': 'import os\nprint(os.environ)\nassert "OPENAI_API_KEY" not in os.environ'}]
    src.write_text('\n'.join(json.dumps(r) for r in recs))
    env = {**os.environ, 'OPENAI_API_KEY': KEY, 'PYTHONPATH': str(Path(td.__file__).parent.parent)}
    p = subprocess.run([sys.executable, '-c', 'from dataalchemy.cli import main; main()', 'taskdata', 'code', str(src), str(dst),
                        '--isolation', iso, '--rejected', str(rej), '--timeout', '10'], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert f'sandbox isolation: {iso}' in p.stderr and (iso != 'none' or 'NOT ISOLATED' in p.stderr)
    assert len(dst.read_text().splitlines()) == 1 and len(rej.read_text().splitlines()) == 1
    for f in (dst, rej): assert not leaked(f.read_text()), f.read_text()[:2000]
    assert not leaked(p.stdout + p.stderr)


@pytest.mark.parametrize('iso', ALL)
def test_sample_cannot_kill_the_cli(iso, tmp_path):
    src, dst = tmp_path / 'in.jsonl', tmp_path / 'out.jsonl'
    kill = ('import os, signal, ctypes\ntry: os.kill(os.getppid(), signal.SIGKILL)\nexcept OSError: pass\n'
            'try: ctypes.CDLL(None).kill(ctypes.CDLL(None).getppid(), 9)\nexcept Exception: pass\nassert True')
    src.write_text('\n'.join(json.dumps({'instruction': str(i), 'output': kill if i == 0 else 'x = 1\nassert x == 1'}) for i in range(2)))
    env = {**os.environ, 'PYTHONPATH': str(Path(td.__file__).parent.parent), 'TMPDIR': str(tmp_path)}
    p = subprocess.run([sys.executable, '-c', 'from dataalchemy.cli import main; main()', 'taskdata', 'code', str(src), str(dst),
                        '--isolation', iso, '--workers', '1'], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0 and len(dst.read_text().splitlines()) >= 1, (p.returncode, p.stderr[-500:])
    assert not list(tmp_path.glob('da-sbx-*')), 'temporary folders left behind'


def test_require_isolation_refuses_none(tmp_path):
    with pytest.raises(RuntimeError, match='isolation is required'): td.run_sandboxed('assert 1', isolation='none', require_isolation=True)
    src = tmp_path / 'in.jsonl'; src.write_text(json.dumps({'output': 'assert 1'}))
    r = CliRunner().invoke(load_commands(), ['taskdata', 'code', str(src), str(tmp_path / 'o.jsonl'), '--isolation', 'none', '--require-isolation'])
    assert r.exit_code != 0 and 'isolation is required' in r.output, r.output
    r = td.run_sandboxed('assert 1', isolation='none')
    assert r.passed and 'NOT ISOLATED' in r.layers and 'not isolated' in r.stderr


@pytest.mark.parametrize('iso', ISOS)
def test_reads_outside(iso, tmp_path, monkeypatch):
    proj = tmp_path / 'project'; proj.mkdir(); (proj / 'secret.txt').write_text('TOP-SECRET-42')
    monkeypatch.chdir(proj)
    code = f'''import ctypes
for p in ['/etc/passwd', '/etc/shadow', {str(proj / 'secret.txt')!r}, '/root/.bashrc', {str(Path(td.__file__))!r}]:
    try: print('LEAK', p, open(p).read()[:200])
    except OSError as e: print('no', p, type(e).__name__)
print(ctypes.CDLL(None).system(b'cat /etc/passwd {proj / "secret.txt"}'))
'''
    r = td.run_sandboxed(code, isolation=iso, audit_hook=False)
    assert 'LEAK' not in r.stdout and 'TOP-SECRET' not in r.stdout and 'root:' not in r.stdout, r


CTYPES_WRITE = '''import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.open({p!r}.encode(), os.O_WRONLY | os.O_CREAT, 0o644)
libc.write(fd, b'pwned', 5)
libc.system({cmd!r}.encode())
try: open({p2!r}, 'w').write('x')
except OSError as e: print(e)
'''


@pytest.mark.parametrize('iso', ISOS)
def test_writes_outside_and_ctypes(iso, tmp_path):
    a, b, c = tmp_path / 'a.txt', tmp_path / 'b.txt', tmp_path / 'c.txt'
    r = td.run_sandboxed(CTYPES_WRITE.format(p=str(a), cmd=f'touch {b}', p2=str(c)), isolation=iso, audit_hook=False)
    assert not a.exists() and not b.exists() and not c.exists(), r


def test_writes_outside_none_hook(tmp_path):
    target = tmp_path / 'escape.txt'
    r = td.run_sandboxed(f'open({str(target)!r}, "w").write("x")', isolation='none')
    assert r.status == 'write_blocked' and not target.exists(), r
    r = td.run_sandboxed(CTYPES_WRITE.format(p=str(target), cmd=f'touch {target}', p2=str(target)), isolation='none')
    assert r.status == 'process_blocked' and not target.exists(), r


TAMPER = '''import sys, gc, os, subprocess
f = sys._getframe()
while f is not None:
    for d in (f.f_globals, f.f_locals):
        for k, v in list(d.items()):
            if isinstance(v, list) and 'busy' in k: v.append(1)
    f = f.f_back
for o in gc.get_objects():
    if callable(o) and getattr(o, '__name__', '') == 'hook' and getattr(o, '__closure__', None):
        for c in o.__closure__:
            if isinstance(c.cell_contents, list): c.cell_contents.append(1)
open({p!r}, 'w').write('pwned')
subprocess.run(['touch', {p2!r}])
'''


@pytest.mark.parametrize('iso', ALL)
def test_audit_hook_tampering(iso, tmp_path):
    a, b = tmp_path / 'a.txt', tmp_path / 'b.txt'
    r = td.run_sandboxed(TAMPER.format(p=str(a), p2=str(b)), isolation=iso)
    assert not a.exists() and not b.exists() and not r.passed, r


SURVIVOR = '''import ctypes
libc = ctypes.CDLL(None)
if libc.fork() == 0:
    libc.setsid()
    libc.execl(b'/bin/sh', b'sh', b'-c', b'sleep 1.5; echo x > {p}; exec sleep 30 {marker}', None)
assert True
'''


def _running(marker):
    out = []
    for pid in os.listdir('/proc'):
        try:
            if marker in open(f'/proc/{pid}/cmdline', 'rb').read().decode(errors='replace'): out.append(pid)
        except OSError: pass
    return out


@pytest.mark.parametrize('iso', ISOS)
@pytest.mark.parametrize('timeout', [10, 0.5])
def test_setsid_survivor(iso, timeout, tmp_path):
    marker = f'31.{os.getpid()}{len(iso)}{int(timeout)}7'
    p = tmp_path / 'late.txt'
    code = SURVIVOR.format(p=str(p), marker=marker) + ('\nimport time\ntime.sleep(5)' if timeout < 1 else '')
    r = td.run_sandboxed(code, isolation=iso, audit_hook=False, timeout=timeout)
    time.sleep(2.5)
    assert not p.exists() and not _running(marker), (r, _running(marker))


@pytest.mark.parametrize('iso', ISOS)
def test_fork_limit(iso):
    code = '''import ctypes, time
libc = ctypes.CDLL(None)
n = 0
for i in range(100):
    pid = libc.fork()
    if pid == 0:
        time.sleep(2); libc._exit(0)
    if pid < 0: break
    n += 1
print('forked', n)
'''
    r = td.run_sandboxed(code, isolation=iso, audit_hook=False, nproc=20, timeout=5)
    n = int(r.stdout.split()[-1]) if 'forked' in r.stdout else 0
    assert n <= 20, r


@pytest.mark.parametrize('iso', ISOS)
def test_sockets_isolation(iso):
    srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen(); srv.settimeout(0.3)
    port = srv.getsockname()[1]
    code = f'''import socket
for host in [('127.0.0.1', {port}), ('1.1.1.1', 80)]:
    s = socket.socket(); s.settimeout(2)
    try: s.connect(host); s.sendall(b'LEAK'); print('CONNECTED', host)
    except OSError as e: print('no', host, e)
'''
    r = td.run_sandboxed(code, isolation=iso, audit_hook=False)
    try: srv.accept(); got = True
    except OSError: got = False
    finally: srv.close()
    assert not got and 'CONNECTED' not in r.stdout, r


@pytest.mark.parametrize('iso', ALL)
def test_sandbox_blocks_network_hook(iso):
    r = td.run_sandboxed('import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(("93.184.216.34", 80))', isolation=iso)
    assert r.status == 'network' and 'network blocked' in r.stderr, r
    r = td.run_sandboxed('import urllib.request\ntry:\n    urllib.request.urlopen("http://example.com", timeout=2)\nexcept Exception:\n    pass', isolation=iso)
    assert r.status == 'network', r       # reported even when the sample swallows the error


@pytest.mark.parametrize('iso', ALL)
def test_loop_and_memory(iso):
    t0 = time.time()
    r = td.run_sandboxed('while True:\n    pass', isolation=iso, timeout=2)
    assert r.status == 'timeout' and time.time() - t0 < 6, r
    r = td.run_sandboxed('x = bytearray(4 * 1024**3)\nassert x', isolation=iso, memory_mb=256)
    assert r.status == 'memory', r


def test_redact_secrets():
    assert KEY in td.secret_values() and td.redact(f'x {KEY} y', td.secret_values()) == 'x [redacted] y'


def test_verify_code_drops_failures_with_stderr(tmp_path):
    recs = [{'instruction': 'square', 'output': '```python\ndef sq(x):\n    return x * x\n\n# Tests\nassert sq(3) == 9\n```'},
            {'instruction': 'broken', 'output': 'def sq(x):\n    return x + x\n', 'tests': 'assert sq(3) == 9, "sq(3) must be 9"'},
            {'instruction': 'no tests', 'output': 'def f():\n    return 1\n'}]
    with Stats('code', rejected=tmp_path / 'rej.jsonl') as st:
        kept = list(td.verify_code(recs, td.SandboxOptions(timeout=5), st))
    assert [r['instruction'] for r in kept] == ['square']
    assert dict(st.reasons) == {'code: failed': 1, 'code: no tests': 1}
    rej = [json.loads(l) for l in (tmp_path / 'rej.jsonl').read_text().splitlines()]
    assert 'sq(3) must be 9' in rej[0]['stderr'] and len(rej[0]['stderr']) <= 600


# ---------------------------------------------------------------- math verifier
@pytest.mark.parametrize('output,answer,ok', [
    ('48 / 2 = 24\n48 + 24 = 72\n#### 72', 72, True),
    ('So the total is 3 * 4 = 12. The answer is 12.', '12', True),
    ('So the total is 3 * 4 = 12. The answer is 13.', '12', False),
    (r'Thus \boxed{\frac{1}{6}}', '1/6', True),
    ('思考过程：\n1. 5 - 2 = 3\n2. 3 + 3 = 6\n答案是 6个', '6', True),
    ('思考过程：\n1. 5 - 2 = 3\n2. 3 + 3 = 6\n答案是 7个', '6', False),
    ('单价 3.5 元，买 4 支：3.5 × 4 = 14\n最终答案为 14 元', 14, True),
    ('3 + 4 = 8\n答案：8', 8, False),          # right "answer" for the reference, wrong step
])
def test_verify_math_en_zh(output, answer, ok):
    st = Stats('math')
    kept = list(td.verify_math([{'instruction': 'q', 'output': output, 'answer': answer}], td.MathOptions(), st))
    assert bool(kept) == ok, (st.reasons, output)
    if not ok: assert st.n_dropped == 1


def test_math_reference_by_computation():
    rec = {'instruction': 'Half of a third?', 'output': 'The answer is 0.1666667', 'expression': '1/2 * 1/3'}
    assert len(list(td.verify_math([rec]))) == 1
    assert td.safe_eval('1/3 + 1/6') == Fraction(1, 2)
    for evil in ['__import__("os")', '().__class__', '9**9**9', 'factorial(5000)', 'a * 2']:
        with pytest.raises(ValueError): td.safe_eval(evil)


# ---------------------------------------------------------------- classification
def test_classification_scripted_engine_balanced():
    o = td.ClassifyOptions(n=30, per_request=5)
    eng, st = ScriptedEngine(classification_reply), Stats('cls')
    recs = td.generate_classification(eng, o, st)
    assert eng.batches == [len(td.classification_plan(o))]
    b = td.label_balance(recs, labels=['Positive', 'Negative', 'Neutral'])
    assert b['ratio'] == 1.0 and b['total'] >= 30 and not b['missing'], b
    schema = td.classification_schema(o)
    assert all(td.schema_errors(r, schema) == [] for r in recs)
    assert {r['lang'] for r in recs} == {'zh', 'en'}


def test_classification_through_engine_and_fake_openai():
    llm = pytest.importorskip('dataalchemy.llm')
    testing = pytest.importorskip('dataalchemy.testing')
    pytest.importorskip('aiohttp')
    o = td.ClassifyOptions(n=12, per_request=4, overgenerate=1.0)
    with testing.FakeOpenAI(responder=classification_reply) as srv:
        eng = llm.Engine(backend='openai', base_url=srv.url, api_key='sk-test', model='gpt-4o-mini', use_cache=False,
                         progress=False, max_retries=0)
        st = Stats('cls')
        recs = td.generate_classification(eng, o, st)
        assert srv.n_requests == len(td.classification_plan(o))
    assert len(recs) == 12 and st.n_dropped == 0, st.table()
    assert td.label_balance(recs)['ratio'] == 1.0
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
def test_cli_balance_and_math(tmp_path):
    src, dst = tmp_path / 'in.jsonl', tmp_path / 'out.jsonl'
    src.write_text('\n'.join(json.dumps(r, ensure_ascii=False) for r in _records()), encoding='utf-8')
    runner = CliRunner()
    r = runner.invoke(load_commands(), ['balance', str(src), str(dst), '--mix', '3:5:2', '--n', '40'])
    assert r.exit_code == 0, r.output
    assert 'medium needs 10 more' in r.output and len(dst.read_text().splitlines()) == 30
    m = tmp_path / 'm.jsonl'
    m.write_text(json.dumps({'instruction': 'q', 'output': '答案是 5', 'answer': 5}, ensure_ascii=False) + '\n'
                 + json.dumps({'instruction': 'q', 'output': 'The answer is 4', 'answer': 5}) + '\n', encoding='utf-8')
    r = runner.invoke(load_commands(), ['taskdata', 'math', str(m), str(dst)])
    assert r.exit_code == 0 and 'math: wrong answer' in r.output and len(dst.read_text().splitlines()) == 1


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
