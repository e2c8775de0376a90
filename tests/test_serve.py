"""Packaging and serving for real: BentoML's model store, a built bento, `bentoml serve` on loopback.

Server starts are the slow part (~20 s each), so one server (no token) answers the endpoint, bad-input and
prediction-log checks, and a second one (with a token) the auth and champion/challenger checks."""
import json, os, re, subprocess, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import pandas as pd, pytest, requests, sqlalchemy as sa
from conftest import MLNB, SAMPLE, mlnb
from mlnb.config import load_project
from mlnb.store import Store, models as models_table, predictions, feedback


@pytest.fixture(scope='module')
def packaged(project):
    root, _ = project
    r = mlnb('package', cwd=root)
    return root, r


def holdout_X(p):
    run = Store(p.store_url).get_run()
    return pd.read_parquet(Path(run['stages']['train']['out_dir'])/'holdout.parquet').drop(columns='target')


def py(code, cwd, check=True):
    "Run Python `code` in a fresh process (BentoML's home is set once per process), as the CLI would."
    r = subprocess.run([sys.executable, '-c', code], cwd=cwd, capture_output=True, text=True, timeout=300)
    if check and r.returncode: raise AssertionError(f"{code}\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture(scope='module')
def challenger(packaged):
    "A second model of the same run, saved as the challenger."
    root, _ = packaged
    r = py("from mlnb.registry import save_model; from mlnb.config import load_project; print(save_model(load_project('settings.ini')).tag)", root)
    return r.stdout.split()[-1]


@pytest.fixture(scope='module')
def served(packaged, challenger):
    "One `bentoml serve` of the champion's bento: logging to the project's store, no token, shadow mode, a cache."
    from mlnb.serve import Server, champion_bento
    root, _ = packaged
    p = load_project(root/'settings.ini')
    srv = Server(p, champion_bento(p), env={'MLNB_API_TOKEN': None, 'MLNB_MODE': 'shadow', 'MLNB_CACHE_SIZE': '100'}).start()
    yield p, srv
    srv.stop()


def test_package_builds_a_bento_with_model_and_dockerfile(packaged):
    root, r = packaged
    bento_dir = Path(r.stdout.split('\n  at ')[1].split('\n')[0])
    assert (bento_dir/'env'/'docker'/'Dockerfile').is_file()
    assert 'FROM' in (bento_dir/'env'/'docker'/'Dockerfile').read_text()
    svc = (bento_dir/'src'/'service.py').read_text()
    assert '@bentoml.service' in svc and 'from mlnb.service import' in svc and '$' not in svc     # the thin shell, as it is
    bento_yaml = (bento_dir/'bento.yaml').read_text()
    assert 'models:' in bento_yaml and 'shop' in bento_yaml      # the declared model is packed
    assert 'model_tag:' in bento_yaml and 'mean radius' in bento_yaml and 'task: binary' in bento_yaml     # its arguments
    reqs = (bento_dir/'env'/'python'/'requirements.txt').read_text()
    assert 'scikit-learn==' in reqs
    import sqlalchemy as sa
    from mlnb.store import models
    model_tag, (run_id, fingerprint) = r.stdout.split()[1], re.search(r'\(run (\S+), fingerprint (\S+)\)', r.stdout).groups()
    st = Store(load_project(root/'settings.ini').store_url)
    assert st.alias('champion') == model_tag                            # a project's first model is its champion
    row = st.read(sa.select(models).where(models.c.tag == model_tag))[0]
    assert row['run_id'] == run_id and row['bento'] == bento_dir.parent.name + ':' + bento_dir.name and row['fingerprint'] == fingerprint


def test_bento_carries_mlnb_so_a_container_can_load_the_model(packaged):
    "mlnb is not on PyPI: the bento holds its modules, and the packed Pipeline loads with that copy first on the path."
    root, r = packaged
    bento_dir = Path(r.stdout.split('\n  at ')[1].split('\n')[0])
    src = bento_dir/'src'
    assert (src/'mlnb'/'features.py').is_file() and (src/'mlnb'/'__init__.py').is_file()
    name, version = r.stdout.split()[1].split(':')                  # the model, packed into the image at containerize time
    pkl = root/'.mlnb'/'bentoml'/'models'/name/version/'saved_model.pkl'
    code = (f"import sys; sys.path.insert(0, {str(src)!r}); import joblib, mlnb; assert mlnb.__file__.startswith({str(src)!r}), mlnb.__file__; "
            f"m = joblib.load({str(pkl)!r}); print(type(m).__name__, sorted(k for k in sys.modules if k.startswith('mlnb.')))")
    out = py(code, src).stdout
    assert out.startswith('Pipeline') and 'mlnb.features' in out


def test_bentoml_serve_answers_http(served):
    p, srv = served
    run = Store(p.store_url).get_run()
    X = holdout_X(p)
    assert requests.get(f'{srv.url}/readyz', timeout=5).status_code == 200
    rec = X.iloc[0].to_dict()
    out = srv.predict(rec)
    local = __import__('joblib').load(Path(run['stages']['train']['out_dir'])/'model.joblib')
    assert out['label'] == int(local.predict(X.iloc[:1])[0])
    assert abs(sum(out['probabilities'].values()) - 1) < 1e-9 and out['request_id'] and out['model'].startswith('shop:')
    batch = requests.post(f'{srv.url}/predict_batch', json={'records': X.iloc[:5].to_dict('records')}, timeout=30)
    assert batch.status_code == 200 and [b['label'] for b in batch.json()] == local.predict(X.iloc[:5]).tolist()
    # the service feeds the ColumnTransformer's transformers directly: its probabilities are the whole Pipeline's
    gappy = X.iloc[5:9].copy(); gappy.iloc[0, 0] = gappy.iloc[1, 3] = None
    served_p = [[b['probabilities'][str(c)] for c in local.classes_] for b in
                requests.post(f'{srv.url}/predict_batch', json={'records': gappy.astype(object).where(gappy.notna(), None).to_dict('records')}, timeout=30).json()]
    assert abs(pd.DataFrame(served_p).to_numpy() - local.predict_proba(gappy.astype(float))).max() < 1e-9
    assert abs(out['probabilities'][str(local.classes_[1])] - local.predict_proba(X.iloc[:1])[0, 1]) < 1e-9
    bad = requests.post(f'{srv.url}/predict', json={'record': {'mean radius': 'not a number'}}, timeout=30)
    assert bad.status_code == 400 and 'mean radius' in bad.text
    unknown = requests.post(f'{srv.url}/predict', json={'record': {'no such feature': 1}}, timeout=30)
    assert unknown.status_code == 400
    absent = dict(rec); absent.pop('mean radius')              # an absent field is refused, naming it
    r = requests.post(f'{srv.url}/predict', json={'record': absent}, timeout=30)
    assert r.status_code == 400 and r.json() == {'detail': 'record.mean radius: required (send null for a missing value)'}
    assert srv.predict({**rec, 'mean radius': None})['label'] in (0, 1)      # an explicit null is a missing value, imputed
    for wrong in ('12.5', True):                                # strict numbers
        r = requests.post(f'{srv.url}/predict', json={'record': {**rec, 'mean radius': wrong}}, timeout=30)
        assert r.status_code == 400 and r.json()['detail'] == 'record.mean radius: Input should be a valid number', r.text


def test_bentoml_sync_client(served):
    p, srv = served
    os.environ.setdefault('BENTOML_HOME', str(p.workspace/'bentoml'))
    import bentoml
    rec = holdout_X(p).iloc[0].to_dict()
    with bentoml.SyncHTTPClient(srv.url) as client:
        out = client.predict(record=rec)
        assert out['model'].startswith('shop:') and out['label'] in (0, 1)
        assert len(client.predict_batch(records=[rec, rec])) == 2


def test_explain_feedback_and_metrics(served):
    p, srv = served
    rec = holdout_X(p).iloc[1].to_dict()
    first = requests.post(f'{srv.url}/explain', json={'record': rec}, timeout=60)
    assert first.status_code == 200, first.text
    start = time.perf_counter()
    ex = requests.post(f'{srv.url}/explain', json={'record': rec}, timeout=30).json()
    assert time.perf_counter() - start < 2                                 # the explainer is built once
    assert set(rec) <= set(ex['values']) and ex['model'].startswith('shop:') and ex['label'] in (0, 1)   # and any derived features
    magnitudes = [abs(v) for v in ex['values'].values()]
    assert magnitudes == sorted(magnitudes, reverse=True)                 # largest first
    rid = srv.predict(rec)['request_id']
    ack = requests.post(f'{srv.url}/feedback', json={'request_id': rid, 'label': 1}, timeout=30)
    assert ack.status_code == 200 and ack.json() == {'request_id': rid, 'label': 1, 'stored': True}
    wrong = requests.post(f'{srv.url}/feedback', json={'request_id': rid, 'label': 'cat'}, timeout=30)
    assert wrong.status_code == 400 and wrong.json()['detail'].startswith("label: 'cat' is not one of the model's classes")
    unknown = requests.post(f'{srv.url}/feedback', json={'request_id': 'no-such-id', 'label': 1}, timeout=30)
    assert unknown.status_code == 404 and unknown.json() == {'detail': "request_id: no prediction 'no-such-id' in the store"}
    m = requests.get(f'{srv.url}/metrics', timeout=30).text
    assert 'bentoml_service_request_total' in m                           # BentoML's own
    assert f'mlnb_predictions_total{{label="' in m and 'mlnb_feedback_total 1.0' in m and 'mlnb_explanations_total' in m
    srv.predict({**rec, 'worst area': None})
    assert 'mlnb_missing_values_total{feature="worst area"}' in requests.get(f'{srv.url}/metrics', timeout=30).text


BAD_BODIES = {  # case -> (endpoint, raw JSON body (REST: the other features, as null), status, a field the answer names)
    'NaN literal': ('predict', '{"record": {"mean radius": NaN, REST}}', 400, 'mean radius'),
    'infinity': ('predict', '{"record": {"mean radius": Infinity, REST}}', 400, 'mean radius'),
    'NaN string': ('predict', '{"record": {"mean radius": "nan", REST}}', 400, 'mean radius'),
    'number as text': ('predict', '{"record": {"mean radius": "12.5", REST}}', 400, 'mean radius'),
    'bool for a number': ('predict', '{"record": {"mean radius": true, REST}}', 400, 'mean radius'),
    'absent field': ('predict', '{"record": {REST}}', 400, 'mean radius'),
    'wrong type': ('predict', '{"record": {"mean radius": [1, 2], REST}}', 400, 'mean radius'),
    'extra field': ('predict', '{"record": {"mean radius": 1, "colour": 1, REST}}', 400, 'colour'),
    'extra top-level key': ('predict', '{"record": {"mean radius": 1, REST}, "debug": true}', 400, 'debug'),
    'missing record': ('predict', '{}', 400, 'record'),
    'bad JSON': ('predict', '{"record": ', 400, 'Invalid JSON'),
    'record not an object': ('predict', '{"record": 3}', 400, 'record'),
    'empty batch': ('predict_batch', '{"records": []}', 400, 'records'),
    'batch too long': ('predict_batch', json.dumps({'records': [{}] * 1001}), 400, 'records'),
    'feedback without id': ('feedback', '{"label": 1}', 400, 'request_id'),
    'explain bad record': ('explain', '{"record": {"mean radius": "x", REST}}', 400, 'mean radius'),
    'feedback for no request': ('feedback', '{"request_id": "never-answered", "label": 1}', 404, 'never-answered'),
}

@pytest.mark.parametrize('case', list(BAD_BODIES))
def test_bad_input_is_a_4xx_naming_the_field(served, case):
    p, srv = served
    endpoint, body, status, field = BAD_BODIES[case]
    rest = ', '.join(f'{json.dumps(c)}: null' for c in holdout_X(p).columns if c != 'mean radius')
    r = requests.post(f'{srv.url}/{endpoint}', data=body.replace('REST', rest), headers={'Content-Type': 'application/json'}, timeout=30)
    assert r.status_code == status and field in r.text, (case, r.status_code, r.text)
    assert list(r.json()) == ['detail'] and isinstance(r.json()['detail'], str) and '\n' not in r.json()['detail']     # one line


def test_body_limits_and_the_server_keeps_answering(served):
    p, srv = served
    r = requests.post(f'{srv.url}/predict', data='x' * (11 * 1024 * 1024), headers={'Content-Type': 'application/json'}, timeout=30)
    assert r.status_code == 413 and 'limit' in r.text
    r = requests.post(f'{srv.url}/predict', data='a,b', headers={'Content-Type': 'text/csv'}, timeout=30)
    assert r.status_code == 415
    assert srv.predict(holdout_X(p).iloc[0].to_dict())['label'] in (0, 1)


def chunked_post(url: str, path: str, total: int, chunk: int = 1 << 20) -> tuple[int, bytes]:
    "POST `total` bytes with Transfer-Encoding: chunked (no Content-Length) on a raw socket; the status and body of the answer."
    import socket
    from urllib.parse import urlsplit
    u = urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=60) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: {u.hostname}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        block, sent = f"{chunk:x}\r\n".encode() + b' ' * chunk + b"\r\n", 0
        s.settimeout(0.001)
        answer = b''
        while sent < total and not answer:
            try: answer = s.recv(65536)                # the server may answer before the body ends
            except (socket.timeout, BlockingIOError): pass
            s.settimeout(60)
            try: s.sendall(block)
            except (BrokenPipeError, ConnectionResetError): break
            s.settimeout(0.001)
            sent += chunk
        s.settimeout(60)
        if not answer:
            try: s.sendall(b"0\r\n\r\n")
            except OSError: pass
        while b'\r\n\r\n' not in answer or len(answer.split(b'\r\n\r\n', 1)[1]) < int(answer.lower().split(b'content-length:')[1].split(b'\r\n')[0]):
            more = s.recv(65536)
            if not more: break
            answer += more
    head, body = answer.split(b'\r\n\r\n', 1)
    return int(head[9:12]), body


