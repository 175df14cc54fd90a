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


# ---- Gopher as published: a faithful reference, transcribed from Rae et al. 2021 appendix A (A.1.1 and table A1) ----
# Slow and simple on purpose: positions are recomputed with str.index, covered characters are collected in a set, the
# thresholds are the paper's numbers written out again. The project's own definitions (stated in the notebook) are
# shared: a word is a `tokenize` token (each CJK character one word); the alphabetic rule looks at whitespace words of
# non-CJK text; bullets are - * • ● · ‣ ◦ ▪.
import re
from collections import Counter
from dataalchemy.core import tokenize, is_cjk

REF_BULLETS = set('-*•●·‣◦▪')
REF_STOPWORDS = {'the', 'be', 'to', 'of', 'and', 'that', 'have', 'with'}


def ref_gopher_quality(text: str) -> bool:
    "Keep `text`? The MassiveText quality filter of Gopher, rule by rule."
    words = tokenize(text)
    n = len(words)
    if not 50 <= n <= 100_000: return False                             # between 50 and 100,000 words
    cjk = sum(len(w) == 1 and is_cjk(w) for w in words) / n > 0.5
    if not cjk and not 3 <= sum(len(w) for w in words) / n <= 10: return False   # mean word length 3..10
    if text.count('#') / n > 0.1: return False                          # symbol-to-word ratio > 0.1 for the hash ...
    if len(re.findall(r'\.\.\.|…', text)) / n > 0.1: return False       # ... or for the ellipsis
    lines = text.splitlines()
    if sum(l.lstrip()[:1] in REF_BULLETS for l in lines) / len(lines) > 0.9: return False   # > 90% bullet lines
    if sum(l.rstrip().endswith(('...', '…')) for l in lines) / len(lines) > 0.3: return False  # > 30% end in ellipsis
    ws = words if cjk else text.split()
    if sum(any(c.isalpha() for c in w) for w in ws) / len(ws) < 0.8: return False  # 80% of words have a letter
    if not cjk and len(REF_STOPWORDS & {w.lower() for w in words}) < 2: return False   # two stop words
    return True


def ref_gopher_repetition(text: str) -> bool:
    "Keep `text`? Gopher's repetition removal with table A1's thresholds, fractions over the text's characters."
    total = len(text)
    if not text.strip(): return True
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    paras = [p.strip() for p in re.split(r'\n\s*\n', text) if p.strip()]
    for items in (lines, paras):
        seen, dups = set(), []
        for x in items:
            if x in seen: dups.append(x)
            seen.add(x)
        if len(dups) / len(items) > 0.30: return False                   # duplicate line / paragraph fraction
        if sum(len(x) for x in dups) / total > 0.20: return False        # ... and their character fraction
    words = tokenize(text)
    spans, pos = [], 0
    for w in words:
        a = text.index(w, pos); spans.append((a, a + len(w))); pos = a + len(w)
    low = [w.lower() for w in words]

    def covered(starts, n):                                              # overlapping characters counted once
        chars = set()
        for i in starts: chars.update(range(spans[i][0], spans[i + n - 1][1]))
        return len(chars)

    for n, th in ((2, 0.20), (3, 0.18), (4, 0.16)):                      # most frequent n-gram
        grams = [tuple(low[i:i + n]) for i in range(len(low) - n + 1)]
        if not grams: continue
        counts = Counter(grams)
        top = max(counts.values())
        if top < 2: continue
        best = max(covered([i for i, g in enumerate(grams) if g == t], n) for t in counts if counts[t] == top)
        if best / total > th: return False
    for n, th in ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)):   # all duplicate n-grams
        grams = [tuple(low[i:i + n]) for i in range(len(low) - n + 1)]
        seen, repeats = set(), []
        for i, g in enumerate(grams):
            if g in seen: repeats.append(i)
            seen.add(g)
        if covered(repeats, n) / total > th: return False
    return True


def ref_gopher(text: str) -> bool: return ref_gopher_quality(text) and ref_gopher_repetition(text)


