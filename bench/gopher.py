"""Gopher filters: agreement with a faithful reference (and with datatrove), and speed against datatrove.

    python bench/gopher.py [--corpus ../shared/corpora/t0_train_50k.jsonl.gz] [--limit N] [--text both|prompt|completion]
                           [--datatrove-path DIR]

Same texts, same run, one process; each text is judged by
  1. dataalchemy: the `gopher` preset (GopherQuality then GopherRepetition, as `filter --preset gopher` runs them);
  2. the faithful reference of tests/test_filters.py (`ref_gopher`): Rae et al. 2021 appendix A transcribed rule by
     rule, slow on purpose;
  3. datatrove's GopherQualityFilter then GopherRepetitionFilter, if `import datatrove` works (it is not a dependency
     of dataalchemy: install it yourself, e.g. `pip install --no-deps --target DIR datatrove loguru humanize` and pass
     `--datatrove-path DIR`; its English word tokenizer is spaCy's, which must be importable).
A text is kept when both filters keep it; the repetition filter runs only on what the quality filter kept, as in a
pipeline. The three run chunk by chunk in turn (500 texts each) and are timed in CPU seconds of this process, so a
machine shared with other jobs slows none of them more than the others. Prints the agreement of each pair on
keep/drop, the keep rates, texts per CPU second of each and the ratio datatrove time / dataalchemy time (or
reference time / dataalchemy time without datatrove), and the commonest disagreements with each side's reason.
"""
from __future__ import annotations
import argparse, sys, time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT.parent / 'shared' / 'corpora' / 't0_train_50k.jsonl.gz'


def run_interleaved(fns: dict, texts: list, chunk: int = 500) -> dict:
    "Each of `fns` over `texts`, chunk by chunk in turn, timed in CPU seconds of this process: name -> (verdicts, s)."
    out = {k: ([], 0.0) for k in fns}
    for i in range(0, len(texts), chunk):
        part = texts[i:i + chunk]
        for k, fn in fns.items():
            t = time.process_time(); v = [fn(x) for x in part]; dt = time.process_time() - t
            out[k] = (out[k][0] + v, out[k][1] + dt)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--corpus', default=str(DEFAULT))
    ap.add_argument('--limit', type=int, default=0)
    ap.add_argument('--text', choices=['both', 'prompt', 'completion'], default='both',
                    help="what a T0 record's text is: prompt + newline + completion (default), or one of them")
    ap.add_argument('--datatrove-path', default=None, help='a directory holding datatrove (prepended to sys.path)')
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / 'tests'))
    if a.datatrove_path: sys.path.insert(0, a.datatrove_path)
    from dataalchemy.core import read_records
    from dataalchemy.filters import FilterPipeline, preset_filters
    from test_filters import ref_gopher
    if not Path(a.corpus).exists(): sys.exit(f'{a.corpus}: not found (the corpora live in ../shared/corpora)')
    texts = []
    for r in read_records(a.corpus):
        texts.append({'both': r['prompt'] + '\n' + r['completion'], 'prompt': r['prompt'],
                      'completion': r['completion']}[a.text])
        if a.limit and len(texts) >= a.limit: break
    print(f'{len(texts):,} texts ({a.text}) from {a.corpus}')

    pipe = FilterPipeline(preset_filters('gopher'))
    reasons, theirs = {}, {}
    def ours(t):
        keep, why = pipe.check({'text': t}); reasons[t] = why; return keep
    fns = {'dataalchemy': ours, 'reference': ref_gopher}
    try:
        from datatrove.data import Document
        from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    except ImportError as e:
        print(f'datatrove: not importable ({e}); the speed ratio below is against the reference')
    else:
        q, rp = GopherQualityFilter(), GopherRepetitionFilter()
        def dt(t):
            d = Document(text=t, id='x')
            v = q.filter(d)
            if v is True: v = rp.filter(d)
            if v is True: return True
            theirs[t] = v[1] if isinstance(v, tuple) else 'drop'
            return False
        dt('The warm-up loads the spaCy tokenizer before the clock starts.')
        fns['datatrove'] = dt
    res = run_interleaved(fns, texts)

    n = len(texts)
    for k, (v, s) in res.items():
        print(f'{k:12s}: {n / s:9,.0f} texts per CPU second   keeps {sum(v) / n:6.1%}')
    names = list(res)
    for i, x in enumerate(names):
        for y in names[i + 1:]:
            agree = sum(p == q for p, q in zip(res[x][0], res[y][0])) / n
            print(f'agreement {x} vs {y}: {agree:.2%}')
    base = 'datatrove' if 'datatrove' in res else 'reference'
    print(f'speed: dataalchemy is {res[base][1] / res["dataalchemy"][1]:.1f}x faster than {base}')
    for other in [k for k in names if k != 'dataalchemy']:
        diff = Counter((('keep' if p else reasons[t]), ('keep' if q else theirs.get(t, 'drop')))
                       for t, p, q in zip(texts, res['dataalchemy'][0], res[other][0]) if p != q)
        if diff: print(f'dataalchemy vs {other}, commonest disagreements (ours, theirs): {diff.most_common(6)}')


if __name__ == '__main__':
    main()