def worker_rss(srv) -> int:
    "Resident memory of the server's processes (the arbiter and its workers), in bytes."
    import psutil
    root = psutil.Process(srv.proc.pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


def test_a_chunked_body_over_the_limit_is_refused_as_it_arrives(served):
    "Issue 14.1: 200 MB sent chunked (no Content-Length) gets a 413 once the count passes MLNB_MAX_BODY; the server keeps none of it."
    p, srv = served
    before = worker_rss(srv)
    status, body = chunked_post(srv.url, '/predict', 200 << 20)
    assert status == 413 and json.loads(body) == {'detail': f'body: more than the limit of {10 * 1024 * 1024} bytes'}
    assert worker_rss(srv) - before < 40 << 20, (before, worker_rss(srv))       # the 200 MB were not kept
    assert srv.predict(holdout_X(p).iloc[0].to_dict())['label'] in (0, 1)


def test_rejected_requests_are_one_line_and_logged_as_failed(served):
    "Issue 14.9 and 13.6: a rejected request is one line of the server's log (no traceback) and a prediction-log row with its status and error."
    p, srv = served
    rec = holdout_X(p).iloc[0].to_dict()
    marker = f'bad-{time.time_ns()}'
    before = srv.log.read_text()
    for i in range(5):
        r = requests.post(f'{srv.url}/predict', json={'record': {**rec, 'mean radius': f'{marker}-{i}'}}, timeout=30)
        assert r.status_code == 400
    r = requests.post(f'{srv.url}/feedback', json={'request_id': marker, 'label': 1}, timeout=30)
    assert r.status_code == 404
    deadline = time.time() + 10
    lines = lambda text, status: text.count(f'-> {status}: ') + text.count(f'(status={status},')     # the guard's line, or BentoML's access line
    while time.time() < deadline and lines(srv.log.read_text(), 404) <= lines(before, 404): time.sleep(0.2)
    added = srv.log.read_text()[len(before):]
    assert 'Traceback' not in added and lines(added, 400) == 5 and lines(added, 404) == 1, added
    st = Store(p.store_url)
    deadline = time.time() + 10
    while time.time() < deadline:
        failed = [r['output'] for r in st.read(sa.select(predictions.c.output)) if isinstance(r['output'], dict) and 'status' in r['output']]
        if sum(marker in f['error'] for f in failed) >= 1: break
        time.sleep(0.3)
    assert {'status': 404, 'error': f"request_id: no prediction '{marker}' in the store"} in failed
    assert any(f['status'] == 400 and f['error'] == 'record.mean radius: Input should be a valid number' for f in failed)


def test_openapi_says_what_the_service_answers(served):
    "Issue 13.5 and 14.12: every feature required and nullable, strictly typed, and every error a string `detail`."
    p, srv = served
    doc = requests.get(f'{srv.url}/docs.json', timeout=30).json()
    features = doc['components']['schemas']['Features']
    assert set(features['required']) == set(holdout_X(p).columns) and features['additionalProperties'] is False
    assert features['properties']['mean radius']['anyOf'] == [{'type': 'number'}, {'type': 'null'}]
    assert doc['components']['schemas']['Problem']['properties']['detail']['type'] == 'string'
    for path in ('/predict', '/predict_batch', '/explain', '/feedback'):
        responses = doc['paths'][path]['post']['responses']
        assert {'400', '401', '404', '413', '415', '500'} <= set(map(str, responses)), (path, list(responses))
        assert responses['400']['content']['application/json']['schema'] == {'$ref': '#/components/schemas/Problem'}


def test_cache_answers_repeated_records(served):
    p, srv = served
    rec = holdout_X(p).iloc[2].to_dict()
    a, b = srv.predict(rec), srv.predict(rec)
    assert a['request_id'] != b['request_id'] and a['probabilities'] == b['probabilities'] and b['latency_ms'] == 0
    assert 'mlnb_cache_total{result="hit"}' in requests.get(f'{srv.url}/metrics', timeout=30).text


def metric_sum(url: str, name: str) -> float:
    return sum(float(l.split()[-1]) for l in requests.get(f'{url}/metrics', timeout=30).text.splitlines() if l.startswith(name + '{'))


def test_two_servers_of_one_project_keep_their_own_metrics(served):
    "Each server has a BentoML home of its own: starting a second one does not empty the first one's metrics folder."
    from mlnb.serve import Server, champion_bento
    p, first = served
    rec = holdout_X(p).iloc[0].to_dict()
    with Server(p, champion_bento(p), env={'MLNB_STORE': None}) as second:
        before = metric_sum(first.url, 'mlnb_predictions_total'); first.predict(rec)
        assert metric_sum(first.url, 'mlnb_predictions_total') == before + 1
        second.predict(rec); second.predict(rec)
        assert metric_sum(second.url, 'mlnb_predictions_total') == 2 and second.home != first.home
        assert (second.home/'models').resolve() == (p.workspace/'bentoml'/'models').resolve()
    assert not second.home.exists() and (p.workspace/'bentoml'/'models').is_dir()     # its links went, the models stayed


def test_a_retried_request_keeps_its_request_id_and_is_logged_once(served):
    "A load balancer's X-Request-ID names the answer; the same request answered twice (a retry) is one row of the log."
    p, srv = served
    record = holdout_X(p).iloc[0].to_dict()
    answers = [requests.post(f'{srv.url}/predict', json={'record': record}, headers={'X-Request-ID': 'lb-retry-1'}, timeout=30).json() for _ in range(2)]
    assert [a['request_id'] for a in answers] == ['lb-retry-1'] * 2
    odd = requests.post(f'{srv.url}/predict', json={'record': record}, headers={'X-Request-ID': 'no spaces; please'}, timeout=30).json()
    assert len(odd['request_id']) == 32                                    # not an id's form: a fresh one
    st, deadline = Store(p.store_url), time.time() + 30
    while time.time() < deadline and not st.read(sa.select(predictions).where(predictions.c.request_id == odd['request_id'])): time.sleep(0.3)
    assert len(st.read(sa.select(predictions).where(predictions.c.request_id == 'lb-retry-1'))) == 1


def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(served, tmp_path):
    """Schemathesis over every endpoint of the OpenAPI document (200 examples each, coverage and fuzzing phases): no 5xx,
    every answer's status, content type and body as the document says."""
    p, srv = served
    r = subprocess.run([str(Path(sys.executable).parent/'schemathesis'), 'run', f'{srv.url}/docs.json', '-n', '200', '--seed', '1',
                        '--checks', 'not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance',
                        '--request-timeout', '30', '--no-color', '--report', 'junit', '--report-dir', str(tmp_path)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path, env={**os.environ, 'SCHEMATHESIS_HOOKS': ''})
    summary = r.stdout[r.stdout.find('SUMMARY'):]
    assert r.returncode == 0, r.stdout[-4000:]
    assert 'Tested: 8' in summary and ' failed' not in summary, summary


def test_prediction_log_is_complete_after_sigterm(served, challenger):
    "Every prediction and label reaches the store, including the ones still queued when SIGTERM arrives."
    p, srv = served
    X = holdout_X(p)
    recs = X.iloc[:20].to_dict('records')
    def one(i):
        if i % 10 == 9: return [b['request_id'] for b in requests.post(f'{srv.url}/predict_batch', json={'records': recs[:5]}, timeout=60).json()]
        return [srv.predict(recs[i % 20])['request_id']]
    with ThreadPoolExecutor(8) as ex: ids = [rid for r in ex.map(one, range(60)) for rid in r]
    for rid in ids[:3]: assert requests.post(f'{srv.url}/feedback', json={'request_id': rid, 'label': 0}, timeout=30).status_code == 200
    assert len(ids) == 54 + 6 * 5 and len(set(ids)) == len(ids)
    srv.stop()                                                           # SIGTERM right away: rows are still queued
    assert srv.proc.poll() is not None
    st = Store(p.store_url)
    logged = {r['request_id']: r for r in st.read(sa.select(predictions).where(predictions.c.request_id.in_(ids)))}
    assert set(logged) == set(ids)
    row = logged[ids[0]]
    assert row['model_tag'].startswith('shop:') and row['output']['label'] in (0, 1) and 'mean radius' in row['inputs']
    assert any(r['latency_ms'] > 0 for r in logged.values())                # zero: answered from the cache
    shadow = st.read(sa.select(predictions.c.model_tag).where(predictions.c.request_id.in_([f'{i}-shadow' for i in ids])))
    assert len(shadow) == len(ids) and {r['model_tag'] for r in shadow} == {challenger}     # shadow mode: the challenger scored every one
    labels = st.read(sa.select(feedback).where(feedback.c.request_id.in_(ids[:3])))
    assert len(labels) == 3 and {l['source'] for l in labels} == {'api'}
    from mlnb.service import orphans
    assert not orphans(p.workspace/'journal')                              # no row was left in a journal segment


BROKEN = """
# a copy of the champion whose estimator raises on every call, promoted by force
from sklearn.linear_model import LogisticRegression
from mlnb.config import load_project
from mlnb.registry import load_model, model_key, promote, save_signed, stored_model
from mlnb.store import Store
p = load_project('settings.ini'); st = Store(p.store_url)
good = stored_model(p, st.alias('champion'))
pipe = load_model(good, model_key(p))
est = LogisticRegression(); est.classes_ = pipe[-1].classes_           # looks fitted, has no coefficients
pipe.steps[-1] = (pipe.steps[-1][0], est)
bad = save_signed(p, 'shop', pipe, metadata=good.info.metadata)     # signed with the project's key: it loads, then fails on every call
st.add_model(str(bad.tag), 'broken', None, {})
print(promote(p, str(bad.tag), force=True))
"""


def test_auth_promote_gate_and_rollback_under_traffic(packaged, challenger):
    from mlnb.serve import Server, champion_bento
    root, _ = packaged
    p = load_project(root/'settings.ini')
    st = Store(p.store_url)
    champion = st.alias('champion')
    assert st.alias('challenger') == challenger != champion
    rec = holdout_X(p).iloc[0].to_dict()
    with Server(p, champion_bento(p), env={'MLNB_API_TOKEN': 's3cret', 'MLNB_MODE': 'ab', 'MLNB_WEIGHT': '0.5', 'MLNB_CACHE_SIZE': '100'}) as srv:
        # auth on: every API endpoint wants the token; health and metrics do not
        for ep, body in [('predict', {'record': rec}), ('predict_batch', {'records': [rec]}), ('explain', {'record': rec}),
                         ('feedback', {'request_id': 'x', 'label': 1})]:
            assert requests.post(f'{srv.url}/{ep}', json=body, timeout=30).status_code == 401
            assert requests.post(f'{srv.url}/{ep}', json=body, headers={'Authorization': 'Bearer nope'}, timeout=30).status_code == 401
        for path in ('/healthz', '/livez', '/readyz', '/metrics'): assert requests.get(srv.url + path, timeout=30).status_code == 200
        s = requests.Session(); s.headers['Authorization'] = 'Bearer s3cret'
        ask = lambda key=None: s.post(f'{srv.url}/predict', json={'record': rec, 'key': key}, timeout=30).json()['model']

        # A/B at 50%: both models answer; one key always gets the same one
        end = time.time() + 15
        while time.time() < end and len({ask() for _ in range(20)}) < 2: time.sleep(0.5)
        assert {ask(f'k{i}') for i in range(30)} == {champion, challenger}
        assert len({ask('alice') for _ in range(10)}) == 1
        key = next(k for k in (f'u{i}' for i in range(100)) if ask(k) == champion)     # a key A/B sends to the champion

        # the gate: a challenger recorded as worse is refused, with the reason (its run unknown: the recorded metrics are compared)
        metrics, run_id = st.get_model(challenger)['metrics'], st.get_model(challenger)['run_id']
        st.write(models_table.update().where(models_table.c.tag == challenger).values(metrics={**metrics, 'accuracy': metrics['accuracy'] - 0.5}, run_id='gone'))
        r = py(f"from mlnb.registry import promote; promote('settings.ini', {challenger!r})", root, check=False)
        assert r.returncode and 'worse than champion' in r.stderr and 'accuracy' in r.stderr
        assert st.alias('champion') == champion

        # forced promotion, then rollback, under traffic: the server follows within 5 s, no request fails
        seen, stop = [], threading.Event()
        def traffic():
            while not stop.is_set():
                r = s.post(f'{srv.url}/predict', json={'record': rec, 'key': key}, timeout=30)
                seen.append((time.time(), r.status_code, r.json().get('model')))
        th = threading.Thread(target=traffic); th.start()
        try:
            def follows(tag, since):
                while time.time() - since < 5:
                    if seen and seen[-1][0] > since and seen[-1][2] == tag: return True
                    time.sleep(0.05)
            py(f"from mlnb.registry import promote; promote('settings.ini', {challenger!r}, force=True)", root)
            assert st.alias('champion') == challenger and st.alias('challenger') is None
            assert follows(challenger, time.time()), seen[-3:]
            py("from mlnb.registry import rollback; print(rollback('settings.ini'))", root)
            assert st.alias('champion') == champion
            assert follows(champion, time.time()), seen[-3:]

            # a champion that raises: the model before it answers, and /metrics counts the fallbacks
            broken = py(BROKEN, root).stdout.split()[-1]
            assert follows(champion, time.time() + 3)                       # still answered by the good model
            n = len(seen); time.sleep(1.5)
            assert {m for _, _, m in seen[n:]} == {champion}
        finally:
            stop.set(); th.join()
        assert {code for _, code, _ in seen} == {200} and len(seen) > 5
        m = requests.get(f'{srv.url}/metrics', timeout=30).text
        assert f'mlnb_model_switches_total{{model="{challenger}"}} 1.0' in m and f'mlnb_model_switches_total{{model="{broken}"}} 1.0' in m
        assert f'mlnb_fallbacks_total{{model="{broken}"}}' in m
    py("from mlnb.registry import rollback; rollback('settings.ini')", root)
    assert st.alias('champion') == champion
    st.write(models_table.update().where(models_table.c.tag == challenger).values(metrics=metrics, run_id=run_id))


def tls_pair(folder: Path) -> tuple[Path, Path]:
    "A self-signed certificate for 127.0.0.1 and its key, as PEM files."
    import datetime, ipaddress
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, '127.0.0.1')])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address('127.0.0.1'))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    (folder/'cert.pem').write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder/'key.pem').write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return folder/'cert.pem', folder/'key.pem'


