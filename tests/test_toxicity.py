"Toxicity backends: the Chinese lexicon, alt-profanity-check, detoxify from a local checkpoint, auto selection."
import pytest
import dataalchemy.toxicity as T


def test_lexicon_guards():
    lex = T.ChineseLexicon()
    assert lex.score(['我妈妈的书'])[0]['obscene'] == 0.0
    assert lex.score(['妈的，真烦'])[0]['obscene'] == 1.0
    assert lex.score(['我要杀了你'])[0]['threat'] == 1.0


def test_offline_and_thresholds():
    tf = T.ToxicityFilter('offline')
    assert tf.backend.name == 'offline(alt-profanity-check+zh-lexicon)'
    assert tf({'output': 'Shut up, you stupid fucking moron.'}) == (False, 'toxic:profanity')
    assert tf({'output': '你这个蠢货'}) == (False, 'toxic:insult')
    assert tf({'output': 'Thank you for the lovely dinner.'}) == (True, None)
    assert T.ToxicityFilter('offline', thresholds={'insult': 2})({'output': '你这个蠢货'}) == (True, None)


def test_auto_backend(monkeypatch, tmp_path):
    assert T.get_backend('auto').name.startswith('offline')
    with pytest.raises(FileNotFoundError, match='not a detoxify model name'): T.get_backend('detoxify', checkpoint='/no/such.ckpt')
    import detoxify.detoxify as dd, torch                        # by name, neither cached nor downloadable: one clear error
    monkeypatch.setitem(dd.MODEL_URLS, 'original', 'http://127.0.0.1:9/not_cached.ckpt')
    hub = torch.hub.get_dir(); torch.hub.set_dir(str(tmp_path / 'hub'))
    try:
        with pytest.raises(OSError, match="detoxify model 'original': not in the local cache and the download failed"): T.get_backend('detoxify')
    finally: torch.hub.set_dir(hub)
    ckpt, hfc = T.make_test_checkpoint(tmp_path)
    monkeypatch.setenv('DATAALCHEMY_TOXICITY_CHECKPOINT', ckpt)
    monkeypatch.setenv('DATAALCHEMY_TOXICITY_HF_CONFIG', hfc)
    b = T.get_backend('auto', device='cpu')
    assert b.name == 'detoxify(tiny_detoxify.ckpt)'
    s = b.score(['you are nice'] * 5)
    assert len(s) == 5 and set(s[0]) == {'toxicity', 'severe_toxicity', 'obscene', 'threat', 'insult', 'identity_attack'}
    assert s[0] == pytest.approx(s[4])        # batching does not change scores


def test_detoxify_without_hf_config_says_what_to_set(tmp_path, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    ckpt, _ = T.make_test_checkpoint(tmp_path)
    with pytest.raises(OSError, match='hf_config'): T.DetoxifyBackend(ckpt, None, device='cpu')


def test_llm_judge_through_engine():
    from dataalchemy.llm import Engine
    j = T.LLMJudge(Engine(backend='offline', progress=False))
    assert j.name.startswith('llm(offline')
    tf = T.ToxicityFilter(j)
    r = {'output': '再这样我就弄死你'}
    assert tf(r)[0] is False and r['meta']['toxicity']['threat'] == 1.0
    assert tf({'output': '谢谢你的帮助'}) == (True, None)

    class Garbled:                       # an engine whose replies are not JSON: no scores, record kept, error counted
        model = 'x'
        class backend: name = 'fake'
        def generate(self, reqs):
            from dataalchemy.llm import Result
            return [Result(id=r.id, text='I think it is fine') for r in reqs]
    g = T.LLMJudge(Garbled())
    assert T.ToxicityFilter(g)({'output': 'whatever'}) == (True, None) and g.errors == 1
