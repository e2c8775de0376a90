"""Serving benchmark: /predict of `bentoml serve` (the mlnb service) against a bare Starlette app calling the same model.

Both servers run as their own process on loopback with one worker; one async httpx client drives both in the same run,
for a bounded time per measurement. The latency measurements (the prediction log's cost, saturation, and an open-loop
load at half of it against both servers) use a lean asyncio client instead (`Lean`): httpx's own CPU time would be taken
from the server on this machine. Reported: requests/s, p50/p95/p99 latency, errors, the ratio of the served model's
requests/s to the bare app's, the prediction log's cost on median latency, /predict_batch records/s, and whether every
request made it into the store. Results are appended to benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_serve.py [--seconds 15] [--concurrency 1 8] [--project path/settings.ini]

Without --project, a throwaway project is made with a model trained in this process on the full breast-cancer
data (569 rows, hist_gb, the same code the train stage runs), then packaged like `mlnb package` does.
"""
from __future__ import annotations
import argparse, asyncio, json, os, platform, subprocess, sys, tempfile, textwrap, time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault('BENTOML_DO_NOT_TRACK', 'true'); os.environ.setdefault('GX_ANALYTICS_ENABLED', 'false')
HERE = Path(__file__).resolve().parent


def throwaway_project(folder: Path):
    "A project whose latest succeeded run holds a model trained right here (no kernels, no notebooks)."
    import joblib
    from sklearn.datasets import load_breast_cancer
    from mlnb.config import new_project, load_project
    from mlnb.store import Store
    from mlnb.train import train
    p = load_project(new_project(folder/'bench', name='bench'))
    df = load_breast_cancer(as_frame=True).frame
    r = train(df, 'target', 'hist_gb', cv=2)
    st = Store(p.store_url)
    rid = st.start_run(p.name)
    out = p.workspace/'runs'/rid/'train'; out.mkdir(parents=True)
    joblib.dump(r.pipeline, out/'model.joblib'); r.holdout.to_parquet(out/'holdout.parquet', index=False)
    (out/'schema.json').write_text(json.dumps({'target': 'target', 'features': r.schema}))
    sid = st.start_stage(rid, 'train', 'bench', {}); st.finish_stage(sid, 'done', out_dir=str(out))
    from mlnb.core import hash_file
    model = out/'model.joblib'
    st.record(rid, 'train', artifacts_={'model.joblib': (model, hash_file(model), model.stat().st_size)})   # packaging checks it
    from mlnb.evaluate import holdout_metrics
    sid = st.start_stage(rid, 'evaluate', 'bench', {}); st.finish_stage(sid, 'done', out_dir=str(out))
    st.record(rid, 'evaluate', holdout_metrics(r.pipeline, r.holdout.drop(columns='target'), r.holdout['target']))
    st.finish_run(rid, 'succeeded')
    return p


BARE_APP = '''
import os, sys, joblib, pandas as pd, uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
os.environ.setdefault("OMP_NUM_THREADS", "1")           # as the mlnb service does
pipe = joblib.load(sys.argv[1]); columns = list(pipe.feature_names_in_)
classes = [c.item() if hasattr(c, "item") else c for c in pipe.classes_]
async def predict(request: Request):
    rec = (await request.json())["record"]
    row = pipe.predict_proba(pd.DataFrame([rec], columns=columns))[0]
    return JSONResponse({"label": classes[int(row.argmax())], "probabilities": {str(c): float(p) for c, p in zip(classes, row)}})
async def readyz(request): return JSONResponse({})
uvicorn.run(Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/readyz", readyz)]),
            host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
'''


class Bare:
    "The bare Starlette app, one uvicorn process on loopback."
    def __init__(self, model_path: Path, folder: Path):
        from mlnb.core import free_port
        self.port = free_port(); self.url = f'http://127.0.0.1:{self.port}'
        (folder/'bare.py').write_text(BARE_APP)
        self.proc = subprocess.Popen([sys.executable, str(folder/'bare.py'), str(model_path), str(self.port)])
        import urllib.request
        for _ in range(240):
            try: urllib.request.urlopen(self.url + '/readyz', timeout=1); return
            except OSError: time.sleep(0.25)
        raise RuntimeError('the bare app did not start')
    def stop(self): self.proc.terminate(); self.proc.wait(10)


