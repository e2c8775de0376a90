"""The feedback loop (issue 6): labels joined to logged predictions, live accuracy and F1 against scikit-learn's, the A/B test
against scipy's, alerts through a webhook served here on loopback, the retraining trigger, one real retraining run of a
project made by `mlnb new`, and online updates by partial_fit."""
import http.server, json, logging, math, sqlite3, threading, time, uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
import numpy as np, pandas as pd, pytest, sqlalchemy as sa
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score
from mlnb.config import load_project, new_project
from mlnb.core import MlnbError
from mlnb.ab import ABSummary, ab_summary, compare
from mlnb.alerting import alert, recent_alerts
from mlnb.feedback import add_label, add_labels, labelled, live_metrics, uncertain
from mlnb.retraining import export_labels, monitoring_pass, new_labels, retrain, should_retrain, update_online
from mlnb.store import Store, drift_reports, feedback, predictions

CLASSES = ['setosa', 'versicolor', 'virginica']


def now(): return datetime.now(timezone.utc).replace(tzinfo=None)


@pytest.fixture
def proj(tmp_path):
    "A project made by `mlnb new` with an empty store (no run: these tests write the store directly)."
    p = load_project(new_project(tmp_path/'shop'))
    Store(p.store_url)
    return p


def log(p, tag, n, classes=('0', '1'), acc=None, seed=0, start=None, every=10.0, typed=int, shadow_of=None, inputs=None):
    "Log `n` predictions of `tag` exactly as the service writes them; returns [(request id, true label)]."
    rng = np.random.default_rng(seed)
    start = start or now() - timedelta(seconds=every * n)
    rows, out = [], []
    for i in range(n):
        proba = rng.dirichlet(np.ones(len(classes)))
        k = int(proba.argmax())
        right = acc is None or rng.uniform() < acc
        truth = k if right else int(rng.choice([j for j in range(len(classes)) if j != k]))
        rid = shadow_of[i][0] + '-shadow' if shadow_of else uuid.uuid4().hex
        rows.append(dict(request_id=rid, model_tag=tag, inputs=inputs[i] if inputs else {'x': float(rng.normal()), 'kind': 'a'},
                         output={'label': typed(classes[k]), 'probabilities': {str(c): float(v) for c, v in zip(classes, proba)}},
                         latency_ms=float(rng.lognormal(1, .3)), created=start + timedelta(seconds=every * i)))
        out.append((rid, typed(classes[truth])))
    Store(p.store_url).write(predictions.insert(), rows)
    return out


def fail(p, tag, n, status=422):
    "Log `n` failed requests to `tag` as the service does (CONTRACT.md): the output holds the HTTP status and a one-line error."
    rows = [dict(request_id=f'fail-{uuid.uuid4().hex}', model_tag=tag, inputs={'x': 'lots'}, output={'status': status, 'error': 'x: not a number'},
                 latency_ms=1.0, created=now() - timedelta(seconds=i)) for i in range(n)]
    Store(p.store_url).write(predictions.insert(), rows)
    return [r['request_id'] for r in rows]


def label_all(p, pairs, source='test'):
    for rid, y in pairs: add_label(p, rid, y, source=source)


# ---- labels ---------------------------------------------------------------------------------------------------------

def test_add_label_checks_request_and_class_and_types_the_label(proj):
    (rid, y), (rid2, _) = log(proj, 'shop:v1', 2)
    add_label(proj, rid, str(y))                                       # '1' from a text box is the class 1
    row = Store(proj.store_url).read(sa.select(feedback))[0]
    assert row['label'] == y and type(row['label']) is int and row['source'] == 'widget'
    with pytest.raises(MlnbError, match="'missing-id'"): add_label(proj, 'missing-id', 1)
    with pytest.raises(MlnbError, match=r"label 7 of request .* not one of the model's classes \['0', '1'\]"): add_label(proj, rid2, 7)
    s = log(proj, 'iris:v1', 1, classes=CLASSES, typed=str)[0]
    add_label(proj, s[0], 'virginica')
    with pytest.raises(MlnbError, match="'rose'"): add_label(proj, s[0], 'rose')


