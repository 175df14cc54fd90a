"""Hard-negative mining speed: blocked matmul + argpartition (dataalchemy.topk) vs a naive per-row loop, same run.

100,000 random unit vectors of 384 dimensions (all-MiniLM-L6-v2's size), top-k most similar other rows for every row.
The naive baseline (per row: similarities to all rows, then a full argsort) is timed on a subset of rows and
extrapolated linearly to all rows (running it whole would take far longer); both use the same BLAS threads.

    python bench/hard_negatives.py                  # n=100000, d=384, k=30, 2 threads
    python bench/hard_negatives.py --n 20000 --naive-rows 500
"""
import argparse, os, sys, time

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument('--n', type=int, default=100_000)
p.add_argument('--d', type=int, default=384)
p.add_argument('--k', type=int, default=30)
p.add_argument('--block', type=int, default=512)
p.add_argument('--naive-rows', type=int, default=1000, help="rows the naive loop is timed on (then extrapolated)")
p.add_argument('--threads', type=int, default=2)
a = p.parse_args()
for v in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'): os.environ[v] = str(a.threads)

import numpy as np                                                   # noqa: E402  (after the thread settings)
sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
from dataalchemy.topk import mine_hard_negatives, naive_hard_negatives, normalize_rows   # noqa: E402

rng = np.random.default_rng(0)
E = normalize_rows(rng.standard_normal((a.n, a.d), dtype=np.float32))
print(f'{a.n:,} x {a.d} float32 embeddings ({E.nbytes / 2**20:.0f} MB), top {a.k}, block {a.block}, {a.threads} threads')

sub = np.arange(min(a.naive_rows, a.n))
t0 = time.perf_counter()
naive = naive_hard_negatives(E, a.k, rows=sub)
t_naive_sub = time.perf_counter() - t0
t_naive = t_naive_sub * a.n / len(sub)
print(f'naive per-row loop: {t_naive_sub:.2f} s for {len(sub):,} rows -> {t_naive:,.0f} s extrapolated to {a.n:,} rows')

t0 = time.perf_counter()
idx, sims = mine_hard_negatives(E, a.k, block=a.block, normalized=True)
t_blocked = time.perf_counter() - t0
print(f'blocked matmul + argpartition: {t_blocked:,.1f} s for all {a.n:,} rows ({a.n / t_blocked:,.0f} rows/s)')

# the same neighbours (ties aside) on the rows both computed
agree = np.mean([len(set(x) & set(y)) / a.k for x, y in zip(idx[sub].tolist(), naive.tolist())])
print(f'agreement with the naive top-{a.k} on {len(sub):,} rows: {agree:.4f}')
print(f'speed-up: {t_naive / t_blocked:.1f}x  (naive {t_naive:,.0f} s extrapolated, blocked {t_blocked:,.1f} s)')
