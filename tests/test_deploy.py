"""Operating a served model for real: manifests validated against Kubernetes' schema, rules checked and unit-tested by
promtool, Debian's Prometheus scraping two replicas behind Debian's HAProxy (a latency quantile queried, a drift alert
fired), a replica SIGKILLed under traffic while a promotion rolls out, a backup restored into a fresh folder and served.

Server starts are the slow part: the module has one project of its own (the session's project backed up and restored:
these tests promote models and send drifted traffic, which must not change the shared project) and one pair of
replicas behind HAProxy that the live tests share; the restore test starts one more server."""
from contextlib import contextmanager
import json, math, os, subprocess, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import pandas as pd, pytest, requests, yaml
from conftest import mlnb, wait_for
from mlnb.config import load_project
from mlnb.core import MlnbError, free_port
from mlnb.store import Store, predictions


def py(code, cwd, timeout=300):
    "Run Python `code` in a fresh process (BentoML's home is set once per process), as the CLI would."
    r = subprocess.run([sys.executable, '-c', code], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if r.returncode: raise AssertionError(f"{code}\n{r.stdout}\n{r.stderr}")
    return r.stdout


def holdout(p) -> pd.DataFrame:
    run = Store(p.store_url).get_run()
    return pd.read_parquet(Path(run['stages']['train']['out_dir'])/'holdout.parquet').drop(columns='target')


def rows(X: pd.DataFrame, n: int) -> list[dict]:
    "`n` records of `X`, its rows repeated as needed."
    return pd.concat([X] * (n // len(X) + 1)).iloc[:n].to_dict('records')


@pytest.fixture(scope='module')
def own(project, tmp_path_factory):
    "The session's project, backed up and restored into a folder of this module's, packaged there when it has no champion yet."
    root, _ = project
    t = tmp_path_factory.mktemp('deploy')
    py(f"from mlnb.backup import backup; backup('settings.ini', {str(t/'bk')!r})", root)
    py(f"from mlnb.backup import restore; restore({str(t/'bk')!r}, {str(t/'shop')!r})", t)
    p = load_project(t/'shop'/'settings.ini')
    if not Store(p.store_url).alias('champion'): mlnb('package', cwd=p.root)
    return p


@pytest.fixture(scope='module')
def replicas(own):
    "Two `bentoml serve` replicas of the champion behind HAProxy on a free port, logging JSON lines."
    from mlnb.deploy import Replicas
    r = Replicas(own, n=2, port=free_port(), env={'MLNB_API_TOKEN': None, 'MLNB_POLL_SECONDS': '0.5', 'MLNB_LOG_FORMAT': 'json'}).start()
    yield r
    r.stop()


def send(url, records, workers=4):
    "POST each record to url/predict from `workers` threads; the (status, body) answers in order."
    def one(rec):
        try:
            r = requests.post(f'{url}/predict', json={'record': rec}, timeout=30)
            return r.status_code, r.json()
        except requests.RequestException as e: return 0, {'detail': str(e)}
    with ThreadPoolExecutor(workers) as ex: return list(ex.map(one, records))


# ---- Kubernetes -------------------------------------------------------------------------------------------------

def test_k8s_manifests_are_valid_for_the_named_kubernetes_version(own, monkeypatch):
    from mlnb import cli
    from mlnb.deploy import K8S_VERSION, k8s_manifests, to_yaml, validate_k8s
    from mlnb.serve import champion_bento
    docs = k8s_manifests(own, replicas=3, image='registry.example.com/ml/')
    assert validate_k8s(docs, K8S_VERSION) == [], K8S_VERSION
    kinds = {d['kind']: d for d in docs}
    assert set(kinds) == {'ConfigMap', 'Deployment', 'Service', 'HorizontalPodAutoscaler', 'PodDisruptionBudget', 'NetworkPolicy'}
    spec = kinds['Deployment']['spec']
    c = spec['template']['spec']['containers'][0]
    assert c['image'] == f"registry.example.com/ml/{champion_bento(own)}" and spec['replicas'] == 3
    assert (c['startupProbe']['httpGet']['path'], c['readinessProbe']['httpGet']['path'], c['livenessProbe']['httpGet']['path']) == ('/readyz', '/readyz', '/livez')
    assert spec['strategy']['rollingUpdate']['maxUnavailable'] == 0 and c['resources']['requests'] == c['resources']['limits']
    assert spec['template']['metadata']['annotations']['prometheus.io/scrape'] == 'true'
    metrics = kinds['HorizontalPodAutoscaler']['spec']['metrics']
    assert [m['type'] for m in metrics] == ['Resource', 'Pods'] and metrics[1]['pods']['metric']['name'] == 'bentoml_service_request_in_progress'
    assert kinds['ConfigMap']['data']['settings.ini'] == own.path.read_text()
    secret_refs = {e['name']: e['valueFrom']['secretKeyRef']['name'] for e in c['env'] if 'secretKeyRef' in e.get('valueFrom', {})}
    assert set(secret_refs) == {'MLNB_STORE', 'MLNB_MODEL_KEY', 'MLNB_API_TOKEN', 'MLNB_DATA_KEY'}
    optional = {e['name'] for e in c['env'] if e.get('valueFrom', {}).get('secretKeyRef', {}).get('optional')}
    assert optional == {'MLNB_API_TOKEN', 'MLNB_DATA_KEY'}                                     # the data key only with [privacy] encrypt = on
    config_refs = {e['name'] for e in c['env'] if 'configMapKeyRef' in e.get('valueFrom', {})}
    assert 'MLNB_MODE' in config_refs and config_refs <= set(kinds['ConfigMap']['data'])        # each a key of the ConfigMap
    text = to_yaml(docs)
    assert (own.workspace/'model.key').read_text().strip() not in text and 'sqlite:' not in text    # secrets by reference only
    # a misspelt field is refused, naming the object, as the API server would
    docs[1]['spec']['template']['spec']['containers'][0]['readinesProbe'] = c.pop('readinessProbe')
    bad = validate_k8s(docs, K8S_VERSION)
    assert len(bad) == 1 and bad[0].startswith('Deployment ') and 'readinesProbe' in bad[0]
    # the command writes them and checks them
    monkeypatch.setattr(cli, 'COMMAND_MODULES', tuple(dict.fromkeys((*cli.COMMAND_MODULES, 'deploy'))))
    assert cli.main(['deploy', 'k8s', '-p', str(own.path), '--validate', '--replicas', '2']) == 0
    written = list(yaml.safe_load_all((own.root/'deploy'/'k8s.yaml').read_text()))
    assert [d['kind'] for d in written] == [d['kind'] for d in docs] and validate_k8s(written) == []
    # a mistake is one line; with --log-format json, one JSON object (ready for a log shipper, like the servers' lines)
    r = mlnb('--log-format', 'json', 'deploy', 'k8s', '-p', own.root/'nope'/'settings.ini', check=False)
    said = json.loads(r.stderr)
    assert r.returncode == 2 and r.stderr.count('\n') == 1 and said['level'] == 'error' and 'no such project file' in said['message']


# ---- Prometheus -------------------------------------------------------------------------------------------------

def test_rules_pass_promtool_check_and_unit_tests(own, tmp_path):
    from mlnb.deploy import alert_rules, check_rules, write_prometheus
    out = check_rules()
    assert out.count('SUCCESS') >= 2, out
    names = {r['alert'] for r in alert_rules()['groups'][0]['rules']}
    assert {'MlnbLatencyHigh', 'MlnbErrorRateHigh', 'MlnbFallbackActive', 'MlnbDriftCritical', 'MlnbLiveAccuracyDrop', 'MlnbConsumerLag'} <= names
    # the unit tests pin the thresholds: 10% of 5xx answers is no alert at a 20% threshold, and promtool says so
    with pytest.raises(MlnbError, match='MlnbErrorRateHigh'): check_rules({'error_rate': 0.2})
    r = mlnb('deploy', 'prometheus', '-o', tmp_path/'prom', '--targets', '127.0.0.1:3001', '127.0.0.1:3002', '--exporter', '127.0.0.1:9108', cwd=own.root)
    assert 'checked and unit-tested by promtool' in r.stdout
    scrape = yaml.safe_load((tmp_path/'prom'/'prometheus.yml').read_text())['scrape_configs']
    assert scrape[0]['static_configs'][0]['targets'] == ['127.0.0.1:3001', '127.0.0.1:3002'] and scrape[1]['job_name'] == 'mlnb-store'
    folder = write_prometheus(own, tmp_path/'prom', targets=['127.0.0.1:3001'], exporter='127.0.0.1:9108')
    r = subprocess.run(['promtool', 'check', 'config', str(folder/'prometheus.yml')], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def lint(text: str) -> str:
    "What `promtool check metrics` says about a Prometheus exposition (empty: nothing)."
    r = subprocess.run(['promtool', 'check', 'metrics'], input=text, capture_output=True, text=True, timeout=60)
    return (r.stdout + r.stderr).strip()


@pytest.fixture
def prometheus(own, replicas, tmp_path):
    "The store's metrics exporter and Debian's Prometheus (1 s scrapes, alerts without hold) watching both replicas."
    from mlnb.deploy import write_prometheus
    mport, pport = free_port(), free_port()
    exporter = subprocess.Popen([sys.executable, '-c', f"from mlnb.deploy import run_metrics; run_metrics('settings.ini', port={mport}, every=1, last=60)"],
                                cwd=own.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    folder = write_prometheus(own, tmp_path/'prom', targets=[f'{s.host}:{s.port}' for s in replicas.servers],
                              exporter=f'127.0.0.1:{mport}', interval='1s', pending='0s')
    log = open(tmp_path/'prom.log', 'w')
    prom = subprocess.Popen(['/usr/bin/prometheus', f'--config.file={folder/"prometheus.yml"}', f'--storage.tsdb.path={tmp_path/"tsdb"}',
                             f'--web.listen-address=127.0.0.1:{pport}', '--log.level=warn'], stdout=subprocess.DEVNULL, stderr=log)
    url = f'http://127.0.0.1:{pport}'
    def ready():
        try: return requests.get(f'{url}/-/ready', timeout=2).status_code == 200
        except requests.RequestException: return False
    try:
        wait_for(ready, 60)
        yield url, f'http://127.0.0.1:{mport}'
    finally:
        for proc in (prom, exporter):
            proc.terminate()
            try: proc.wait(15)
            except subprocess.TimeoutExpired: proc.kill()
        log.close()
        exporter.stdout.close()


def test_prometheus_queries_latency_and_fires_a_drift_alert(own, replicas, prometheus):
    url, exporter = prometheus
    X = holdout(own)
    statuses, done = [], threading.Event()
    def traffic():                                       # requests keep coming while Prometheus scrapes (a rate needs two scrapes)
        while not done.is_set(): statuses.extend(s for s, _ in send(replicas.url, rows(X, 8), workers=2))
    sender = threading.Thread(target=traffic)
    sender.start()
    q = 'histogram_quantile(0.99, sum by (le) (rate(bentoml_service_request_duration_seconds_bucket{endpoint="/predict"}[1m])))'
    def p99():
        "a p99 latency of /predict from Prometheus"
        res = requests.get(f'{url}/api/v1/query', params={'query': q}, timeout=5).json()['data']['result']
        return res and math.isfinite(v := float(res[0]['value'][1])) and v > 0 and v
    try: seconds = wait_for(p99, 60)
    finally:
        done.set()
        sender.join()
    assert 0 < seconds < 10 and len(statuses) >= 8 and set(statuses) == {200}
    def all_up():
        "both replicas and the exporter up in Prometheus"
        targets = requests.get(f'{url}/api/v1/targets', timeout=5).json()['data']['activeTargets']
        return sorted(t['labels']['job'] for t in targets if t['health'] == 'up') == ['mlnb', 'mlnb', 'mlnb-store']
    wait_for(all_up, 30)
    # every numeric feature ten times its usual size: critical drift in the exporter's window of the latest 60 requests
    drifted = rows(X * 10, 80)
    assert [s for s, _ in send(replicas.url, drifted)] == [200] * 80
    champion = Store(own.store_url).alias('champion')
    def drift_alert():
        "MlnbDriftCritical firing in Prometheus"
        alerts = requests.get(f'{url}/api/v1/alerts', timeout=5).json()['data']['alerts']
        return [a for a in alerts if a['labels']['alertname'] == 'MlnbDriftCritical' and a['state'] == 'firing']
    fired = wait_for(drift_alert, 60)
    assert {a['labels']['model'] for a in fired} == {champion} and fired[0]['annotations']['summary'].endswith('drifted critically')
    store_metrics = requests.get(f'{exporter}/metrics', timeout=5).text
    severity = {l.split('feature="')[1].split('"}')[0]: float(l.split()[-1]) for l in store_metrics.splitlines()
                if l.startswith(f'mlnb_drift_severity{{model="{champion}"')}
    assert max(severity.values()) == 2 and sum(v == 2 for v in severity.values()) >= 5, severity
    assert lint(store_metrics) == ''                                     # mlnb's store series follow Prometheus' naming rules
    served = requests.get(f'{replicas.servers[0].url}/metrics', timeout=5).text
    own_series = ''.join(l + '\n' for l in served.splitlines() if 'mlnb_' in l)
    assert 'mlnb_predictions_total{' in own_series and lint(own_series) == ''


# ---- replicas -----------------------------------------------------------------------------------------------------

def test_request_ids_and_json_log_lines_through_haproxy(own, replicas):
    "A client's X-Request-ID names the answer and its log line; HAProxy gives one to a request without; lines are JSON without feature values."
    rec = {**holdout(own).iloc[0].to_dict(), 'mean texture': 17.3456789}             # a value no log line could hold by chance
    r = requests.post(f'{replicas.url}/predict', json={'record': rec}, headers={'X-Request-ID': 'deploy-json-1'}, timeout=30)
    assert r.status_code == 200 and r.json()['request_id'] == 'deploy-json-1'
    given = requests.post(f'{replicas.url}/predict', json={'record': rec}, timeout=30).json()['request_id']
    assert given != 'deploy-json-1' and len(given) > 20 and given == given.upper()      # HAProxy's unique-id, not the service's uuid4
    bad = requests.post(f'{replicas.url}/predict', json={'record': {**rec, 'mean radius': 'x'}}, headers={'X-Request-ID': 'deploy-json-2'}, timeout=30)
    assert bad.status_code == 400
    def lines():
        out = []
        for s in replicas.servers:
            for l in s.log.read_text(errors='replace').splitlines():
                if '"request_id"' in l: out.append(json.loads(l))        # a line that names a request is one JSON object
        return out
    def both():
        got = {d['request_id']: d for d in lines()}
        return 'deploy-json-1' in got and 'deploy-json-2' in got and got
    got = wait_for(both, 10)                                           # the lines are written as the answers leave
    text = json.dumps(lines())
    assert 'mlnb: POST /predict -> 400' in text and '17.3456789' not in text                        # no feature values
    fields = {'time', 'level', 'logger', 'message', 'request_id', 'model', 'endpoint', 'status', 'latency_ms', 'error'}
    assert all(set(d) <= fields for d in lines())
    assert len(wait_for(lambda: Store(own.store_url).read(predictions.select().where(predictions.c.request_id == 'deploy-json-1')), 10)) == 1
    ok, err = got['deploy-json-1'], got['deploy-json-2']
    assert ok['model'] == r.json()['model'] and ok['status'] == 200 and ok['latency_ms'] >= 0 and {'time', 'level', 'message'} <= set(ok)
    assert err['status'] == 400 and err['endpoint'] == '/predict' and err['level'] in ('warning', 'error')


def test_killed_replica_and_promotion_under_traffic_cost_no_request(own, replicas):
    "c=6 through HAProxy for ~11 s: a new champion at 2 s (every replica follows), replica 1 SIGKILLed 5 s later; no request fails, none is lost."
    tag = py("from mlnb.registry import save_model; from mlnb.config import load_project; print(save_model(load_project('settings.ini')).tag)", own.root).split()[-1]
    records = holdout(own).to_dict('records')
    answers, stop, lock = [], threading.Event(), threading.Lock()
    def client(k):
        s, i = requests.Session(), k
        while not stop.is_set():
            try:
                r = s.post(f'{replicas.url}/predict', json={'record': records[i % len(records)]}, timeout=30)
                got = (time.time(), r.status_code, r.json())
            except requests.RequestException as e: got = (time.time(), 0, {'detail': str(e)})
            with lock: answers.append(got)
            i += 6
    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(6)]
    start = time.time()
    for t in threads: t.start()
    try:
        time.sleep(2)
        mlnb('promote', tag, '--force', cwd=own.root)
        promoted = time.time()
        time.sleep(5)
        replicas.kill(0)
        killed = time.time()
        time.sleep(4)
    finally:
        stop.set()
        for t in threads: t.join()
    failed = [(round(t - start, 2), s, b) for t, s, b in answers if s != 200]
    print(f"{len(answers)} requests in {time.time() - start:.1f}s, {len(failed)} failed; HAProxy: {replicas.stats()}")
    assert len(answers) > 100 and failed == []
    followed = {b['model'] for t, s, b in answers if promoted + 3 < t < killed}
    assert followed == {tag}                             # both replicas (HAProxy spreads the 6 clients) serve the new champion 3 s on
    assert replicas.stats()[0]['status'] in ('DOWN', 'MAINT') and {b['model'] for t, s, b in answers if t > killed} == {tag}
    # every acknowledged prediction reaches the store: the live replica adopts the killed one's journal
    acked = {b['request_id'] for _, s, b in answers if s == 200}
    def missing():
        got = {r['request_id'] for r in Store(own.store_url).read(predictions.select().with_only_columns(predictions.c.request_id))}
        return acked - got
    wait_for(lambda: not missing(), 30)
    # the dead replica is started again on its port and HAProxy takes it back
    assert replicas.revive() == [0]
    wait_for(lambda: [s['status'] for s in replicas.stats()] == ['UP', 'UP'], 15)
    time.sleep(1.5)                                                       # three alias polls of the new server
    revived = {b['model'] for _, b in send(replicas.url, records[:8])}     # both replicas answer (leastconn spreads 4 clients)
    # and a rollback reaches both
    before = mlnb('rollback', cwd=own.root).stdout.split()[1]
    wait_for(lambda: {b['model'] for _, b in send(replicas.url, records[:8])} == {before}, 10)
    assert revived == {tag}, f"a replica started after the promotion serves {revived}, not the champion {tag}"


# ---- backup and restore -------------------------------------------------------------------------------------------

def test_backup_restored_into_a_fresh_folder_serves_the_same_answers(own, replicas, tmp_path):
    from mlnb.serve import Server, champion_bento
    assert {s for s, _ in send(replicas.url, rows(holdout(own), 5))} == {200}          # a live project: its log has rows
    wait_for(lambda: Store(own.store_url).read(predictions.select().limit(1)), 10)
    out = mlnb('backup', tmp_path/'bk', '-p', own.path)
    assert out.stdout.startswith(f"backed up shop to {tmp_path/'bk'}: sqlite store")
    manifest = json.loads((tmp_path/'bk'/'manifest.json').read_text())
    assert manifest['store'] == 'sqlite' and manifest['rows']['predictions'] > 0
    mlnb('restore', tmp_path/'bk', tmp_path/'again')
    q = load_project(tmp_path/'again'/'settings.ini')
    assert Store(q.store_url).alias('champion') == Store(own.store_url).alias('champion')
    X = holdout(q).iloc[:10].to_dict('records')                        # read through the moved paths
    with Server(q, champion_bento(q), env={'MLNB_API_TOKEN': None}) as srv:
        again = [srv.predict(r) for r in X]
    before = [b for _, b in send(replicas.url, X)]
    assert [(a['model'], a['label'], a['probabilities']) for a in again] == [(b['model'], b['label'], b['probabilities']) for b in before]
    # over an existing project: refused, in one line, unless forced
    r = mlnb('restore', tmp_path/'bk', tmp_path/'again', check=False)
    assert r.returncode == 2 and r.stderr.count('\n') == 1 and 'holds a project' in r.stderr and '--force' in r.stderr


PG_URL = os.environ.get('MLNB_TEST_PG_URL')

@contextmanager
def pg_project(folder, prefix:str, query:str=''):
    "A new project whose store is a schema of its own (named `prefix` + random hex) in the test database: its settings.ini, the schema and the stores to dispose (dropped and disposed after)."
    import secrets, sqlalchemy as sa
    from mlnb.config import new_project
    schema = f'{prefix}_{secrets.token_hex(4)}'
    eng = sa.create_engine(PG_URL)
    with eng.begin() as c: c.execute(sa.text(f'CREATE SCHEMA {schema}'))
    stores = []
    try:
        settings = new_project(folder)
        settings.write_text(settings.read_text().replace('[project]\n', f'[project]\nstore = {PG_URL}?{query}options=-csearch_path%3D{schema}\n', 1))
        yield settings, schema, stores
    finally:
        for s in stores: s.engine.dispose()
        with eng.begin() as c: c.execute(sa.text(f'DROP SCHEMA {schema} CASCADE'))
        eng.dispose()


@pytest.mark.skipif(not PG_URL, reason='MLNB_TEST_PG_URL is not set: .ci/run starts PostgreSQL and sets it')
def test_backup_and_restore_of_a_postgresql_store(tmp_path):
    "pg_dump of the store's tables in its own schema (nothing else in the database), pg_restore over it only when forced."
    from mlnb.backup import backup, restore
    with pg_project(tmp_path/'pg', 'mlnb_backup') as (settings, schema, stores):      # a schema of this test's own in the shared test database
        st = Store(load_project(settings).store_url)
        stores.append(st)
        rid = st.start_run('pg')
        st.finish_run(rid, 'succeeded')
        b = backup(settings, tmp_path/'bk')
        assert b.manifest['store'] == 'postgresql' and b.manifest['rows']['runs'] == 1
        listing = subprocess.run(['pg_restore', '-l', str(b.path/'store.pgdump')], capture_output=True, text=True, check=True).stdout
        assert f'TABLE DATA {schema} runs' in listing and 'TABLE DATA public' not in listing
        st.start_run('pg')                                                 # a run after the backup
        with pytest.raises(MlnbError, match='already holds runs'): restore(b.path, tmp_path/'again')
        q = restore(b.path, tmp_path/'again', force=True)
        stores.append(Store(q.store_url))
        assert [r['id'] for r in stores[-1].list_runs()] == [rid]        # the database holds the backup's state again


@pytest.fixture(scope='module')
def s3_server():
    """An S3 API on loopback: moto's standalone server (`ThreadedMotoServer`) stands in for S3, which cannot be reached
    from here; s3fs talks to it as to S3. Its endpoint and credentials, as environment variables (AWS_ENDPOINT_URL, as for
    MinIO), so `mlnb` run from a shell uses it unchanged."""
    from moto.server import ThreadedMotoServer
    srv = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    yield {'AWS_ENDPOINT_URL': f'http://{host}:{port}', 'AWS_ACCESS_KEY_ID': 'testing', 'AWS_SECRET_ACCESS_KEY': 'testing', 'AWS_DEFAULT_REGION': 'us-east-1'}
    srv.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    "The moto server emptied, the environment pointing at it, and an s3fs filesystem of the test's own with bucket mlnb-backups."
    import s3fs
    for k, v in s3_server.items(): monkeypatch.setenv(k, v)
    requests.post(f"{s3_server['AWS_ENDPOINT_URL']}/moto-api/reset", timeout=10).raise_for_status()
    fs = s3fs.S3FileSystem(endpoint_url=s3_server['AWS_ENDPOINT_URL'], key='testing', secret='testing', skip_instance_cache=True)
    fs.mkdir('mlnb-backups')
    return fs


def test_backup_to_s3_and_restore_from_it_in_a_fresh_folder(own, s3, tmp_path):
    """`mlnb backup s3://…` and `mlnb restore s3://… DIR` from a shell, through s3fs against moto's S3 server on loopback
    (the stand-in for S3, unreachable here): the restored project has the same runs, champion and model answers; an
    existing backup is not overwritten; a prefix without a manifest (an upload cut short) is refused, naming the URL."""
    from mlnb.registry import load_pipeline
    url = 's3://mlnb-backups/shop/2026-11-30'
    out = mlnb('backup', url, '-p', own.path)
    assert out.stdout.startswith(f"backed up shop to {url}: sqlite store")
    keys = s3.find('mlnb-backups/shop/2026-11-30')
    manifest = json.loads(s3.cat('mlnb-backups/shop/2026-11-30/manifest.json'))
    assert len(keys) == manifest['files'] + 1 and 'mlnb-backups/shop/2026-11-30/store.sqlite' in keys
    mlnb('restore', url, tmp_path/'again')
    q = load_project(tmp_path/'again'/'settings.ini')
    before, after = Store(own.store_url), Store(q.store_url)
    assert [r['id'] for r in after.list_runs()] == [r['id'] for r in before.list_runs()]
    champion = after.alias('champion')
    assert champion == before.alias('champion') and (q.workspace/'bentoml'/'models'/champion.replace(':', '/')/'model.yaml').is_file()
    run_id = after.get_run()['id']
    X = holdout(q)                                                      # read through the moved paths
    assert (load_pipeline(after, run_id).predict(X) == load_pipeline(before, run_id).predict(X)).all()   # files checked by hash
    # the same prefix again: refused before any work, in one line
    r = mlnb('backup', url, '-p', own.path, check=False)
    assert r.returncode == 2 and r.stderr.count('\n') == 1 and f'{url} holds files already' in r.stderr
    # an upload cut short (files, no manifest): refused, naming the URL, nothing restored
    s3.pipe('mlnb-backups/half/project/settings.ini', b'[project]\n')
    r = mlnb('restore', 's3://mlnb-backups/half', tmp_path/'half', check=False)
    assert r.returncode == 2 and 's3://mlnb-backups/half: not a complete mlnb backup (no manifest.json' in r.stderr
    assert not (tmp_path/'half').exists()
    # a key that climbs out of the prefix ('..' is allowed in S3 keys): refused before anything is written
    s3.pipe('mlnb-backups/evil/manifest.json', json.dumps(manifest).encode())
    s3.pipe('mlnb-backups/evil/../../escape.txt', b'x')
    assert 'mlnb-backups/evil/../../escape.txt' in s3.find('mlnb-backups/evil')
    r = mlnb('restore', 's3://mlnb-backups/evil', tmp_path/'evil', check=False)
    assert r.returncode == 2 and 'refusing key mlnb-backups/evil/../../escape.txt: it leads outside the backup' in r.stderr


@pytest.mark.skipif(not PG_URL, reason='MLNB_TEST_PG_URL is not set: .ci/run starts PostgreSQL and sets it')
def test_training_job_restores_its_workspace_from_s3_and_keeps_the_live_postgresql_store(s3, tmp_path):
    """The cluster's training job: the store on PostgreSQL (a schema of its own, TLS options in the URL as a managed
    database has them), the workspace's state backed up to S3 (moto's server, as above) and restored with --keep-store,
    so rows the store gained since the backup are kept; restoring the store itself is refused unless forced."""
    import sqlalchemy as sa
    with pg_project(tmp_path/'job', 'mlnb_s3', 'sslmode=disable&') as (settings, schema, stores):
        p = load_project(settings)
        st = Store(p.store_url)
        stores.append(st)
        rid = st.start_run('job')
        (p.workspace/'runs'/rid).mkdir(parents=True)
        (p.workspace/'runs'/rid/'model.joblib').write_bytes(b'a model')
        st.record(rid, 'train', {}, {'model.joblib': (p.workspace/'runs'/rid/'model.joblib', 'ab' * 32, 7)})
        st.finish_run(rid, 'succeeded')
        mlnb('backup', 's3://mlnb-backups/job/1', '-p', settings)
        later = st.start_run('job')                                      # the store goes on: a run (or predictions) after the backup
        r = mlnb('restore', 's3://mlnb-backups/job/1', tmp_path/'again', check=False)
        assert r.returncode == 2 and 'already holds runs' in r.stderr and '--keep-store' in r.stderr
        mlnb('restore', 's3://mlnb-backups/job/1', tmp_path/'again', '--keep-store')
        q = load_project(tmp_path/'again'/'settings.ini')
        stores.append(Store(q.store_url))
        assert {x['id'] for x in stores[-1].list_runs()} == {rid, later}                  # nothing rolled back
        assert (q.workspace/'runs'/rid/'model.joblib').read_bytes() == b'a model'
        with stores[-1].engine.connect() as c:                                            # the recorded path moved to the new workspace
            path = c.execute(sa.text(f"SELECT path FROM {schema}.artifacts WHERE run_id = :r"), {'r': rid}).scalar()
        assert path == str(q.workspace/'runs'/rid/'model.joblib')