async def load(url: str, path: str, body, seconds: float, concurrency: int, headers=None, verify=True, warmup: float = 2) -> dict:
    """Requests from `concurrency` workers for `seconds` (after `warmup` seconds): throughput, latency percentiles, errors.

    `body` is one JSON body, or a function of the request's number that makes one."""
    import httpx, numpy as np
    from collections import Counter
    import itertools
    lat, errors, ids, why, count = [], 0, [], Counter(), itertools.count()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60, headers=headers, verify=verify) as client:
        async def worker(begin, end):
            nonlocal errors
            while time.perf_counter() < end:
                t = time.perf_counter()
                record = t >= begin
                try:
                    r = await client.post(path, json=body(next(count)) if callable(body) else body)
                    ok, err = r.status_code == 200, f'HTTP {r.status_code}'
                except httpx.HTTPError as e: ok, err = False, type(e).__name__
                if record:
                    lat.append(time.perf_counter() - t)
                    if ok:
                        out = r.json()
                        ids.extend(o.get('request_id') for o in (out if isinstance(out, list) else [out]))
                    else: errors += 1; why[err] += 1
        # one run of each worker, warm-up included: a pause between the two would leave connections idle long enough
        # for the server to close them (uvicorn's keep-alive timeout) just as the client reuses them
        start = time.perf_counter() + warmup
        await asyncio.gather(*(worker(start, start + seconds) for _ in range(concurrency)))
        took = time.perf_counter() - start
    ms = np.array(lat) * 1000
    return {'requests': len(lat), 'rps': len(lat) / took, 'p50': float(np.percentile(ms, 50)), 'p95': float(np.percentile(ms, 95)),
            'p99': float(np.percentile(ms, 99)), 'errors': errors, 'why': dict(why), 'ids': [i for i in ids if i]}


