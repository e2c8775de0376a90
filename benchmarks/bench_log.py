"""Prediction-log benchmark: what logging a prediction costs on the request path, in the same run, against named baselines.

    .venv/bin/python benchmarks/bench_log.py [--rows 5000] [--rounds 3] [--write]

Measured per row (30 features), median of alternating rounds, each into a fresh SQLite store:
- `queue only`: the log before the journal (a row put on an in-memory queue), the baseline;
- `journal`: `PredictionLog.put` as the service calls it (the row appended to a journal segment with one `write`, then queued);
- `journal + encryption`: the same with `[privacy] encrypt = on` (the inputs sealed with AES-GCM before the journal sees them);
and the end-to-end time until the store has every row (the writer thread's work, off the request path).
"""
from __future__ import annotations
import argparse, os, platform, queue, statistics, sys, tempfile, time, uuid
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECORD = {f'feature_{i}': 0.1 * i for i in range(30)}


def row() -> dict:
    from mlnb.store import utcnow
    return dict(request_id=uuid.uuid4().hex, model_tag='m:1', inputs=dict(RECORD), output={'label': 1}, latency_ms=0.2, created=utcnow())


def queue_only(n: int) -> tuple[float, float]:
    "The baseline: put on an in-memory queue, as the log did before the journal."
    q, rows = queue.SimpleQueue(), [row() for _ in range(n)]
    t = time.perf_counter()
    for r in rows: q.put(('predictions', r))
    put = time.perf_counter() - t
    return put, put


def journaled(n: int, encrypt: bool) -> tuple[float, float]:
    "`PredictionLog.put` into a fresh store and journal; the put time, and the time until the store has every row."
    from mlnb import privacy
    from mlnb.service import PredictionLog
    if encrypt: privacy.use_keys(keys=privacy.new_keys(), encrypt=True)
    else: privacy.drop_keys()
    d = tempfile.mkdtemp()
    log = PredictionLog(f'sqlite:///{d}/store.db', f'{d}/journal')
    log.store.engine                                   # opened before timing
    rows = [row() for _ in range(n)]
    t = time.perf_counter()
    for r in rows: log.put('predictions', r)
    put = time.perf_counter() - t
    log.flush()
    total = time.perf_counter() - t
    log.close()
    privacy.drop_keys()
    return put, total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--rows', type=int, default=5000)
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--write', action='store_true', help='append the results to benchmarks/RESULTS.md')
    a = ap.parse_args(argv)
    kinds = {'queue only (baseline)': queue_only, 'journal': lambda n: journaled(n, False), 'journal + encryption': lambda n: journaled(n, True)}
    got = {k: [] for k in kinds}
    for _ in range(a.rounds):
        for k, f in kinds.items(): got[k].append(f(a.rows))
    base = statistics.median(p for p, _ in got['queue only (baseline)']) / a.rows * 1e6
    lines = []
    for k in kinds:
        put = statistics.median(p for p, _ in got[k]) / a.rows * 1e6
        total = statistics.median(t for _, t in got[k]) / a.rows * 1e6
        lines.append(f"- {k}: {put:.1f} µs a row on the request path ({put - base:+.1f} µs over the baseline); "
                     f"{total:.1f} µs a row until the store has it")
    print('\n'.join(lines))
    if a.write:
        head = (f"\n## bench_log — {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} cores, "
                f"Python {platform.python_version()}\n\n`.venv/bin/python benchmarks/bench_log.py --rows {a.rows} --rounds {a.rounds}` "
                f"(median of {a.rounds} alternating rounds, 30-feature rows, SQLite):\n\n")
        with open(HERE/'RESULTS.md', 'a') as f: f.write(head + '\n'.join(lines) + '\n')


if __name__ == '__main__':
    main()
