"""Monitoring benchmarks (issue 6): each figure is a ratio against a baseline measured in the same run.

1. drift over 100 columns (80 numeric, 20 categorical), 1,000,000 reference rows and 100,000 current rows:
   mlnb's check (`drift_report` from precomputed `reference_stats`) vs Evidently's DataDriftPreset on the same data
   (target: mlnb at least 20x faster), and whether their drifted / not-drifted verdicts agree on the synthetic shifts;
2. a health refresh over 1,000,000 logged predictions (target: at most 1 s), vs reading the log's columns with pandas:
   incremental (1,000 new requests), the first call ever on a store (the whole log grouped in SQL), and the first call
   in a new process (a real subprocess, which finds the histograms an earlier process saved in the workspace).

Evidently 0.7 needs pandas < 3, so it runs in its own venv (/tmp/mlnb-evidently) on the same data, read from Parquet;
`--install` makes that venv (uv, from PyPI). Evidently is never a dependency of mlnb.

Run: .venv/bin/python benchmarks/bench_monitor.py --install   (appends to benchmarks/RESULTS.md with --write; --quick: 1/10 sizes;
     --health: only the health part, without the drift comparison)
"""
import json, os, platform, sqlite3, subprocess, sys, tempfile, textwrap, time
from datetime import datetime, timedelta, timezone
from pathlib import Path
import numpy as np, pandas as pd

os.environ.setdefault('BENTOML_DO_NOT_TRACK', 'true'); os.environ.setdefault('GX_ANALYTICS_ENABLED', 'false')
from mlnb import monitoring as monitor, service_health
from mlnb.config import load_project, new_project
from mlnb.store import Store

EVIDENTLY = Path('/tmp/mlnb-evidently')
N_REF, N_CUR, N_NUM, N_CAT, N_LOG = 1_000_000, 100_000, 80, 20, 1_000_000
CATS, P = ['north', 'south', 'east', 'west', 'centre'], [.4, .25, .2, .1, .05]


def install_evidently():
    "A venv with Evidently 0.7 and pandas 2 (Evidently does not import with pandas 3)."
    uv = Path(sys.executable).parent/'uv'
    if not (EVIDENTLY/'bin'/'python').exists():
        subprocess.run([str(uv), 'venv', '-q', str(EVIDENTLY), '--python', f'{sys.version_info.major}.{sys.version_info.minor}'], check=True)
    subprocess.run([str(uv), 'pip', 'install', '-q', '--python', str(EVIDENTLY/'bin'/'python'), 'evidently>=0.7,<0.8', 'pandas<3', 'pyarrow'], check=True)


def shifts() -> dict:
    "Column -> (kind of shift, drifted?): what the synthetic current data does to each column."
    s = {}
    for i in range(N_NUM):
        s[f'n{i}'] = (('mean +0.5 sd', True) if i < 10 else ('scale x1.5', True) if i < 20 else
                      ('mean +0.02 sd (negligible)', False) if i < 30 else ('none', False))
    for i in range(N_CAT):
        s[f'c{i}'] = ('two categories swapped', True) if i < 5 else ('new category, 20%', True) if i < 8 else ('none', False)
    return s


def numeric(rng, i, n, current):
    "Column n{i}: normal, lognormal or Poisson counts; shifted in the current data as `shifts()` says."
    kind = shifts()[f'n{i}'][0] if current else 'none'
    loc, scale = (0.5 if kind.startswith('mean +0.5') else 0.02 if kind.startswith('mean +0.02') else 0.0), (1.5 if kind.startswith('scale') else 1.0)
    if i % 4 == 1: return np.exp(rng.normal(loc, scale, n) * 0.5)            # skewed: lognormal (shift in log space)
    if i % 4 == 3 and i >= 30: return rng.poisson(4, n).astype(float)        # discrete counts (unshifted columns)
    return rng.normal(loc, scale, n)


def categorical(rng, i, n, current):
    kind = shifts()[f'c{i}'][0] if current else 'none'
    if kind.startswith('two'): return rng.choice(CATS, p=[.2, .25, .4, .1, .05], size=n)       # north <-> east
    if kind.startswith('new'): return rng.choice(CATS + ['island'], p=[.32, .2, .16, .08, .04, .2], size=n)
    return rng.choice(CATS, p=P, size=n)


def make_data(folder: Path):
    rng = np.random.default_rng(0)
    for name, n, cur in [('reference', N_REF, False), ('current', N_CUR, True)]:
        cols = {f'n{i}': numeric(rng, i, n, cur) for i in range(N_NUM)} | {f'c{i}': categorical(rng, i, n, cur) for i in range(N_CAT)}
        pd.DataFrame(cols).to_parquet(folder/f'{name}.parquet')


