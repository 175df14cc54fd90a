"Rule filters, the pipeline, presets, settings and the `filter` command."
import json, subprocess, sys
import pytest
from typer.testing import CliRunner
from dataalchemy.core import Stats, read_records, write_records
from dataalchemy.cli import load_commands
import dataalchemy.filters as F

GOOD = [
    {'instruction': '解释什么是机器学习', 'input': '', 'output': '机器学习是人工智能的一个分支，它让计算机从数据中学习规律。'},
    {'instruction': 'Explain what overfitting is.', 'input': '', 'output': 'Overfitting is when a model memorises noise.'},
    {'instruction': 'Count from one to five.', 'input': '', 'output': '1, 2, 3, 4, 5...'},
    {'instruction': '用表情回应', 'input': '', 'output': '😻🤪🐱'},
]
BAD = [  # (record, reason)
    ({'instruction': 'Say hello to me', 'output': ''}, 'empty_output'),
    ({'instruction': 'Say hello to me', 'output': 'TODO'}, 'placeholder_output'),
    ({'instruction': 'Hi', 'output': 'Hello there.'}, 'instruction_too_short'),
    ({'instruction': '写一首关于春天的诗', 'output': '抱歉，我无法创作诗歌。'}, 'refusal'),
    ({'instruction': 'What is your opinion?', 'output': 'As an AI language model, I have none.'}, 'ai_disclaimer'),
    ({'instruction': 'Write add in Python.', 'output': '```python\ndef add(a, b):\n    return a + b'}, 'unclosed_code_fence'),
    ({'instruction': '讲个故事给我听', 'output': '从前有座山，山里有座庙。（未完待续）'}, 'to_be_continued'),
    ({'instruction': '介绍一下长城', 'output': '长城是中国古代的军事防御工程，东起山海关，西至嘉峪关，全长'}, 'unfinished_sentence'),
    ({'instruction': 'List three colours.', 'output': 'Red\nRed\nRed\nRed'}, 'repeated_lines'),
]


def test_every_rule_reason():
    p = F.FilterPipeline(F.preset_filters('sft-default'))
    for rec, why in BAD: assert p.check(dict(rec)) == (False, why), rec
    for rec in GOOD: assert p.check(dict(rec)) == (True, None), rec


def test_gopher_repetition_zh_en():
    g = F.GopherRepetition(min_tokens=10)
    assert not g({'output': '我们要好好学习天天向上，' * 3 + '努力。'})[0]
    assert not g({'output': 'I like to eat apples and ' * 4 + 'pears.'})[0]
    assert g({'output': '机器学习是人工智能的一个分支，研究如何让计算机从数据中自动学习规律，并对新数据做出预测。'}) == (True, None)
    # character n-grams for Chinese: 5 repeated characters out of 10
    assert F.dup_ngram_frac(list('学习机器人学习机器人'), 5) == pytest.approx(0.5)


def test_gopher_preset_published_thresholds():
    g = F.preset_filters('gopher')[1]
    assert g.top_ngram == {2: 0.20, 3: 0.18, 4: 0.16}
    assert g.dup_ngram == {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    assert (g.dup_line_frac, g.dup_para_frac, g.dup_line_char_frac, g.dup_para_char_frac) == (0.3, 0.3, 0.2, 0.2)


def test_self_instruct_and_alpaca_presets():
    si = F.FilterPipeline(F.preset_filters('self-instruct'))
    assert si.check({'instruction': 'Rewrite the sentence below.', 'input': 'abc', 'output': 'abc'}) == (False, 'output_equals_input')
    assert si.check({'instruction': 'Draw a map of the town.', 'output': 'x'}) == (False, 'instruction_blacklisted')
    assert si.check({'instruction': 'Give the list of items below.', 'input': 'x', 'output': 'Items:'}) == (False, 'ends_with_colon')
    al = F.FilterPipeline(F.preset_filters('alpaca'))
    assert al.check({'instruction': 'Describe this video clip briefly.', 'output': 'x'}) == (False, 'instruction_blacklisted')
    assert si.check({'instruction': 'Describe this video clip briefly.', 'input': '', 'output': 'x'}) == (True, None)


def test_settings_env_override(monkeypatch):
    monkeypatch.setenv('DATAALCHEMY_FILTERS_MIN_OUTPUT_LENGTH', '50')
    p = F.FilterPipeline(F.preset_filters())
    assert p.check({'instruction': 'Explain what overfitting is.', 'output': 'A short answer.'}) == (False, 'output_too_short')
    monkeypatch.setenv('DATAALCHEMY_FILTERS_CHECK_LANGUAGE', 'true')
    assert any(isinstance(f, F.LanguageMismatch) for f in F.preset_filters())


def test_rejected_file_and_stats(tmp_path):
    recs = GOOD + [r for r, _ in BAD]
    st = Stats('filters', rejected=tmp_path / 'rej.jsonl')
    kept = list(F.filter_records(recs, 'sft-default', stats=st))
    st.close()
    assert len(kept) == len(GOOD)
    rej = list(read_records(tmp_path / 'rej.jsonl'))
    assert sorted(r['reason'] for r in rej) == sorted(w for _, w in BAD)
    assert all({'step', 'reason', 'filter', 'record'} <= set(r) for r in rej)
    assert st.as_dict()['in'] == len(recs)


def test_filter_cli(tmp_path):
    write_records(GOOD + [r for r, _ in BAD], tmp_path / 'in.jsonl')
    r = CliRunner().invoke(load_commands(), ['filter', str(tmp_path / 'in.jsonl'), str(tmp_path / 'out.jsonl'),
                                             '--rejected', str(tmp_path / 'rej.jsonl'), '--report', str(tmp_path / 'rep.json')])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / 'rep.json').read_text())
    assert (rep['in'], rep['out'], rep['preset']) == (len(GOOD) + len(BAD), len(GOOD), 'sft-default')
    assert rep['reasons']['refusal'] == 1
    assert len(list(read_records(tmp_path / 'out.jsonl'))) == len(GOOD)


