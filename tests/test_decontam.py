"Benchmark decontamination through the real command: planted copies (whole, inside longer answers, Chinese) are caught and named."
import json, subprocess, sys
from dataalchemy.core import read_records, write_records

BENCH = [{'id': 'q1', 'question': 'Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.',
          'answer': 'Natalia sold 48 + 24 = 72 clips altogether in April and May.'},
         {'id': 'q2', 'question': '下列关于过拟合的说法中，哪一项是正确的？模型在训练集上表现很好而在测试集上表现很差'},
         {'id': 'q3', 'question': 'What is the capital of France?'}]
TRAIN = [{'instruction': 'Solve.', 'output': 'Sure. NATALIA sold clips to 48 of her friends in April; and then she sold half as many clips in May. So 72.'},
         {'instruction': '解释过拟合', 'output': '简单说，模型在训练集上表现很好而在测试集上表现很差，就是过拟合。'},
         {'instruction': 'Quiz me', 'output': 'Here it is: what is the capital of France?'},
         {'instruction': 'What is dropout?', 'output': 'Dropout randomly disables neurons during training, which reduces overfitting in practice.'},
         {'instruction': '什么是正则化？', 'output': '正则化是在损失函数中加入对大权重的惩罚。'}]


def run(*a):
    return subprocess.run([sys.executable, '-c', 'from dataalchemy.cli import main; main()', *map(str, a)], capture_output=True, text=True)


def test_planted_copies_are_dropped_and_named(tmp_path):
    write_records(BENCH, tmp_path / 'bench.jsonl'); write_records(TRAIN, tmp_path / 'train.jsonl')
    r = run('decontam', tmp_path / 'train.jsonl', tmp_path / 'clean.jsonl', '-b', tmp_path / 'bench.jsonl', '--report', tmp_path / 'r.json')
    assert r.returncode == 0, r.stderr
    assert [x['instruction'] for x in read_records(tmp_path / 'clean.jsonl')] == ['What is dropout?', '什么是正则化？']
    rej = {x['record']['instruction']: x['matches'][0]['item'] for x in read_records(tmp_path / 'clean.rejected.jsonl')}
    assert rej == {'Solve.': 'bench.jsonl:q1', '解释过拟合': 'bench.jsonl:q2', 'Quiz me': 'bench.jsonl:q3'}
    rep = json.loads((tmp_path / 'r.json').read_text())
    assert rep['dropped'] == 3 and rep['benchmark_items'] == 3


def test_flag_keeps_records_and_items_shorter_than_n_match_whole(tmp_path):
    write_records(BENCH, tmp_path / 'bench.jsonl'); write_records(TRAIN, tmp_path / 'train.jsonl')
    r = run('decontam', tmp_path / 'train.jsonl', tmp_path / 'f.jsonl', '-b', tmp_path / 'bench.jsonl', '--action', 'flag')
    assert r.returncode == 0, r.stderr
    out = list(read_records(tmp_path / 'f.jsonl'))
    assert len(out) == 5 and sum('contamination' in (x.get('meta') or {}) for x in out) == 3
    r = run('decontam', tmp_path / 'train.jsonl', tmp_path / 'g.jsonl', '-b', tmp_path / 'bench.jsonl', '--ngram', '30', '--cjk-ngram', '30')
    kept = [x['instruction'] for x in read_records(tmp_path / 'g.jsonl')]   # English items shorter than 30 words match whole;
    assert r.returncode == 0 and kept == ['解释过拟合', 'What is dropout?', '什么是正则化？']   # a 26-character zh copy is under 30