def run_mlnb(folder: Path) -> dict:
    ref, cur = pd.read_parquet(folder/'reference.parquet'), pd.read_parquet(folder/'current.parquet')
    schema = [{'name': c, 'kind': 'float' if c.startswith('n') else 'str'} for c in ref.columns]
    t = time.perf_counter(); stats = monitor.reference_stats(ref, schema); t_ref = time.perf_counter() - t
    monitor.drift_report(stats, cur.head(1000))                                  # warm: scipy imported once
    times, rep = [], None
    for _ in range(3):
        t = time.perf_counter(); rep = monitor.drift_report(stats, cur); times.append(time.perf_counter() - t)
    return {'reference_stats_s': t_ref, 'check_s': sorted(times)[1], 'reference_json_bytes': len(json.dumps(stats)),
            'verdicts': {r['feature']: r['severity'] != 'none' for r in rep.rows}, 'severity': {r['feature']: r['severity'] for r in rep.rows}}


EVIDENTLY_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset
    folder = sys.argv[1]
    ref, cur = pd.read_parquet(f'{folder}/reference.parquet'), pd.read_parquet(f'{folder}/current.parquet')
    dd = DataDefinition(numerical_columns=[c for c in ref if c.startswith('n')], categorical_columns=[c for c in ref if c.startswith('c')])
    t = time.perf_counter()
    snap = Report([DataDriftPreset()]).run(Dataset.from_pandas(cur, data_definition=dd), Dataset.from_pandas(ref, data_definition=dd))
    seconds = time.perf_counter() - t
    verdicts, methods = {}, {}
    for m in snap.dict()['metrics']:
        cfg = m['config']
        if not cfg['type'].endswith('ValueDrift'): continue
        p_value = 'p_value' in cfg['method'].lower() or 'test' in cfg['method'].lower()
        verdicts[cfg['column']] = bool(m['value'] < cfg['threshold'] if p_value else m['value'] >= cfg['threshold'])
        methods[cfg['method']] = methods.get(cfg['method'], 0) + 1
    import evidently
    print(json.dumps({'seconds': seconds, 'verdicts': verdicts, 'methods': methods, 'version': evidently.__version__}))
""")


def run_evidently(folder: Path) -> dict|None:
    py = EVIDENTLY/'bin'/'python'
    if not py.exists(): return None
    r = subprocess.run([str(py), '-c', EVIDENTLY_SCRIPT, str(folder)], capture_output=True, text=True, timeout=3600)
    if r.returncode: raise SystemExit(f"Evidently failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def make_log(path: Path, n: int):
    "A store whose prediction log holds `n` requests (2 models, 100 per second, 30-feature inputs of ~600 bytes each)."
    Store(f'sqlite:///{path}')
    rng = np.random.default_rng(1)
    inputs = json.dumps({f'feature_{i}': round(float(v), 4) for i, v in enumerate(rng.normal(size=30))})
    output = json.dumps({'label': 1, 'probabilities': {'0': 0.2, '1': 0.8}})
    t0 = datetime(2026, 1, 1)
    con = sqlite3.connect(path)
    for s in range(0, n, 100_000):
        k = np.arange(s, min(s + 100_000, n))
        lat = rng.lognormal(1.5, 0.5, len(k))
        con.executemany('INSERT INTO predictions (request_id, model_tag, inputs, output, latency_ms, created) VALUES (?,?,?,?,?,?)',   # named: the table gained columns
                        [(f'{j:032x}', 'demo:v1' if j % 3 else 'demo:v2', inputs, output, float(l),
                          (t0 + timedelta(milliseconds=10 * int(j))).strftime('%Y-%m-%d %H:%M:%S.%f')) for j, l in zip(k, lat)])
        con.commit()
    con.close()


NEW_PROCESS = textwrap.dedent("""
    import json, sys, time
    t = time.perf_counter()
    from mlnb import service_health
    from mlnb.config import load_project
    t_import = time.perf_counter() - t
    P = load_project(sys.argv[1]); P.sections['project']['store'] = sys.argv[2]
    t = time.perf_counter(); h = service_health.health(P, '5min'); t_health = time.perf_counter() - t
    print(json.dumps({'import_s': t_import, 'health_s': t_health, 'rows': int(h.requests.sum())}))
