"PII scrubbing: Chinese recognizers, look-alikes, code blocks, actions and the `pii` command."
import json
import pytest
from typer.testing import CliRunner
from dataalchemy.core import read_records, write_records
from dataalchemy.cli import load_commands
import dataalchemy.pii as P


@pytest.fixture(scope='module')
def scrubber():
    return P.PIIScrubber('replace')


def ents(s, text): return [(f.entity, f.text) for f in s.analyze(text)]


def test_id_checksum():
    ok = P._id_with_check('44030419900307123')
    assert P.cn_id_valid(ok) and not P.cn_id_valid(ok[:-1] + ('0' if ok[-1] != '0' else '1'))
    assert not P.cn_id_valid(P._id_with_check('44030419900230123'))   # 30 February
    assert not P.cn_id_valid(P._id_with_check('44030429900307123'))   # year 2990


@pytest.mark.parametrize('text,expected', [
    ('手机 138 1234 5678', ('CN_MOBILE', '138 1234 5678')),
    ('请拨打+8615912345678', ('CN_MOBILE', '+8615912345678')),
    ('电话：0755-87654321', ('CN_LANDLINE', '0755-87654321')),
    ('邮箱:zhang.san@example.com.cn。', ('EMAIL_ADDRESS', 'zhang.san@example.com.cn')),
    ('护照 G12345678', ('CN_PASSPORT', 'G12345678')),
    ('see https://example.org/a?b=1.', ('URL', 'https://example.org/a?b=1')),
])
def test_cn_recognizers(scrubber, text, expected):
    assert ents(scrubber, text) == [expected]


def test_id_and_bank_card_valid_and_invalid(scrubber):
    good = P._id_with_check('44030419900307123')
    assert ents(scrubber, f'身份证号：{good}') == [('CN_ID_CARD', good)]
    bad = good[:-1] + ('0' if good[-1] != '0' else '1')
    assert ents(scrubber, f'身份证号：{bad}') == []
    card = next(c for c in (f'621700{i:010d}' for i in range(100)) if P.luhn_valid(c))
    assert ents(scrubber, f'卡号 {card}') == [('CN_BANK_CARD', card)]
    nocard = card[:-1] + str((int(card[-1]) + 1) % 10)
    assert ents(scrubber, f'卡号 {nocard}') == []


@pytest.mark.parametrize('text', ['Python 3.11.7', 'v2.3.1', 'version 1.2.3.4', '版本 10.0.0.1', '2023-11-21', '2023年11月21日',
                                  '¥1,299.00', '$19.99', '订单号 20231121000123456', '订单号 202311210001234567',
                                  'run main.py', 'see example.com', '12:30:45', '编号 12912345678'])
def test_lookalikes_survive(scrubber, text):
    assert scrubber.analyze(text) == []


def test_code_blocks(scrubber):
    md = 'Mail a@example.com\n```\nX = "b@example.com"\n```'
    assert scrubber.scrub_text(md)[0] == 'Mail <EMAIL>\n```\nX = "b@example.com"\n```'


def test_actions(scrubber):
    h = P.PIIScrubber('hash'); h._an = scrubber._an
    assert h.scrub_text('a@x.com')[0] == h.scrub_text('a@x.com')[0] != h.scrub_text('b@x.com')[0]
    m = P.PIIScrubber('mask'); m._an = scrubber._an
    assert m.scrub_text('手机13812345678')[0] == '手机*******5678'
    rec = {'output': '发到 a@x.com'}
    assert scrubber(rec) == (True, None) and rec['output'] == '发到 <EMAIL>'
    assert rec['meta']['pii'] == [{'field': 'output', 'entity': 'EMAIL_ADDRESS', 'start': 3, 'end': 10, 'score': 0.9}]
    with pytest.raises(ValueError, match='unknown PII action'): P.PIIScrubber('burn')


