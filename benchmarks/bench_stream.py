"""Stream ingest throughput: messages/s from tansu (Kafka protocol) and redis-server into the stream store (Parquet parts and
manifest), against the same rows read from a local Parquet file by the ingest stage's reader (the baseline), in the same run.

    .venv/bin/python benchmarks/bench_stream.py [--rows 50000] [--write]
"""
import argparse, os, platform, tempfile, time
from datetime import datetime, timezone
from pathlib import Path
import numpy as np, pandas as pd
from mlnb.ingest import ingest
from mlnb.streams import consume, create_topic, local_broker, produce

HERE = Path(__file__).resolve().parent


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--rows', type=int, default=50_000)
    ap.add_argument('--write', action='store_true', help='append the results to benchmarks/RESULTS.md')
    a = ap.parse_args(argv)
    n, rng = a.rows, np.random.default_rng(0)
    df = pd.DataFrame({f'x{i}': rng.normal(size=n).round(5) for i in range(10)} | {'c': rng.choice(['a', 'b', 'c'], n), 'target': rng.integers(0, 2, n)})
    recs, out = df.to_dict('records'), {}
    with tempfile.TemporaryDirectory() as d:
        df.to_parquet(f'{d}/rows.parquet', index=False)
        t = time.perf_counter()
        ingest({'source': f'{d}/rows.parquet', 'target': 'target'}, f'{d}/snap')
        out['Parquet file (baseline)'] = n / (time.perf_counter() - t)
        for kind in ('kafka', 'redis'):
            with local_broker(kind) as base:
                url = f'{base}/rows' if kind == 'kafka' else f'{base}?stream=rows'
                if kind == 'kafka': create_topic(url, 2)
                produce(url, recs)
                for rows in (1000, 5000):
                    c = consume({'source': url, 'target': 'target', 'batch_rows': rows, 'group': f'g{rows}'}, f'{d}/ws-{kind}-{rows}')
                    assert c.rows == n, c
                    out[f'{kind} (batch {rows})'] = c.rate
    base = out['Parquet file (baseline)']
    lines = [f"| source ({n:,} rows × 12 columns) | rows/s | vs the Parquet file |", '|---|---:|---:|']
    lines += [f"| {k} | {v:,.0f} | {v / base:.2f} |" for k, v in out.items()]
    print('\n'.join(lines))
    if a.write:
        head = (f"\n## bench_stream — {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} cores, "
                f"Python {platform.python_version()}\n\n`.venv/bin/python benchmarks/bench_stream.py --rows {n}` "
                "(tansu's memory engine and redis-server on loopback, started by the script):\n\n")
        with open(HERE/'RESULTS.md', 'a') as f: f.write(head + '\n'.join(lines) + '\n')


if __name__ == '__main__':
    main()
