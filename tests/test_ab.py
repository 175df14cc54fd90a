"The A/B command on a planted difference: clean answers beat shuffled ones on held-out loss; the judge goes through the real test server."
import json, re, subprocess, sys

import pytest

from dataalchemy.core import read_records, write_records
from dataalchemy import ab
from dataalchemy.testing import FakeOpenAI

pytest.importorskip('trl')


def run(*a, timeout=300, cwd=None):
    return subprocess.run([sys.executable, '-c', 'from dataalchemy.cli import main; main()', *map(str, a)],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


def planted(tmp_path):
    A, B, EV = ab.planted_ab(n_eval=6, seed=0)
    for name, recs in (('clean.jsonl', A), ('shuffled.jsonl', B), ('eval.jsonl', EV)): write_records(recs, tmp_path / name)
    return tmp_path / 'clean.jsonl', tmp_path / 'shuffled.jsonl', tmp_path / 'eval.jsonl'


def reference_judge(messages, params):
    "A fair judge: the answer sharing more leading characters with the reference wins (both prompt languages)."
    u = messages[-1]['content']
    part = lambda en, zh: (re.search(rf'\[The Start of {en}\]\n(.*?)\n\[The End of {en}\]', u, re.S)
                           or re.search(rf'\[{zh}开始\]\n(.*?)\n\[{zh}结束\]', u, re.S)).group(1)
    ref = part('Reference Answer', '参考答案')
    a, b = part("Assistant A's Answer", '助手 A 的回答'), part("Assistant B's Answer", '助手 B 的回答')
    score = lambda x: sum(1 for i, ch in enumerate(x[:len(ref)]) if ref[i] == ch)
    return 'Compared with the reference: ' + ('[[A]]' if score(a) > score(b) else '[[B]]' if score(b) > score(a) else '[[C]]')


def test_clean_data_beats_shuffled_answers_on_held_out_loss(tmp_path):
    a, b, ev = planted(tmp_path)
    out = tmp_path / 'run'
    with FakeOpenAI(responder=reference_judge) as srv:
        r = run('ab', a, b, '--eval', ev, '--steps', 20, '-o', out, '--plot', tmp_path / 'ab.png',
                '--base-url', srv.url, '--judge-model', 'ref-judge', '--max-new-tokens', 16, cwd=tmp_path)
        n_judge_calls = srv.n_requests
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / 'results.json').read_text())
    L = res['loss']
    assert L['a']['loss'] < L['b']['loss'] < L['base']['loss'], L
    p = res['paired']
    assert p['items'] == 12 and p['a_lower'] >= 10 and p['mean_diff_ci'][0] > 0, p     # the planted gap is not noise
    assert res['train']['a']['steps'] == res['train']['b']['steps'] == 20              # same budget: steps, not epochs
    assert abs(L['a']['ppl'] - 2.718281828 ** L['a']['loss']) < 1e-6 * L['a']['ppl']
    j = res['judge']
    assert n_judge_calls == 12 and j['judged'] + j['unparsed'] + j['failed'] == 12
    judged = list(read_records(out / 'judged.jsonl'))
    assert len(judged) == 12 and {x['shown_first'] for x in judged} == {'A', 'B'}     # the order was randomised
    for x in judged:                                                                 # every verdict mapped back to its side
        if x['verdict'] in ('first', 'second'):
            shown = x['shown_first'] if x['verdict'] == 'first' else ('B' if x['shown_first'] == 'A' else 'A')
            assert x['winner'] == shown
    assert 'eval loss' in r.stdout and "A's loss lower on" in r.stdout and 'can be noise' in r.stdout
    assert (tmp_path / 'ab.png').stat().st_size > 10_000


def test_lora_on_the_tiny_model_trains_and_says_what_a_real_model_needs(tmp_path):
    a, _, ev = planted(tmp_path)
    assert 'needs a GPU' in ab.device_note(ab.ABConfig(model='Qwen/Qwen2.5-7B-Instruct', lora=True), cuda=False)
    cfg = ab.ABConfig(steps=2, lora=True, lora_r=4)
    assert 'LoRA (r=4' in ab.device_note(cfg)
    convs, evc = ab.load_sft(a), ab.load_sft(ev, eval_set=True)
    base = ab.prepare_base('tiny', convs + evc, tmp_path, n_positions=128)
    model, tok = ab.load_model(base)
    rows, evrows = ab.encode(convs, tok, 128), ab.encode(evc, tok, 128, last_only=True)
    before = ab.eval_loss(ab.answer_nll(model, evrows, tok.pad_token_id))['loss']
    tr = ab.train_side(rows, base, cfg, tmp_path / 'A')
    assert tr['steps'] == 2
    after = ab.eval_loss(ab.answer_nll(ab.load_model(tr['model_dir'])[0], evrows, tok.pad_token_id))['loss']
    assert after != before                                                           # the merged adapter changed the model
    assert not (tmp_path / 'A' / 'final' / 'adapter_config.json').exists()          # merged: a plain model any tool loads


