"""ROUGE-L novelty filter: dataalchemy's bit-parallel `RougeLPool` vs the `rouge-score` package.

Builds a pool of 10,000 instructions (first sentences of the T0 prompts in /work/shared/corpora, the Self-Instruct
user-oriented instructions and the packaged Chinese/English seed tasks), then scores a set of new instructions
against the whole pool both ways. `rouge-score` runs with its default tokenizer (as Self-Instruct and Alpaca use it)
on every pair without Chinese; a pair with Chinese is scored with dataalchemy's tokens (`rouge-score` drops every
Chinese character, so those pairs are the project's deliberate extension). Prints both times, the speed ratio, and
checks that every score and every accept/reject decision (max > 0.7) is identical.

    python bench/rouge_filter.py [--pool 10000] [--queries 12]

Needs `pip install rouge-score`.
"""
from __future__ import annotations
import argparse, gzip, json, random, sys, time
from pathlib import Path

import numpy as np
from dataalchemy.core import has_cjk, split_sentences, tokenize
from dataalchemy.self_instruct import RougeLPool, load_seed_tasks, rouge_tokens

CORPORA = Path(__file__).resolve().parents[2] / 'shared' / 'corpora'
if not CORPORA.exists(): CORPORA = Path('/work/shared/corpora')


class _Tok:
    "dataalchemy's tokens, in the shape rouge-score expects."
    def tokenize(self, text): return rouge_tokens(text)


def build_pool(n: int, rng: random.Random) -> list[str]:
    seeds = [t['instruction'] for t in load_seed_tasks()]
    user = []
    with gzip.open(CORPORA / 'self_instruct_user_eval' / 'user_oriented_instructions.jsonl.gz', 'rt') as f:
        for line in f: user.append(json.loads(line)['instruction'])
    t0 = []
    with gzip.open(CORPORA / 't0_train_50k.jsonl.gz', 'rt') as f:
        for line in f:
            p = json.loads(line)['prompt']
            s = (split_sentences(p) or [p])[0]
            toks = s.split()
            if 4 <= len(tokenize(s)) and len(toks) <= 60: t0.append(s)
    t0 = list(dict.fromkeys(t0))
    rng.shuffle(t0)
    held = rng.sample(user, 8)                       # new instructions: kept out of the pool
    user = [u for u in user if u not in held]
    return (seeds + user + t0)[:n], held, seeds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--pool', type=int, default=10_000)
    ap.add_argument('--queries', type=int, default=12)
    ap.add_argument('--threshold', type=float, default=0.7)
    a = ap.parse_args()
    try: from rouge_score import rouge_scorer
    except ImportError: sys.exit('needs the rouge-score package: pip install rouge-score')
    rng = random.Random(0)
    pool_texts, held, seeds = build_pool(a.pool, rng)
    # queries: new instructions, Chinese seeds with one character changed, and pool items with one word changed
    q = held[:a.queries // 3]
    zh = [s for s in seeds if any('\u4e00' <= c <= '\u9fff' for c in s)]
    q += [s[:-3] + '一下' + s[-1] for s in rng.sample(zh, a.queries // 3)]
    for s in rng.sample(pool_texts[len(seeds) + 300:], a.queries - len(q)):
        w = s.split(); w[rng.randrange(len(w))] = 'banana'; q.append(' '.join(w))
    print(f'pool: {len(pool_texts):,} instructions, {sum(len(rouge_tokens(t)) for t in pool_texts) / len(pool_texts):.1f} '
          f'tokens on average; {len(q)} queries')

    t = time.perf_counter()
    pool = RougeLPool(pool_texts)
    fast = [pool.scores(x) for x in q]
    t_fast = time.perf_counter() - t

    default, cjk = rouge_scorer.RougeScorer(['rougeL']), rouge_scorer.RougeScorer(['rougeL'], tokenizer=_Tok())
    zh = [has_cjk(p) for p in pool_texts]
    t = time.perf_counter()
    slow = [np.array([(cjk if z or has_cjk(x) else default).score(x, p)['rougeL'].fmeasure for p, z in zip(pool_texts, zh)])
            for x in q]
    t_slow = time.perf_counter() - t
    n_default = sum(not (z or has_cjk(x)) for x in q for z in zh)
    print(f'{n_default:,} of {len(q) * len(pool_texts):,} pairs compared with rouge-score\'s default tokenizer')

    same_scores = all(np.array_equal(f, s) for f, s in zip(fast, slow))
    dec_fast = [bool(f.max() > a.threshold) for f in fast]
    dec_slow = [bool(s.max() > a.threshold) for s in slow]
    print(f'rouge-score (scorer.score per pair): {t_slow:8.3f} s  ({t_slow / len(q) * 1e3:8.1f} ms/query)')
    print(f'dataalchemy RougeLPool (incl. build): {t_fast:8.3f} s  ({t_fast / len(q) * 1e3:8.1f} ms/query)')
    print(f'speed-up: x{t_slow / t_fast:.1f}')
    print(f'identical scores: {same_scores}; identical decisions: {dec_fast == dec_slow} '
          f'({sum(dec_fast)} of {len(q)} rejected at > {a.threshold})')
    if not (same_scores and dec_fast == dec_slow): sys.exit(1)


if __name__ == '__main__': main()
