"""What encryption at rest and the out-of-distribution score cost, each against its own baseline in the same run.

- Ingest of an N-row CSV into a snapshot with `[privacy] encrypt` off (the baseline) and on (Parquet modular encryption),
  alternating, median of the rounds; both snapshots must have the same content hash.
- The OOD score of one record (`mlnb.misuse.Outliers.score`) against the model call it rides with (a fitted
  HistGradientBoosting Pipeline's `predict_proba` on the same record), median of many calls.

Run: .venv/bin/python benchmarks/bench_encrypt.py [--rows N] [--rounds R] [--write]   (--write appends to benchmarks/RESULTS.md)
"""
import argparse, os, platform, statistics, tempfile, time
from datetime import datetime, timezone
from pathlib import Path
import numpy as np, pandas as pd

HERE = Path(__file__).parent


def ingest_times(rows:int, rounds:int) -> dict:
    "Median seconds of ingesting the same CSV with encryption off and on, the snapshot sizes, and whether the hashes agree."
    from mlnb.config import new_project
    from mlnb.ingest import ingest
    with tempfile.TemporaryDirectory() as d:
        d, rng = Path(d), np.random.default_rng(0)
        pd.DataFrame({'id': np.arange(rows), 'x': rng.normal(size=rows), 'y': rng.normal(size=rows), 'k': rng.integers(0, 1000, rows),
                      'city': rng.choice([f'city{i}' for i in range(500)], rows), 'note': [f'n{i:07d}' for i in range(rows)],
                      'target': rng.integers(0, 2, rows)}).to_csv(d/'big.csv', index=False)
        projects = {}
        for mode in ('off', 'on'):
            f = new_project(d/mode)
            f.write_text(f.read_text() + f'\n[privacy]\nencrypt = {mode}\n')
            projects[mode] = f
        data = {'source': str(d/'big.csv'), 'target': 'target'}
        ingest(data, d/'warm', project=projects['off'])
        times, snaps = {'off': [], 'on': []}, {}
        for i in range(rounds):
            for mode in ('off', 'on'):
                t0 = time.perf_counter()
                snaps[mode] = ingest(data, d/f'{mode}{i}', project=projects[mode])
                times[mode].append(time.perf_counter() - t0)
        return {'csv_mb': (d/'big.csv').stat().st_size / 1e6, **{m: statistics.median(t) for m, t in times.items()},
                'sizes': {m: s.path.stat().st_size / 1e6 for m, s in snaps.items()}, 'same_hash': snaps['on'].hash == snaps['off'].hash}


def ood_times(calls:int=2000) -> dict:
    "Median milliseconds of one record's model call and of its OOD score, on the breast cancer data (30 features)."
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from mlnb.misuse import Outliers, fit_outliers
    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    model = make_pipeline(StandardScaler(), HistGradientBoostingClassifier(random_state=0)).fit(X, y)
    o = Outliers(fit_outliers(X, [{'name': c, 'kind': 'number'} for c in X.columns]))
    one, row = X.iloc[[0]], [X.iloc[0].to_dict()]
    def median_ms(f):
        f()
        ts = []
        for _ in range(calls):
            t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
        return statistics.median(ts) * 1000
    return {'model': median_ms(lambda: model.predict_proba(one)), 'ood': median_ms(lambda: o.score(row))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--rows', type=int, default=200_000)
    ap.add_argument('--rounds', type=int, default=9)
    ap.add_argument('--write', action='store_true', help='append the results to benchmarks/RESULTS.md')
    a = ap.parse_args()
    r, o = ingest_times(a.rows, a.rounds), ood_times()
    lines = [f"- ingest of a {a.rows}-row CSV ({r['csv_mb']:.1f} MB), median of {a.rounds} alternating rounds: encryption off (baseline) "
             f"{r['off']:.3f} s, on {r['on']:.3f} s: x{r['on'] / r['off']:.2f}; snapshot {r['sizes']['off']:.2f} MB plain, "
             f"{r['sizes']['on']:.2f} MB encrypted; same content hash: {r['same_hash']}",
             f"- OOD score of one record: {o['ood']:.3f} ms vs {o['model']:.3f} ms for the model call it rides with (baseline, "
             f"HistGradientBoosting Pipeline, 30 features): x{o['ood'] / o['model']:.2f}"]
    print('\n'.join(lines))
    if a.write:
        head = (f"\n## bench_encrypt — {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} cores, "
                f"Python {platform.python_version()}\n\n`.venv/bin/python benchmarks/bench_encrypt.py --rows {a.rows} --rounds {a.rounds}`\n\n")
        with open(HERE/'RESULTS.md', 'a') as f: f.write(head + '\n'.join(lines) + '\n')


if __name__ == '__main__':
    main()