class Lean:
    """A lean HTTP/1.1 client over asyncio streams for the latency measurements: keep-alive connections, each request's
    bytes made once. It costs the machine ~0.3 ms of CPU a request where httpx costs ~4 ms, and on 2 cores whatever the
    client takes is taken from the server being measured."""
    def __init__(self, url: str, path: str, body: dict):
        from urllib.parse import urlsplit
        u = urlsplit(url); self.host, self.port = u.hostname, u.port
        data = json.dumps(body).encode()
        self.request = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(data)}\r\n\r\n").encode() + data
        self.idle = []

    async def post(self) -> int:
        "POST once, on an idle connection or a new one; the status code (the body is read and dropped)."
        for attempt in range(2):
            fresh = attempt == 1 or not self.idle
            r, w = await asyncio.open_connection(self.host, self.port) if fresh else self.idle.pop()
            try:
                w.write(self.request)
                head = await r.readuntil(b"\r\n\r\n")
                size = next((int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")), 0)
                await r.readexactly(size)
            except (asyncio.IncompleteReadError, ConnectionError):
                w.close()
                if fresh: raise
                continue                   # the server closed an idle connection: once more on a new one
            self.idle.append((r, w))
            return int(head[9:12])

    def close(self):
        for _, w in self.idle: w.close()


def percentiles(lat: list[float]) -> dict:
    import numpy as np
    ms = np.array(lat) * 1000
    return {f'p{q}': float(np.percentile(ms, q)) for q in (50, 95, 99)} | {'max': float(ms.max())}


async def closed_loop(url: str, path: str, body: dict, seconds: float, concurrency: int = 16, warmup: float = 2) -> dict:
    "Closed loop with the lean client: `concurrency` requests always in flight, for `seconds` after `warmup`."
    client, lat, errors = Lean(url, path, body), [], 0
    async def worker(begin, end):
        nonlocal errors
        while time.perf_counter() < end:
            t = time.perf_counter()
            try: ok = await client.post() == 200
            except (OSError, asyncio.IncompleteReadError): ok = False
            if t >= begin: lat.append(time.perf_counter() - t); errors += not ok
    begin = time.perf_counter() + warmup
    await asyncio.gather(*(worker(begin, begin + seconds) for _ in range(concurrency)))
    client.close()
    return {'requests': len(lat), 'rps': len(lat) / seconds, 'errors': errors, 'lat': lat} | percentiles(lat)


def log_cost(with_log: str, without: str, body: dict, seconds: float, rounds: int = 4) -> tuple[dict, dict]:
    """Median latency at c=1 of a server logging to the store and of one not logging, measured in alternating rounds
    with the lean client and pooled: a change in the machine's load during the measurement hits both alike."""
    lat = {with_log: [], without: []}
    for _ in range(rounds):
        for url in lat: lat[url] += asyncio.run(closed_loop(url, '/predict', body, seconds / rounds, 1, warmup=0.5))['lat']
    return percentiles(lat[with_log]), percentiles(lat[without])


async def paced(url: str, path: str, body: dict, rate: float, seconds: float, warmup: float = 2) -> dict:
    """An open-loop load with the lean client: one request every 1/`rate` s whatever the answers (at most 256 in flight).

    Latency counts from the moment a request was due, so a stalled server cannot hide its queue (no coordinated omission)."""
    client, slots, lat, errors = Lean(url, path, body), asyncio.Semaphore(256), [], 0
    async def one(due, record):
        nonlocal errors
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        async with slots:
            try: ok = await client.post() == 200
            except (OSError, asyncio.IncompleteReadError): ok = False
        if record: lat.append(time.perf_counter() - due); errors += not ok
    start, n = time.perf_counter(), int((warmup + seconds) * rate)
    await asyncio.gather(*(one(start + i / rate, i >= warmup * rate) for i in range(n)))
    client.close()
    return {'requests': len(lat), 'rps': rate, 'errors': errors} | percentiles(lat)


def merged(url: str) -> tuple[float, float]:
    "BentoML's adaptive batching so far: (model calls of /predict_batch, requests merged into them), from /metrics."
    import urllib.request
    text = urllib.request.urlopen(url + '/metrics', timeout=30).read().decode()
    get = lambda name: sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith(name) and 'predict_batch' in l)
    return get('bentoml_service_adaptive_batch_size_count'), get('bentoml_service_adaptive_batch_size_sum')


def fmt(r: dict) -> str:
    return (f"{r['rps']:8.1f} req/s  p50 {r['p50']:6.1f} ms  p95 {r['p95']:6.1f} ms  p99 {r['p99']:6.1f} ms  errors {r['errors']}"
            + (f" {r['why']}" if r.get('why') else ''))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--seconds', type=float, default=15, help='length of each measurement (default %(default)s)')
    ap.add_argument('--concurrency', type=int, nargs='+', default=[1, 8], help='concurrent clients (default %(default)s)')
    ap.add_argument('--batch', type=int, default=8, help='records per /predict_batch call (default %(default)s)')
    ap.add_argument('--batch-concurrency', type=int, default=64, help='concurrent clients of /predict_batch and the /predict it is compared with (default %(default)s)')
    ap.add_argument('--project', help="an mlnb project's settings.ini whose champion to serve (default: a throwaway one)")
    ap.add_argument('--write', action='store_true', help='append the results to benchmarks/RESULTS.md')
    a = ap.parse_args(argv)
    import pandas as pd, sqlalchemy as sa
    from mlnb.config import load_project
    from mlnb.serve import Server, champion_bento, package
    from mlnb.store import Store, predictions
    tmp = Path(tempfile.mkdtemp(prefix='bench-serve-'))
    if a.project: p = load_project(a.project)
    else:
        p = throwaway_project(tmp); print(f'packaging a throwaway project at {p.root}', flush=True); package(p)
    st = Store(p.store_url)
    tag = st.alias('champion'); run = st.get_run(st.get_model(tag)['run_id'])
    train_dir = Path(run['stages']['train']['out_dir'])
    X = pd.read_parquet(train_dir/'holdout.parquet').drop(columns=p.data['target'])
    rec = {k: (None if pd.isna(v) else float(v)) for k, v in X.iloc[0].items()}
    batch = [{k: (None if pd.isna(v) else float(v)) for k, v in r.items()} for r in X.head(a.batch).to_dict('records')]
    results, lines = {}, []
    def say(s): print(s, flush=True); lines.append(s)

    # all three servers run at once and the measurements alternate, so a change in the machine's load hits each alike
    bare = Bare(train_dir/'model.joblib', tmp)
    srv, nolog = Server(p, champion_bento(p)), Server(p, champion_bento(p), env={'MLNB_STORE': None})
    try:
        nolog.start(); srv.start()
        for c in a.concurrency:
            results[('bare', c)] = asyncio.run(load(bare.url, '/predict', {'record': rec}, a.seconds, c))
            say(f"bare Starlette   /predict        c={c:<3} {fmt(results[('bare', c)])}")
            results[('mlnb', c)] = asyncio.run(load(srv.url, '/predict', {'record': rec}, a.seconds, c))
            say(f"mlnb (bentoml)   /predict        c={c:<3} {fmt(results[('mlnb', c)])}")
        c = a.batch_concurrency
        results['single'] = asyncio.run(load(srv.url, '/predict', {'record': rec}, a.seconds, c))
        say(f"mlnb (bentoml)   /predict        c={c:<3} {fmt(results['single'])}")
        calls0, reqs0 = merged(srv.url)
        results['batch'] = asyncio.run(load(srv.url, '/predict_batch', {'records': batch}, a.seconds, c))
        calls, reqs = (x - x0 for x, x0 in zip(merged(srv.url), (calls0, reqs0)))
        say(f"mlnb (bentoml)   /predict_batch  c={c:<3} {fmt(results['batch'])}  = {results['batch']['rps'] * a.batch:.0f} records/s ({a.batch} per call)")
        say(f"adaptive batching: {reqs:.0f} /predict_batch requests merged into {calls:.0f} model calls ({reqs / max(calls, 1):.1f} requests, "
            f"{a.batch * reqs / max(calls, 1):.0f} records a call on average; at most {os.environ.get('MLNB_BATCH_SIZE', '64')} records)")
        # latencies, with the lean client: the prediction log's cost, then saturation and an open-loop load at half of it
        results['logged'], results['nolog'] = log_cost(srv.url, nolog.url, {'record': rec}, 2 * a.seconds)
        say(f"mlnb, log on/off /predict        c=1   p50 {results['logged']['p50']:.2f} / {results['nolog']['p50']:.2f} ms "
            f"(lean client, {2 * a.seconds:.0f} s each in 4 alternating rounds)")
        results['sat'] = asyncio.run(closed_loop(srv.url, '/predict', {'record': rec}, a.seconds))
        say(f"mlnb (bentoml)   /predict        c=16  {fmt(results['sat'])}  (lean client: saturation)")
        rate = results['sat']['rps'] / 2
        results['half'] = asyncio.run(paced(srv.url, '/predict', {'record': rec}, rate, a.seconds))
        say(f"mlnb (bentoml)   /predict at half saturation, {rate:.1f} req/s open loop (lean client) {fmt(results['half'])}")
        results['half_bare'] = asyncio.run(paced(bare.url, '/predict', {'record': rec}, rate, a.seconds))
        say(f"bare Starlette   /predict at the same rate, {rate:.1f} req/s open loop (lean client) {fmt(results['half_bare'])}")
    finally:
        bare.stop(); srv.stop(); nolog.stop()
    ids = [i for k, r in results.items() if k in ('batch', 'single') or k[0] == 'mlnb' for i in r['ids']]
    found = sum(st.read(sa.select(sa.func.count().label('n')).select_from(predictions).where(predictions.c.request_id.in_(ids[j:j+500])))[0]['n']
                for j in range(0, len(ids), 500))
    say(f"prediction log: {found} of {len(ids)} measured predictions are in the store after SIGTERM")

    say('')
    for c in a.concurrency:
        say(f"ratio mlnb/bare requests/s at c={c}: {results[('mlnb', c)]['rps'] / results[('bare', c)]['rps']:.2f}x")
    say(f"prediction log cost on median latency (c=1): {100 * (results['logged']['p50'] / results['nolog']['p50'] - 1):+.1f}%")
    c = a.batch_concurrency
    say(f"/predict_batch records/s vs /predict records/s at c={c} (target >= 2x): {results['batch']['rps'] * a.batch / results['single']['rps']:.1f}x")
    say(f"p99 of /predict at half saturation (target <= 20 ms): {results['half']['p99']:.1f} ms "
        f"(bare Starlette at the same rate: {results['half_bare']['p99']:.1f} ms)")
    if a.write: append_results(lines, a, p)


def append_section(title: str, setup: str, lines: list[str]):
    "Append one dated section (machine, Python, `setup`, figures) to benchmarks/RESULTS.md."
    free = subprocess.run(['free', '-g'], capture_output=True, text=True).stdout.strip()
    head = (f"\n## {title}: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC\n\n"
            f"machine: nproc {os.cpu_count()}, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} (the machine is shared), "
            f"Python {platform.python_version()}, {platform.platform()}; {setup}\n\n```\n{free}\n```\n\n")
    with open(HERE/'RESULTS.md', 'a') as f: f.write(head + '```\n' + '\n'.join(lines) + '\n```\n')


def append_results(lines: list[str], a, p):
    append_section('bench_serve', f"{a.seconds:.0f} s per measurement, loopback, one worker per server, one httpx.AsyncClient in the same run; "
                   f"model: {'throwaway breast-cancer hist_gb' if not a.project else a.project}", lines)


if __name__ == '__main__': main()
