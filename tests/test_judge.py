"""LLM-as-judge through the real command and a real local OpenAI-compatible server: planted bad answers score low and are
dropped by --min-score, a malformed verdict is counted and written to the rejects file, a second run is answered from
the cache, Chinese records get the Chinese prompt, and without an endpoint the heuristic judge says so."""
import json, os, subprocess, sys

import pytest

from dataalchemy.core import read_records, write_records, Stats
from dataalchemy.llm import Engine
from dataalchemy.testing import FakeOpenAI, task_responder
import dataalchemy.judge as judge

GOOD = [{'id': 'en-good', 'instruction': 'Explain the difference between training loss and validation loss.', 'input': '',
         'output': 'Training loss is measured on the examples the model learns from; validation loss is measured on held-out '
                   'examples it never sees during training. If training loss keeps falling while validation loss rises, the '
                   'model is starting to overfit.'},
        {'id': 'zh-good', 'instruction': '解释什么是机器学习中的过拟合。', 'input': '',
         'output': '过拟合是指模型在训练数据上表现很好，却在没见过的新数据上表现明显变差。原因通常是模型太复杂或数据太少，'
                   '模型把训练集里的噪声也当成了规律记住了。'},
        {'id': 'zh-calc', 'instruction': '计算 12 × 15 等于多少？', 'input': '', 'output': '12 × 15 = 180。'}]
BAD = [{'id': 'wrong', 'instruction': 'What is 17 * 23?', 'input': '', 'output': '17 * 23 = 381.'},
       {'id': 'copy', 'instruction': '什么是梯度下降？', 'input': '', 'output': '什么是梯度下降？'},
       {'id': 'refusal', 'instruction': 'How do I reverse a list in Python?', 'input': '', 'output': "I'm sorry, but I can't help with that."}]


def run(*a, cwd, base_url=None):
    env = {k: v for k, v in os.environ.items() if k not in ('OPENAI_API_KEY', 'DATAALCHEMY_BASE_URL', 'OPENAI_BASE_URL')}
    if base_url: env.update(OPENAI_API_KEY='k', DATAALCHEMY_BASE_URL=base_url)
    return subprocess.run([sys.executable, '-c', 'from dataalchemy.cli import main; main()', 'judge', *map(str, a)],
                          capture_output=True, text=True, cwd=cwd, env=env)


@pytest.fixture
def data(tmp_path):
    write_records(GOOD + BAD, tmp_path / 'in.jsonl')
    return tmp_path


def test_planted_bad_answers_score_low_and_are_dropped(data):
    with FakeOpenAI(responder=task_responder) as srv:
        r = run('in.jsonl', 'out.jsonl', '--min-score', '4.5', '--plot', 'scores.png', '--report', 'r.json', cwd=data, base_url=srv.url)
        assert r.returncode == 0, r.stderr
        assert srv.n_requests == len(GOOD + BAD)
    assert r.stdout.startswith('LLM judge openai:') and '6 in, 3 kept, 3 below 4.5, 0 unscored' in r.stdout
    assert "rejects in out.rejected.jsonl" in r.stdout
    kept = list(read_records(data / 'out.jsonl'))
    assert [x['id'] for x in kept] == ['en-good', 'zh-good', 'zh-calc']
    for x in kept:
        j = x['meta']['judge']
        assert j['method'] == 'llm' and j['score'] >= 4.5 and set(j['scores']) == {'helpfulness', 'accuracy', 'relevance', 'detail'}
        assert 1 <= j['complexity'] <= 6 and j['reason'] and j['preset'] == 'rubric'
    rej = {x['record']['id']: x for x in read_records(data / 'out.rejected.jsonl')}
    assert set(rej) == {'wrong', 'copy', 'refusal'} and {x['reason'] for x in rej.values()} == {'below min score'}
    judged = {k: x['record']['meta']['judge'] for k, x in rej.items()}
    assert all(j['score'] < 3 for j in judged.values()), judged
    assert judged['wrong']['scores']['accuracy'] == 0 and 'arithmetic' in judged['wrong']['reason']
    assert judged['copy']['scores']['helpfulness'] == 0 and 'copies the question' in judged['copy']['reason']
    assert 'refusal' in judged['refusal']['reason']
    assert (data / 'scores.png').stat().st_size > 1000
    rep = json.loads((data / 'r.json').read_text())
    assert rep['preset_source'].startswith('AlpaGasus 0-5 scale')
    assert rep['in'] == 6 and rep['out'] == 3 and rep['scored'] == sum(rep['histogram'].values()) == 6 and rep['method'] == 'llm'


def prose_for_planted(messages, params):
    if 'PLANTED' in json.dumps(messages, ensure_ascii=False): return 'I think this answer is fine.'
    if 'OUT OF RANGE' in json.dumps(messages, ensure_ascii=False): return '{"accuracy": 9, "reason": "excellent"}'
    return task_responder(messages, params)


