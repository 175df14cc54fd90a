"""Dedup benchmark: the course's per-token MinHash loop vs dataalchemy.dedup, on the same records in the same run.

    python bench/dedup.py [--corpus ../shared/corpora/t0_train_50k.jsonl.gz] [--limit N] [--sample 5000]

Speed: records/s of (1) a faithful re-implementation of the course's SimpleDeduplicator (whitespace tokens, one
`MinHash(num_perm)` per record, `update` per token, MinHashLSH query-then-insert loop) and (2) `find_clusters`
(exact keys + numpy signatures in datasketch's scheme + banding + union-find, all cores), and their ratio.
Signature paths alone: datasketch's own batched `MinHash.bulk` (update_batch per record) vs the numpy `MinHasher`, on
the same shingles. Quality: on a sample, every pair with true Jaccard >= threshold is found by brute force on the same
shingle sets; recall (true pairs that end in one cluster) and precision (joined pairs that are true) without and with
--verify.
Against the fastest peer: rensa (Rust MinHash + LSH, `pip install rensa`, in the `dev` extra), fed the same word
5-gram shingles, and `dedup_file` as whole jobs on the same file in the same run: read the gzipped JSONL, decide,
write the kept records. rensa's job makes the shingles in Python (our tokens, then 5-word windows: the shingles
`dedup.shingles` gives for English text), builds `RMinHash` objects with `from_token_sets` and runs the
query-then-insert loop over an `RMinHashLSH` (keep the first; rensa has no exact check). Its time is also split into
shingling and MinHash + LSH.
"""
from __future__ import annotations
import argparse, gzip, json, os, sys, time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT.parent / 'shared' / 'corpora' / 't0_train_50k.jsonl.gz'


class SimpleDeduplicator:
    "The course's MinHash dedup: whitespace tokens, per-token `MinHash.update`, LSH query-then-insert."
    def __init__(self, threshold=0.8, num_perm=128):
        self.threshold, self.num_perm = threshold, num_perm

    def _tokenize(self, text): return set(text.lower().split())

    def _compute_minhash(self, text):
        from datasketch import MinHash
        m = MinHash(num_perm=self.num_perm)
        for token in self._tokenize(text): m.update(token.encode('utf-8'))
        return m

    def deduplicate(self, dataset, fields=('prompt', 'completion')):
        from datasketch import MinHashLSH
        lsh = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)
        minhashes = [self._compute_minhash(' '.join(s[f] for f in fields)) for s in dataset]
        unique = []
        for idx, mh in enumerate(minhashes):
            if lsh.query(mh): continue
            lsh.insert(f'doc_{idx}', mh)
            unique.append(dataset[idx])
        return unique


def word_shingles(toks, n=5):
    "Word n-grams of a token list; a list shorter than n is one shingle (what `dedup.shingles` does for English text)."
    return [' '.join(toks[i:i + n]) for i in range(len(toks) - n + 1)] if len(toks) >= n else ([' '.join(toks)] if toks else [])


def rensa_job(path, out, fields, threshold=0.8, num_perm=128, num_bands=16, times=None):
    "A whole rensa dedup job: read, shingle (Python), R-MinHash + LSH query-then-insert (Rust), write the kept records."
    import rensa
    from dataalchemy.dedup import _tokens, record_text
    t0 = time.perf_counter()
    with gzip.open(path, 'rt', encoding='utf-8') as f: recs = [json.loads(l) for l in f]
    sets = [word_shingles(_tokens(record_text(r, fields))) for r in recs]
    t1 = time.perf_counter()
    mhs = rensa.RMinHash.from_token_sets(sets, num_perm=num_perm, seed=1)
    lsh, keep = rensa.RMinHashLSH(threshold, num_perm, num_bands), []
    for i, mh in enumerate(mhs):
        if lsh.query(mh): continue
        lsh.insert(i, mh); keep.append(i)
    t2 = time.perf_counter()
    with open(out, 'w', encoding='utf-8') as f:
        for i in keep: f.write(json.dumps(recs[i], ensure_ascii=False) + '\n')
    if times is not None: times.update(read_shingle=t1 - t0, minhash_lsh=t2 - t1, write=time.perf_counter() - t2)
    return len(recs) - len(keep)


class Timer:
    "Wall-clock and CPU seconds (this process + finished child processes) of a block."
    def __enter__(self):
        self.w, self.t = time.perf_counter(), os.times(); return self
    def __exit__(self, *_):
        t = os.times()
        self.wall = time.perf_counter() - self.w
        self.cpu = sum(getattr(t, k) - getattr(self.t, k) for k in ('user', 'system', 'children_user', 'children_system'))


