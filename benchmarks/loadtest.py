"""Load test: a real `bentoml serve` of the mlnb service on loopback, driven for a bounded time at several concurrencies.

One async httpx client with a bounded pool (as many connections as workers) posts /predict with the holdout's
records in turn (so the cache, if on, does not flatter it). Reported per concurrency: requests/s, p50/p95/p99
latency and errors, which must be zero. Then the server gets SIGTERM, and every request id it answered with must be
in the store's prediction log: the log is flushed on shutdown and nothing may be lost. Exit status 1 otherwise.

    .venv/bin/python benchmarks/loadtest.py [--seconds 60] [--concurrency 1 8 32] [--project path/settings.ini]
                                            [--ssl-certfile cert.pem --ssl-keyfile key.pem] [--write]

Without --project, a throwaway project is made and packaged as in bench_serve.py (breast-cancer data, hist_gb).
With a certificate and key the server speaks HTTPS and the client verifies it against the certificate.
"""
from __future__ import annotations
import argparse, asyncio, os, sys, tempfile
from pathlib import Path

os.environ.setdefault('BENTOML_DO_NOT_TRACK', 'true'); os.environ.setdefault('GX_ANALYTICS_ENABLED', 'false')
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_serve import append_section, fmt, load, throwaway_project     # noqa: E402  (the same client and the same throwaway model)


def records(p) -> list[dict]:
    "The holdout records of the champion's run, as JSON-ready dicts."
    import pandas as pd
    from mlnb.store import Store
    st = Store(p.store_url)
    run = st.get_run(st.get_model(st.alias('champion'))['run_id'])
    X = pd.read_parquet(Path(run['stages']['train']['out_dir'])/'holdout.parquet').drop(columns=p.data['target'], errors='ignore')
    return [{k: (None if pd.isna(v) else v.item() if hasattr(v, 'item') else v) for k, v in r.items()} for r in X.to_dict('records')]


def logged(p, ids: list[str]) -> int:
    "How many of `ids` are in the store's prediction log."
    import sqlalchemy as sa
    from mlnb.store import Store, predictions
    st = Store(p.store_url)
    return sum(st.read(sa.select(sa.func.count().label('n')).select_from(predictions).where(predictions.c.request_id.in_(ids[j:j+500])))[0]['n']
               for j in range(0, len(ids), 500))


def run(p, seconds: float, concurrency: list[int], certfile=None, keyfile=None, say=print) -> dict:
    "Serve `p`'s champion, load it at each concurrency for `seconds`, stop it with SIGTERM and count the logged ids."
    from mlnb.serve import Server, champion_bento
    recs = records(p)
    body = lambda i: {'record': recs[i % len(recs)]}
    out, ids = {}, []
    srv = Server(p, champion_bento(p), ssl_certfile=certfile, ssl_keyfile=keyfile)
    say(f"serving {srv.bento} at {srv.url}; {seconds:g} s per concurrency; {len(recs)} distinct records")
    try:
        srv.start()
        for c in concurrency:
            r = asyncio.run(load(srv.url, '/predict', body, seconds, c, verify=certfile or True, warmup=min(2, seconds / 2)))
            out[c] = r; ids += r['ids']
            say(f"/predict c={c:<3} {r['requests']:6d} requests {fmt(r)}")
    finally:
        srv.stop()                                          # SIGTERM: the service flushes its prediction log
    found = logged(p, ids)
    errors = sum(r['errors'] for r in out.values())
    say(f"after SIGTERM: {found} of {len(ids)} answered request ids are in the store (lost {len(ids) - found}); errors {errors}")
    return {'by_concurrency': out, 'answered': len(ids), 'logged': found, 'errors': errors, 'url': srv.url}


def append_results(lines: list[str], a, p):
    append_section('loadtest', f"`.venv/bin/python benchmarks/loadtest.py --seconds {a.seconds:g} --concurrency {' '.join(map(str, a.concurrency))}`; "
                   f"loopback, one worker, one httpx.AsyncClient; model: {'throwaway breast-cancer hist_gb' if not a.project else a.project}"
                   f"{', HTTPS' if a.ssl_certfile else ''}", lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--seconds', type=float, default=60, help='length of each measurement (default %(default)s)')
    ap.add_argument('--concurrency', type=int, nargs='+', default=[1, 8, 32], help='concurrent clients (default %(default)s)')
    ap.add_argument('--project', help="an mlnb project's settings.ini whose champion to serve (default: a throwaway one)")
    ap.add_argument('--ssl-certfile', help='serve HTTPS with this PEM certificate (the client trusts it)')
    ap.add_argument('--ssl-keyfile', help='the PEM key of --ssl-certfile')
    ap.add_argument('--write', action='store_true', help='append the results to benchmarks/RESULTS.md')
    a = ap.parse_args(argv)
    from mlnb.config import load_project
    from mlnb.serve import package
    if a.project: p = load_project(a.project)
    else:
        p = throwaway_project(Path(tempfile.mkdtemp(prefix='loadtest-')))
        print(f'packaging a throwaway project at {p.root}', flush=True); package(p)
    lines = []
    def say(s): print(s, flush=True); lines.append(s)
    r = run(p, a.seconds, a.concurrency, a.ssl_certfile, a.ssl_keyfile, say)
    ok = r['errors'] == 0 and r['logged'] == r['answered'] > 0
    say(f"verdict: {'PASS' if ok else 'FAIL'} (zero errors and zero lost log rows required)")
    if a.write: append_results(lines, a, p)
    return 0 if ok else 1


if __name__ == '__main__': sys.exit(main())