def test_malformed_verdicts_are_counted_and_written_to_rejects(data):
    write_records(GOOD + [{'id': 'p', 'instruction': 'PLANTED: say hi', 'output': 'hi'},
                          {'id': 'o', 'instruction': 'OUT OF RANGE: say hi', 'output': 'hi'}], data / 'in.jsonl')
    with FakeOpenAI(responder=prose_for_planted) as srv:
        r = run('in.jsonl', 'out.jsonl', '--preset', 'alpagasus', '--rejected', 'bad.jsonl', cwd=data, base_url=srv.url)
        assert r.returncode == 0, r.stderr
        assert srv.n_requests == 5 + 1                                   # one repair request for the prose reply
    assert '5 in, 3 kept, no minimum score, 2 unscored; rejects in bad.jsonl' in r.stdout
    assert [x['id'] for x in read_records(data / 'out.jsonl')] == ['en-good', 'zh-good', 'zh-calc']
    rej = {x['record']['id']: x for x in read_records(data / 'bad.jsonl')}
    assert rej['p']['reason'] == 'unscored: bad judge reply' and rej['p']['reply'] == 'I think this answer is fine.'
    assert rej['o']['reason'] == 'unscored: bad judge reply' and rej['o']['problem'] == 'accuracy = 9 is outside 0-5'


def test_second_run_is_answered_from_the_cache(data):
    with FakeOpenAI(responder=task_responder) as srv:
        r1 = run('in.jsonl', 'a.jsonl', cwd=data, base_url=srv.url)
        n = srv.n_requests
        r2 = run('in.jsonl', 'b.jsonl', cwd=data, base_url=srv.url)
        assert r1.returncode == r2.returncode == 0, r2.stderr
        assert n == 6 and srv.n_requests == n                              # no new request
    assert (data / 'a.jsonl').read_text() == (data / 'b.jsonl').read_text()


def test_chinese_records_get_the_chinese_prompt(data):
    with FakeOpenAI(responder=task_responder) as srv:
        for preset in ('rubric', 'alpagasus'):
            assert run('in.jsonl', f'{preset}.jsonl', '--preset', preset, cwd=data, base_url=srv.url).returncode == 0
        bodies = [x['body']['messages'] for x in srv.requests]
    zh = [m for m in bodies if '梯度下降' in m[0]['content'] + m[1]['content']]
    en = [m for m in bodies if '17 * 23' in m[0]['content'] + m[1]['content']]
    assert '[指令]\n什么是梯度下降？' in zh[0][1]['content'] and '只输出一个 JSON 对象' in zh[0][1]['content']
    assert '指令：什么是梯度下降？' in zh[1][0]['content'] and '准确性' in zh[1][1]['content']
    assert '[Instruction]\nWhat is 17 * 23?' in en[0][1]['content']
    assert 'Instruction: What is 17 * 23?' in en[1][0]['content'] and 'accuracy of the response' in en[1][1]['content']
    langs = {x['id']: x['meta']['judge']['lang'] for x in read_records(data / 'rubric.jsonl')}
    assert langs == {'en-good': 'en', 'zh-good': 'zh', 'zh-calc': 'zh', 'wrong': 'en', 'copy': 'zh', 'refusal': 'en'}


def test_offline_the_heuristic_judges_and_says_so(data):
    r = run('in.jsonl', 'out.jsonl', '--min-score', '4.5', cwd=data)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith('HEURISTIC judge (offline rules, not a model): 6 in, 3 kept, 3 below 4.5')
    out = list(read_records(data / 'out.jsonl'))
    assert [x['id'] for x in out] == ['en-good', 'zh-good', 'zh-calc']
    assert all(x['meta']['judge']['method'] == 'heuristic' and x['meta']['judge']['reason'].startswith('heuristic:') for x in out)


def test_user_errors_and_a_dead_endpoint(data):
    r = run('in.jsonl', 'out.jsonl', '--judge', 'llm', cwd=data)
    assert r.returncode == 2 and r.stderr.startswith('error: --judge llm needs a model'), r.stderr
    r = run('in.jsonl', 'out.jsonl', '--min-score', '6', cwd=data)
    assert r.returncode == 2 and 'between 0 and 5' in r.stderr
    r = run('missing.jsonl', 'out.jsonl', cwd=data)
    assert r.returncode == 2 and r.stderr.startswith('error:')
    with FakeOpenAI(responder=task_responder, api_key='right') as srv:               # every request is refused (401)
        r = run('in.jsonl', 'out.jsonl', cwd=data, base_url=srv.url)
    assert r.returncode == 1 and 'error: the judge stopped' in r.stderr
    assert '6 in, 0 kept, no minimum score, 6 unscored; rejects in out.rejected.jsonl' in r.stdout
    assert {x['reason'] for x in read_records(data / 'out.rejected.jsonl')} == {'unscored: judge request failed'}


