"The question-generator chapter: config, bank, rewards, advantages, and the three training stages on a CPU."
import json, subprocess, sys, warnings
from pathlib import Path
import pytest
from typer.testing import CliRunner
import dataalchemy
import dataalchemy.grpo as G
import dataalchemy.grpo_train as GT
from dataalchemy.config import Settings

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- light parts

def test_import_is_light():
    code = ("import sys, dataalchemy.grpo, dataalchemy.grpo_train, dataalchemy.cli; "
            "heavy = [m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets', 'sklearn', 'unsloth') if m in sys.modules]; "
            "assert not heavy, heavy")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_bank_is_package_data():
    p = Path(dataalchemy.__file__).parent / 'data' / 'question_bank.jsonl'
    assert p.exists() and G.BANK_PATH == p
    bank = G.load_bank()
    assert len(bank) >= 40
    assert {r['language'] for r in bank} == {'en', 'zh'}
    assert set(G.TOPICS) <= {r['topic'] for r in bank}
    assert all(1 <= r['difficulty'] <= 5 for r in bank)
    assert len({r['id'] for r in bank}) == len(bank)
    assert len({r['question'] for r in bank}) == len(bank)


def test_user_bank_errors_name_file_line_field(tmp_path):
    p = tmp_path / 'mine.jsonl'
    p.write_text('{"question": "Prove 1 < 2.", "topic": "algebra", "difficulty": 9}\n', encoding='utf-8')
    with pytest.raises(dataalchemy.core.RecordError, match=r'mine.jsonl:1: difficulty'):
        G.load_bank(p)


def test_config_layers(tmp_path):
    p = tmp_path / 'c.toml'
    p.write_text('[grpo]\ngroup_size = 4\nlearning_rate = 1e-3\n')
    s = Settings(env={'DATAALCHEMY_GRPO_LORA_R': '16', 'DATAALCHEMY_GRPO_GROUP_SIZE': '6'})
    c = G.load_config(p, settings=s, **G.parse_overrides(['steps_stage2=7', 'beta=0.0']))
    assert (c.group_size, c.learning_rate, c.lora_r, c.steps_stage2, c.beta) == (4, 1e-3, 16, 7, 0.0)  # toml > env
    assert G.load_config(settings=Settings(env={})) == G.TrainingConfig()   # settings.ini agrees with the dataclass
    p.write_text('group_sise = 4\n')
    with pytest.raises(dataalchemy.core.RecordError, match='group_sise'):
        G.load_config(p)


def test_example_config_loads():
    c = G.load_config(ROOT / 'examples' / 'grpo_tiny.toml', settings=Settings(env={}))
    assert c.fallback_model == 'tiny' and c.backend == 'transformers' and c.group_size == 4


@pytest.mark.parametrize('easy,hard', [
    ("What is 2 + 3?", "Let p be an odd prime. Prove that for every integer a not divisible by p, a^(p-1) is congruent to 1 modulo p."),
    ("1 加 1 等于几？", "设 p 为奇素数，证明：对任意不被 p 整除的整数 a，a^(p-1) 与 1 模 p 同余。"),
])
def test_difficulty_and_rigor_rank_en_zh(easy, hard):
    assert G.difficulty_score(hard) > G.difficulty_score(easy) + 0.3
    assert G.rigor_score(hard) > G.rigor_score(easy)
    for f in (G.difficulty_score, G.rigor_score):
        assert 0 <= f(hard) <= 1 and f('') == 0


def test_novelty_threshold_penalty():
    bank = [r['question'] for r in G.load_bank()]
    idx = G.NoveltyIndex(bank, threshold=0.85, penalty=0.1)
    near = "求 2^2024 除以 9 的余数。"                 # the bank's 求 2^2024 除以 7 的余数。 with one number changed
    fresh = "一只青蛙在正六边形的顶点上跳跃，求长度为 10 的闭合路径条数。"
    s_near, s_fresh = idx.similarity([near, fresh])
    assert s_near > 0.85 > 0.5 > s_fresh
    n_near, n_fresh = idx.score([near, fresh])
    assert n_near == pytest.approx((1 - s_near) * 0.1, abs=1e-5)
    assert n_fresh == pytest.approx(1 - s_fresh, abs=1e-5)


def test_diversity_and_total():
    rows = G.score_questions(["A frog jumps.", "A frog jumps.", "证明三角形内角和为 180°。", "Find all real x with x^2 = 2x."],
                             G.NoveltyIndex(), group_size=2)
    assert rows[0]['diversity'] == rows[1]['diversity'] == 0.0
    assert rows[2]['diversity'] > 0.8
    for r in rows:
        assert r['reward'] == pytest.approx(sum(w * r[p] for w, p in zip((0.4, 0.3, 0.2, 0.1), G.REWARD_PARTS)), abs=1e-5)