def test_uncertain_is_least_confident_unlabelled_recent_first(proj):
    pairs = log(proj, 'iris:v1', 40, classes=CLASSES, typed=str, seed=3)
    log(proj, 'iris:v2', 40, classes=CLASSES, typed=str, seed=3, shadow_of=pairs)     # shadow copies: never offered
    label_all(proj, pairs[:5])
    u = uncertain(proj, n=10)
    assert len(u) == 10 and all(r['model_tag'] == 'iris:v1' for r in u)
    assert not {r['request_id'] for r in u} & {rid for rid, _ in pairs[:5]}
    conf = [r['confidence'] for r in u]
    assert conf == sorted(conf)
    rest = Store(proj.store_url).read(sa.select(predictions.c.request_id, predictions.c.output).where(predictions.c.model_tag == 'iris:v1'))
    unl = sorted(max(r['output']['probabilities'].values()) for r in rest if r['request_id'] not in {x for x, _ in pairs[:5]})
    assert conf == unl[:10]                                                       # exactly the 10 least confident
    r = u[0]
    assert set(r) == {'request_id', 'model_tag', 'inputs', 'label', 'value', 'proba', 'confidence', 'created'}
    assert r['label'] == max(r['proba'], key=r['proba'].get) and isinstance(r['inputs'], dict)
    assert uncertain(proj, 5, model_tag='nope') == []
    proj.sections['monitor']['window'] = '10'                                     # the last 10 requests only
    assert len(uncertain(proj, 100)) == 10
    proj.sections['monitor']['window'] = '1min'
    assert len(uncertain(proj, 100)) <= 6
    proj.sections['monitor']['window'] = 'lately'
    with pytest.raises(MlnbError, match=r'\[monitor\], window'): uncertain(proj)


def test_failed_requests_are_not_labelled_offered_or_scored(proj):
    "A failed request has no prediction: refused as a label, never offered by uncertain, not in labelled or live metrics, nor in the A/B task guess."
    pairs = log_values(proj, 'houses:v1', 20)
    bad = fail(proj, 'houses:v1', 5)                                            # the newest rows of the model
    with pytest.raises(MlnbError, match=r'failed \(status 422\): there is no prediction to label'): add_label(proj, bad[0], 1)
    with pytest.raises(MlnbError, match='failed'): add_labels(proj, [(pairs[0][0], 1.0), (bad[1], 1.0)])
    assert Store(proj.store_url).read(sa.select(feedback)) == []                 # nothing stored by the mistake
    assert not {r['request_id'] for r in uncertain(proj, 100)} & set(bad)
    Store(proj.store_url).write(feedback.insert(), [dict(request_id=b, label=1.0, source='api', created=now()) for b in bad])   # labels stored by older code
    for rid, y in pairs: add_label(proj, rid, y)
    assert set(labelled(proj).request_id) == {rid for rid, _ in pairs} and live_metrics(proj).labels.tolist() == [20]
    st = Store(proj.store_url); st.set_alias('champion', 'houses:v1')
    assert ab_summary(proj).metric == 'mae'                                      # the latest answered output says regression


# ---- live metrics ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('classes,typed', [(('0', '1'), int), (CLASSES, str)])
def test_live_metrics_match_sklearn(proj, classes, typed):
    pairs = log(proj, 'm:v1', 120, classes=classes, acc=0.7, typed=typed, seed=5)
    label_all(proj, pairs[:100])
    add_label(proj, pairs[0][0], pairs[0][1])                                     # a second label for one request: counted once
    m = live_metrics(proj)
    df = labelled(proj)
    y, pred = [str(v) for v in df.label], [str(v) for v in df.predicted]
    kw = dict(average='binary', pos_label=str(classes[1])) if len(classes) == 2 else dict(average='macro')
    assert list(m.columns) == ['model_tag', 'labels', 'correct', 'accuracy', 'f1'] and m.labels[0] == 100
    assert m.accuracy[0] == pytest.approx(accuracy_score(y, pred)) and m.f1[0] == pytest.approx(f1_score(y, pred, **kw))
    t = live_metrics(proj, by='time', freq='5min')
    assert list(t.columns) == ['model_tag', 'time', 'labels', 'correct', 'accuracy', 'f1'] and t.labels.sum() == 100 and len(t) > 1
    assert (t.time == t.time.dt.floor('5min')).all()
    with pytest.raises(MlnbError, match='by must be'): live_metrics(proj, by='day')


