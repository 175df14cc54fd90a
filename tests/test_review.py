"""Human spot checks through the real command: a headless Chromium labels zh/en records by keyboard, the server is killed
with SIGKILL and loses nothing, a restart resumes at the right record, and --summary gives the Wilson interval."""
import json, os, queue, re, shutil, signal, subprocess, sys, threading, time, urllib.error, urllib.request
from pathlib import Path
import pytest
from dataalchemy.core import has_cjk, read_records, write_records
from dataalchemy.review import ReviewServer, draw_sample

REQUIRE = os.environ.get('DATAALCHEMY_REQUIRE_BROWSER') == '1'   # set by .ci/run: a missing browser fails there
EVIL = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'


def data_records():
    "Chinese and English records in three formats from three sources, and one scraped record carrying HTML."
    out = []
    for i in range(8):
        out.append({'instruction': f'解释第 {i} 个概念：过拟合与正则化。', 'input': '', 'output': f'过拟合是模型记住了噪声（{i}）。',
                    'meta': {'source': 'self-instruct'}})
    for i in range(6):
        out.append({'conversations': [{'from': 'human', 'value': f'What is dropout, case {i}?'},
                                      {'from': 'gpt', 'value': f'Dropout zeroes random activations (case {i}).'}],
                    'meta': {'source': 'evol-instruct'}})
    for i in range(3):
        out.append({'messages': [{'role': 'user', 'content': f'文档 {i} 讲了什么？'},
                                 {'role': 'assistant', 'content': f'It is about data cleaning ({i}).'}], 'meta': {'source': 'qa'}})
    out.append({'instruction': 'Summarise the page.', 'output': EVIL, 'meta': {'source': 'scraped'}})
    return out


def cli(*a, **kw):
    return subprocess.run([sys.executable, '-c', 'from dataalchemy.cli import main; main()', *map(str, a)],
                          capture_output=True, text=True, timeout=120, **kw)


