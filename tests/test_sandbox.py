"""The code sandbox (`08b_sandbox`) against hostile code, per isolation (bwrap, unshare, none): keys, reads and writes
outside, processes, forks, sockets, loops and memory; tests that must run; `verify_code` and the `taskdata code` verb."""
import json, os, shutil, socket, subprocess, sys, time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import dataalchemy.sandbox as sbx
from dataalchemy.core import Stats
from dataalchemy.cli import load_commands


# ---------------------------------------------------------------- sandbox (the done-when)
# Hostile samples, each run under every isolation this machine offers (CI installs bubblewrap), with the audit-hook
# tripwire switched off where the point is the isolation itself; `none` only where its hook claims to stop it.
KEY = 'sk-test-DO-NOT-LEAK-9f3a7c1e55'
ISOS = [i for i in ('bwrap', 'unshare') if sbx.isolation_available(i)]
ALL = ISOS + ['none']


def test_bubblewrap_present_in_ci():
    if os.environ.get('DATAALCHEMY_REQUIRE_BWRAP') or shutil.which('bwrap'): assert 'bwrap' in ISOS, 'bubblewrap missing or not starting'
    else: pytest.skip('bubblewrap is not installed here')


@pytest.fixture(autouse=True)
def fake_key(monkeypatch): monkeypatch.setenv('OPENAI_API_KEY', KEY)


def leaked(text): return any(x in text for x in (KEY, KEY.encode().hex(), KEY[::-1]))


def test_sandbox_passes_correct_code():
    r = sbx.run_sandboxed('def add(a, b):\n    return a + b', 'assert add(2, 3) == 5')
    assert r.status == 'passed' and r.passed and r.asserts == 1, r