def test_shadow_predictions_get_their_requests_labels(proj):
    pairs = log(proj, 'm:v1', 50, seed=1)
    log(proj, 'm:v2', 50, seed=2, shadow_of=pairs)
    label_all(proj, pairs[1:])
    add_label(proj, pairs[0][0] + '-shadow', pairs[0][1])                        # labelled through the shadow copy: the request's label
    assert Store(proj.store_url).read(sa.select(feedback.c.request_id).where(feedback.c.request_id == pairs[0][0]))
    m = live_metrics(proj).set_index('model_tag')
    assert list(m.labels) == [50, 50]
    df = labelled(proj)
    assert (df.groupby('model_tag').correct.mean() == m.accuracy).all()
    assert len(live_metrics(load_project(new_project(proj.root.parent/'empty')))) == 0


# ---- A/B ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('c1,n1,c2,n2', [(9, 10, 3, 10), (1, 40, 0, 35), (430, 500, 400, 500), (60, 100, 55, 90)])
def test_compare_matches_scipy(c1, n1, c2, n2):
    test, p = compare(c1, n1, c2, n2)
    if test == 'fisher': assert p == pytest.approx(stats.fisher_exact([[c1, n1 - c1], [c2, n2 - c2]])[1])
    else:
        pooled = (c1 + c2) / (n1 + n2)
        z = (c1 / n1 - c2 / n2) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
        assert p == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-9)
    assert compare(0, 0, 5, 10) == ('none', compare(0, 0, 5, 10)[1]) and math.isnan(compare(0, 0, 5, 10)[1])


def test_ab_summary_recommends_promote_keep_and_rollback(proj):
    st = Store(proj.store_url)
    assert ab_summary(proj).recommendation == 'keep' and 'no champion' in ab_summary(proj).reason
    a, b = log(proj, 'm:v1', 300, acc=0.7, seed=1), log(proj, 'm:v2', 300, acc=0.9, seed=2)
    label_all(proj, a[:200] + b[:200])
    st.set_alias('champion', 'm:v1')
    s = ab_summary(proj)
    assert s.recommendation == 'keep' and s.reason.startswith('no challenger') and len(s.rows) == 1
    st.set_alias('challenger', 'm:v2')
    s = ab_summary(proj)
    assert isinstance(s, ABSummary) and s.recommendation == 'promote', s.reason
    assert [(r['arm'], r['model_tag'], r['traffic'], r['labels']) for r in s.rows] == [('champion', 'm:v1', 300, 200), ('challenger', 'm:v2', 300, 200)]
    ch, ca = s.rows[1]['correct'], s.rows[0]['correct']
    assert s.p_value == pytest.approx(compare(ch, 200, ca, 200)[1]) and s.p_value < 0.05 and s.test == 'z-test'
    assert 'promote' in str(s) and 'm:v2' in str(s) and '<table>' in s._repr_html_()
    assert ab_summary(proj, metric='f1').recommendation == 'promote'
    assert ab_summary(proj, min_labels=201).recommendation == 'keep'
    st.set_alias('challenger', 'm:v1'); st.set_alias('champion', 'm:v2')          # the better one is champion: keep
    assert ab_summary(proj).recommendation == 'keep' and 'worse' in ab_summary(proj).reason
    st.drop_alias('challenger'); st.set_alias('champion', 'm:v1')                 # v1 replaced v2 and is worse: roll back
    s = ab_summary(proj)
    assert s.recommendation == 'rollback' and [r['arm'] for r in s.rows] == ['champion', 'previous']
    assert s.apply()['champion'] == 'm:v2' and st.alias('champion') == 'm:v2'     # apply: mlnb.registry.rollback
    assert recent_alerts(proj, 1)[0]['kind'] == 'rollback'
    assert ab_summary(proj).apply()['action'] == 'keep'
    with pytest.raises(MlnbError, match='metric'): ab_summary(proj, metric='auc')


# ---- alerts ---------------------------------------------------------------------------------------------------------

class Hook(http.server.BaseHTTPRequestHandler):
    received, delay = [], 0.0
    def do_POST(self):
        time.sleep(Hook.delay)
        Hook.received.append((self.headers.get('Authorization'), json.loads(self.rfile.read(int(self.headers['Content-Length'])))))
        self.send_response(204); self.end_headers()
    def log_message(self, *a): pass