def test_filter_cli_with_toxicity_and_pii(tmp_path):
    recs = [{'instruction': '给我你的联系方式', 'input': '', 'output': '我的手机是13812345678，邮箱li@example.com。'},
            {'instruction': '夸夸我吧，谢谢你', 'input': '', 'output': '你真是个傻逼。'},
            {'instruction': 'Greet me politely please.', 'input': '', 'output': 'Hello, nice to meet you!'}]
    write_records(recs, tmp_path / 'in.jsonl')
    r = CliRunner().invoke(load_commands(), ['filter', str(tmp_path / 'in.jsonl'), str(tmp_path / 'out.jsonl'),
                                             '--toxicity', 'offline', '--pii', 'replace', '--report', str(tmp_path / 'rep.json')])
    assert r.exit_code == 0, r.output
    out = list(read_records(tmp_path / 'out.jsonl'))
    assert [o['output'] for o in out] == ['我的手机是<PHONE>，邮箱<EMAIL>。', 'Hello, nice to meet you!']
    rep = json.loads((tmp_path / 'rep.json').read_text())
    assert rep['toxicity_backend'].startswith('offline') and rep['pii_action'] == 'replace'
    assert rep['reasons'] == {'toxic:insult': 1}
    assert rep['counts'] == {'pii:CN_MOBILE': 1, 'pii:EMAIL_ADDRESS': 1}
    assert 'toxicity_backend: offline' in r.output


def test_bad_input_names_file_and_line(tmp_path):
    (tmp_path / 'in.jsonl').write_text(json.dumps(GOOD[0], ensure_ascii=False) + '\n{broken\n', encoding='utf-8')
    with pytest.raises(Exception, match=r'in\.jsonl:2'):
        F.run_filter(tmp_path / 'in.jsonl', tmp_path / 'out.jsonl')
    rep = F.run_filter(tmp_path / 'in.jsonl', tmp_path / 'out.jsonl', strict=False, errors=tmp_path / 'bad.jsonl')
    assert rep['bad_lines'] == 1 and rep['out'] == 1


def test_import_is_light():
    code = ("import sys, dataalchemy.filters, dataalchemy.toxicity, dataalchemy.pii; "
            "print([m for m in ('torch', 'transformers', 'presidio_analyzer', 'spacy', 'sklearn') if m in sys.modules])")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == '[]'


def test_self_instruct_user_eval_davinci_vs_003():
    from pathlib import Path
    corpus = Path(__file__).resolve().parents[1].parent / 'shared' / 'corpora' / 'self_instruct_user_eval'
    if not corpus.exists(): pytest.skip('../shared/corpora not available')
    kept = {}
    for m in ('davinci', 'text-davinci-003'):
        recs = [{**r, 'output': r['response'].strip()} for r in read_records(corpus / f'{m}_predictions.jsonl.gz')]
        kept[m] = sum(1 for _ in F.filter_records(recs, 'sft-default'))
    assert kept['davinci'] < 30 and kept['text-davinci-003'] > 200, kept


def test_lenient_without_errors_file_still_writes_bad_lines(tmp_path):
    "filter --lenient with no --errors: the bad line is counted and written beside the output, and the summary names it."
    good = json.dumps({'instruction': 'Explain overfitting in two sentences, please.', 'output': 'Overfitting is when a model memorises noise in its training data instead of the pattern.'})
    (tmp_path / 'in.jsonl').write_text(good + '\n{broken\n', encoding='utf-8')
    r = CliRunner().invoke(load_commands(), ['filter', str(tmp_path / 'in.jsonl'), str(tmp_path / 'out.jsonl'), '--lenient'])
    assert r.exit_code == 0, r.output
    assert 'bad input lines skipped: 1' in r.output and str(tmp_path / 'out.errors.jsonl') in r.output
    assert [e['line'] for e in read_records(tmp_path / 'out.errors.jsonl')] == [2]