PROSE = ("The river town grew slowly over the nineteenth century. Farmers brought grain to the mill, and merchants "
         "shipped flour down the valley to markets that paid in silver. Each spring the water rose with melting snow "
         "from the mountains, and the families that lived near the bank learned to keep their stores on high shelves. "
         "Children walked to a school of one room, where a teacher with patience taught reading, arithmetic and some "
         "history of the wider world beyond the hills.")
PROSE2 = ("Later a railway reached the valley and changed the pattern of trade. Goods that once took a week by barge "
          "now arrived in a day, and new shops opened along the main street to sell tools, cloth and newspapers that "
          "carried stories from distant cities to curious readers in every kitchen.")
ZH = ("机器学习是人工智能的一个分支，研究如何让计算机从数据中自动学习规律，并利用学到的规律对新数据做出预测或决策。"
      "常见的方法包括监督学习、无监督学习和强化学习，它们在图像识别、语音识别和自然语言处理等领域都有广泛应用。")
ITEMS = ["apples ripen late in the cool northern orchards", "pears keep well when stored in a dry cellar",
         "plums make a sharp jam that children like", "grapes need long summers and stony soil",
         "lemons arrive by ship from warmer southern ports", "melons grow fast once the nights turn warm",
         "cherries bruise easily so pickers work with care", "peaches sell best at the Saturday market",
         "oranges were a rare gift at midwinter", "mangoes appear only in the city grocer's window"]
LIST = [f"- {x}" for x in ITEMS]
SHORT_LINES = [x[0].upper() + x[1:] for x in ITEMS]
SYMBOLS = ' '.join(PROSE.split()[:30]) + ' # # # # ... ... ... … ' + ' '.join(PROSE.split()[30:56]) + '.'
RIVER = PROSE + ' ' + ', '.join(f'the river {v}' for v in
                                'flows bends shines floods narrows widens freezes rises falls sings turns sleeps wakes glows roars'.split()) + '.'
PARAS = ['\n'.join(SHORT_LINES[:5]), 'See the notes below.', '\n'.join(SHORT_LINES[5:]), 'See the notes below.',
         'See the notes below.']
GOPHER_FIXTURES = [  # (name, text, the library's reason to drop, None to keep): the paper's rules, one planted case each
    ('prose', PROSE, None),
    ('prose_two_paras', PROSE + '\n\n' + PROSE2, None),
    ('too_short', 'The mill and the river were the heart of the town.', 'gopher_too_short'),
    ('too_long', ' '.join(f'w{i % 997}x' for i in range(100_001)), 'gopher_too_long'),
    ('mean_word_short', ' '.join(['a to of be an'] * 12), 'gopher_mean_word_length'),
    ('mean_word_long', ' '.join(['internationalization and characterization of the telecommunications'] * 12), 'gopher_mean_word_length'),
    ('hash_ratio', PROSE + ' ' + ' '.join(['#'] * 10), 'gopher_hash_ratio'),
    ('ellipsis_ratio', PROSE + ' ' + '... ' * 10 + 'The end.', 'gopher_ellipsis_ratio'),
    ('hash_and_ellipsis_each_below', SYMBOLS, None),                # 4 of 56 words each (<= 0.1); together 8/56 > 0.1
    ('bullets', '\n'.join(LIST), 'gopher_bullet_lines'),
    ('bullets_between_blank_lines', '\n\n'.join(LIST), None),        # 10 of 19 lines are bullets
    ('ellipsis_lines', '\n'.join(l + ('...' if i % 2 else '.') for i, l in enumerate(SHORT_LINES)), 'gopher_ellipsis_lines'),
    ('ellipsis_lines_between_blank_lines', '\n\n\n'.join(l + ('...' if i % 2 else '.') for i, l in enumerate(SHORT_LINES)), None),
    ('alpha_words', PROSE + ' ' + ' '.join(str(1000 + i) + ',' for i in range(40)), 'gopher_alpha_words'),
    ('no_stopwords', ' '.join(f'alpha{i} beta gamma delta' for i in range(15)), 'gopher_stopwords'),
    ('dup_lines', '\n'.join(SHORT_LINES[:6] + SHORT_LINES[:4]) + '\n' + PROSE, 'dup_line_frac'),
    ('dup_line_chars', '\n'.join([PROSE, PROSE2, PROSE2, 'A closing line.']), 'dup_line_char_frac'),
    ('dup_paras', '\n\n'.join(PARAS), 'dup_para_frac'),          # 2 of 5 paragraphs repeat, 2 of 13 lines
    ('top_2gram', PROSE + ' ' + ' '.join(['the river'] * 14), 'top_2gram_frac'),
    ('top_2gram_over_text_chars', RIVER, None),                     # 0.196 of the text's characters, 0.218 of the words'
    ('dup_10gram', PROSE + ' ' + PROSE2 + ' ' + PROSE2[:92] + '.', 'dup_10gram_frac'),   # 0.10 < repeated chars <= 0.11
    ('run_on_clause', PROSE + ' ' + 'and I like to eat apples and I like to eat pears ' * 4, 'dup_5gram_frac'),
    ('zh_prose', ZH, None),
    ('zh_too_short', ZH[:30], 'gopher_too_short'),
    ('zh_repeated_sentence', ZH + '我们要好好学习天天向上，' * 6, 'dup_5gram_frac'),
    ('zh_ellipsis_lines', '\n'.join(ZH[i:i + 16] + '…' for i in range(0, 96, 16)), 'gopher_ellipsis_lines'),
    ('zh_bullets', '\n'.join('• ' + ZH[i:i + 16] for i in range(0, 96, 16)), 'gopher_bullet_lines'),
    ('zh_en_mixed', ZH + ' ' + PROSE2, None),
]