def test_trl_reward_funcs_are_named_and_grow_history():
    fs = G.make_reward_funcs(['Find x.'], group_size=2)
    assert [f.__name__ for f in fs] == ['difficulty', 'novelty', 'rigor', 'diversity']
    comps = [[{'role': 'assistant', 'content': 'Prove that 7 divides 8^n - 1 for all n.'}]] * 2
    for f in fs: assert len(f(prompts=[None, None], completions=comps, trainer_state=None)) == 2
    assert len(fs[1].index) == 3


def test_advantages_side_by_side_and_zero_group_warning():
    rw = [0.2, 0.3, 0.4, 0.95, 0.5, 0.5, 0.5, 0.5]
    with pytest.warns(G.ZeroAdvantageWarning, match='no learning signal'):
        trl = G.group_advantages(rw, 4)
    with pytest.warns(G.ZeroAdvantageWarning):
        med = G.group_advantages(rw, 4, baseline='median', scale='none')
    assert sum(a > 0 for a in trl[:4]) == 1 and sum(a > 0 for a in med[:4]) == 2
    assert trl[4:] == med[4:] == [0.0] * 4


def test_distillation_selection_and_teacher_parsing():
    teacher = G.llm_teacher(lambda reqs: ['```json\n{"difficulty": 9, "rigor": 8, "novelty": 7, "educational_value": 8}\n```',
                                          'no idea', '{"difficulty": 2, "rigor": 2, "novelty": 2, "educational_value": 2}'],
                            model='teacher-x')
    qs = [{'question': 'a'}, {'question': 'b'}, {'question': 'c'}]
    ratings = teacher([q['question'] for q in qs])
    assert ratings[0]['score'] == 8.0 and 'error' in ratings[1] and ratings[0]['meta']['model'] == 'teacher-x'
    st = dataalchemy.core.Stats('t')
    best = G.select_for_distillation(qs, ratings, top_frac=0.5, stats=st)
    assert [b['question'] for b in best] == ['a']
    assert st.reasons == {'rating_error': 1, 'not_in_top_fraction': 1}


def test_engine_teacher_through_a_local_openai_server(tmp_path):
    from dataalchemy.testing import FakeOpenAI
    replies = iter(['{"difficulty": 9, "rigor": 9, "novelty": 9, "educational_value": 9}', 'I refuse'])
    with FakeOpenAI(responder=lambda msgs, params: next(replies)) as srv:
        t = G.engine_teacher(base_url=srv.url, api_key='sk-x', model='judge', cache_dir=tmp_path, backend='openai',
                             concurrency=1)
        rs = t(['求所有正整数 n，使得 n 整除 2^n - 1。', 'Prove that 3 divides n^3 - n.'])
        assert len(srv.requests) == 2
    assert rs[0]['score'] == 9.0 and rs[0]['meta'] == {'backend': 'openai', 'model': 'judge'}
    assert 'error' in rs[1]
    assert [b['question'] for b in G.select_for_distillation([{'question': 'a'}, {'question': 'b'}], rs)] == ['a']


def test_backend_choice_messages():
    c = G.TrainingConfig()
    b, why = GT.choose_backend(c, cuda=False, unsloth=False)
    assert b == 'transformers' and 'pip install "dataalchemy[gpu]"' in why and 'tiny' in why
    assert GT.choose_backend(c, cuda=True, unsloth=True)[0] == 'unsloth'
    with pytest.raises(RuntimeError, match='CUDA GPU'):
        GT.choose_backend(G.TrainingConfig(backend='unsloth'), cuda=False, unsloth=False)


def test_cli_unsloth_on_cpu_says_what_it_needs(tmp_path):
    if GT.cuda_available() and GT.unsloth_installed(): pytest.skip('this machine has the GPU path')
    app = dataalchemy.cli.load_commands()
    r = CliRunner().invoke(app, ['grpo', 'train', '--stage', '1', '--output', str(tmp_path), '--set', 'backend=unsloth'])
    assert r.exit_code == 2
    assert 'dataalchemy[gpu]' in r.output


def test_cli_score(tmp_path):
    p = tmp_path / 'q.jsonl'
    p.write_text('{"question": "求 2^2024 除以 7 的余数。"}\n{"question": "A frog jumps on a hexagon; count closed walks."}\n',
                 encoding='utf-8')
    r = CliRunner().invoke(dataalchemy.cli.load_commands(), ['grpo', 'score', str(p), '--out', str(tmp_path / 's.jsonl')])
    assert r.exit_code == 0, r.output
    rows = [json.loads(l) for l in (tmp_path / 's.jsonl').read_text(encoding='utf-8').splitlines()]
    assert rows[0]['novelty'] < 0.05 < rows[1]['novelty']


def test_monitor_warns_when_no_group_has_signal(tmp_path):
    from transformers import TrainerState, TrainerControl
    mon = GT.grpo_monitor(tmp_path / 'r.jsonl')
    st = TrainerState(); st.global_step = 5
    with pytest.warns(G.ZeroAdvantageWarning):
        mon.on_log(None, st, TrainerControl(), logs={'rewards/novelty/mean': 0.5, 'frac_reward_zero_std': 1.0})
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        mon.on_log(None, st, TrainerControl(), logs={'rewards/novelty/mean': 0.5, 'frac_reward_zero_std': 0.5})
        mon.on_log(None, st, TrainerControl(), logs={'loss': 1.0})          # not a reward log: ignored
    assert len((tmp_path / 'r.jsonl').read_text().splitlines()) == 2