class Server:
    "`dataalchemy review ...` in a subprocess; its stdout read in a thread until it prints its address."
    def __init__(self, *args, **popen):
        self.p = subprocess.Popen([sys.executable, '-u', '-c', 'from dataalchemy.cli import main; main()', 'review', *map(str, args)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
        self.lines, self.q = [], queue.Queue()
        self.reader = threading.Thread(target=lambda: [self.q.put(l) for l in self.p.stdout], daemon=True)
        self.reader.start()
        self.err = []                                    # stderr read as it comes: a full pipe would stall the server
        self.err_reader = threading.Thread(target=lambda: self.err.extend(self.p.stderr), daemon=True)
        self.err_reader.start()
        deadline = time.time() + 60
        while time.time() < deadline:
            try: line = self.q.get(timeout=0.5)
            except queue.Empty:
                if self.p.poll() is not None:
                    self.err_reader.join(10); raise AssertionError(f'server exited {self.p.returncode}: {"".join(self.err)}')
                continue
            self.lines.append(line)
            if m := re.search(r'reviewing at (http://127\.0\.0\.1:\d+/)', line): self.url = m.group(1); return
        raise AssertionError(f'no address printed: {self.lines}')

    @property
    def out(self) -> str: return ''.join(self.lines)

    def _stop(self, sig) -> str:
        self.p.send_signal(sig)
        try: self.p.wait(60)
        except subprocess.TimeoutExpired:
            self.p.kill(); self.p.wait(10)
            raise AssertionError(f'the server did not stop on signal {sig}; stderr: {"".join(self.err)[-3000:]}') from None
        self.reader.join(10); self.err_reader.join(10)
        while not self.q.empty(): self.lines.append(self.q.get())
        return ''.join(self.err)

    def kill(self) -> str:
        "SIGKILL: no chance to flush or clean up. Returns stderr."
        return self._stop(signal.SIGKILL)

    def interrupt(self) -> str:
        "Ctrl-C. Returns stderr."
        return self._stop(signal.SIGINT)


def post(url, raw: bytes, ctype='application/json'):
    req = urllib.request.Request(url + 'api/label', raw, {'Content-Type': ctype})
    try:
        with urllib.request.urlopen(req, timeout=10) as r: return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e: return e.code, json.loads(e.read())


def labels(path) -> list[dict]:
    return [json.loads(l) for l in Path(path).read_text(encoding='utf-8').splitlines()]


def test_sample_is_stratified_seeded_and_keeps_every_stratum(tmp_path):
    write_records(data_records(), tmp_path / 'd.jsonl')
    a, b = draw_sample(tmp_path / 'd.jsonl', 6, seed=7), draw_sample(tmp_path / 'd.jsonl', 6, seed=7)
    assert [x['key'] for x in a] == [x['key'] for x in b]
    from collections import Counter
    assert Counter(x['stratum'] for x in a) == {'self-instruct': 2, 'evol-instruct': 2, 'qa': 1, 'scraped': 1}
    assert Counter(x['stratum'] for x in draw_sample(tmp_path / 'd.jsonl', 6, by='lang', seed=7)) == {'zh': 4, 'en': 2}   # 11 zh (qa asks in Chinese), 7 en


def test_bad_requests_get_400_and_nothing_on_the_terminal(tmp_path):
    write_records(data_records(), tmp_path / 'd.jsonl')
    srv = Server(tmp_path / 'd.jsonl', '--n', '5', '--no-browser')
    try:
        state = json.loads(urllib.request.urlopen(srv.url + 'api/state', timeout=10).read())
        key = state['items'][0]['key']
        assert post(srv.url, b'{oops')[0] == 400
        assert post(srv.url, b'\xff\xfe')[0] == 400
        assert post(srv.url, json.dumps({'key': key, 'verdict': 'fail', 'reason': 'boring'}).encode())[0] == 400
        assert post(srv.url, json.dumps({'key': 'x' * 16, 'verdict': 'pass'}).encode())[0] == 400
        assert post(srv.url, json.dumps({'key': key, 'verdict': 'pass'}).encode())[0] == 200
        import socket                                                  # a request cut off half-way
        with socket.create_connection(('127.0.0.1', int(srv.url.rsplit(':', 1)[1].strip('/')))) as s:
            s.sendall(b'POST /api/label HTTP/1.1\r\nContent-Length: 500\r\n\r\n{"key"')
        with socket.create_connection(('127.0.0.1', int(srv.url.rsplit(':', 1)[1].strip('/')))) as s:
            s.sendall(b'POST /api/label HTTP/1.1\r\nContent-Length: banana\r\n\r\n')
            assert b' 400 ' in s.recv(200)
    finally:
        err = srv.interrupt()
    assert err == '', err                                              # no traceback, no request log
    assert len(labels(tmp_path / 'd.review-labels.jsonl')) == 1
    assert 'stopped: 1 of 5 labelled' in srv.out


def test_summary_wilson_and_errors(tmp_path):
    items = draw_sample([{'instruction': f'q{i}', 'output': f'a{i}', 'meta': {'source': 'a' if i % 4 else 'b'}} for i in range(1000)], 100)
    with ReviewServer(items, tmp_path / 'l.jsonl') as srv:
        for it in items:
            bad = it['index'] < 5
            srv.label({'key': it['key'], 'verdict': 'fail' if bad else 'pass', 'reason': 'unsafe' if bad else None})
    r = cli('review', '--summary', tmp_path / 'l.jsonl', '--report', tmp_path / 'r.json')
    assert r.returncode == 0, r.stderr
    assert 'defect rate 5.0% (5 of 100 failed); 95% Wilson interval 2.2% – 11.2%' in r.stdout
    assert 'of 1,000 records, about 50 defective (22 – 112)' in r.stdout
    rep = json.loads((tmp_path / 'r.json').read_text())
    assert rep['reasons'] == {'unsafe': 5} and abs(rep['wilson_95'][0] - 0.0215) < 5e-5 and abs(rep['wilson_95'][1] - 0.1118) < 5e-5
    assert {s['stratum']: s['size'] for s in rep['strata']} == {'a': 750, 'b': 250}
    (tmp_path / 'bad.jsonl').write_text('{"key": "k", "verdict": "pass"}\n{"key": "j", "verdict": "pas')
    for args, msg in ((['--summary', tmp_path / 'missing.jsonl'], 'missing.jsonl'), (['--summary', tmp_path / 'bad.jsonl'], 'bad.jsonl:2')):
        r = cli('review', *args)
        assert r.returncode == 2 and r.stderr.startswith('error:') and msg in r.stderr and 'Traceback' not in r.stderr, r.stderr


def test_a_different_sample_is_not_mixed_in(tmp_path):
    write_records(data_records(), tmp_path / 'd.jsonl')
    srv = Server(tmp_path / 'd.jsonl', '--n', '5', '--no-browser', '--seed', '1'); srv.interrupt()
    r = cli('review', tmp_path / 'd.jsonl', '--n', '5', '--seed', '2', '--no-browser')
    assert r.returncode == 2 and 'different sample' in r.stderr, r.stderr
    r = cli('review', tmp_path / 'd.jsonl', '--sample', tmp_path / 'd.jsonl', '--no-browser')
    assert r.returncode == 2 and r.stderr.startswith('error:'), r.stderr
    assert len(list(read_records(tmp_path / 'd.jsonl'))) == len(data_records())        # the input is untouched


def test_a_taken_port_is_one_error_line(tmp_path):
    import socket
    write_records(data_records(), tmp_path / 'd.jsonl')
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); s.listen()
        r = cli('review', tmp_path / 'd.jsonl', '--port', s.getsockname()[1], '--no-browser')
    assert r.returncode == 2 and r.stderr.startswith('error: cannot serve on 127.0.0.1:') and 'Traceback' not in r.stderr, r.stderr
    assert not (tmp_path / 'd.review-labels.jsonl').exists()


@pytest.fixture(scope='module')
def chromium():
    exe = shutil.which('chromium') or shutil.which('chromium-browser')
    try: from playwright.sync_api import sync_playwright
    except ImportError: sync_playwright = None
    why = 'the playwright package is not installed' if sync_playwright is None else None if exe else 'no chromium on PATH (apt-get install chromium)'
    if why:
        if REQUIRE: pytest.fail(f'DATAALCHEMY_REQUIRE_BROWSER=1 but {why}')
        pytest.skip(f'browser test needs a headless Chromium: {why}')
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=['--no-sandbox'])
        yield b
        b.close()


