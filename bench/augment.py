"""Augmentation throughput and memory: records/s and peak RSS at 10k and 50k T0 records, old vs new.

Grows the first N records of /work/shared/corpora/t0_train_50k.jsonl.gz (English; the `prompt` is reworded, the
`completion` is the answer) to 1.3 N with synonym replacement, each run in its own process so that its peak RSS
is its own. `new` is this checkout's `dataalchemy.augment`; `old` is `dataalchemy/augment.py` as of commit
6ccdb9d (before issue #17), loaded from git, with its own quadratic near-duplicate index and its uncached WordNet
counts. WordNet is loaded before the clock starts; MiniLM is not used (the similarity check is the lexical one, so
that both sides do comparable work; `--similarity minilm` measures the model-backed check).

    python bench/augment.py [--sizes 10000,50000] [--old-sizes 10000] [--factor 1.3] [--similarity lexical]
    python bench/augment.py --index [--sizes 10000,50000]

The new code rejects far more candidates (most T0 prompts are a quoted passage: one changed word outside it makes a
near duplicate), so it does more work per kept record; `candidates/s` counts every candidate made and judged.
`--index` isolates the near-duplicate index, the part that was quadratic: add N prompts, then check 0.3 N
one-word-deleted variants (adding each that passes), old `dedup.NearDupIndex` vs new `augment.StreamDupIndex`,
each in its own process.
"""
from __future__ import annotations
import argparse, gzip, json, resource, subprocess, sys, time, types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPORA = ROOT.parents[0] / 'shared' / 'corpora'
if not (CORPORA / 't0_train_50k.jsonl.gz').exists(): CORPORA = Path('/work/shared/corpora')
OLD_COMMIT = '6ccdb9d'


def load(n: int) -> list[dict]:
    out = []
    with gzip.open(CORPORA / 't0_train_50k.jsonl.gz', 'rt') as f:
        for line in f:
            if len(out) >= n: break
            out.append(json.loads(line))
    return out


def old_module():
    "dataalchemy/augment.py of OLD_COMMIT, imported as dataalchemy._augment_old."
    src = subprocess.run(['git', '-C', str(ROOT), 'show', f'{OLD_COMMIT}:dataalchemy/augment.py'], capture_output=True,
                         text=True, check=True).stdout
    src = src.replace("@app.command('augment')", "@app.command('augment-old')")   # do not replace the real CLI verb
    mod = types.ModuleType('dataalchemy._augment_old')
    mod.__package__ = 'dataalchemy'
    sys.modules[mod.__name__] = mod
    exec(compile(src, f'{OLD_COMMIT}:dataalchemy/augment.py', 'exec'), mod.__dict__)
    return mod


def one(impl: str, n: int, factor: float, similarity: str) -> dict:
    import dataalchemy.augment as new
    aug = old_module() if impl == 'old' else new
    recs = load(n)
    syn = aug.WordNetSynonyms()
    syn.synonyms('car')                                     # WordNet loaded before the clock starts
    kw = {} if impl == 'old' else {'similarity': aug.SimilarityCheck(similarity)}
    st = aug.Stats('augment')
    t = time.perf_counter()
    out = aug.augment_dataset(recs, round(n * factor), method='synonym', seed=0, stats=st, synonyms=syn, **kw)
    dt = time.perf_counter() - t
    cands = (len(out) - n) + sum(st.reasons.values())
    return {'impl': impl, 'n': n, 'out': len(out), 'added': len(out) - n, 'seconds': round(dt, 1),
            'records_per_s': round(n / dt), 'candidates_per_s': round(cands / dt), 'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            'dropped': dict(st.reasons.most_common(4))}


def one_index(impl: str, n: int) -> dict:
    import random
    from dataalchemy.augment import StreamDupIndex
    from dataalchemy.dedup import NearDupIndex
    texts = [r['prompt'] for r in load(n)]
    rng = random.Random(0)
    probes = []
    for t in rng.sample(texts, int(0.3 * n)):
        w = t.split(' ')
        del w[rng.randrange(len(w))]
        probes.append(' '.join(w))
    ix = NearDupIndex(0.8, 3) if impl == 'old' else StreamDupIndex(0.8, 3)
    t0 = time.perf_counter()
    if impl == 'old':
        for t in texts: ix.add(t)
    else: ix.add_many(texts)
    t1 = time.perf_counter()
    found = 0
    for p in probes:
        dup, _ = ix.check(p)
        if dup: found += 1
        else: ix.add(p)
    t2 = time.perf_counter()
    return {'impl': impl, 'n': n, 'add_s': round(t1 - t0, 1), 'check_s': round(t2 - t1, 1), 'probes': len(probes),
            'found': found, 'checks_per_s': round(len(probes) / (t2 - t1)),
            'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--sizes', default='10000,50000')
    ap.add_argument('--old-sizes', default='10000')
    ap.add_argument('--factor', type=float, default=1.3)
    ap.add_argument('--similarity', default='lexical')
    ap.add_argument('--index', action='store_true', help='benchmark the near-duplicate index alone')
    ap.add_argument('--one', nargs=2, metavar=('IMPL', 'N'), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        f = one_index(a.one[0], int(a.one[1])) if a.index else one(a.one[0], int(a.one[1]), a.factor, a.similarity)
        print(json.dumps(f)); return
    if a.index:
        print(f"{'impl':5} {'texts':>8} {'add s':>7} {'probes':>7} {'check s':>8} {'checks/s':>9} {'found':>6} {'peak RSS':>9}")
        for n in [int(x) for x in a.sizes.split(',') if x]:
            for impl in ('old', 'new'):
                r = subprocess.run([sys.executable, __file__, '--index', '--one', impl, str(n)], capture_output=True, text=True)
                if r.returncode: print(f'{impl:5} {n:>8}  failed: {r.stderr.strip()[-300:]}'); continue
                d = json.loads(r.stdout.strip().splitlines()[-1])
                print(f"{impl:5} {n:>8} {d['add_s']:>7} {d['probes']:>7} {d['check_s']:>8} {d['checks_per_s']:>9} {d['found']:>6} "
                      f"{d['peak_rss_mb']:>6} MB", flush=True)
        return
    runs = [('old', int(n)) for n in a.old_sizes.split(',') if n] + [('new', int(n)) for n in a.sizes.split(',') if n]
    print(f"{'impl':5} {'records':>8} {'out':>8} {'added':>7} {'seconds':>8} {'records/s':>10} {'cands/s':>8} {'peak RSS':>9}  dropped")
    for impl, n in runs:
        r = subprocess.run([sys.executable, __file__, '--one', impl, str(n), '--factor', str(a.factor),
                            '--similarity', a.similarity], capture_output=True, text=True)
        if r.returncode:
            print(f'{impl:5} {n:>8}  failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}'); continue
        d = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"{impl:5} {d['n']:>8} {d['out']:>8} {d['added']:>7} {d['seconds']:>8} {d['records_per_s']:>10} {d['candidates_per_s']:>8} "
              f"{d['peak_rss_mb']:>6} MB  {d['dropped']}", flush=True)


if __name__ == '__main__':
    main()
