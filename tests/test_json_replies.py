"""JSON from model replies: one extractor (`llm.json_values` / `llm.extract_json`, json-repair underneath) used by the
engine's JSON mode and by `taskdata.parse_examples`, and one validator (`llm.schema_errors`, jsonschema underneath).

The replies are fixtures written for this project: what models send when asked for JSON, in Chinese and English.
Every one of them fails `json.loads`; both callers must read each the same way, refuse prose with a clear error, and
the engine must not pay for a repair request when the reply can be repaired locally (issue #20 item 8)."""
import json

import pytest

import dataalchemy.llm as L
import dataalchemy.classify as td
from dataalchemy.testing import FakeOpenAI, last_user

POS, NEG = 'Positive', 'Negative'
CASES = [  # (name, what the model sent, what it meant)
    ('trailing comma', '[{"text": "这款耳机音质太棒了", "label": "Positive"},]', [{'text': '这款耳机音质太棒了', 'label': POS}]),
    ('single quotes', "{'text': 'The battery died in a day', 'label': 'Negative'}", {'text': 'The battery died in a day', 'label': NEG}),
    ('unquoted keys', '{text: "等了四十分钟菜才上齐", label: "Negative"}', {'text': '等了四十分钟菜才上齐', 'label': NEG}),
    ('Python literals', '{"text": "还行吧", "label": "Positive", "sarcastic": False, "source": None, "checked": True}',
     {'text': '还行吧', 'label': POS, 'sarcastic': False, 'source': None, 'checked': True}),
    ('// comment', '{"text": "价格有点贵", // the review text\n "label": "Negative"}', {'text': '价格有点贵', 'label': NEG}),
    ('/* */ comment', '[/* first example */ {"text": "I love it", "label": "Positive"}]', [{'text': 'I love it', 'label': POS}]),
    ('typographic double quotes', '{“text”: “服务很好”, “label”: “Positive”}', {'text': '服务很好', 'label': POS}),
    ('typographic single quotes', "{‘text’: ‘Great screen’, ‘label’: ‘Positive’}", {'text': 'Great screen', 'label': POS}),
    ('Chinese quotes inside a value', "{'text': '他说“你好”，然后走了', 'label': 'Positive'}", {'text': '他说“你好”，然后走了', 'label': POS}),
    ('fence, prose and trailing comma', '好的，结果如下：\n```json\n[{"text": "物流很快", "label": "Positive"},\n'
     ' {"text": "包装破了", "label": "Negative"},]\n```\n希望有帮助！',
     [{'text': '物流很快', 'label': POS}, {'text': '包装破了', 'label': NEG}]),
    ('cut off by max_tokens', '[{"text": "Fast shipping", "label": "Positive"}, {"text": "The box was',
     [{'text': 'Fast shipping', 'label': POS}]),
    ('mixed quotes', '[{\'text\': "It\'s fine", "label": \'Positive\'}, {"text": "糟糕", "label": "Negative"}]',
     [{'text': "It's fine", 'label': POS}, {'text': '糟糕', 'label': NEG}]),
]
PROSE = ['I cannot help with that.', '对不起，我无法完成这个请求。', 'Sure, the set {a, b} is small.', '[citation needed]', '   ']


def items(v): return v if isinstance(v, list) else [v]


@pytest.mark.parametrize('name,reply,meant', CASES, ids=[c[0] for c in CASES])
def test_both_callers_read_every_malformed_reply_alike(name, reply, meant):
    with pytest.raises(ValueError): json.loads(reply)                       # the case is really malformed
    assert L.extract_json(reply) == meant
    assert td.parse_examples(reply) == items(meant)                          # the task-data reader agrees


@pytest.mark.parametrize('reply', PROSE)
def test_prose_is_refused_by_both(reply):
    with pytest.raises(ValueError, match='no JSON object or array in the reply'): L.extract_json(reply)
    with pytest.raises(ValueError, match='no JSON object'): td.parse_examples(reply)


def test_cut_off_object_is_refused_not_completed():
    for reply in ['{"summary": "短", "qa_pairs": [{"question": "什么是', '[{"question": "What is ML?", "answer": ']:
        with pytest.raises(ValueError, match='cut off'): L.extract_json(reply)
        with pytest.raises(ValueError, match='cut off'): td.parse_examples(reply)


def test_strict_json_is_preferred_and_several_values_are_kept():
    assert L.extract_json('I think [citation needed] but {"a": 2}') == {'a': 2}
    jl = '{"text": "a", "label": "Positive"}\n{"text": "b", "label": "Positive"}'
    assert L.json_values(jl) == [{'text': 'a', 'label': POS}, {'text': 'b', 'label': POS}]   # json-repair alone keeps 'b'
    assert td.parse_examples(jl) == L.json_values(jl)
    assert L.extract_json('{"k": "don’t stop", "v": "“quoted”"}') == {'k': 'don’t stop', 'v': '“quoted”'}


def test_one_validator_with_readable_messages():
    assert L.schema_errors([{'question': 'q'}], L.QA_SCHEMA) == ["$[0]: 'answer' is a required property"]
    sch = td.classification_schema()
    rec = {'text': '这款耳机音质太棒了', 'label': 'Happy', 'domain': 'product review', 'difficulty': 'explicit', 'lang': 'zh'}
    assert td.schema_errors is L.schema_errors
    assert L.schema_errors(rec, sch) == ["$.label: 'Happy' is not one of ['Positive', 'Negative', 'Neutral']"]
    _, why, details = td.check_example({'text': '这款耳机音质太棒了', 'label': 'Happy'},
                                       {'label': POS, 'domain': 'product review', 'tier': 'explicit', 'lang': 'zh'},
                                       td.ClassifyOptions())
    assert why == 'classification: schema' and details['errors'] == ["$.label: 'Happy' is not one of ['Positive', 'Negative', 'Neutral']"]


def responder(messages, params):
    q = last_user(messages)
    if 'could not be used' in q: return '[{"question": "What is ML?", "answer": "A field of AI."}]'
    if 'python' in q: return "[{'question': 'What is ML?', 'answer': 'A field of AI.', 'checked': True},]"
    if 'prose' in q: return 'Machine learning is a field of AI.'
    return '[{"question": "What is ML?", "answer": "A field of AI."}]'


def test_engine_pays_no_repair_for_a_reply_repaired_locally():
    want = [{'question': 'What is ML?', 'answer': 'A field of AI.'}]
    with FakeOpenAI(responder=responder) as s:
        e = L.Engine(base_url=s.url, api_key='k', progress=False, use_cache=False)
        (r,) = e.generate(['python please'])
        assert s.n_requests == 1
        assert L.parse_json(e, r, L.QA_SCHEMA) == [{**want[0], 'checked': True}]
        assert s.n_requests == 1 and e.usage.parse_failures == 0              # exactly one request, no paid repair
        (p,) = e.generate(['prose please'])                                   # prose: refused, one repair request
        assert L.parse_json(e, p, L.QA_SCHEMA) == want
        assert s.n_requests == 3 and (e.usage.parse_failures, e.usage.repaired) == (1, 1)
        assert 'no JSON object or array in the reply' in s.requests[-1]['body']['messages'][-1]['content']