def test_load_test_over_https_loses_nothing(packaged, tmp_path):
    "benchmarks/loadtest.py, briefly: a real server over HTTPS, zero errors, every answered request id in the store after SIGTERM."
    root, _ = packaged
    cert, key = tls_pair(tmp_path)
    script = Path(__file__).resolve().parents[1]/'benchmarks'/'loadtest.py'
    r = subprocess.run([sys.executable, str(script), '--project', str(root/'settings.ini'), '--seconds', '3', '--concurrency', '1', '4',
                        '--ssl-certfile', str(cert), '--ssl-keyfile', str(key)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'at https://127.0.0.1:' in r.stdout and '(lost 0); errors 0' in r.stdout and 'verdict: PASS' in r.stdout
    assert all(' errors 0' in l for l in r.stdout.splitlines() if l.startswith('/predict c='))


def test_score_a_sql_table_into_a_sql_table(packaged, tmp_path):
    root, _ = packaged
    p = load_project(root/'settings.ini')
    run = Store(p.store_url).get_run()
    holdout = pd.read_parquet(Path(run['stages']['train']['out_dir'])/'holdout.parquet')
    url = f'sqlite:///{tmp_path}/shop.db'
    pd.concat([holdout] * 5, ignore_index=True).to_sql('visits', url, index=False)
    r = py(f"from mlnb.serve import score; r = score('settings.ini', {url!r}, {url!r}, table='visits', output_table='scores', chunk_rows=40); print(r.rows)", root)
    out = pd.read_sql('SELECT * FROM scores', url)
    local = __import__('joblib').load(Path(run['stages']['train']['out_dir'])/'model.joblib')
    assert int(r.stdout.split()[-1]) == len(out) == 5 * len(holdout) and set(out['model_tag']) == {Store(p.store_url).alias('champion')}
    assert out['label'].tolist() == local.predict(holdout.drop(columns='target')).tolist() * 5
    q = 'SELECT * FROM visits WHERE target = 1'
    out = mlnb('score', url, tmp_path/'ones.csv', '--query', q, cwd=root).stdout         # the command line, with a query
    assert f"{5 * int(holdout['target'].sum())} rows scored" in out
    assert len(pd.read_csv(tmp_path/'ones.csv')) == 5 * int(holdout['target'].sum())


def test_score_a_file_in_chunks_with_the_champion(packaged, tmp_path):
    root, _ = packaged
    p = load_project(root/'settings.ini')
    run = Store(p.store_url).get_run()
    holdout = pd.read_parquet(Path(run['stages']['train']['out_dir'])/'holdout.parquet')
    big = pd.concat([holdout] * 20, ignore_index=True)                   # 600 rows, scored 64 at a time
    big.to_parquet(tmp_path/'in.parquet', index=False)
    r = py(f"from mlnb.serve import score; r = score('settings.ini', {str(tmp_path/'in.parquet')!r}, {str(tmp_path/'out.parquet')!r}, chunk_rows=64); print(r.rows, r.model)", root)
    rows, tag = r.stdout.split()[-2:]
    out = pd.read_parquet(tmp_path/'out.parquet')
    local = __import__('joblib').load(Path(run['stages']['train']['out_dir'])/'model.joblib')
    assert int(rows) == len(out) == 600 and tag == Store(p.store_url).alias('champion') and set(out['model_tag']) == {tag}
    assert out['label'].tolist() == local.predict(big.drop(columns='target')).tolist() and out['target'].tolist() == big['target'].tolist()
    big = big.astype({'mean radius': object}); big.loc[333, 'mean radius'] = 'oops'
    big.to_csv(tmp_path/'bad.csv', index=False)
    r = py(f"from mlnb.serve import score; score('settings.ini', {str(tmp_path/'bad.csv')!r}, {str(tmp_path/'bad.parquet')!r}, chunk_rows=64)", root, check=False)
    assert r.returncode and "column 'mean radius': not a finite number at row(s) 333" in r.stderr and not (tmp_path/'bad.parquet').exists()


def test_demo_command_end_to_end(project):
    root, _ = project
    r = mlnb('demo', '-p', root/'settings.ini', '--sample', SAMPLE)
    out = r.stdout
    for part in ('== 1/3 pipeline', '== 2/3 package', '== 3/3 serve', 'mlnb demo: done', 'holdout    accuracy=', 'bento      shop:', 'served     label='):
        assert part in out, (part, out)


def test_save_model_packs_the_train_stage_reference(packaged):
    "With reference.json in the train stage's folder, the model carries it as custom object `reference_stats` for monitoring."
    root, _ = packaged
    code = """
import json
from pathlib import Path
from mlnb.config import load_project
from mlnb.registry import bentoml_for, run_outputs, save_model
from mlnb.store import Store
p = load_project('settings.ini'); st = Store(p.store_url); challenger = st.alias('challenger')
run, out = run_outputs(st)
ref = {'features': {'mean radius': {'kind': 'float', 'missing': 0.0}}, 'rows': 1}
made = not (out/'reference.json').exists()
if made: (out/'reference.json').write_text(json.dumps(ref))
try: tag = save_model(p).tag
finally:
    if made: (out/'reference.json').unlink()
if challenger: st.set_alias('challenger', challenger)
packed = bentoml_for(p).models.get(tag).custom_objects['reference_stats']
assert packed == json.loads(json.dumps(ref)) if made else isinstance(packed.get('features'), dict), packed
from mlnb.monitoring import load_reference
assert load_reference(p, tag) == packed
print('ok', made)
"""
    assert 'ok' in py(code, root).stdout


def mlnb_serve(root, port:int):
    "`mlnb serve` started from the shell in `root`, once its server answers /readyz: the process and the server's URL."
    proc = subprocess.Popen([MLNB, 'serve', '--port', str(port)], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url, deadline = f'http://127.0.0.1:{port}', time.time() + 180
    while time.time() < deadline:
        try:
            if requests.get(url + '/readyz', timeout=1).status_code == 200: break
        except requests.RequestException: pass             # not listening yet, or still starting
        time.sleep(0.5)
    return proc, url


def test_mlnb_serve_stops_its_server_on_sigterm(packaged):
    "`mlnb serve` killed by a supervisor (SIGTERM) stops bentoml serve too, after flushing its log: no orphan, no lost row."
    import psutil, signal
    from mlnb.core import free_port
    root, _ = packaged
    port = free_port()
    proc, url = mlnb_serve(root, port)
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "mlnb serve started no server"
        record = holdout_X(load_project(root/'settings.ini')).iloc[0].to_dict()
        rid = requests.post(url + '/predict', json={'record': record}, timeout=30).json()['request_id']
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, f"left running: {[p.cmdline() for p in alive]}"
        st = Store(load_project(root/'settings.ini').store_url)
        assert st.read(sa.select(predictions).where(predictions.c.request_id == rid))
    finally:
        if proc.poll() is None: proc.kill()


def test_mlnb_serve_refuses_a_busy_port_and_its_server_dies_with_it(packaged):
    "A second `mlnb serve` on a live server's port exits 2 naming the port and touches none of its files; SIGKILL of `mlnb serve` leaves no orphan."
    import psutil, signal
    from mlnb.core import free_port
    root, _ = packaged
    port = free_port()
    proc, url = mlnb_serve(root, port)
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
        log, home = root/'.mlnb'/'logs'/f'serve-{port}.log', root/'.mlnb'/'bentoml'/'servers'/str(port)
        size = log.stat().st_size
        second = subprocess.run([MLNB, 'serve', '--port', str(port)], cwd=root, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and f'port {port} on 127.0.0.1 is in use' in second.stderr, (second.returncode, second.stderr[-1000:])
        assert 'ready' not in second.stdout and home.is_dir() and log.stat().st_size >= size     # the live server's home and log untouched
        assert requests.get(url + '/readyz', timeout=5).status_code == 200
        proc.send_signal(signal.SIGKILL)                                   # mlnb serve dies without a word: its server must follow
        proc.wait(30)
        gone, alive = psutil.wait_procs(children, timeout=45)
        assert not alive, f"left running after SIGKILL of mlnb serve: {[p.cmdline() for p in alive]}"
    finally:
        if proc.poll() is None: proc.kill()


def test_direct_column_path_gives_the_pipelines_answers():
    "The service feeds each ColumnTransformer transformer its columns (numbers, bools, categories, gaps): same probabilities."
    import numpy as np
    from mlnb import service
    from mlnb.registry import background_sample
    from mlnb.train import train
    rng = np.random.default_rng(0); n = 300
    df = pd.DataFrame({'age': rng.integers(18, 80, n), 'income': rng.normal(50, 10, n), 'city': rng.choice(['a', 'b', 'c'], n),
                       'member': rng.choice([True, False], n)})
    df.loc[::7, 'income'] = np.nan; df.loc[::11, 'city'] = None
    df['y'] = ((df['income'].fillna(50) > 50) ^ (df['city'] == 'a')).astype(int)
    X = df.drop(columns='y')
    plain, stepped = train(df, 'y', 'hist_gb', cv=2), train(df, 'y', 'hist_gb', cv=2, steps=[lambda d: d.assign(age=d['age'] * 2)])
    Features = service.features_model(plain.schema)
    records = service.sample_records(X.head(60), Features)
    plans, scores = {}, {}
    for name, result in [('plain', plain), ('stepped', stepped)]:
        s = service.Served('mixed:1', result.pipeline, {'task': 'binary', 'features': plain.schema}, background_sample(X, 50), Features)
        plans[name], scores[name] = s.plan, s.score(records)[0]
        assert np.abs(scores[name] - result.pipeline.predict_proba(X.head(60))).max() < 1e-12
    groups, steps = plans['plain']
    assert sorted((list(f.index), f.numbers) for _, f in groups) == [(['age', 'income'], True), (['city'], False), (['member'], False)]
    assert [type(t).__name__ for t in steps] == ['TreeStack']          # the boosted trees walked together
    groups, steps = plans['stepped']                     # feature steps come first: the ColumnTransformer is called as it is
    assert groups is None and [type(t).__name__ for t in steps] == ['FeatureSteps', 'ColumnTransformer', 'TreeStack']
    from mlnb.serve import check_frame                   # batch scoring types a file's rows as the service types requests
    assert np.abs(plain.pipeline.predict_proba(check_frame(X.head(60), plain.schema)) - scores['plain']).max() < 1e-12


# ---- every task: regression, multiclass, samplers ------------------------------------------------------------------

def tasks_frame(n=240, seed=0):
    "Numbers (one integer-valued), a category and gaps; a numeric target `y` and a 3-class target `kind`."
    import numpy as np
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({'size': rng.normal(10, 3, n), 'rooms': rng.integers(1, 6, n), 'city': rng.choice(['a', 'b', 'c'], n)})
    df.loc[::9, 'size'] = np.nan; df.loc[::13, 'city'] = None
    df['y'] = 3 * df['size'].fillna(10) + 5 * df['rooms'] + df['city'].map({'a': 0, 'b': 4, 'c': 9}).fillna(2) + rng.normal(0, 1, n)
    df['kind'] = pd.cut(df['y'], 3, labels=['low', 'mid', 'high']).astype(str)
    return df


def tasks_pipeline(estimator):
    "A Pipeline as mlnb builds them: a ColumnTransformer of named columns (imputed numbers, one-hot categories), then `estimator`."
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    prep = ColumnTransformer([('num', make_pipeline(SimpleImputer(), StandardScaler()), ['size', 'rooms']),
                              ('cat', make_pipeline(SimpleImputer(strategy='constant', fill_value='?'), OneHotEncoder(handle_unknown='ignore', sparse_output=False)), ['city'])])
    return Pipeline([('prep', prep), ('model', estimator)])


TASK_FEATURES = [{'name': 'size', 'kind': 'number'}, {'name': 'rooms', 'kind': 'number'}, {'name': 'city', 'kind': 'str'}]


def served_model(pipeline, task, X, types):
    from mlnb import service
    from mlnb.registry import background_sample
    return service.Served(f'{task}:1', pipeline, {'task': task, 'features': TASK_FEATURES}, background_sample(X, 50), types.features)


def test_served_regression_model_answers_values(monkeypatch):
    "A regression service: values from the direct ColumnTransformer path, `{'value'}` logged and cached, counted as 'value', explained additively."
    import numpy as np
    from prometheus_client import REGISTRY
    from sklearn.linear_model import LogisticRegression, Ridge
    from mlnb import service
    df = tasks_frame(); X = df[['size', 'rooms', 'city']]
    pipe = tasks_pipeline(Ridge()).fit(X, df['y'])
    types = service.request_types(TASK_FEATURES, 'regression')
    assert types.prediction is service.Estimated and types.explanation is service.ValueExplanation
    m = served_model(pipe, 'regression', X, types)
    records = service.sample_records(X.head(40), types.features)
    values, _ = m.score(records)
    assert m.classes is None and m.plan is not None and values.shape == (40,)
    assert np.abs(values - pipe.predict(X.head(40))).max() < 1e-9
    class Rows(list):
        def put(self, table, row): self.append((table, row))
        def __bool__(self): return True
    c = service.Service(m, service.Settings(cache_size=10), types, log=Rows())
    before = REGISTRY.get_sample_value('mlnb_predictions_total', {'model': m.tag, 'label': 'value'}) or 0
    a, b = c.predict(records[0]), c.predict(records[0])                  # the second one from the cache
    assert a.value == b.value == float(values[0]) and b.latency_ms == 0 and not hasattr(a, 'label')
    assert [r['output'] for _, r in c.log] == [{'value': float(values[0])}] * 2
    assert REGISTRY.get_sample_value('mlnb_predictions_total', {'model': m.tag, 'label': 'value'}) == before + 2
    ex = c.explain(records[0])
    assert abs(ex.base_value + sum(ex.values.values()) - values[0]) < 1e-6 and 'num__size' in ex.values and ex.value == values[0]
    # alias following: a widened column (int -> float -> number) fits; other names or another kind of answer do not
    assert service.fits([{'name': 'size', 'kind': 'float'}, {'name': 'rooms', 'kind': 'int'}, {'name': 'city', 'kind': 'str'}], TASK_FEATURES)
    assert not service.fits([{'name': 'size', 'kind': 'number'}, {'name': 'city', 'kind': 'str'}], TASK_FEATURES)
    assert not service.fits([{'name': 'size', 'kind': 'number'}, {'name': 'rooms', 'kind': 'str'}, {'name': 'city', 'kind': 'str'}], TASK_FEATURES)
    from types import SimpleNamespace
    import bentoml
    stored = {'reg:2': (pipe, 'regression', 'int'), 'cls:1': (tasks_pipeline(LogisticRegression()).fit(X, df['kind']), 'multiclass', 'number')}
    widened = lambda tag: [{'name': 'size', 'kind': 'float'}, {'name': 'rooms', 'kind': stored[tag][2]}, {'name': 'city', 'kind': 'str'}]
    get = lambda tag: SimpleNamespace(tag=tag, custom_objects={'shap_background': X.head(20)},
                                      info=SimpleNamespace(metadata={'schema': {'task': stored[tag][1], 'features': widened(tag)}}))
    for models in {id(m): m for m in (bentoml.models, __import__('importlib').import_module('bentoml.models'))}.values(): monkeypatch.setattr(models, 'get', get)   # (BentoML's lazy modules)
    import mlnb.registry as registry                    # the signature check is the registry's (tests/test_security.py): stand-ins for these fakes
    monkeypatch.setattr(registry, 'model_key', lambda p=None: b'k' * 16)
    monkeypatch.setattr(registry, 'load_model', lambda model, key: stored[model.tag][0])
    monkeypatch.setattr(registry, 'load_objects', lambda model, key: model.custom_objects)
    assert service.load_served('reg:2', types, TASK_FEATURES, regression=True).classes is None    # a challenger whose int column became a number
    with pytest.raises(service.MlnbError, match='answers a class, this service a value'): service.load_served('cls:1', types, TASK_FEATURES, regression=True)


def test_multiclass_explain_and_oversampling_pipeline():
    "Multiclass: /explain's values are the predicted class's (SHAP's permutation explainer where it cannot read the estimator);"
    " a Pipeline with an imbalanced-learn sampler is served without it."
    import numpy as np
    from imblearn.over_sampling import RandomOverSampler
    from imblearn.pipeline import Pipeline as ImbPipeline
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from mlnb import service
    df = tasks_frame(); X = df[['size', 'rooms', 'city']]
    types = service.request_types(TASK_FEATURES, 'multiclass')
    assert types.prediction is service.Classified
    hgb = tasks_pipeline(HistGradientBoostingClassifier(max_iter=20, random_state=0)).fit(X, df['kind'])
    m = served_model(hgb, 'multiclass', X, types)
    rec = service.sample_records(X.iloc[[5]], types.features)[0]
    proba = m.score([rec])[0][0]
    base, values, k = m.explain(rec, proba)
    assert m.classes[k] == hgb.predict(X.iloc[[5]])[0] and k == int(proba.argmax())
    total = base + sum(values.values())                                 # the predicted class's output, explained additively:
    assert min(abs(total - hgb.decision_function(X.iloc[[5]])[0][k]), abs(total - proba[k])) < 1e-6    # its margin (tree) or probability
    ex = service.Service(m, service.Settings(), types).explain(rec)
    assert ex.label == ex.explained == m.classes[k] and set(ex.values) == set(values)

    steps = tasks_pipeline(LogisticRegression(max_iter=500)).steps
    imb = ImbPipeline([steps[0], ('oversample', RandomOverSampler(random_state=0)), steps[1]]).fit(X, df['kind'])
    m = served_model(imb, 'multiclass', X, types)
    groups, rest = m.plan
    assert [type(s).__name__ for s in rest] == ['LogisticRegression']     # the sampler is left out
    records = service.sample_records(X.head(30), types.features)
    assert np.abs(m.score(records)[0] - imb.predict_proba(X.head(30))).max() < 1e-12
    base, values, k = m.explain(records[0], m.score(records[:1])[0][0])
    assert len(values) == 6 and not any('oversample' in n for n in values)     # 2 numbers, 4 one-hot cities


REGRESSION_PROJECT = """
# A regression model saved by hand (a Pipeline of ColumnTransformer and Ridge), its challenger, and the bento serving it
import joblib, sys
sys.path.insert(0, {tests!r})
from sklearn.linear_model import Ridge
from test_serve import TASK_FEATURES, tasks_frame, tasks_pipeline
from mlnb.config import load_project
from mlnb.registry import ModelInfo, background_sample, save_signed
from mlnb.serve import build_bento
from mlnb.store import Store
p = load_project('settings.ini'); st = Store(p.store_url)
df = tasks_frame(); X = df[['size', 'rooms', 'city']]
schema = {{'target': 'y', 'task': 'regression', 'features': TASK_FEATURES}}
tags = []
for alpha in (1.0, 50.0):
    pipe = tasks_pipeline(Ridge(alpha=alpha)).fit(X, df['y'])
    joblib.dump(pipe, f'ridge-{{alpha:g}}.joblib')
    m = save_signed(p, 'houses', pipe, signatures={{'predict': {{'batchable': True}}}},
                    custom_objects={{'shap_background': background_sample(X, 50)}}, metadata={{'schema': schema, 'metrics': {{'rmse': 1.0}}}})
    st.add_model(str(m.tag), 'by-hand', None, {{'rmse': 1.0}}); tags.append(str(m.tag))
st.set_alias('champion', tags[0]); st.set_alias('challenger', tags[1])
b = build_bento(p, ModelInfo(tags[0], 'by-hand', None, {{'rmse': 1.0}}, schema))
print(b.tag, *tags)
"""


@pytest.fixture(scope='module')
def regression_served(tmp_path_factory):
    "A `bentoml serve` of a regression bento in shadow mode, with a cache; its project made by `mlnb new` (no run)."
    from mlnb.config import new_project
    from mlnb.serve import Server
    root = tmp_path_factory.mktemp('reg')/'houses'
    p = load_project(new_project(root))
    bento, champion, challenger = py(REGRESSION_PROJECT.format(tests=str(Path(__file__).parent)), root).stdout.split()[-3:]
    srv = Server(p, bento, env={'MLNB_API_TOKEN': None, 'MLNB_MODE': 'shadow', 'MLNB_CACHE_SIZE': '10'}).start()
    yield p, srv, champion, challenger
    srv.stop()


def test_regression_bento_over_http(regression_served):
    "A regression model served for real: values, the OpenAPI, /explain, numeric feedback, counters and the prediction log."
    import joblib, numpy as np
    p, srv, champion, challenger = regression_served
    df = tasks_frame(); X = df[['size', 'rooms', 'city']]
    local = joblib.load(p.root/'ridge-1.joblib')
    recs = X.head(6).astype(object).where(X.head(6).notna(), None).to_dict('records')
    out = srv.predict(recs[0])
    assert set(out) == {'value', 'model', 'request_id', 'latency_ms', 'ood'} and out['model'] == champion
    assert out['ood'] is None                                           # saved without the train stage's outlier statistics
    assert abs(out['value'] - local.predict(X.head(1))[0]) < 1e-9
    batch = requests.post(f'{srv.url}/predict_batch', json={'records': recs}, timeout=30)
    assert batch.status_code == 200 and np.abs(np.array([b['value'] for b in batch.json()]) - local.predict(X.head(6))).max() < 1e-9
    assert srv.predict({'size': 9.5, 'rooms': 3, 'city': 'b'})['value'] == pytest.approx(local.predict(pd.DataFrame([{'size': 9.5, 'rooms': 3, 'city': 'b'}]))[0])
    for ep in ('predict', 'explain'):                                   # finite on the wire, infinite once scaled and weighed: a 400, not inf or a 500
        r = requests.post(f'{srv.url}/{ep}', json={'record': {'size': 1e308, 'rooms': 3, 'city': 'b'}}, timeout=30)
        assert r.status_code == 400 and 'not a finite number' in r.json()['detail'], (ep, r.status_code, r.text)
    r = requests.post(f'{srv.url}/predict_batch', json={'records': [recs[0], {'size': 1e308, 'rooms': 3, 'city': 'b'}]}, timeout=30)
    assert r.status_code == 400 and 'not a finite number' in r.json()['detail'], r.text     # the merged call is refused whole
    assert 'Traceback' not in srv.log.read_text()                       # one line, also for what BentoML itself refuses
    api = requests.get(f'{srv.url}/docs.json', timeout=30).json()
    schemas = json.dumps(api['components'])
    assert 'Estimated' in schemas and 'Classified' not in schemas and 'ValueExplanation' in schemas    # the OpenAPI says `value`
    ex = requests.post(f'{srv.url}/explain', json={'record': recs[1]}, timeout=60)
    assert ex.status_code == 200, ex.text
    ex = ex.json()
    assert ex['value'] == pytest.approx(local.predict(X.iloc[[1]])[0]) and ex['base_value'] + sum(ex['values'].values()) == pytest.approx(ex['value'])
    rid = out['request_id']
    ok = requests.post(f'{srv.url}/feedback', json={'request_id': rid, 'label': 41.5}, timeout=30)
    assert ok.status_code == 200 and ok.json() == {'request_id': rid, 'label': 41.5, 'stored': True}
    for bad in ('cat', True, '41.5'):
        r = requests.post(f'{srv.url}/feedback', json={'request_id': rid, 'label': bad}, timeout=30)
        assert r.status_code == 400 and 'not a number' in r.text, (bad, r.status_code, r.text)
    m = requests.get(f'{srv.url}/metrics', timeout=30).text
    assert f'mlnb_predictions_total{{label="value",model="{champion}"}}' in m and 'mlnb_feedback_total 1.0' in m
    srv.stop()                                                           # flushes the log
    st = Store(p.store_url)
    logged = st.read(sa.select(predictions).where(predictions.c.request_id.in_([rid, rid + '-shadow'])))
    by_id = {r['request_id']: r for r in logged}
    assert by_id[rid]['output'] == {'value': out['value']} and by_id[rid]['model_tag'] == champion
    shadow = by_id[rid + '-shadow']                                       # the challenger scored it too, off the request path
    assert shadow['model_tag'] == challenger and set(shadow['output']) == {'value'} and shadow['output'] != by_id[rid]['output']
    assert st.read(sa.select(feedback.c.label).where(feedback.c.request_id == rid)) == [{'label': 41.5}]


def workers(srv) -> list:
    "The `bentoml serve` arbiter's API worker processes."
    import psutil
    return [c for c in psutil.Process(srv.proc.pid).children(recursive=True) if '_bentoml_impl.worker.service' in ' '.join(c.cmdline())]


def test_a_killed_worker_loses_no_answered_prediction_and_dies_with_its_arbiter(packaged):
    """SIGKILL of the worker: every prediction it answered is in its journal, and the worker the arbiter starts in its
    place writes them to the store. SIGKILL of the arbiter's process group: the worker (a group of its own) goes too."""
    import psutil, signal
    from mlnb.serve import Server, champion_bento
    root, _ = packaged
    p = load_project(root/'settings.ini')
    srv = Server(p, champion_bento(p), env={'MLNB_API_TOKEN': None, 'MLNB_LOG_EVERY': '3600'}).start()   # answered rows stay in the journal
    try:
        recs = holdout_X(p).iloc[:20].to_dict('records')
        with ThreadPoolExecutor(4) as ex: ids = list(ex.map(lambda i: srv.predict(recs[i % 20])['request_id'], range(80)))
        st = Store(p.store_url)
        stored = lambda: {r['request_id'] for r in st.read(sa.select(predictions.c.request_id).where(predictions.c.request_id.in_(ids)))}
        assert stored() == set()                                           # none was written yet: the kill below is the whole story
        [first] = workers(srv)
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        deadline = time.time() + 120
        while stored() != set(ids) and time.time() < deadline: time.sleep(0.5)
        assert stored() == set(ids), f"{len(set(ids) - stored())} of {len(ids)} answered predictions lost"
        [second] = workers(srv)                                            # the arbiter's new worker wrote them
        assert second.pid != first.pid
        os.killpg(srv.proc.pid, signal.SIGKILL)
        gone, alive = psutil.wait_procs([second], timeout=30)
        assert not alive, "the worker outlived its arbiter"
    finally:
        srv.stop()


def test_sigterm_drains_keep_alive_traffic_without_a_reset(packaged):
    """SIGTERM under traffic on keep-alive connections: while the server drains, /readyz says 503 and answers close their
    connection, so clients (a load balancer) move away; then it stops accepting and lets requests in flight finish. No
    request sees a reset or a broken answer, and every answered one is logged. (Without the drain, uvicorn closed the idle
    keep-alive connections at once, under requests racing to them: the probe's resets.)"""
    import http.client, signal
    from mlnb.serve import Server, champion_bento
    root, _ = packaged
    p = load_project(root/'settings.ini')
    srv = Server(p, champion_bento(p), env={'MLNB_API_TOKEN': None, 'MLNB_DRAIN_SECONDS': '2'}).start()
    recs = holdout_X(p).iloc[:20].to_dict('records')
    ids, errors, closing, ready = [], [], [], []
    stop = threading.Event()
    def client(k):
        conn = http.client.HTTPConnection('127.0.0.1', srv.port, timeout=30)
        for i in range(10_000):
            if stop.is_set(): return
            try:
                conn.request('POST', '/predict', json.dumps({'record': recs[(k + i) % 20]}), {'Content-Type': 'application/json'})
                r = conn.getresponse()
                body = r.read()
                assert r.status == 200, (r.status, body)
                ids.append(json.loads(body)['request_id'])
                if r.getheader('connection') == 'close':          # draining: as a load balancer would, send no more here
                    closing.append(1)
                    return conn.close()
            except (OSError, http.client.HTTPException) as e:
                errors.append(repr(e)); return
    def probe():
        while not stop.is_set():
            try: ready.append(requests.get(srv.url + '/readyz', timeout=5).status_code)
            except requests.RequestException: return
            time.sleep(0.1)
    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)] + [threading.Thread(target=probe)]
    for t in threads: t.start()
    time.sleep(2)
    os.killpg(srv.proc.pid, signal.SIGTERM)
    srv.proc.wait(60)
    stop.set()
    for t in threads: t.join(60)
    srv.stop()
    assert not errors, errors[:5]
    assert closing and 503 in ready and ready[0] == 200, (len(closing), sorted(set(ready)))
    st = Store(p.store_url)
    assert len(st.read(sa.select(predictions.c.request_id).where(predictions.c.request_id.in_(ids)))) == len(ids)

