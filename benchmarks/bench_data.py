"""Data layer benchmarks (issue 4): each figure is a ratio against a baseline measured in the same run.

1. validation of 1,000,000 rows x 20 columns with 20 expectations: the gate's Great Expectations validation
   (mlnb.validate.validate, what mlnb.validate.gate and validate_batch run) vs the same rules as vectorized pandas checks
   computing the same things (pass/fail, unexpected count, the first 20 unexpected values and their rows) (target: at
   most 3x); the whole gate with its Data Docs built (mlnb.validate.gate) on its own line; GX import and context
   start-up on their own line (a fresh process: paid once per kernel, not per validation);
2. ingest of a 5,000,000-row CSV (about 1 GB, generated into /tmp) into a snapshot: peak memory (target: at most 1.5 GB)
   and wall time vs pyarrow.csv.read_csv + pyarrow.parquet.write_table of the same file (target: at most 1.5x).
   Each is measured in its own subprocess (its own peak RSS), alternating, best of two.
3. very wide data (issue 14, item 10): the gate (mlnb.validate.gate: GX validation, Data Docs, reports) on 300 rows x 2,000
   numeric columns with its profiled suite (6,005 expectations) vs the same rules as vectorized pandas checks
   (`pandas_rules`, one vectorized check a rule) (target: at most 5x), and the gate's time on 2,000 columns over 1,000
   (target: at most 2.2); a whole-frame numpy check of the same rules on its own line, for scale.

Run: .venv/bin/python benchmarks/bench_data.py   (appends to benchmarks/RESULTS.md with --write; --rows N for a smaller CSV;
     --validation-only [--vrows N] to iterate on the gate alone, --wide-only for item 3 alone, never written)
"""
import json, os, platform, subprocess, sys, tempfile, time
from datetime import datetime, timezone
from pathlib import Path
import numpy as np, pandas as pd

os.environ.setdefault('BENTOML_DO_NOT_TRACK', 'true'); os.environ.setdefault('GX_ANALYTICS_ENABLED', 'false')
PY = sys.executable
GB = 2**30


def machine():
    mem = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GB
    load = os.getloadavg()[0]
    return f"{platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB, Python {platform.python_version()}, load {load:.1f} at start"


# ---- 1. validation -------------------------------------------------------------------------------------------------

def frame(n=1_000_000, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({f'x{i}': rng.normal(100, 15, n) for i in range(12)})
    for i in range(4): df[f'k{i}'] = rng.integers(0, 1000, n)
    for i in range(3): df[f'c{i}'] = rng.choice(['alpha', 'beta', 'gamma', 'delta'], n)
    df['target'] = rng.integers(0, 2, n)
    df.loc[::1000, 'x0'] = np.nan                                   # some nulls, allowed by `mostly`
    df.loc[5, 'x1'] = 1e6; df.loc[7, 'c0'] = 'omega'               # a warning range failure and an unseen category
    return df


def suite(df) -> dict:
    "20 expectations: the column set, the row count, 6 not-null, 8 ranges, 4 value sets; two warnings fail (x1, c0)."
    e = lambda t, sev='critical', **kw: {'type': t, 'kwargs': kw, 'severity': sev, 'meta': {}}
    exps = [e('expect_table_columns_to_match_set', column_set=list(df.columns), exact_match=True),
            e('expect_table_row_count_to_be_between', min_value=1000)]
    exps += [e('expect_column_values_to_not_be_null', column=c, **({'mostly': 0.99} if c == 'x0' else {})) for c in ['x0', 'x2', 'x3', 'k0', 'c1', 'target']]
    exps += [e('expect_column_values_to_be_between', 'warning', column=c, min_value=0, max_value=200) for c in ['x1', 'x4', 'x5', 'x6', 'x7', 'x8']]
    exps += [e('expect_column_values_to_be_between', 'warning', column=c, min_value=0, max_value=1000) for c in ['k1', 'k2']]
    exps += [e('expect_column_values_to_be_in_set', 'warning', column=c, value_set=['alpha', 'beta', 'gamma', 'delta']) for c in ['c0', 'c1', 'c2']]
    exps += [e('expect_column_values_to_be_in_set', column='target', value_set=[0, 1])]
    return {'name': 'bench', 'expectations': exps, 'meta': {'target': 'target'}}


def pandas_rules(df, suite) -> list:
    "The same rules, vectorized: (type, column, passed, unexpected count, first 20 values, their rows)."
    out = []
    for x in suite['expectations']:
        t, kw = x['type'], x['kwargs']
        if t == 'expect_table_columns_to_match_set':
            out.append((t, None, set(df.columns) == set(kw['column_set']), None, [], [])); continue
        if t == 'expect_table_row_count_to_be_between':
            out.append((t, None, len(df) >= kw['min_value'], None, [], [])); continue
        s = df[kw['column']]; present = s.notna()
        if t == 'expect_column_values_to_be_in_type_list':
            numeric = pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)
            out.append((t, kw['column'], numeric == ('float64' in kw['type_list']), None, [str(s.dtype)], [])); continue
        if t == 'expect_column_values_to_not_be_null': bad = ~present; denom = len(s)
        elif t == 'expect_column_values_to_be_between': bad = present & ~s.between(kw['min_value'], kw['max_value']); denom = int(present.sum())
        else: bad = present & ~s.isin(kw['value_set']); denom = int(present.sum())
        n = int(bad.sum()); idx = np.flatnonzero(bad.to_numpy())[:20]
        out.append((t, kw['column'], n <= (1 - kw.get('mostly', 1.0)) * denom, n, s.iloc[idx].tolist(), idx.tolist()))
    return out