def load(path, limit=None):
    recs = []
    with gzip.open(path, 'rt', encoding='utf-8') as f:
        for line in f:
            recs.append(json.loads(line))
            if limit and len(recs) >= limit: break
    return recs


def brute_force_pairs(sets, threshold):
    "All pairs (i < j) with exact Jaccard >= threshold, via a sparse incidence matrix."
    from scipy import sparse
    allh = np.concatenate(sets)
    uniq, inv = np.unique(allh, return_inverse=True)
    rows = np.repeat(np.arange(len(sets)), [len(s) for s in sets])
    X = sparse.csr_matrix((np.ones(len(allh), np.int32), (rows, inv)), shape=(len(sets), len(uniq)))
    inter = (X @ X.T).tocoo()
    m = inter.row < inter.col
    i, j, c = inter.row[m], inter.col[m], inter.data[m]
    size = np.array([len(s) for s in sets])
    jac = c / (size[i] + size[j] - c)
    ok = jac >= threshold
    return set(zip(i[ok].tolist(), j[ok].tolist())), {(a, b): x for a, b, x in zip(i.tolist(), j.tolist(), jac.tolist())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--corpus', default=str(DEFAULT))
    ap.add_argument('--limit', type=int, default=0, help='use only the first N records (0: all)')
    ap.add_argument('--sample', type=int, default=5000, help='records for the recall/precision check')
    ap.add_argument('--sig-sample', type=int, default=5000, help='records for the signature-only comparison')
    ap.add_argument('--threshold', type=float, default=0.8)
    ap.add_argument('--num-perm', type=int, default=128)
    ap.add_argument('--workers', type=int, default=0)
    ap.add_argument('--skip-baseline', action='store_true')
    ap.add_argument('--rensa-only', action='store_true', help='only the whole-job comparison with rensa')
    ap.add_argument('--rounds', type=int, default=3, help='alternating rounds of the rensa comparison (best of each)')
    a = ap.parse_args()
    from dataalchemy.dedup import DedupOptions, MinHasher, Shingler, find_clusters, record_text, shingles
    from dataalchemy.core import Stats
    path = Path(a.corpus)
    if not path.exists(): sys.exit(f'{path}: corpus not found (pass --corpus)')
    recs = load(path, a.limit or None)
    fields = ('prompt', 'completion')
    print(f'corpus: {path.name}, {len(recs):,} records, fields {",".join(fields)}, threshold {a.threshold}, '
          f'num_perm {a.num_perm}, cores {os.cpu_count()}')

    # ---- whole jobs against rensa, the fastest peer: same file, same run, alternating, best of --rounds each
    try:
        import rensa  # noqa: F401
    except ImportError:
        print('rensa is not installed (pip install rensa): comparison skipped')
    else:
        import tempfile
        from dataalchemy.dedup import dedup_file
        out = Path(tempfile.mkdtemp(prefix='bench-dedup-'))
        best = {}
        for r in range(a.rounds):
            for name in ('rensa', 'verify', 'no-verify', 'strict'):
                tm = {}
                with Timer() as t:
                    if name == 'rensa': n_drop = rensa_job(path, out / 'r.jsonl', fields, a.threshold, a.num_perm, times=tm)
                    else:
                        st = dedup_file(path, out / 'd.jsonl', fields=','.join(fields), threshold=a.threshold,
                                        num_perm=a.num_perm, workers=a.workers, verify=name != 'no-verify',
                                        strict_clusters=name == 'strict')
                        n_drop = st.n_in - st.n_out
                if name not in best or t.wall < best[name][0].wall: best[name] = (t, n_drop, tm)
        for name, (t, n_drop, tm) in best.items():
            extra = (f" (reading + Python shingling {tm['read_shingle']:.2f} s, R-MinHash + LSH {tm['minhash_lsh']:.2f} s, "
                     f"writing {tm['write']:.2f} s)") if tm else ''
            print(f'whole job {name:9}: {t.wall:6.2f} s wall, {t.cpu:6.2f} s CPU, dropped {n_drop:,}{extra}')
        rw = best['rensa'][0].wall
        for name in ('verify', 'no-verify', 'strict'):
            print(f'rensa / dataalchemy ({name}): {rw / best[name][0].wall:.2f}x wall-clock')
        if a.rensa_only: return

    # ---- speed: the whole dedup decision, same records, same run; both warmed up first on a few records (imports,
    # datasketch's permutation tables, numpy's first calls), so the figures are throughput, not start-up
    find_clusters(recs[:300], DedupOptions(fields=','.join(fields), threshold=a.threshold, num_perm=a.num_perm, workers=1))
    SimpleDeduplicator(a.threshold, a.num_perm).deduplicate(recs[:300], fields)
    times = {}
    for verify, workers in ((False, a.workers), (True, a.workers), (False, 1), (True, 1)):
        opts = DedupOptions(fields=','.join(fields), threshold=a.threshold, num_perm=a.num_perm, workers=workers,
                            verify=verify)
        with Timer() as tf: st = Stats('dedup'); res = find_clusters(recs, opts, stats=st)
        times[verify, workers] = tf
        n_exact, n_near = int((~res.keep & res.exact_dup).sum()), int((~res.keep & ~res.exact_dup).sum())
        print(f'dataalchemy verify={str(verify):5} workers={workers or os.cpu_count()}: {tf.wall:6.2f} s wall '
              f'{len(recs)/tf.wall:8,.0f} records/s, {tf.cpu:6.2f} s CPU; dropped {res.n_dropped:,} ({n_exact:,} exact, '
              f'{n_near:,} near) in {res.n_clusters:,} clusters (bands {st.counts.get("bands")}'
              + (f', {st.counts["checked_pairs"]:,} of {st.counts["candidate_pairs"]:,} candidate pairs checked)' if verify else ')'))
    if not a.skip_baseline:
        with Timer() as tb: uniq = SimpleDeduplicator(a.threshold, a.num_perm).deduplicate(recs, fields)
        print(f'course loop (SimpleDeduplicator): {tb.wall:7.2f} s wall {len(recs)/tb.wall:8,.0f} records/s, '
              f'{tb.cpu:7.2f} s CPU; dropped {len(recs) - len(uniq):,}')
        for (verify, workers), tf in times.items():
            print(f'speed-up verify={str(verify):5} workers={workers or os.cpu_count()}: {tb.wall / tf.wall:5.1f}x wall-clock, '
                  f'{tb.cpu / tf.cpu:5.1f}x CPU time')

    # ---- signatures alone: datasketch's batched API vs the numpy path, same shingles
    sub = [record_text(r, fields) for r in recs[:a.sig_sample]]
    from datasketch import MinHash
    sh_txt = [[s.encode('utf-8') for s in set(shingles(x))] for x in sub]
    t = time.perf_counter(); MinHash.bulk(sh_txt, num_perm=a.num_perm, seed=1); t_bulk = time.perf_counter() - t
    t = time.perf_counter(); MinHasher(a.num_perm, 1)(sub); t_np = time.perf_counter() - t
    print(f'signatures on {len(sub):,} records (1 process, shingling included only for numpy): '
          f'datasketch MinHash.bulk {len(sub)/t_bulk:,.0f}/s, numpy MinHasher {len(sub)/t_np:,.0f}/s '
          f'({t_bulk / t_np:.1f}x)')

    # ---- quality on a sample: brute force on the same shingle sets
    samp = recs[:a.sample]
    sets = Shingler().sets([record_text(r, fields) for r in samp])
    truth, jac = brute_force_pairs(sets, a.threshold)
    print(f'quality sample: {len(samp):,} records, {len(truth):,} pairs with Jaccard >= {a.threshold} (brute force)')
    for verify, strict in ((False, False), (True, False), (True, True)):
        r = find_clusters(samp, DedupOptions(fields=','.join(fields), threshold=a.threshold, num_perm=a.num_perm,
                                             verify=verify, workers=a.workers, strict_clusters=strict))
        found = sum(r.label[i] == r.label[j] for i, j in truth)
        u, v = r.pairs
        uv = [(min(x, y), max(x, y)) for x, y in zip(u.tolist(), v.tolist())]
        good = sum(jac.get(p, 0.0) >= a.threshold for p in uv)
        lab = r.label
        same = [(i, j) for c in np.unique(lab[np.bincount(lab, minlength=len(lab))[lab] > 1])
                for idx in [np.flatnonzero(lab == c)] for k, i in enumerate(idx.tolist()) for j in idx[k + 1:].tolist()]
        cp = sum((i, j) in truth for i, j in same) / max(len(same), 1)
        gone = ~r.keep
        below = gone & (r.sim < a.threshold)
        print(f'  verify={str(verify):5} strict={str(strict):5}: recall {found / max(len(truth), 1):.4f}, precision of '
              f'joined pairs {good / max(len(uv), 1):.4f} ({len(uv):,} pairs), same-cluster pair precision {cp:.4f}; '
              f'dropped {int(gone.sum()):,}, of them below the threshold to the kept record {int(below.sum()):,} '
              f'({below.sum() / max(gone.sum(), 1):.1%}, min {r.sim[gone].min() if gone.any() else 1:.3f})')


if __name__ == '__main__':
    main()