def test_pii_cli(tmp_path):
    write_records([{'instruction': '记下来', 'input': '', 'output': '邮箱 li@example.com'},
                   {'instruction': 'ok', 'input': '', 'output': 'nothing'}], tmp_path / 'in.jsonl')
    r = CliRunner().invoke(load_commands(), ['pii', str(tmp_path / 'in.jsonl'), str(tmp_path / 'out.jsonl'),
                                             '--operator', 'drop', '--rejected', str(tmp_path / 'rej.jsonl'),
                                             '--report', str(tmp_path / 'rep.json')])
    assert r.exit_code == 0, r.output
    assert [x['output'] for x in read_records(tmp_path / 'out.jsonl')] == ['nothing']
    assert next(read_records(tmp_path / 'rej.jsonl'))['reason'] == 'pii:EMAIL_ADDRESS'
    assert json.loads((tmp_path / 'rep.json').read_text())['counts'] == {'pii:EMAIL_ADDRESS': 1}


# --- every format, every turn, through the real command -------------------------------------------------------------
GOOD_ID = P._id_with_check('11010519491231002')
RAW = ['13812345678', 'li.ming@example.com', GOOD_ID, '+1 415 555 0134', '李明']
FILES = {
    'messages.jsonl': [{'messages': [{'role': 'system', 'content': '客服请联系李明'},
                                     {'role': 'user', 'content': [{'type': 'text', 'text': '我的手机 13812345678'}]},
                                     {'role': 'assistant', 'content': 'ok', 'tool_calls': [{'id': 'c1', 'type': 'function',
                                      'function': {'name': 'save', 'arguments': '{"email": "li.ming@example.com"}'}}]},
                                     {'role': 'tool', 'tool_call_id': 'c1', 'content': f'身份证 {GOOD_ID} saved'},
                                     {'role': 'assistant', 'content': 'Call +1 415 555 0134.'}]}],
    'sharegpt.jsonl': [{'system': '请联系李明', 'conversations': [{'from': 'human', 'value': '手机 13812345678'},
                        {'from': 'gpt', 'value': 'mail li.ming@example.com'}, {'from': 'human', 'value': f'ID {GOOD_ID}'},
                        {'from': 'gpt', 'value': 'Call +1 415 555 0134.'}]}],
    'pc.jsonl': [{'prompt': [{'role': 'user', 'content': '手机 13812345678，请联系李明'}],
                  'completion': [{'role': 'assistant', 'content': f'mail li.ming@example.com, ID {GOOD_ID}, call +1 415 555 0134'}]}],
    'alpaca.jsonl': [{'instruction': '请联系李明', 'input': '手机 13812345678', 'output': f'ID {GOOD_ID}',
                      'system': 'mail li.ming@example.com', 'history': [['call?', '+1 415 555 0134']]}],
}


@pytest.mark.parametrize('name', list(FILES))
def test_pii_cli_scrubs_every_turn(tmp_path, name):
    src, dst = tmp_path / name, tmp_path / f'out_{name}'
    write_records(FILES[name], src)
    r = CliRunner().invoke(load_commands(), ['pii', str(src), str(dst), '--report', str(tmp_path / 'r.json')])
    assert r.exit_code == 0, r.output
    out = dst.read_text(encoding='utf-8')
    assert not [v for v in RAW if v in out], out
    rep = json.loads((tmp_path / 'r.json').read_text())
    assert sum(rep['fields_scrubbed'].values()) >= 5 and 'fields scrubbed:' in r.output
    assert CliRunner().invoke(load_commands(), ['audit', str(dst)]).exit_code == 0
    a = CliRunner().invoke(load_commands(), ['audit', str(src), '--findings', str(tmp_path / 'f.jsonl')])
    assert a.exit_code == 1 and 'findings' in a.output
    assert not [v for v in RAW if v in (tmp_path / 'f.jsonl').read_text(encoding='utf-8')]


