"""Throughput of the LLM engine against a local OpenAI-compatible server with a fixed reply latency.

Three clients, same server, same run:
  1. sequential: one request at a time with the sync OpenAI client (the course's loop without its sleep(1));
  2. bare: AsyncOpenAI with an asyncio.Semaphore(64), no cache, no limits, no progress bar (the honest ceiling);
  3. engine: dataalchemy.llm.Engine at concurrency 64 with its SQLite cache, limiters, progress bar and JSONL output on.

The server (dataalchemy.testing.FakeOpenAI) runs in its own process so it does not share the client's interpreter.
Goals (issue 3): engine >= 0.9 x bare, engine >= 50 x sequential. Client CPU time per request is measured with
time.process_time() in this (client) process.

Single-stream case (issue 23): the server answers one request at a time and queues the others, and finishes the
generations of clients that gave up (as `transformers serve` does). The Engine with its defaults (adaptive in-flight
limit up to 16, 6 retries, retry budget) against the same Engine at fixed concurrencies 1, 2, 4, 8 and 16
(adaptive=False), each against a fresh server; the timeout is scaled with the reply time (--single-timeout) the way
60 s relates to a local model's reply. Useful replies per minute = successful results / wall minutes.
Goal: defaults >= 0.8 x the best fixed setting, no abandoned generations.

    python bench/llm_throughput.py [--n 2000] [--latency 0.1] [--concurrency 64] [--seq-n 60] [--rounds 2]
    python bench/llm_throughput.py --only single [--single-n 40] [--single-latency 0.2] [--single-timeout 1]
"""
import argparse, asyncio, os, tempfile, time
from pathlib import Path

import openai

from dataalchemy.llm import Engine
from dataalchemy.testing import FakeOpenAIProcess


def msgs(tag, i):
    return [{"role": "user", "content": f"bench {tag} request {i}: explain what machine learning is"}]


def sequential(url, n, tag):
    client = openai.OpenAI(base_url=url, api_key="bench-key")
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        r = client.chat.completions.create(model="fake-model", messages=msgs(tag, i))
        assert r.choices[0].message.content
    return time.perf_counter() - t0, time.process_time() - c0


async def _bare(url, n, conc, tag):
    client = openai.AsyncOpenAI(base_url=url, api_key="bench-key")
    sem = asyncio.Semaphore(conc)
    async def one(i):
        async with sem:
            r = await client.chat.completions.create(model="fake-model", messages=msgs(tag, i))
            return r.choices[0].message.content
    out = await asyncio.gather(*(one(i) for i in range(n)))
    await client.close()
    assert all(out)


def bare(url, n, conc, tag):
    t0, c0 = time.perf_counter(), time.process_time()
    asyncio.run(_bare(url, n, conc, tag))
    return time.perf_counter() - t0, time.process_time() - c0


def engine(url, n, conc, tag, workdir):
    e = Engine(base_url=url, api_key="bench-key", model="fake-model", concurrency=conc, progress=True,
               cache_dir=workdir / f"cache-{tag}", max_retries=2)
    reqs = [{"id": f"{tag}-{i}", "messages": msgs(tag, i)} for i in range(n)]
    t0, c0 = time.perf_counter(), time.process_time()
    res = e.generate(reqs, out=workdir / f"out-{tag}.jsonl")
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    bad = [r for r in res if not r.ok]
    assert not bad, bad[0].error
    e.close()
    return dt, cpu


def proc_cpu(pid):
    "CPU seconds (user + system) used so far by process `pid` (Linux)."
    try: f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError: return float("nan")
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def single_stream_case(n, latency, timeout, workdir):
    "(label, seconds, ok, server stats) per client setting, each against its own single-stream server."
    rows = []
    for label, kw in [("defaults (adaptive, up to 16)", {}), *((f"fixed {c}", {"concurrency": c, "adaptive": False})
                                                               for c in (1, 2, 4, 8, 16))]:
        with FakeOpenAIProcess(latency=latency, extra_args=["--single-stream", "--echo"]) as srv:
            e = Engine(base_url=srv.url, api_key="bench-key", model="fake-model", progress=False, use_cache=False,
                       timeout=timeout, **kw)
            t0 = time.perf_counter()
            res = e.generate([{"id": f"s{i}", "messages": msgs("single", i)} for i in range(n)])
            dt = time.perf_counter() - t0
            time.sleep(min(2.0, latency * 4))                          # let abandoned generations finish and be counted
            rows.append((label, dt, sum(r.ok for r in res), srv.stats(), e.stopped))
    return rows