# ---------------------------------------------------------------- the three stages on a CPU

@pytest.fixture(scope='module')
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp('grpo')
    cfg = GT.tiny_config(steps_stage1=2, steps_stage2=2, steps_stage3=2, batch_size=1, n_distill=8)
    return out, cfg, GT.run_stages(cfg, 'all', out, verbose=False)


def _state(path):
    from transformers import AutoModelForCausalLM
    return {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(path).state_dict().items()}


@pytest.mark.slow
def test_all_stages_train_and_save(run):
    import torch
    out, cfg, res = run
    assert [res[s]['global_step'] for s in (1, 2, 3)] == [2, 2, 2]
    assert res[1]['backend'] == 'transformers' and 'CPU' in res[1]['reason']
    prev = _state(out / 'base_tiny')
    for s in (1, 2, 3):
        d = out / GT.STAGE_DIRS[s]
        assert res[s]['lora_norm'] > 0
        assert (d / 'checkpoint-2').is_dir() and (d / 'final' / 'config.json').exists()
        assert json.loads((d / 'stage.json').read_text())['global_step'] == 2
        cur = _state(d / 'final')
        assert any(not torch.equal(prev[k], cur[k]) for k in cur)          # each stage changed the weights
        prev = cur
    assert res[2]['start'].endswith('stage1_sft/final') and res[3]['start'].endswith('stage2_grpo/final')
    assert {'historical', 'variation', 'new_type'} <= set(res[1]['mix'])
    assert (out / 'config.toml').exists()
    assert G.load_config(out / 'config.toml', settings=Settings(env={})) == cfg


@pytest.mark.slow
def test_grpo_logs_each_reward_part(run):
    out, cfg, res = run
    rows = [json.loads(l) for l in (out / 'stage2_grpo' / 'rewards.jsonl').read_text().splitlines()]
    assert len(rows) == 2
    for p in G.REWARD_PARTS:
        assert 0 <= rows[0][f'rewards/{p}/mean'] <= 1
    assert rows[0]['reward'] == pytest.approx(sum(w * rows[0][f'rewards/{p}/mean']
                                                  for w, p in zip(cfg.reward_weights, G.REWARD_PARTS)), abs=1e-4)
    assert 'kl' in rows[0]
    assert res[2]['history_size'] == len(G.load_bank()) + 2 * cfg.group_size * cfg.batch_size


@pytest.mark.slow
def test_distillation_ratings_written(run):
    out, cfg, res = run
    rated = [json.loads(l) for l in (out / 'stage3_distill' / 'ratings.jsonl').read_text(encoding='utf-8').splitlines()]
    assert len(rated) == cfg.n_distill == res[3]['n_rated']
    assert all(r['meta']['backend'] == 'transformers' and r['rating']['meta']['backend'] == 'offline' for r in rated)
    assert res[3]['n_selected'] == 4


@pytest.mark.slow
def test_stages_resume_from_checkpoint(run):
    out, cfg, _ = run
    cfg3 = GT.tiny_config(steps_stage1=3, steps_stage2=3, steps_stage3=3, batch_size=1, n_distill=8)
    r1 = GT.train_stage1(cfg3, out, verbose=False)
    assert (r1['resumed_from'], r1['global_step']) == ('checkpoint-2', 3)
    r2 = GT.train_stage2(cfg3, out, verbose=False)
    assert (r2['resumed_from'], r2['global_step']) == ('checkpoint-2', 3)
    assert len(r2['rewards']) == 1                                       # only the new step ran
    r3 = GT.train_stage3(cfg3, out, verbose=False)
    assert (r3['resumed_from'], r3['global_step'], r3['n_rated']) == ('checkpoint-2', 3, 8)   # ratings reused


@pytest.mark.slow
def test_cli_train_and_generate(run, tmp_path):
    out, cfg, _ = run
    app = dataalchemy.cli.load_commands()
    r = CliRunner().invoke(app, ['grpo', 'train', '--config', str(ROOT / 'examples' / 'grpo_tiny.toml'), '--stage', '1',
                                 '--output', str(tmp_path), '--set', 'steps_stage1=1', '--set', 'batch_size=1'])
    assert r.exit_code == 0, r.output
    assert 'stage 1: 1 steps' in r.output and (tmp_path / 'stage1_sft' / 'final').is_dir()
    r = CliRunner().invoke(app, ['grpo', 'generate', '--model', str(out / 'stage3_distill' / 'final'), '--n', '3',
                                 '--max-new-tokens', '8', '--lang', 'zh', '--out', str(tmp_path / 'q.jsonl')])
    assert r.exit_code == 0, r.output
    qs = [json.loads(l) for l in (tmp_path / 'q.jsonl').read_text(encoding='utf-8').splitlines()]
    assert len(qs) == 3 and {q['language'] for q in qs} == {'zh'} and all('backend' in q['meta'] for q in qs)