def test_review_in_a_real_browser_survives_kill_and_resumes(tmp_path, chromium):
    data = tmp_path / 'gen.jsonl'
    write_records(data_records(), data)
    args = (data, '--n', '9', '--seed', '3', '--no-browser', '--reviewer', 'tester')
    srv = Server(*args)
    assert f'-> {tmp_path / "gen.review-sample.jsonl"}' in srv.out and str(tmp_path / 'gen.review-labels.jsonl') in srv.out
    items = list(read_records(tmp_path / 'gen.review-sample.jsonl'))
    assert len(items) == 9 and {it['stratum'] for it in items} == {'self-instruct', 'evol-instruct', 'qa', 'scraped'}
    first_text = lambda it: (it['record'].get('instruction') or (it['record'].get('conversations') or it['record'].get('messages'))[0].get('value')
                             or it['record']['messages'][0]['content'])
    assert {has_cjk(first_text(items[i])) for i in range(6)} == {True, False}     # the records labelled below: zh and en
    page = chromium.new_page()
    page.goto(srv.url)
    prog = lambda n: page.wait_for_function(f"document.getElementById('progress').textContent.startsWith('{n} / 9 labelled')", timeout=10_000)
    prog(0)

    def at(i):                                                         # the page shows sample record i
        page.wait_for_function(f"document.getElementById('pos').textContent === 'record {i + 1} of 9'", timeout=10_000)
        assert first_text(items[i]) in page.inner_text('#record')

    # label five records by keyboard: pass, fail (reason 2), note then fail (reason 1), pass, fail (reason 4, off-topic)
    at(0); page.keyboard.press('p'); prog(1)
    at(1); page.keyboard.press('f'); page.keyboard.press('2'); prog(2)
    at(2); page.keyboard.press('n'); page.keyboard.type('第二步错了 wrong step'); page.keyboard.press('Enter')
    page.keyboard.press('f'); page.keyboard.press('1'); prog(3)
    at(3); page.keyboard.press('p'); prog(4)
    at(4); page.keyboard.press('f'); page.keyboard.press('4'); prog(5)
    at(5)
    page.keyboard.press('k'); at(4); page.keyboard.press('ArrowLeft'); at(3); page.keyboard.press('j'); at(4)
    page.keyboard.press('ArrowLeft'); page.keyboard.press('ArrowLeft'); page.keyboard.press('ArrowLeft'); at(1)
    page.keyboard.press('p')                                           # change record 1's fail into a pass
    page.wait_for_function("document.getElementById('status').textContent.startsWith('saved: pass')", timeout=10_000)
    at(2)
    assert page.inner_text('#verdict') == 'FAIL: factual error' and page.input_value('#note') == '第二步错了 wrong step'
    page.keyboard.press('f'); page.keyboard.press('Escape'); page.keyboard.press('1')  # Esc cancels: 1 does nothing
    at(2)
    page.keyboard.press('n'); page.keyboard.type(' (checked)'); page.keyboard.press('Enter')   # a note on a labelled record
    page.wait_for_function("document.getElementById('status').textContent.startsWith('saved: fail')", timeout=10_000)
    at(2)
    # every record is readable (zh and en), HTML in a record is shown, never run
    evil = next(i for i, it in enumerate(items) if it['stratum'] == 'scraped')
    for _ in range(abs(evil - 2)): page.keyboard.press('j' if evil > 2 else 'k')
    at(evil)
    assert '<script>window.pwned = 1</script>' in page.inner_text('#record')
    assert page.evaluate('window.pwned') is None and page.locator('#record script, #record img').count() == 0
    made = 7                                                           # labels the page has had saved

    err = srv.kill()                                                   # SIGKILL mid-review
    assert 'Traceback' not in err, err
    labs = labels(tmp_path / 'gen.review-labels.jsonl')
    assert len(labs) == made                                           # every label made is on disk
    assert [(l['key'], l['verdict'], l['reason']) for l in labs] == [
        (items[0]['key'], 'pass', None), (items[1]['key'], 'fail', 'unsafe'), (items[2]['key'], 'fail', 'factual error'),
        (items[3]['key'], 'pass', None), (items[4]['key'], 'fail', 'off-topic'), (items[1]['key'], 'pass', None),
        (items[2]['key'], 'fail', 'factual error')]
    assert labs[2]['note'] == '第二步错了 wrong step' and labs[6]['note'] == '第二步错了 wrong step (checked)'
    assert {l['reviewer'] for l in labs} == {'tester'}
    assert all(l['stratum'] == items[l['index']]['stratum'] and l['line'] == items[l['index']]['line'] for l in labs)

    page.keyboard.press('p')                                           # the server is gone: the page says so
    page.wait_for_function("document.getElementById('status').textContent.startsWith('not saved')", timeout=10_000)

    srv = Server(*args)                                                # reopen: same sample, resumes at record 6
    assert '5 of 9 labelled; resuming at record 6' in srv.out, srv.out
    page.goto(srv.url); prog(5); at(5)
    for _ in range(4): page.keyboard.press('p')                        # fast keys are queued, none overtakes a save
    prog(9)
    assert page.is_visible('#done') and 'review --summary' in page.inner_text('#done')
    page.close()
    err = srv.interrupt()
    assert err == '' and len(labels(tmp_path / 'gen.review-labels.jsonl')) == made + 4

    r = cli('review', '--summary', tmp_path / 'gen.review-labels.jsonl')
    assert r.returncode == 0, r.stderr
    assert 'defect rate 22.2% (2 of 9 failed)' in r.stdout, r.stdout              # records 2 and 4; 1 was changed to pass
    assert re.search(r'factual error\s+1', r.stdout) and re.search(r'off-topic\s+1', r.stdout)
    assert '第二步错了 wrong step (checked)' in r.stdout