def print_single(rows, n, latency, timeout):
    print(f"\nsingle-stream server: {latency * 1000:.0f} ms per reply, one at a time; {n} requests; timeout {timeout:g} s")
    print(f"{'client':<32} {'seconds':>8} {'ok':>4} {'useful/min':>10} {'sent':>5} {'cancelled':>9} {'abandoned':>9}")
    for label, dt, ok, st, stopped in rows:
        print(f"{label:<32} {dt:>8.2f} {ok:>4} {ok / dt * 60:>10.1f} {st['n_requests']:>5} {st['cancelled']:>9} "
              f"{st['abandoned']:>9}" + ("  (run stopped)" if stopped else ""))
    upm = {label: ok / dt * 60 for label, dt, ok, _, _ in rows}
    best = max((k for k in upm if k.startswith("fixed")), key=upm.get)
    r = upm[rows[0][0]] / upm[best]
    ab = rows[0][3]["abandoned"]
    print(f"defaults / best fixed ({best}) = {r:.2f}  (goal >= 0.8)  {'OK' if r >= 0.8 else 'BELOW GOAL'}; "
          f"abandoned generations with the defaults: {ab}  {'OK' if ab == 0 else 'NOT ZERO'}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--seq-n", type=int, default=60, help="requests for the sequential baseline (extrapolated)")
    ap.add_argument("--rounds", type=int, default=2, help="bare/engine rounds, interleaved; the best of each is reported")
    ap.add_argument("--only", choices=["throughput", "single"], default=None, help="run one of the two cases")
    ap.add_argument("--single-n", type=int, default=40)
    ap.add_argument("--single-latency", type=float, default=0.2, help="seconds per reply of the single-stream server")
    ap.add_argument("--single-timeout", type=float, default=1.0, help="client timeout in the single-stream case")
    a = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="llm-bench-"))
    if a.only != "throughput":
        print_single(single_stream_case(a.single_n, a.single_latency, a.single_timeout, workdir), a.single_n,
                     a.single_latency, a.single_timeout)
        if a.only == "single": return
    print(f"server: FakeOpenAI in a separate process, {a.latency * 1000:.0f} ms per reply; client: this process; "
          f"{os.cpu_count()} CPUs; load average before the run {os.getloadavg()[0]:.1f}")
    with FakeOpenAIProcess(latency=a.latency) as srv:
        sequential(srv.url, 3, "warmup")                               # imports, connection setup
        seq_t, seq_cpu = sequential(srv.url, a.seq_n, "seq")
        runs = {"bare": [], "engine": []}
        for k in range(a.rounds):
            runs["bare"].append(bare(srv.url, a.n, a.concurrency, f"bare{k}"))
            runs["engine"].append(engine(srv.url, a.n, a.concurrency, f"engine{k}", workdir))
        stats = srv.stats()
        srv_cpu = proc_cpu(srv.proc.pid)
    seq_rps = a.seq_n / seq_t
    best = {k: min(v) for k, v in runs.items()}
    rps = {k: a.n / t for k, (t, _) in best.items()}
    cpu = {k: c / a.n * 1000 for k, (_, c) in best.items()}
    print(f"\n{'client':<44} {'requests':>8} {'seconds':>8} {'req/s':>8} {'CPU ms/req':>10}")
    print(f"{'sequential (sync OpenAI, one at a time)':<44} {a.seq_n:>8} {seq_t:>8.2f} {seq_rps:>8.1f} "
          f"{seq_cpu / a.seq_n * 1000:>10.2f}")
    print(f"{'bare AsyncOpenAI + Semaphore(%d)' % a.concurrency:<44} {a.n:>8} {best['bare'][0]:>8.2f} {rps['bare']:>8.1f} "
          f"{cpu['bare']:>10.2f}")
    print(f"{'Engine(concurrency=%d), cache+out+progress' % a.concurrency:<44} {a.n:>8} {best['engine'][0]:>8.2f} "
          f"{rps['engine']:>8.1f} {cpu['engine']:>10.2f}")
    for k in runs:
        print(f"  {k} rounds (s): " + ", ".join(f"{t:.2f}" for t, _ in runs[k]))
    print(f"\nsequential measured on {a.seq_n} requests and extrapolated: {a.n} requests would take "
          f"{a.n / seq_rps:.0f} s at {seq_rps:.1f} req/s")
    r_bare, r_seq = rps["engine"] / rps["bare"], rps["engine"] / seq_rps
    print(f"engine / bare loop  = {r_bare:.2f}x  (goal >= 0.9)  {'OK' if r_bare >= 0.9 else 'BELOW GOAL'}")
    print(f"engine / sequential = {r_seq:.1f}x  (goal >= 50)  {'OK' if r_seq >= 50 else 'BELOW GOAL'}")
    print(f"bare / sequential   = {rps['bare'] / seq_rps:.1f}x;  ideal at {a.concurrency} in flight: "
          f"{a.concurrency / a.latency:.0f} req/s")
    print(f"server saw {stats['n_requests']} requests, at most {stats['max_in_flight']} in flight, "
          f"{srv_cpu / stats['n_requests'] * 1000:.2f} ms CPU per request; load average after {os.getloadavg()[0]:.1f}")
    print("note: on a shared machine the concurrent clients are CPU-bound and slow down with the load, while the "
          "sequential baseline is latency-bound and does not: compare CPU ms/request too.")


if __name__ == "__main__":
    main()