def test_judge_records_is_a_lazy_batched_step():
    with FakeOpenAI(responder=task_responder) as srv:
        eng = Engine(base_url=srv.url, api_key='k', use_cache=False, progress=False)
        st = Stats('judge')
        gen = judge.judge_records(iter(GOOD + BAD), eng, stats=st, min_score=4.5, batch_size=2)
        first = next(gen)
        assert first['id'] == 'en-good' and srv.n_requests == 2               # one batch sent, not the whole stream
        rest = list(gen)
        assert srv.n_requests == 6 and [x['id'] for x in rest] == ['zh-good', 'zh-calc']
        assert st.n_in == 6 and st.n_out == 3 and st.reasons == {'below min score': 3}
    recs = [{'messages': [{'role': 'user', 'content': '什么是梯度下降？'}, {'role': 'assistant', 'content': '什么是梯度下降？'}]},
            {'text': 'no instruction here'}]
    st = Stats('judge')
    assert list(judge.judge_records(recs, stats=st, judge='heuristic', min_score=1)) == []    # a copied answer, in messages format
    assert st.reasons == {'below min score': 1, 'unscored: no instruction and answer': 1} and st.counts['unscored'] == 1


def test_deita_scorers_run_through_the_engine_loglik(data):
    with FakeOpenAI(responder=task_responder) as srv:
        r = run('in.jsonl', 'out.jsonl', '--deita-complexity', 'deita-complexity-scorer', '--deita-quality', 'deita-quality-scorer',
                cwd=data, base_url=srv.url)
        assert r.returncode == 0, r.stderr
        comp = [x for x in srv.requests if x['path'] == 'completions']
    assert {x['model'] for x in comp} == {'deita-complexity-scorer', 'deita-quality-scorer'}
    prompts = [p for x in comp for p in (x['body']['prompt'] if isinstance(x['body']['prompt'], list) else [x['body']['prompt']])]
    assert len(prompts) == 6 * 6 * 2 and all(x['body']['echo'] and x['body']['logprobs'] for x in comp)
    assert any(p.startswith("You are a helpful assistant. Please identify the complexity score of the following user query. \n"
                            "##Query: 什么是梯度下降？  \n##Complexity: ") for p in prompts)
    for x in read_records(data / 'out.jsonl'):
        d = x['meta']['judge']['deita']
        assert 1 <= d['complexity'] <= 6 and 1 <= d['quality'] <= 6
        assert d['models'] == {'complexity': 'deita-complexity-scorer', 'quality': 'deita-quality-scorer'}
    r = run('in.jsonl', 'o2.jsonl', '--deita-complexity', 'deita-complexity-scorer', cwd=data)    # no endpoint: said, exit 2
    assert r.returncode == 2 and r.stderr.startswith('error: loglik() needs an OpenAI-compatible endpoint'), r.stderr


def test_a_run_that_stops_resumes_from_the_cache(data):
    with FakeOpenAI(responder=task_responder) as srv:
        srv.fail(None, None, None, '401')                                 # the 4th request is refused: the run stops
        r = run('in.jsonl', 'out.jsonl', '--batch-size', '3', '--concurrency', '1', cwd=data, base_url=srv.url)
        assert r.returncode == 1 and 'error: the judge stopped' in r.stderr
        assert '6 in, 3 kept, no minimum score, 3 unscored' in r.stdout and srv.n_requests == 4    # the rest was not sent
        assert [x['reason'] for x in read_records(data / 'out.rejected.jsonl')] == ['unscored: judge request failed'] * 3
        r = run('in.jsonl', 'out2.jsonl', cwd=data, base_url=srv.url)
        assert r.returncode == 0 and '6 in, 6 kept' in r.stdout
        assert srv.n_requests == 4 + 3                                    # only the three the first run could not judge


def test_the_standalone_test_server_answers_judge_prompts(data):
    from dataalchemy.testing import FakeOpenAIProcess                    # `python -m dataalchemy.testing`, as a workshop runs it
    with FakeOpenAIProcess() as srv:
        r = run('in.jsonl', 'out.jsonl', '--min-score', '4.5', '--preset', 'alpagasus', cwd=data, base_url=srv.url)
        assert r.returncode == 0, r.stderr
        assert srv.stats()['n_requests'] == 6
    assert '6 in, 3 kept, 3 below 4.5, 0 unscored' in r.stdout
    assert {x['meta']['judge']['preset'] for x in read_records(data / 'out.jsonl')} == {'alpagasus'}
