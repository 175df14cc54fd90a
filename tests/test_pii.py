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