def test_a_judge_whose_every_call_fails_is_a_failed_run(tmp_path):
    a, b, ev = planted(tmp_path)
    with FakeOpenAI(rule=lambda path, body: '401') as srv:                          # the endpoint refuses every call
        r = run('ab', a, b, '--eval', ev, '--steps', 1, '-o', tmp_path / 'run', '--base-url', srv.url, '--judge-model', 'j',
                '--max-new-tokens', 4, cwd=tmp_path)
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert r.stderr.strip().splitlines()[-1].startswith('error: judge: all 12 calls failed')
    res = json.loads((tmp_path / 'run' / 'results.json').read_text())              # the losses were kept
    assert res['judge']['judged'] == 0 and res['loss']['a']['items'] == 12


@pytest.mark.parametrize('case', ['missing', 'empty', 'no-reference', 'judge-without-endpoint', 'bad-steps', 'eval-is-b'])
def test_user_mistakes_are_one_error_line_and_exit_2(tmp_path, case):
    a, b, ev = planted(tmp_path)
    (tmp_path / 'empty.jsonl').write_text('')
    write_records([{'instruction': 'What is the capital of Peru?', 'output': 'The capital of Peru is Lima.'},
                   {'instruction': 'What is the capital of Chile?'}], tmp_path / 'noref.jsonl')
    args = {'missing': (tmp_path / 'nope.jsonl', b, '--eval', ev),
            'empty': (a, tmp_path / 'empty.jsonl', '--eval', ev),
            'no-reference': (a, b, '--eval', tmp_path / 'noref.jsonl'),
            'judge-without-endpoint': (a, b, '--eval', ev, '--judge-model', 'gpt-4o'),
            'bad-steps': (a, b, '--eval', ev, '--steps', 0),
            'eval-is-b': (a, b, '--eval', b)}[case]
    r = run('ab', *args, '-o', tmp_path / 'run', timeout=120, cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error:'), r.stderr
    want = {'missing': 'nope.jsonl', 'empty': 'empty.jsonl', 'no-reference': 'noref.jsonl:2: output: missing output',
            'judge-without-endpoint': '--base-url', 'bad-steps': 'steps must be at least 1',
            'eval-is-b': f'{b}: the eval file is also B'}[case]
    assert want in lines[0], lines[0]
    assert not (tmp_path / 'run' / 'results.json').exists()


def test_plot_names_chinese_files_without_missing_glyphs(tmp_path):
    import warnings
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from dataalchemy.core import cjk_font
    nll = {k: [(s * 5, 5) for s in v] for k, v in {'base': [7.0, 7.2, 7.1], 'a': [2.0, 2.5, 2.2], 'b': [4.0, 3.9, 4.4]}.items()}
    loss = {k: ab.eval_loss(v, n_boot=200) for k, v in nll.items()}
    res = {'files': {'a': '精炼数据.jsonl', 'b': '原始数据.jsonl'}, 'loss': loss, 'judge': None,
           'paired': ab.paired(loss['a']['per_item'], loss['b']['per_item'], n_boot=200)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        fig = ab.plot_ab(res, tmp_path / 'p.png'); FigureCanvasAgg(fig).draw()
    assert not [w for w in caught if 'missing from font' in str(w.message)]
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ('A: 精炼数据.jsonl' in labels) == (cjk_font() is not None)
    assert (tmp_path / 'p.png').stat().st_size > 5_000


def test_a_and_b_the_same_file_is_an_a_a_run(tmp_path):
    "Inputs named twice are not an output over an input: `ab x x` runs, both sides give the same numbers, and it says so."
    a, _, ev = planted(tmp_path)
    r = run('ab', a, a, '--eval', ev, '--steps', 1, '-o', tmp_path / 'run', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'overwrite' not in r.stderr and 'A and B are the same file: an A/A run' in r.stdout, r.stdout[-2000:]
    L = json.loads((tmp_path / 'run' / 'results.json').read_text())['loss']
    assert L['a']['per_item'] == L['b']['per_item'], L
    r = run('ab', a, a, '--eval', ev, '--steps', 1, '-o', tmp_path / 'run2', '--plot', a, cwd=tmp_path)   # an output over an input
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [f'error: {a} is named twice: an output would overwrite an input; '
                                                                    'choose another path'], r.stderr
    assert not (tmp_path / 'run2').exists()