def test_chinese_is_drawn_with_glyphs_not_boxes(tmp_path, chromium):
    fonts = subprocess.run(['fc-list', ':lang=zh'], capture_output=True, text=True).stdout if shutil.which('fc-list') else ''
    if not fonts.strip():
        if REQUIRE: pytest.fail('DATAALCHEMY_REQUIRE_BROWSER=1 but no font with Chinese glyphs (apt-get install fonts-wqy-microhei)')
        pytest.skip('no font with Chinese glyphs installed (apt-get install fonts-wqy-microhei)')
    items = draw_sample([{'instruction': '解释过拟合', 'output': 'Overfitting: the model learns the noise.'}], 1)
    with ReviewServer(items, tmp_path / 'l.jsonl').start() as srv:
        page = chromium.new_page()
        page.goto(srv.url)
        page.wait_for_function("document.getElementById('progress').textContent.startsWith('0 / 1')", timeout=10_000)
        assert '解释过拟合' in page.inner_text('#record')
        page.evaluate("""() => { const s = document.createElement('span'); s.id = 'probe';
                                  document.querySelector('#record .text').append(document.createElement('br'), s); }""")
        shot = {}
        for name, text in (('zh', '解释过拟合'), ('box1', '\u0378\u0379\u0380\u0381\u0382'), ('box2', '\u0383\u038b\u038d\u03a2\u0530')):
            page.evaluate("t => { document.getElementById('probe').textContent = t; }", text)   # the same place each time
            shot[name] = page.locator('#probe').screenshot()
        page.close()
    assert shot['box1'] == shot['box2']                 # characters no font has are all drawn as the same boxes
    assert shot['zh'] != shot['box1']                   # the page's fonts draw Chinese


def test_ctrl_c_stops_the_server_even_when_the_parent_ignored_it(tmp_path):
    "A server started by a parent that ignores SIGINT (nohup-like runners) and blocks it still stops on Ctrl-C, and says so."
    write_records(data_records(), tmp_path / 'd.jsonl')
    def ignore():
        signal.signal(signal.SIGINT, signal.SIG_IGN); signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    srv = Server(tmp_path / 'd.jsonl', '--n', '3', '--no-browser', preexec_fn=ignore)
    err = srv.interrupt()
    assert srv.p.returncode == 0 and 'stopped: 0 of 3 labelled' in srv.out and 'Traceback' not in err, (srv.out, err)