def test_pii_cli_mistakes(tmp_path):
    write_records(FILES['messages.jsonl'], tmp_path / 'm.jsonl')
    r = CliRunner().invoke(load_commands(), ['pii', str(tmp_path / 'm.jsonl'), str(tmp_path / 'o.jsonl'), '--fields', 'instruction,output'])
    assert r.exit_code == 2 and 'error:' in r.output and 'match no text' in r.output and not (tmp_path / 'o.jsonl').exists()
    r = CliRunner().invoke(load_commands(), ['pii', str(tmp_path / 'm.jsonl'), str(tmp_path / 'm.jsonl')])
    assert r.exit_code == 2 and 'overwrite the input' in r.output
    r = CliRunner().invoke(load_commands(), ['pii', str(tmp_path / 'nope.jsonl'), str(tmp_path / 'o.jsonl')])
    assert r.exit_code == 2 and 'error:' in r.output
    assert CliRunner().invoke(load_commands(), ['audit', str(tmp_path / 'nope.jsonl')]).exit_code == 2


def test_hash_pseudonyms_are_keyed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_records([{'output': '手机 13812345678'}, {'output': '再说一遍：138-1234-5678'}], tmp_path / 'in.jsonl')
    def run(dst, env):
        for k, v in env.items(): monkeypatch.setenv(k, v)
        r = CliRunner().invoke(load_commands(), ['pii', str(tmp_path / 'in.jsonl'), str(tmp_path / dst), '--operator', 'hash'])
        assert r.exit_code == 0, r.output
        return [x['output'].split('<PHONE_')[1][:16] for x in read_records(tmp_path / dst)], r.output
    (a, b), _ = run('a.jsonl', {'DATAALCHEMY_PII_SECRET': 'one'})
    assert a == b and len(a) == 16                                     # one value, one pseudonym
    assert run('b.jsonl', {'DATAALCHEMY_PII_SECRET': 'two'})[0][0] != a  # another secret, another pseudonym
    import hashlib
    assert a not in hashlib.sha256(b'dataalchemy\x0013812345678').hexdigest()   # not the old public-salt hash
    monkeypatch.delenv('DATAALCHEMY_PII_SECRET')
    (c, _), out = run('c.jsonl', {})
    key = tmp_path / '.dataalchemy' / 'pii.key'
    assert key.exists() and oct(key.stat().st_mode & 0o777) == '0o600' and 'key file' in out
    assert run('d.jsonl', {})[0][0] == c                               # the generated key is reused


def test_bad_records_never_stop_a_run(tmp_path):
    class Fussy(P.PIIScrubber):
        def analyze_many(self, texts):
            if any('BOOM' in t for t in texts if isinstance(t, str)): raise RuntimeError('analyzer failed')
            return super().analyze_many(texts)
    recs = [{'output': 'mail a@b.org'}, {'output': 'BOOM'}, {'output': 'bad \ud800 surrogate, 13812345678'},
            {'output': 'x ' * 600_000 + 'li@example.org'}, {'output': 12345, 'phone': 13912345678}]
    st = P.Stats('pii', rejected=tmp_path / 'rej.jsonl')
    out = list(P.scrub_records(recs, Fussy('replace'), st)); st.close()
    assert out[0]['output'] == 'mail <EMAIL>' and out[1]['output'] == 'bad \ud800 surrogate, <PHONE>'
    assert out[2]['output'].endswith('<EMAIL>') and out[3]['phone'] == '<PHONE>' and out[3]['output'] == 12345
    assert st.reasons == {'pii:error:RuntimeError': 1}
    assert [r['reason'] for r in read_records(tmp_path / 'rej.jsonl')] == ['pii:error:RuntimeError']


@pytest.mark.parametrize('text', ['See Chapter 1.2.3.4 for details', 'Invoice No. 415-555-0132', 'coordinates 39.9042, 116.4074',
                                  'ISBN 0-306-40615-2', 'Handel (1685–1753)', 'mask = 0xDEADBEEFCAFEBABE', '订单号：13812345678',
                                  '给我你的联系方式', 'Michael Jordan scored 30 points'])
def test_more_lookalikes_survive(scrubber, text):
    assert scrubber.analyze(text) == []