""")


def new_process(settings: Path, url: str) -> dict:
    "health() timed in a fresh Python process (what a CLI call or a new kernel pays)."
    r = subprocess.run([sys.executable, '-c', NEW_PROCESS, str(settings), url], capture_output=True, text=True, timeout=600)
    if r.returncode: raise SystemExit(f"health in a new process failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def timed(fn):
    t = time.perf_counter(); r = fn(); return time.perf_counter() - t, r


def run_health(folder: Path) -> dict:
    db = folder/'log.db'
    make_log(db, N_LOG)
    url = f'sqlite:///{db}'
    P = load_project(new_project(folder/'project')); P.sections['project']['store'] = url
    t_index, _ = timed(lambda: service_health.LatencyLog(Store(url)))                                   # once per store: CREATE INDEX
    service_health._LOGS.clear()
    t_cold, h = timed(lambda: service_health.health(P, '5min'))                 # first call ever on this store: no saved histograms
    con = sqlite3.connect(db)                                                                    # 1,000 more requests arrive
    con.executemany('INSERT INTO predictions (request_id, model_tag, latency_ms, created) VALUES (?,?,?,?)',
                    [(f'new{j}', 'demo:v1', 5.0, (datetime(2026, 1, 1, 3) + timedelta(seconds=j)).strftime('%Y-%m-%d %H:%M:%S.%f')) for j in range(1000)])
    con.commit(); con.close()
    t_warm, h2 = timed(lambda: service_health.health(P, '5min'))
    fresh = new_process(P.path, url)                                      # the histograms saved by this process, 1,000 rows since
    assert fresh['rows'] == int(h2.requests.sum())
    def naive():
        con = sqlite3.connect(db)
        df = pd.read_sql('SELECT model_tag, created, latency_ms FROM predictions', con, parse_dates=['created'])
        g = df.assign(start=df.created.dt.floor('5min')).groupby(['model_tag', 'start']).latency_ms
        return pd.concat([g.size(), g.quantile(.5), g.quantile(.95), g.quantile(.99)], axis=1)
    t_naive, exact = timed(naive)
    both = h2.set_index(['model_tag', 'start']).join(exact.set_axis(['n', 'q50', 'q95', 'q99'], axis=1))
    err = max((both[c] / both[q] - 1).abs().max() for c, q in [('p50_ms', 'q50'), ('p95_ms', 'q95'), ('p99_ms', 'q99')])
    assert (both['requests'] == both['n']).all()
    return {'rows': int(h2.requests.sum()), 'index_s': t_index, 'cold_s': t_cold, 'refresh_s': t_warm, 'naive_s': t_naive, 'max_rel_err': err,
            'new_s': fresh['health_s'], 'import_s': fresh['import_s'], 'saved_mb': service_health.health_cache(P).stat().st_size / 1e6}


def health_lines(hl) -> list[str]:
    "Table rows of the first-call health figures."
    met = lambda s: ' (met)' if s <= 1 else ' (MISSED)'
    return [f"| health, first call in a new process (histograms saved in the workspace by an earlier one; 1,000 requests since) "
            f"| {hl['new_s']:.3f} s | {hl['naive_s']:.2f} s | {hl['naive_s'] / hl['new_s']:.0f}x faster | <= 1 s{met(hl['new_s'])} |",
            f"| health, first call ever on a store (SQL GROUP BY over the index, then saved) | {hl['cold_s']:.2f} s | {hl['naive_s']:.2f} s "
            f"| {hl['naive_s'] / hl['cold_s']:.1f}x faster | <= 1 s{met(hl['cold_s'])} |"]


def health_note(hl) -> str:
    return (f"- health: the index is built once per store ({hl['index_s']:.1f} s on {N_LOG:,} rows); percentiles within {hl['max_rel_err']:.2%} of exact; "
            f"saved histograms {hl['saved_mb']:.1f} MB; importing mlnb.service_health in the new process took {hl['import_s']:.2f} s (not counted above)")


def report_health(when, where, hl):
    "Print (and with --write append) the health figures alone."
    lines = [f"\n## Monitoring: health only ({when:%Y-%m-%d %H:%M} UTC; {where})\n",
             "`.venv/bin/python benchmarks/bench_monitor.py --health --write`\n",
             "| measure | mlnb | baseline | ratio | target |", "|---|---|---|---|---|",
             f"| health refresh over {hl['rows']:,} logged predictions, 1,000 new (incremental) | {hl['refresh_s']:.3f} s "
             f"| {hl['naive_s']:.2f} s (pandas read + quantiles) | {hl['naive_s'] / hl['refresh_s']:.0f}x faster | <= 1 s{' (met)' if hl['refresh_s'] <= 1 else ' (MISSED)'} |",
             *health_lines(hl), "", health_note(hl)]
    text = '\n'.join(lines) + '\n'
    print(text)
    if '--write' in sys.argv and '--quick' not in sys.argv:
        with open(Path(__file__).parent/'RESULTS.md', 'a') as f: f.write(text)


def disagreements(truth, m, e) -> str:
    "Columns where mlnb's or Evidently's verdict differs from the injected shift."
    out = []
    for c in truth:
        if m['verdicts'][c] != truth[c] or (e and e['verdicts'][c] != truth[c]):
            ev = f", Evidently {'drift' if e['verdicts'][c] else 'no drift'}" if e else ''
            out.append(f"{c} ({shifts()[c][0]}: mlnb {m['severity'][c]}{ev})")
    return ', '.join(out)


def machine():
    mem = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30
    load = os.getloadavg()[0]
    return f"{platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB, Python {platform.python_version()}, load {load:.1f} at start"


def main():
    global N_REF, N_CUR, N_LOG
    if '--quick' in sys.argv: N_REF, N_CUR, N_LOG = 100_000, 10_000, 100_000      # a smoke run of the script, not a result
    if '--install' in sys.argv: install_evidently()
    when, where = datetime.now(timezone.utc), machine()
    health_only = '--health' in sys.argv
    with tempfile.TemporaryDirectory(prefix='mlnb-bench-monitor-') as d:
        folder = Path(d)
        if not health_only:
            make_data(folder)
            m = run_mlnb(folder)
            e = run_evidently(folder)
        hl = run_health(folder)
    if health_only: return report_health(when, where, hl)
    truth = {c: drifted for c, (_, drifted) in shifts().items()}
    lines = [f"\n## Monitoring: drift and health ({when:%Y-%m-%d %H:%M} UTC; {where})\n",
             "`.venv/bin/python benchmarks/bench_monitor.py --install --write`\n",
             f"Drift: {N_NUM} numeric + {N_CAT} categorical columns, {N_REF:,} reference rows, {N_CUR:,} current rows; "
             "shifted columns: 10 mean +0.5 sd, 10 scale x1.5, 10 mean +0.02 sd (negligible: should not drift), "
             "5 with two categories swapped, 3 with a new category at 20%; the rest unshifted.\n",
             "| measure | mlnb | baseline | ratio | target |", "|---|---|---|---|---|"]
    agree_truth = sum(m['verdicts'][c] == truth[c] for c in truth)
    if e:
        ratio = e['seconds'] / m['check_s']
        lines.append(f"| drift check, 100 columns (mlnb from reference_stats; Evidently {e['version']} DataDriftPreset from the data) "
                     f"| {m['check_s']:.2f} s | {e['seconds']:.1f} s | {ratio:.0f}x faster | >= 20x{' (met)' if ratio >= 20 else ' (MISSED)'} |")
        lines.append(f"| same, counting mlnb's one-time reference_stats at packaging | {m['check_s'] + m['reference_stats_s']:.1f} s "
                     f"| {e['seconds']:.1f} s | {e['seconds'] / (m['check_s'] + m['reference_stats_s']):.1f}x faster | - |")
    else:
        lines.append(f"| drift check, 100 columns | {m['check_s']:.2f} s | (Evidently not installed: run with --install) | - | >= 20x |")
    lines.append(f"| health refresh over {hl['rows']:,} logged predictions, 1,000 new (incremental) | {hl['refresh_s']:.3f} s "
                 f"| {hl['naive_s']:.2f} s (pandas read + quantiles) | {hl['naive_s'] / hl['refresh_s']:.0f}x faster | <= 1 s{' (met)' if hl['refresh_s'] <= 1 else ' (MISSED)'} |")
    lines += health_lines(hl)
    lines += ["", f"- verdicts: mlnb agrees with the injected shifts on {agree_truth}/100 columns"
              + (f"; Evidently on {sum(e['verdicts'][c] == truth[c] for c in truth)}/100; mlnb and Evidently agree on "
                 f"{sum(e['verdicts'][c] == m['verdicts'][c] for c in truth)}/100 (Evidently's tests: {e['methods']})" if e else ''),
              f"- disagreements with the injected shifts: {disagreements(truth, m, e) or 'none'}",
              f"- mlnb reference_stats (once, at packaging): {m['reference_stats_s']:.1f} s for {N_REF:,} x 100; its JSON: {m['reference_json_bytes'] / 1e6:.2f} MB",
              health_note(hl)]
    text = '\n'.join(lines) + '\n'
    print(text)
    if '--write' in sys.argv and '--quick' not in sys.argv:
        with open(Path(__file__).parent/'RESULTS.md', 'a') as f: f.write(text)


if __name__ == '__main__':
    main()