@pytest.fixture
def hook():
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Hook)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    Hook.received, Hook.delay = [], 0.0
    yield f'http://127.0.0.1:{srv.server_address[1]}/alerts'
    srv.shutdown(); srv.server_close()


def test_alert_is_stored_logged_and_posted(proj, hook, caplog, monkeypatch):
    proj.sections['monitor']['webhook'] = hook
    monkeypatch.setenv('MLNB_WEBHOOK_TOKEN', 's3cret')
    with caplog.at_level(logging.INFO, logger='mlnb'):
        a = alert(proj, 'critical', 'drift', 'drift critical: 3 of 30 columns', model_tag='m:v1', drifted=['a', 'b', 'c'])
    assert a['webhook'] == 204 and caplog.records[-1].levelno == logging.CRITICAL and 'drift critical' in caplog.text
    auth, body = Hook.received[-1]
    assert auth == 'Bearer s3cret'
    assert body['level'] == 'critical' and body['kind'] == 'drift' and body['data']['drifted'] == ['a', 'b', 'c'] and body['project'] == 'shop'
    assert body['text'] == 'mlnb shop: critical drift: drift critical: 3 of 30 columns' and body['id'] == a['id']
    alert(proj, 'info', 'retrained', 'second')
    got = recent_alerts(proj)
    assert [r['message'] for r in got] == ['second', 'drift critical: 3 of 30 columns'] and got[1]['data']['model_tag'] == 'm:v1'
    assert len(recent_alerts(proj, limit=1)) == 1


def test_a_failing_or_slow_webhook_is_logged_not_raised(proj, hook, caplog):
    proj.sections['monitor']['webhook'] = 'http://127.0.0.1:9/nothing'
    with caplog.at_level(logging.WARNING, logger='mlnb'): a = alert(proj, 'warning', 'latency', 'slow')
    assert 'Error' in a['webhook'] and 'webhook' in caplog.text and recent_alerts(proj, 1)[0]['id'] == a['id']
    proj.sections['monitor']['webhook'] = hook
    Hook.delay = 5
    t = time.perf_counter(); a = alert(proj, 'warning', 'latency', 'slow hook')
    assert time.perf_counter() - t < 4.5 and 'timed out' in a['webhook']
    with pytest.raises(MlnbError, match='level'): alert(proj, 'fatal', 'x', 'y')


# ---- the retraining trigger and the monitoring pass -----------------------------------------------------------------

def test_should_retrain_on_labels_and_on_drift(proj):
    st = Store(proj.store_url)
    assert should_retrain(proj) is None
    label_all(proj, log(proj, 'm:v1', 30)[:25])
    assert new_labels(proj) == 25 and should_retrain(proj) is None               # retrain_labels = 0: off
    proj.sections['monitor']['retrain_labels'] = 20
    assert should_retrain(proj).startswith('25 new labels')
    proj.sections['monitor']['retrain_labels'] = 0
    st.set_alias('champion', 'm:v1')
    report = {'model_tag': 'm:v1', 'created': now().strftime('%Y-%m-%d %H:%M:%S'), 'window': {'rows': 30}, 'severity': 'warning',
              'drifted': ['x'], 'thresholds': {}, 'rows': [{'feature': 'x', 'part': 'feature', 'severity': 'warning', 'reason': 'PSI 0.15'}]}
    st.write(drift_reports.insert().values(model_tag='m:v1', created=now(), report=report))
    assert should_retrain(proj) is None                                          # warning < retrain_drift = critical
    proj.sections['monitor']['retrain_drift'] = 'warning'
    assert 'drift warning' in should_retrain(proj)
    st.set_alias('challenger', 'm:v2')
    assert should_retrain(proj) is None                                          # a challenger is already waiting
    ini = proj.path.read_text()
    proj.path.write_text(ini + '\n[monitor]\nretrain_drift = sometimes\n')
    try:
        with pytest.raises(MlnbError, match='retrain_drift: expected one of warning, critical, off'): load_project(proj.path)   # refused when read
    finally: proj.path.write_text(ini)