def lib_gopher(text: str) -> bool:
    return F.FilterPipeline(F.preset_filters('gopher')).check({'text': text})[0]


@pytest.mark.parametrize('name,text,reason', GOPHER_FIXTURES, ids=[f[0] for f in GOPHER_FIXTURES])
def test_gopher_matches_the_papers_rules(name, text, reason):
    "Planted cases, one per rule (English and Chinese): the reference and the library both decide as the paper says."
    assert ref_gopher(text) == (reason is None), name
    assert F.FilterPipeline(F.preset_filters('gopher')).check({'output': text}) == (reason is None, reason), name


def test_gopher_fractions_are_over_the_texts_characters():
    "A top 2-gram that covers more than 20% of the word characters but not 20% of the text's characters is kept."
    toks = tokenize(RIVER, lower=True)
    assert F.top_ngram_frac(toks, 2) > 0.2                              # over token characters: would drop
    spans = [m.span() for m in F.TOKEN_RE.finditer(RIVER)]
    assert F.top_ngram_frac(toks, 2, spans, len(RIVER)) < 0.2
    assert lib_gopher(RIVER) and ref_gopher(RIVER)                     # over the text's characters: kept
    assert F.GopherRepetition()({'output': RIVER}) == (True, None)


def test_gopher_reference_catches_the_old_rules():
    "The fixtures catch each bug of issue #24: a summed symbol ratio, blank lines left out, fractions over tokens."
    fx = {n: t for n, t, _ in GOPHER_FIXTURES}
    t = fx['hash_and_ellipsis_each_below']
    assert (t.count('#') + t.count('...') + t.count('…')) / len(tokenize(t)) > 0.1    # the summed ratio would drop it
    t = fx['bullets_between_blank_lines']
    nonblank = [l for l in t.splitlines() if l.strip()]
    assert sum(l.startswith('-') for l in nonblank) / len(nonblank) > 0.9   # counting only non-blank lines would drop it
    t = fx['ellipsis_lines_between_blank_lines']
    nonblank = [l for l in t.splitlines() if l.strip()]
    assert sum(l.endswith('...') for l in nonblank) / len(nonblank) > 0.3


