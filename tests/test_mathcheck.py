"""The math checker (`08c_mathcheck`): final answers and steps in English and Chinese, references by computation,
the safe evaluator refusing code, and the `taskdata math` verb."""
import json
from fractions import Fraction

import pytest
from typer.testing import CliRunner

import dataalchemy.mathcheck as mc
from dataalchemy.core import Stats
from dataalchemy.cli import load_commands


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
    kept = list(mc.verify_math([{'instruction': 'q', 'output': output, 'answer': answer}], mc.MathOptions(), st))
    assert bool(kept) == ok, (st.reasons, output)
    if not ok: assert st.n_dropped == 1


def test_math_reference_by_computation():
    rec = {'instruction': 'Half of a third?', 'output': 'The answer is 0.1666667', 'expression': '1/2 * 1/3'}
    assert len(list(mc.verify_math([rec]))) == 1
    assert mc.safe_eval('1/3 + 1/6') == Fraction(1, 2)
    for evil in ['__import__("os")', '().__class__', '9**9**9', 'factorial(5000)', 'a * 2']:
        with pytest.raises(ValueError): mc.safe_eval(evil)


def test_cli_math(tmp_path):
    m, dst = tmp_path / 'm.jsonl', tmp_path / 'out.jsonl'
    m.write_text(json.dumps({'instruction': 'q', 'output': '答案是 5', 'answer': 5}, ensure_ascii=False) + '\n'
                 + json.dumps({'instruction': 'q', 'output': 'The answer is 4', 'answer': 5}) + '\n', encoding='utf-8')
    r = CliRunner().invoke(load_commands(), ['taskdata', 'math', str(m), str(dst)])
    assert r.exit_code == 0 and 'math: wrong answer' in r.output and len(dst.read_text().splitlines()) == 1