def test_check_alerts_on_latency_errors_and_due_retraining_once(proj):
    pairs = log(proj, 'm:v1', 90, every=1)
    fail(proj, 'm:v1', 10)                                                      # as the service logs a failed request
    label_all(proj, pairs[:5])
    proj.sections['serve']['budget_ms'] = 1.0; proj.sections['monitor']['retrain_labels'] = 5
    out = monitoring_pass(proj, since='1h')
    assert sorted(a['kind'] for a in out['alerts']) == ['errors', 'latency', 'retrain']
    assert out['health'][0]['requests'] == 100 and out['health'][0]['error_rate'] == pytest.approx(0.1)
    assert out['retrain'].startswith('5 new labels') and out['retrained'] is None
    assert monitoring_pass(proj)['alerts'] == []                                           # not again within `quiet`
    assert len(monitoring_pass(proj, quiet='0s')['alerts']) == 3


# ---- one real retraining of a project made by `mlnb new` ------------------------------------------------------------

def test_retrain_runs_the_pipeline_with_labels_and_makes_a_challenger(tmp_path):
    from sklearn.datasets import load_breast_cancer
    p = load_project(new_project(tmp_path/'shop'))
    st = Store(p.store_url)
    data = load_breast_cancer(as_frame=True).frame.sample(60, random_state=0)
    recs = data.drop(columns='target').to_dict('records')
    pairs = log(p, 'shop:old', 60, inputs=recs, seed=4)
    for (rid, _), y in zip(pairs, data.target): add_label(p, rid, int(y))
    st.set_alias('champion', 'shop:old')                                         # a champion served before: the new model is the challenger
    with pytest.raises(MlnbError, match='not in BentoML'): update_online(p)
    path, n = export_labels(p)
    assert n == 60 and pd.read_parquet(path).shape == (60, 31)
    r = retrain(p, jobs=2, reason='test')
    assert r['rows_added'] == 60 and r['role'] == 'challenger' and st.alias('challenger') == r['model_tag'] and r['labels'] == str(path)
    run = st.get_run(r['run_id'])
    assert run['status'] == 'succeeded' and run['stages']['ingest']['params']['extra'] == str(path)
    if 'extra' in (p.root/'pipeline'/'ingest.ipynb').read_text():                # the ingest stage appends them (templates/pipeline)
        assert run['metrics']['rows'] == 569 + 60, run['metrics']                # all of breast_cancer, and the labelled rows
    a = recent_alerts(p, 1)[0]
    assert a['kind'] == 'retrained' and a['data']['model_tag'] == r['model_tag'] and a['data']['rows_added'] == 60
    assert new_labels(p) == 0                                                    # labels before the run are used up

    with pytest.raises(MlnbError, match='no partial_fit'): update_online(p, r['model_tag'])

    b = log(p, r['model_tag'], 60, inputs=recs, seed=5, acc=1.0)                  # the challenger is right every time
    label_all(p, b)
    old = log(p, 'shop:old', 60, inputs=recs, seed=6, acc=0.5)
    label_all(p, old)
    s = ab_summary(p)
    assert s.recommendation == 'promote', s
    done = s.apply()
    assert done == {'action': 'promote', 'champion': r['model_tag'], 'message': f"promoted {r['model_tag']} to champion"}
    assert st.alias('champion') == r['model_tag'] and st.alias('challenger') is None

    import bentoml
    from sklearn.linear_model import SGDClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    X, y = data.drop(columns='target'), data.target
    sgd = make_pipeline(StandardScaler(), SGDClassifier(random_state=0)).fit(X, y)
    schema = {'features': [{'name': c, 'kind': 'float'} for c in X.columns], 'target': 'target'}
    from mlnb.registry import load_model, model_key, save_signed, stored_model
    m = save_signed(p, 'shop-sgd', sgd, metadata={'schema': schema})
    st.add_model(str(m.tag), 'none', None, {})
    time.sleep(0.05)
    label_all(p, log(p, str(m.tag), 20, inputs=recs, seed=7))
    coef = sgd[-1].coef_.copy()
    u = update_online(p, str(m.tag))
    assert u['rows'] == 20 and u['from'] == str(m.tag) and st.alias('challenger') == u['model_tag'] != str(m.tag)
    new = load_model(stored_model(p, u['model_tag']), model_key(p))      # the updated model is signed too
    assert not np.allclose(new[-1].coef_, coef) and bentoml.models.get(u['model_tag']).info.metadata['online_rows'] == 20


