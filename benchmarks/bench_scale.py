"""Scale-out benchmark (issue 17): replicas behind HAProxy vs one server direct, HAProxy's overhead at c=1, a replica
SIGKILLed under c=32, and the prediction log's batched insert rate on PostgreSQL.

    python benchmarks/bench_scale.py PROJECT_DIR [--pg URL]

PROJECT_DIR: a packaged mlnb project (its champion has a bento). On 2 cores the client competes with the servers:
the client's CPU is reported, and HAProxy is judged by its overhead, not by a speed-up that cannot show."""
import argparse, http.client, json, os, resource, statistics, sys, threading, time, uuid
from pathlib import Path
import pandas as pd


def records(p, n=64):
    from mlnb.store import Store
    run = Store(p.store_url).get_run()
    X = pd.read_parquet(Path(run['stages']['train']['out_dir'])/'holdout.parquet').drop(columns='target')
    return pd.concat([X] * (n // len(X) + 1)).iloc[:n].to_dict('records')


def load(url, recs, conc, seconds, stop_at=None):
    "`conc` keep-alive clients POSTing /predict for `seconds`: (answers [(t, status, request_id)], latencies ms, client CPU s)."
    host, port = url.split('//')[1].split(':')
    bodies = [json.dumps({'record': r}).encode() for r in recs]
    out, lat, lock, end = [], [], threading.Lock(), time.time() + seconds
    def client(k):
        c, i = http.client.HTTPConnection(host, int(port), timeout=30), k
        while time.time() < end:
            t0 = time.perf_counter()
            try:
                c.request('POST', '/predict', bodies[i % len(bodies)], {'Content-Type': 'application/json'})
                r = c.getresponse(); body = r.read(); st = r.status
                rid = json.loads(body).get('request_id') if st == 200 else None
            except (OSError, http.client.HTTPException, ValueError):
                st, rid = 0, None
                c.close(); c = http.client.HTTPConnection(host, int(port), timeout=30)
            ms = (time.perf_counter() - t0) * 1000
            with lock: out.append((time.time(), st, rid)); lat.append(ms)
            i += conc
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    ts = [threading.Thread(target=client, args=(k,)) for k in range(conc)]
    for t in ts: t.start()
    for t in ts: t.join()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    return out, lat, (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)


def summary(name, out, lat, cpu, seconds):
    ok = sum(1 for _, s, _ in out if s == 200)
    q = statistics.quantiles(lat, n=100) if len(lat) > 2 else [float('nan')] * 99
    return {'case': name, 'requests': len(out), 'failed': len(out) - ok, 'rps': round(ok / seconds, 1), 'p50_ms': round(q[49], 2),
            'p99_ms': round(q[98], 2), 'client_cpu_pct': round(100 * cpu / seconds, 1)}


def pg_insert_rate(url, rows=20000, batch=500):
    "Rows/s of the prediction log's batched inserts (one transaction of `batch` rows, as PredictionLog writes) on PostgreSQL."
    import secrets, sqlalchemy as sa
    from mlnb.store import predictions
    schema = f'mlnb_bench_{secrets.token_hex(3)}'
    eng = sa.create_engine(url)
    with eng.begin() as c: c.execute(sa.text(f'CREATE SCHEMA {schema}'))
    e2 = sa.create_engine(f"{url}?options=-csearch_path%3D{schema}")
    try:
        predictions.metadata.create_all(e2, tables=[predictions])
        rec = {f'f{i}': 1.5 for i in range(30)}
        now = pd.Timestamp.now('UTC').tz_localize(None).to_pydatetime()
        t0 = time.perf_counter()
        for b in range(rows // batch):
            with e2.begin() as c:
                c.execute(predictions.insert(), [dict(request_id=uuid.uuid4().hex, model_tag='m:1', inputs=rec, output={'label': 1, 'probabilities': {'0': .1, '1': .9}},
                                                      latency_ms=1.0, created=now) for _ in range(batch)])
        return round(rows / (time.perf_counter() - t0))
    finally:
        e2.dispose()
        with eng.begin() as c: c.execute(sa.text(f'DROP SCHEMA {schema} CASCADE'))
        eng.dispose()


def throwaway_project() -> Path:
    "The scaffold's demo project, run on 200 rows and packaged, in a temporary folder (when no project is given)."
    import subprocess, tempfile
    d, mlnb = Path(tempfile.mkdtemp())/'shop', str(Path(sys.executable).parent/'mlnb')
    for args, cwd in ((['new', str(d)], None), (['run', '--params', 'ingest.sample=200'], d), (['package'], d)):
        subprocess.run([mlnb, *args], cwd=cwd, check=True, capture_output=True)
    return d


def table(df) -> str:
    "A Markdown table of `df` (pandas' to_markdown needs tabulate, which the dev extra does not bring)."
    cols = list(df.columns)
    return '\n'.join(['| ' + ' | '.join(map(str, cols)) + ' |', '|' + '---|' * len(cols)]
                     + ['| ' + ' | '.join(str(v) for v in row) + ' |' for row in df.itertuples(index=False)])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('project', nargs='?', help='a packaged project (default: the demo, made and packaged in a temporary folder)')
    ap.add_argument('--write', action='store_true', help='append the results to benchmarks/RESULTS.md')
    ap.add_argument('--pg', default=os.environ.get('MLNB_TEST_PG_URL'))
    ap.add_argument('--seconds', type=float, default=15)
    ap.add_argument('--part', choices=['all', 'c1'], default='all', help='c1: only the HAProxy overhead at c=1, in 4 alternating rounds')
    a = ap.parse_args()
    a.project = a.project or throwaway_project()
    from mlnb.config import load_project
    from mlnb.core import free_port
    from mlnb.deploy import Replicas
    from mlnb.store import Store, predictions
    p = load_project(a.project)
    recs, rows, s = records(p), [], a.seconds
    with Replicas(p, n=2, port=free_port(), env={'MLNB_API_TOKEN': None}) as r:
        direct = r.servers[0].url
        if a.part == 'c1':
            for _ in range(4):
                rows.append(summary('1 replica direct, c=1', *load(direct, recs, 1, s), s))
                rows.append(summary('via HAProxy, c=1', *load(r.url, recs, 1, s), s))
            print(table(pd.DataFrame(rows)))
            return
        for _ in range(2):                                    # alternating rounds: the machine is shared
            rows.append(summary('1 replica direct, c=8', *load(direct, recs, 8, s), s))
            rows.append(summary('2 replicas via HAProxy, c=8', *load(r.url, recs, 8, s), s))
        for _ in range(2):
            rows.append(summary('1 replica direct, c=1', *load(direct, recs, 1, s / 2), s / 2))
            rows.append(summary('via HAProxy, c=1', *load(r.url, recs, 1, s / 2), s / 2))
        # 60 s at c=32 through HAProxy, replica 1 SIGKILLed at 20 s
        killer = threading.Timer(20, r.kill, args=(0,))
        killer.start()
        out, lat, cpu = load(r.url, recs, 32, 60)
        killer.join()
        rows.append(summary('c=32 60 s via HAProxy, 1 of 2 killed at 20 s', out, lat, cpu, 60))
        acked = {rid for _, st, rid in out if st == 200}
        end = time.time() + 30
        while time.time() < end:
            got = {x['request_id'] for x in Store(p.store_url).read(predictions.select().with_only_columns(predictions.c.request_id))}
            lost = acked - got
            if not lost: break
            time.sleep(1)
        rows[-1]['lost_rows'] = len(lost)
        rows[-1]['haproxy'] = r.stats()
    df = pd.DataFrame(rows)
    text = table(df.drop(columns=['haproxy'], errors='ignore'))
    if a.pg: text += f"\n\nPostgreSQL: {pg_insert_rate(a.pg)} prediction-log rows/s in batches of 500 (one transaction a batch)"
    text += f"\n\nHAProxy on the kill run: {rows[-1].get('haproxy')}"
    print(text)
    if a.write:
        import platform
        from datetime import datetime, timezone
        head = (f"\n## bench_scale — {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} cores\n\n"
                f"`.venv/bin/python benchmarks/bench_scale.py --seconds {a.seconds:g}` (two replicas behind HAProxy vs one direct, alternating rounds):\n\n")
        with open(Path(__file__).resolve().parent/'RESULTS.md', 'a') as f: f.write(head + text + '\n')


if __name__ == '__main__':
    main()