@pytest.mark.parametrize('iso', ALL)
def test_uncalled_tests_and_early_exit(iso):
    bad, good = 'def add(a, b):\n    return a - b\n', 'def add(a, b):\n    return a + b\n'
    assert sbx.run_sandboxed(bad, 'def test_add():\n    assert add(1, 1) == 2', isolation=iso).status == 'failed'
    r = sbx.run_sandboxed(good, 'def test_add():\n    assert add(1, 1) == 2', isolation=iso)
    assert (r.status, r.tests, r.asserts, r.isolation) == ('passed', 1, 1, iso), r
    assert sbx.run_sandboxed(bad, 'import sys\nsys.exit(0)\nassert add(1, 1) == 2', isolation=iso).status == 'no_test_ran'
    assert sbx.run_sandboxed(bad, 'import os\nos._exit(0)\nassert add(1, 1) == 2', isolation=iso).status == 'no_test_ran'
    assert sbx.run_sandboxed(good, 'add(1, 1)', isolation=iso).status == 'no_test_ran'


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
    env = {**os.environ, 'OPENAI_API_KEY': KEY, 'PYTHONPATH': str(Path(sbx.__file__).parent.parent)}
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
    env = {**os.environ, 'PYTHONPATH': str(Path(sbx.__file__).parent.parent), 'TMPDIR': str(tmp_path)}
    p = subprocess.run([sys.executable, '-c', 'from dataalchemy.cli import main; main()', 'taskdata', 'code', str(src), str(dst),
                        '--isolation', iso, '--workers', '1'], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0 and len(dst.read_text().splitlines()) >= 1, (p.returncode, p.stderr[-500:])
    assert not list(tmp_path.glob('da-sbx-*')), 'temporary folders left behind'


def test_require_isolation_refuses_none(tmp_path):
    with pytest.raises(RuntimeError, match='isolation is required'): sbx.run_sandboxed('assert 1', isolation='none', require_isolation=True)
    src = tmp_path / 'in.jsonl'; src.write_text(json.dumps({'output': 'assert 1'}))
    r = CliRunner().invoke(load_commands(), ['taskdata', 'code', str(src), str(tmp_path / 'o.jsonl'), '--isolation', 'none', '--require-isolation'])
    assert r.exit_code != 0 and 'isolation is required' in r.output, r.output
    r = sbx.run_sandboxed('assert 1', isolation='none')
    assert r.passed and 'NOT ISOLATED' in r.layers and 'not isolated' in r.stderr


@pytest.mark.parametrize('iso', ISOS)
def test_reads_outside(iso, tmp_path, monkeypatch):
    proj = tmp_path / 'project'; proj.mkdir(); (proj / 'secret.txt').write_text('TOP-SECRET-42')
    monkeypatch.chdir(proj)
    code = f'''import ctypes
for p in ['/etc/passwd', '/etc/shadow', {str(proj / 'secret.txt')!r}, '/root/.bashrc', {str(Path(sbx.__file__))!r}]:
    try: print('LEAK', p, open(p).read()[:200])
    except OSError as e: print('no', p, type(e).__name__)
print(ctypes.CDLL(None).system(b'cat /etc/passwd {proj / "secret.txt"}'))
'''
    r = sbx.run_sandboxed(code, isolation=iso, audit_hook=False)
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
    r = sbx.run_sandboxed(CTYPES_WRITE.format(p=str(a), cmd=f'touch {b}', p2=str(c)), isolation=iso, audit_hook=False)
    assert not a.exists() and not b.exists() and not c.exists(), r


def test_writes_outside_none_hook(tmp_path):
    target = tmp_path / 'escape.txt'
    r = sbx.run_sandboxed(f'open({str(target)!r}, "w").write("x")', isolation='none')
    assert r.status == 'write_blocked' and not target.exists(), r
    r = sbx.run_sandboxed(CTYPES_WRITE.format(p=str(target), cmd=f'touch {target}', p2=str(target)), isolation='none')
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
    r = sbx.run_sandboxed(TAMPER.format(p=str(a), p2=str(b)), isolation=iso)
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
    r = sbx.run_sandboxed(code, isolation=iso, audit_hook=False, timeout=timeout)
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
    r = sbx.run_sandboxed(code, isolation=iso, audit_hook=False, nproc=20, timeout=5)
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
    r = sbx.run_sandboxed(code, isolation=iso, audit_hook=False)
    try: srv.accept(); got = True
    except OSError: got = False
    finally: srv.close()
    assert not got and 'CONNECTED' not in r.stdout, r


@pytest.mark.parametrize('iso', ALL)
def test_sandbox_blocks_network_hook(iso):
    r = sbx.run_sandboxed('import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(("93.184.216.34", 80))', isolation=iso)
    assert r.status == 'network' and 'network blocked' in r.stderr, r
    r = sbx.run_sandboxed('import urllib.request\ntry:\n    urllib.request.urlopen("http://example.com", timeout=2)\nexcept Exception:\n    pass', isolation=iso)
    assert r.status == 'network', r       # reported even when the sample swallows the error


@pytest.mark.parametrize('iso', ALL)
def test_loop_and_memory(iso):
    t0 = time.time()
    r = sbx.run_sandboxed('while True:\n    pass', isolation=iso, timeout=2)
    assert r.status == 'timeout' and time.time() - t0 < 6, r
    r = sbx.run_sandboxed('x = bytearray(4 * 1024**3)\nassert x', isolation=iso, memory_mb=256)
    assert r.status == 'memory', r


def test_redact_secrets():
    assert KEY in sbx.secret_values() and sbx.redact(f'x {KEY} y', sbx.secret_values()) == 'x [redacted] y'


def test_verify_code_drops_failures_with_stderr(tmp_path):
    recs = [{'instruction': 'square', 'output': '```python\ndef sq(x):\n    return x * x\n\n# Tests\nassert sq(3) == 9\n```'},
            {'instruction': 'broken', 'output': 'def sq(x):\n    return x + x\n', 'tests': 'assert sq(3) == 9, "sq(3) must be 9"'},
            {'instruction': 'no tests', 'output': 'def f():\n    return 1\n'}]
    with Stats('code', rejected=tmp_path / 'rej.jsonl') as st:
        kept = list(sbx.verify_code(recs, sbx.SandboxOptions(timeout=5), st))
    assert [r['instruction'] for r in kept] == ['square']
    assert dict(st.reasons) == {'code: failed': 1, 'code: no tests': 1}
    rej = [json.loads(l) for l in (tmp_path / 'rej.jsonl').read_text().splitlines()]
    assert 'sq(3) must be 9' in rej[0]['stderr'] and len(rej[0]['stderr']) <= 600