def test_importing_feedback_stays_light():
    "The dashboard and the labeller import the feedback modules: no scikit-learn, BentoML, papermill or Great Expectations on import."
    import subprocess, sys
    code = ("import sys, mlnb.feedback, mlnb.alerting, mlnb.ab, mlnb.retraining, mlnb.service_health, mlnb.widgets; heavy = [m for m in ('sklearn', 'bentoml', 'papermill', 'great_expectations', 'scipy') if m in sys.modules]; "
            "print(heavy)")
    assert subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.strip() == '[]'


# ---- the command line -----------------------------------------------------------------------------------------------

def test_cli_feedback_label_accuracy_and_alerts(proj):
    from conftest import mlnb
    pairs = log(proj, 'shop:v1', 5, seed=3)
    ini = proj.path
    out = mlnb('label', '-p', ini, '-n', 3).stdout.splitlines()
    listed, shown = out[0::2], out[1::2]                                      # a prediction, then its inputs indented under it
    assert len(listed) == 3 and all(l.startswith('    x=') and 'kind=a' in l for l in shown), out
    conf = [float(l.split('confidence ')[1].split()[0]) for l in listed]
    assert conf == sorted(conf)                                              # least certain first
    logged = {r['request_id']: r['inputs'] for r in Store(proj.store_url).read(sa.select(predictions))}
    assert all(f"x={logged[l.split()[0]]['x']:.4g}," in i for l, i in zip(listed, shown))      # the inputs of that very request
    rid, y = pairs[0]
    assert 'recorded' in mlnb('feedback', '-p', ini, rid, y).stdout
    rows = Store(proj.store_url).read(sa.select(feedback))
    assert [(r['request_id'], r['label'], r['source']) for r in rows] == [(rid, y, 'cli')]
    bad = mlnb('feedback', '-p', ini, 'no-such-request', 1, check=False)
    assert bad.returncode == 2 and 'no-such-request' in bad.stderr and len(bad.stderr.splitlines()) == 1
    assert len(Store(proj.store_url).read(sa.select(feedback))) == 1         # nothing written by the mistake
    acc = mlnb('monitor', '-p', ini, '--accuracy').stdout
    assert 'shop:v1' in acc
    alert(proj, 'warning', 'drift', 'feature x drifted')
    assert 'feature x drifted' in mlnb('monitor', '-p', ini, '--alerts').stdout


# ---- regression: numeric labels -------------------------------------------------------------------------------------

def log_values(p, tag, n, noise=1.0, seed=0, ids=None, every=10.0):
    "Log `n` predictions of regression model `tag` as the service writes them (`{'value': v}`); returns [(request id, true value)]."
    rng = np.random.default_rng(seed)
    start = now() - timedelta(seconds=every * n)
    truth = np.random.default_rng(99).normal(40, 10, n)                 # the same true values for every model
    rows = [dict(request_id=f'{ids[i]}-shadow' if ids else uuid.uuid4().hex, model_tag=tag, inputs={'size': float(t / 4), 'city': 'a'},
                 output={'value': float(t + rng.normal(0, noise))}, latency_ms=1.0, created=start + timedelta(seconds=every * i))
            for i, t in enumerate(truth)]
    Store(p.store_url).write(predictions.insert(), rows)
    return [(r['request_id'].removesuffix('-shadow'), float(t)) for r, t in zip(rows, truth)]