def test_gopher_agrees_with_reference_on_t0_sample():
    "On 2,000 real T0 records (prompt + completion) the library decides as the reference on >= 99%."
    from pathlib import Path
    corpus = Path(__file__).resolve().parents[1].parent / 'shared' / 'corpora' / 't0_train_50k.jsonl.gz'
    if not corpus.exists(): pytest.skip('../shared/corpora not available')
    texts = []
    for r in read_records(corpus):
        texts.append(r['prompt'] + '\n' + r['completion'])
        if len(texts) >= 2000: break
    agree = sum(lib_gopher(t) == ref_gopher(t) for t in texts) / len(texts)
    assert agree >= 0.99, agree


def test_gopher_judges_text_of_a_document_file(tmp_path):
    "`filter --preset gopher` on `{id, text}` judges `text`: it keeps exactly the fixtures the paper keeps."
    fx = [f for f in GOPHER_FIXTURES if f[0] != 'too_long']
    write_records([{'id': n, 'text': t} for n, t, _ in fx], tmp_path / 'docs.jsonl')
    r = CliRunner().invoke(load_commands(), ['filter', str(tmp_path / 'docs.jsonl'), str(tmp_path / 'out.jsonl'),
                                             '--preset', 'gopher', '--report', str(tmp_path / 'rep.json')])
    assert r.exit_code == 0, r.output
    assert [d['id'] for d in read_records(tmp_path / 'out.jsonl')] == [n for n, _, why in fx if why is None]
    assert json.loads((tmp_path / 'rep.json').read_text())['reasons'] == dict(Counter(why for _, _, why in fx if why))


def test_filter_field_option(tmp_path):
    "--field points every preset at another field; the reasons name it."
    write_records([{'id': 1, 'body': PROSE, 'output': 'x'}, {'id': 2, 'body': 'Too short.'}], tmp_path / 'b.jsonl')
    rep = F.run_filter(tmp_path / 'b.jsonl', tmp_path / 'o.jsonl', 'gopher', field='body')
    assert (rep['out'], rep['reasons']) == (1, {'gopher_too_short': 1})
    recs = [{'instruction': 'Summarise the history of the town.', 'summary': ''},
            {'instruction': 'Summarise the history of the town.', 'summary': 'It grew by the river.'}]
    write_records(recs, tmp_path / 's.jsonl')
    rep = F.run_filter(tmp_path / 's.jsonl', tmp_path / 'o2.jsonl', 'sft-default', field='summary')
    assert (rep['out'], rep['reasons']) == (1, {'empty_summary': 1})
    assert [f.field for f in F.preset_filters('self-instruct', field='summary')] == ['instruction', 'summary']


def test_filter_errors_when_the_judged_field_is_empty_everywhere(tmp_path):
    "A field that no record has is one `error:` line naming it, exit 2, and no output file; one filled record is enough."
    write_records([{'id': i, 'text': PROSE} for i in range(3)], tmp_path / 'docs.jsonl')
    cmd = [sys.executable, '-c', 'from dataalchemy.cli import main; main()', 'filter', str(tmp_path / 'docs.jsonl')]
    for args, field in ((['--preset', 'gopher', '--field', 'body'], 'body'), (['--preset', 'sft-default'], 'instruction')):
        r = subprocess.run(cmd + [str(tmp_path / 'out.jsonl'), *args], capture_output=True, text=True)
        err = [l for l in r.stderr.splitlines() if l.startswith('error:')]
        assert r.returncode == 2 and len(err) == 1 and 'Traceback' not in r.stderr, r.stderr
        assert 'docs.jsonl' in err[0] and f'{field}: empty or missing in every one of the 3 records' in err[0], err
        assert not (tmp_path / 'out.jsonl').exists()
    write_records([{'id': 0, 'body': ''}, {'id': 1, 'body': PROSE}], tmp_path / 'some.jsonl')
    rep = F.run_filter(tmp_path / 'some.jsonl', tmp_path / 'o.jsonl', 'gopher', field='body')
    assert (rep['in'], rep['out']) == (2, 1)