def best(fn, k=2):
    times = []
    for _ in range(k):
        t = time.perf_counter(); r = fn(); times.append(time.perf_counter() - t)
    return min(times), r


def bench_validation(n=1_000_000):
    start = json.loads(subprocess.run([PY, '-c', (
        "import json, os, time; t = time.perf_counter(); import great_expectations as gx; i = time.perf_counter() - t; "
        "t = time.perf_counter(); gx.get_context(mode='ephemeral'); print(json.dumps([i, time.perf_counter() - t]))")],
        capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
    from mlnb.validate import gate, validate
    df = frame(n); s = suite(df)
    validate(df.head(1000), s)                                       # import and warm up outside the timings
    t_pd, rules = best(lambda: pandas_rules(df, s))
    t_gx, rep = best(lambda: validate(df, s))
    assert {(f.column, f.severity) for f in rep.failures} == {(r[1], x['severity']) for r, x in zip(rules, s['expectations']) if not r[2]}, (rep.failures, rules)
    with tempfile.TemporaryDirectory() as d:
        gate(df.head(1000), s, d)                                    # Data Docs templates loaded outside the timings
        t_docs, _ = best(lambda: gate(df, s, d))
    return start, t_gx, t_pd, t_docs


# ---- 3. very wide data --------------------------------------------------------------------------------------------

def wide_frame(cols, rows=300, seed=7) -> pd.DataFrame:
    "The tryout's wide case: `rows` x `cols` normal floats and a binary target `y`."
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(rng.normal(size=(rows, cols)), columns=[f'f{i}' for i in range(cols)])
    return df.assign(y=(df.f0 + df.f1 > 0).astype(int))


def numpy_rules(df, suite):
    "The same rules checked on the whole frame at once (pass/fail only): how fast the rules themselves can go."
    kinds = {}
    for x in suite['expectations']: kinds.setdefault(x['type'], []).append(x['kwargs'])
    x = df.to_numpy(); cols = {c: i for i, c in enumerate(df.columns)}
    nulls = np.isnan(x).sum(axis=0)
    ok = [nulls[[cols[k['column']] for k in kinds['expect_column_values_to_not_be_null']]] <= 0]
    b = kinds['expect_column_values_to_be_between']; j = [cols[k['column']] for k in b]
    lo, hi = np.array([k['min_value'] for k in b]), np.array([k['max_value'] for k in b])
    ok.append(((x[:, j] >= lo) & (x[:, j] <= hi)).all(axis=0))
    return np.concatenate(ok)


def bench_wide(widths=(1000, 2000)):
    import warnings
    from mlnb.validate import gate, profile
    warnings.simplefilter('ignore')                                  # the width warning, once per gate
    out = {}
    with tempfile.TemporaryDirectory() as d:
        small = wide_frame(20); gate(small, profile(small, 'y'), d)   # GX imported, templates compiled outside the timings
        for cols in widths:
            df = wide_frame(cols); s = profile(df, 'y', 'wide')
            bad = df.copy(); bad.loc[:4, 'f3'] = np.nan; bad.loc[7, 'f10'] = 1e6     # a critical and a warning failure
            t_pd, rules = best(lambda: pandas_rules(bad, s))
            t_np, _ = best(lambda: numpy_rules(bad, s))
            def run():
                try: return gate(bad, s, d)
                except Exception as e: return e
            t_gate, err = best(run)
            rep = validate_report(bad, s)
            assert {(f.column, f.severity) for f in rep.failures} == {(r[1], x['severity']) for r, x in zip(rules, s['expectations']) if not r[2]}, (rep.failures, [r for r in rules if not r[2]])
            assert 'f3' in str(err), err
            out[cols] = (len(s['expectations']), t_gate, t_pd, t_np)
    return out


def validate_report(df, s):
    from mlnb.validate import validate
    return validate(df, s)


# ---- 2. ingest -----------------------------------------------------------------------------------------------------

def make_csv(path: Path, n: int, chunk=500_000):
    "`n` rows, 24 columns (ids, a timestamp, 12 floats, 4 ints, 4 short strings, a target): about 200 bytes a row."
    import pyarrow as pa, pyarrow.csv as pcsv
    rng = np.random.default_rng(0); cats = np.array(['alpha', 'beta', 'gamma', 'delta', 'epsilon'])
    with open(path, 'wb') as f:
        w = None
        for start in range(0, n, chunk):
            m = min(chunk, n - start); ids = np.arange(start, start + m)
            cols = {'id': ids, 'ts': np.datetime64('2024-01-01T00:00:00') + ids.astype('timedelta64[s]')}
            for i in range(12): cols[f'x{i}'] = rng.normal(100, 15, m).round(4)
            for i in range(4): cols[f'k{i}'] = rng.integers(0, 100_000, m)
            for i in range(4): cols[f'c{i}'] = cats[rng.integers(0, 5, m)]
            cols['note'] = np.char.add('row-', ids.astype(str)); cols['target'] = rng.integers(0, 2, m)
            t = pa.table(cols)
            if w is None: w = pcsv.CSVWriter(f, t.schema)
            w.write_table(t)
        w.close()


CHILD = {
    'pyarrow': ("import pyarrow.csv as pcsv, pyarrow.parquet as pq\n"
                "pq.write_table(pcsv.read_csv(SRC), OUT)"),
    'mlnb': ("from mlnb.ingest import ingest\n"
             "s = ingest({'source': SRC, 'target': 'target'}, OUT)\n"
             "assert s.rows == ROWS"),
}

def child(kind, src, out, rows) -> tuple[float, float]:
    "Run one ingest in a fresh process; its wall time (work only) and its own peak RSS (VmHWM: ru_maxrss would count the forking parent)."
    code = (f"import json, time\nSRC, OUT, ROWS = {str(src)!r}, {str(out)!r}, {rows}\n"
            "import pyarrow, pandas\nt = time.perf_counter()\n" + CHILD[kind] +
            "\nhwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))"
            "\nprint(json.dumps([time.perf_counter() - t, int(hwm.split()[1]) * 1024]))")
    r = subprocess.run([PY, '-c', code], capture_output=True, text=True)
    if r.returncode: raise RuntimeError(r.stderr)
    return tuple(json.loads(r.stdout.strip().splitlines()[-1]))


def bench_ingest(rows):
    d = Path(tempfile.mkdtemp(prefix='mlnb-bench-', dir='/tmp'))
    try:
        src = d/'big.csv'
        t = time.perf_counter(); make_csv(src, rows); gen = time.perf_counter() - t
        size = src.stat().st_size
        res = {'pyarrow': [], 'mlnb': []}
        for _ in range(2):
            for kind in res:
                out = d/f'{kind}.parquet' if kind == 'pyarrow' else d/'snap'
                res[kind].append(child(kind, src, out, rows))
        ours = min(r[0] for r in res['mlnb']), max(r[1] for r in res['mlnb'])
        theirs = min(r[0] for r in res['pyarrow']), max(r[1] for r in res['pyarrow'])
        return size, gen, ours, theirs
    finally:
        import shutil; shutil.rmtree(d, ignore_errors=True)


def main():
    rows = int(sys.argv[sys.argv.index('--rows') + 1]) if '--rows' in sys.argv else 5_000_000
    if '--validation-only' in sys.argv:
        n = int(sys.argv[sys.argv.index('--vrows') + 1]) if '--vrows' in sys.argv else 1_000_000
        (imp, ctx), t_gx, t_pd, t_docs = bench_validation(n)
        print(f"{n:,} rows: GX import {imp:.2f} s, context {ctx:.3f} s; validate {t_gx:.3f} s, pandas {t_pd:.3f} s, ratio {t_gx/t_pd:.2f}; "
              f"gate with Data Docs {t_docs:.3f} s, ratio {t_docs/t_pd:.2f}")
        return
    if '--wide-only' in sys.argv:
        for cols, (n, t_gate, t_pd, t_np) in (w := bench_wide()).items():
            print(f"300 x {cols:,} ({n:,} expectations): gate {t_gate:.3f} s, pandas {t_pd:.3f} s, ratio {t_gate/t_pd:.2f}; numpy {t_np*1e3:.1f} ms")
        print(f"t(2,000) / t(1,000): {w[2000][1]/w[1000][1]:.2f}")
        return
    header = f"\n## Data layer ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {machine()})\n"
    size, gen, (t_ing, rss_ing), (t_pa, rss_pa) = bench_ingest(rows)
    (imp, ctx), t_gx, t_pd, t_docs = bench_validation()
    wide = bench_wide(); (n2, g2, p2, np2), g1 = wide[2000], wide[1000][1]
    lines = [header, "`.venv/bin/python benchmarks/bench_data.py --write`\n",
             "| measure | mlnb | baseline | ratio | target |", "|---|---|---|---|---|",
             f"| GX import / context start-up (fresh process, once per kernel, not per validation) | {imp:.2f} s | {ctx:.3f} s | - | - |",
             f"| the gate's validation, 1,000,000 x 20, 20 expectations: GX (mlnb.validate.validate) / vectorized pandas, same rules and results | {t_gx:.2f} s | {t_pd:.2f} s | {t_gx/t_pd:.2f} | <= 3{' (met)' if t_gx/t_pd <= 3 else ' (MISSED)'} |",
             f"| the whole gate, Data Docs built and reports written (mlnb.validate.gate) / vectorized pandas | {t_docs:.2f} s | {t_pd:.2f} s | {t_docs/t_pd:.2f} | - |",
             f"| very wide data: the gate (validation, Data Docs, reports) on 300 x 2,000 numeric, {n2:,} profiled expectations / vectorized pandas, same rules and failures | {g2:.2f} s | {p2:.2f} s | {g2/p2:.2f} | <= 5{' (met)' if g2/p2 <= 5 else ' (MISSED)'} |",
             f"| same, gate at 2,000 columns / at 1,000 | {g2:.2f} s | {g1:.2f} s | {g2/g1:.2f} | <= 2.2{' (met)' if g2/g1 <= 2.2 else ' (MISSED)'} |",
             f"| same rules as one whole-frame numpy check (pass/fail only, for scale) | {g2:.2f} s | {np2*1e3:.1f} ms | {g2/np2:.0f} | - |",
             f"| ingest {rows:,}-row CSV ({size/1e9:.2f} GB) to a snapshot: wall, mlnb.ingest / pyarrow read_csv + write_table | {t_ing:.2f} s | {t_pa:.2f} s | {t_ing/t_pa:.2f} | <= 1.5{' (met)' if t_ing/t_pa <= 1.5 else ' (MISSED)'} |",
             f"| same: peak RSS, mlnb.ingest (pyarrow's) | {rss_ing/GB:.2f} GiB | {rss_pa/GB:.2f} GiB | {rss_ing/rss_pa:.2f} | <= 1.5 GB{' (met)' if rss_ing <= 1.5e9 else ' (MISSED)'} |"]
    text = '\n'.join(lines) + f"\n\n(CSV generated in {gen:.0f} s; times are the best of two alternating runs, each in its own process.)\n"
    print(text)
    if '--write' in sys.argv:
        with open(Path(__file__).parent/'RESULTS.md', 'a') as f: f.write(text)


if __name__ == '__main__':
    main()