def test_regression_labels_live_mae_and_ab_summary(proj):
    "Numeric labels: typed or text, a non-number refused in one line; live MAE/RMSE as scikit-learn's; A/B on errors by Welch's t-test."
    from sklearn.metrics import mean_absolute_error, root_mean_squared_error
    st = Store(proj.store_url)
    champ = log_values(proj, 'houses:v1', 80, noise=4.0, seed=1)
    for bad in ('tall', True, float('inf'), None):
        with pytest.raises(MlnbError, match='is not a number') as e: add_label(proj, champ[0][0], bad)
        assert len(str(e.value).splitlines()) == 1
    add_label(proj, champ[0][0], str(champ[0][1]))                       # text from a box or the command line
    for rid, y in champ[1:60]: add_label(proj, rid, y)
    assert {type(r['label']) for r in st.read(sa.select(feedback))} == {float}
    u = uncertain(proj, n=5)                                             # no probabilities: the newest unlabelled ones
    assert [r['request_id'] for r in u] == [rid for rid, _ in champ[::-1][:5]] and all(isinstance(r['value'], float) and r['proba'] is None for r in u)
    df = labelled(proj)
    m = live_metrics(proj)
    assert list(m.columns) == ['model_tag', 'labels', 'mae', 'rmse'] and m.labels[0] == 60
    assert m.mae[0] == pytest.approx(mean_absolute_error(df.label, df.predicted)) and m.rmse[0] == pytest.approx(root_mean_squared_error(df.label, df.predicted))
    assert 2 < m.mae[0] < 5                                               # the noise's sd is 4: MAE about 3.2
    assert live_metrics(proj, by='time', freq='10min').labels.sum() == 60

    chall = log_values(proj, 'houses:v2', 80, noise=1.0, seed=2, ids=[rid for rid, _ in champ])    # shadow copies of the same requests
    st.set_alias('champion', 'houses:v1'); st.set_alias('challenger', 'houses:v2')
    s = ab_summary(proj)
    assert (s.metric, s.test, s.recommendation) == ('mae', 'welch', 'promote') and list(s.frame.columns) == ['arm', 'model_tag', 'traffic', 'labels', 'mae', 'rmse']
    lab = labelled(proj)
    err = {t: (lab[lab.model_tag == t].predicted - lab[lab.model_tag == t].label).abs() for t in ('houses:v1', 'houses:v2')}
    assert s.p_value == pytest.approx(stats.ttest_ind(err['houses:v2'], err['houses:v1'], equal_var=False).pvalue) and s.p_value < 1e-6
    assert s.arm('challenger')['labels'] == 60 and s.arm('champion')['mae'] == pytest.approx(m.mae[0]) and 'mae' in str(s)
    assert ab_summary(proj, metric='rmse').recommendation == 'promote'
    assert ab_summary(proj, min_labels=100).recommendation == 'keep'
    with pytest.raises(MlnbError, match='mae, rmse for a regression model'): ab_summary(proj, metric='f1')
    st.drop_alias('challenger'); st.set_alias('champion', 'houses:v2'); st.set_alias('champion', 'houses:v1')    # v1 replaced the better v2
    assert ab_summary(proj).recommendation == 'rollback'


ONLINE_REGRESSOR = """
import numpy as np, pandas as pd, time
from sklearn.linear_model import SGDRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from mlnb.config import load_project
from mlnb.feedback import add_label
from mlnb.retraining import update_online
from mlnb.registry import bentoml_for, load_model, model_key, save_signed, stored_model
from mlnb.store import Store, predictions
p = load_project('settings.ini'); st = Store(p.store_url); bentoml = bentoml_for(p)
rng = np.random.default_rng(0)
X = pd.DataFrame({'a': rng.normal(size=200), 'b': rng.normal(size=200)}); y = 3 * X.a - X.b + 10
sgd = make_pipeline(StandardScaler(), SGDRegressor(random_state=0, max_iter=5, tol=None)).fit(X, y)
schema = {'features': [{'name': 'a', 'kind': 'number'}, {'name': 'b', 'kind': 'number'}], 'target': 'y', 'task': 'regression'}
m = save_signed(p, 'houses', sgd, metadata={'schema': schema}); st.add_model(str(m.tag), 'none', None, {})
time.sleep(0.05)
rows = [dict(request_id=f'r{i}', model_tag=str(m.tag), inputs={'a': float(X.a[i]), 'b': float(X.b[i])}, output={'value': float(sgd.predict(X.iloc[[i]])[0])},
             latency_ms=1.0, created=pd.Timestamp.now('UTC').tz_localize(None).to_pydatetime()) for i in range(30)]
st.write(predictions.insert(), rows)
for i in range(30): add_label(p, f'r{i}', float(y[i]) + 5)            # the world moved up by 5
coef = sgd[-1].intercept_.copy()
u = update_online(p, str(m.tag))
new = load_model(stored_model(p, u['model_tag']), model_key(p))
assert u['rows'] == 30 and st.alias('challenger') == u['model_tag'] and new[-1].intercept_[0] > coef[0], (new[-1].intercept_, coef)
assert 'predict_proba' not in bentoml.models.get(u['model_tag']).info.signatures
print('ok')
"""


def test_update_online_learns_numeric_labels_with_an_sgd_regressor(tmp_path):
    import subprocess, sys
    p = load_project(new_project(tmp_path/'houses'))
    env = {k: v for k, v in __import__('os').environ.items() if k != 'BENTOML_HOME'}     # BentoML's home: this project's
    r = subprocess.run([sys.executable, '-c', ONLINE_REGRESSOR], cwd=p.root, capture_output=True, text=True, timeout=300, env=env)
    assert r.stdout.strip().endswith('ok'), r.stdout + r.stderr


def test_cli_feedback_file_imports_many_labels_in_one_call(proj, tmp_path):
    "mlnb feedback --file: 1,000 labels in one call and one insert; unknown request ids named and counted, nothing stored unless --skip-unknown."
    from conftest import mlnb
    pairs = log(proj, 'shop:v1', 1000, every=0.5, seed=8)
    ini, f = proj.path, tmp_path/'labels.csv'
    f.write_text('request_id,label\n' + ''.join(f'{r},{y}\n' for r, y in pairs) + 'nope-1,1\nnope-2,0\n')
    bad = mlnb('feedback', '-p', ini, '--file', f, check=False)
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1, bad.stderr
    assert "2 of 1002 request ids are no logged prediction" in bad.stderr and "'nope-1', 'nope-2'" in bad.stderr and 'nothing stored' in bad.stderr
    assert Store(proj.store_url).read(sa.select(feedback)) == []
    t = time.perf_counter()
    out = mlnb('feedback', '-p', ini, '--file', f, '--skip-unknown').stdout
    took = time.perf_counter() - t
    assert f'1000 labels recorded from {f}' in out and '2 request ids are no logged prediction and were not stored: nope-1, nope-2' in out
    rows = Store(proj.store_url).read(sa.select(feedback))
    assert sorted((r['request_id'], r['label']) for r in rows) == sorted(pairs) and {r['source'] for r in rows} == {'file'}
    assert len({r['created'] for r in rows}) == 1                                 # one insert of all of them
    assert took < 30, took                                                        # one call: not 1,000 calls of a second each
    assert live_metrics(proj).labels.tolist() == [1000]
    f.write_text('id,label\nx,1\n')
    r = mlnb('feedback', '-p', ini, '--file', f, check=False)
    assert r.returncode == 2 and 'no request_id column' in r.stderr and str(f) in r.stderr
    r = mlnb('feedback', '-p', ini, check=False)
    assert r.returncode == 2 and 'mlnb feedback --file labels.csv' in r.stderr


def test_cli_ab_without_labels_says_so(proj):
    from conftest import mlnb
    st = Store(proj.store_url)
    log(proj, 'shop:v1', 40); log(proj, 'shop:v2', 40, seed=1)
    st.set_alias('champion', 'shop:v1'); st.set_alias('challenger', 'shop:v2')
    for args in ([], ['--min-labels', '0']):
        out = mlnb('ab', '-p', proj.path, *args).stdout
        assert 'nan' not in out and 'no labels yet for the champion or the challenger' in out and 'mlnb label' in out, out
    pairs = log(proj, 'shop:v2', 5, seed=2)
    label_all(proj, pairs)
    out = mlnb('ab', '-p', proj.path, '--min-labels', '0').stdout
    assert 'nan' not in out and 'no labels yet for the champion:' in out, out


def test_cli_monitor_check_names_drifted_columns_and_failed_requests(proj):
    "mlnb monitor --check: the drifted columns by name, and the error rate from failed requests, which fires the error alert."
    from conftest import mlnb
    from mlnb.monitoring import reference_path, reference_stats, save_reference
    rng = np.random.default_rng(3)
    train = pd.DataFrame({'x': rng.normal(3, 1, 2000), 'kind': ['a'] * 2000})         # served x is around 0: drifted; kind is not
    save_reference(reference_stats(train, [{'name': 'x', 'kind': 'number'}, {'name': 'kind', 'kind': 'str'}]), reference_path(proj, 'shop:v1'))
    log(proj, 'shop:v1', 300, every=1)
    fail(proj, 'shop:v1', 30)
    Store(proj.store_url).set_alias('champion', 'shop:v1')
    out = mlnb('monitor', '-p', proj.path, '--check').stdout
    assert 'drift of the champion: critical in 1 columns: x' in out, out
    assert 'shop:v1: 330 requests' in out and 'errors 30 (9.1%)' in out, out
    assert 'alert critical (errors): 9.1% of 330 requests to shop:v1 failed' in out and 'alert critical (drift)' in out and ': x' in out, out
