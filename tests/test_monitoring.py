"""Drift statistics against scipy's, drift decisions on injected shifts at several window sizes, the reference
statistics found in BentoML's model store, and service health from the prediction log (issue 6)."""
import json, subprocess, sys, textwrap
from datetime import datetime, timedelta
from pathlib import Path
import numpy as np, pandas as pd, pytest, sqlalchemy as sa
from scipy import stats
from scipy.spatial.distance import jensenshannon
from mlnb.config import load_project, new_project
from mlnb.monitoring import (SKETCH, DriftReport, Thresholds, categorical_drift, categorical_stats, check_drift,
                          chi2_test, drift_history, drift_report, js_distance, ks_test, numeric_drift, numeric_stats,
                          reference_path, reference_stats, save_reference, wasserstein)
from mlnb.service_health import LatencyLog, health
from mlnb.store import Store, predictions

SIZES = [100, 1000, 10_000, 100_000]
CATS, P = ['a', 'b', 'c', 'd'], [.5, .3, .15, .05]


@pytest.fixture(scope='module')
def ref():
    "Reference statistics of 200,000 standard normal values and of a four-category column."
    rng = np.random.default_rng(7)
    return numeric_stats(rng.normal(size=200_000)), categorical_stats(rng.choice(CATS, p=P, size=200_000))


# ---- the statistics, against scipy's on the same data --------------------------------------------------------------

@pytest.mark.parametrize('n1,n2,shift', [(50, 30, .3), (3000, 800, .05), (20_000, 100_000, .01), (20_000, 100_000, .05)])
def test_ks_and_wasserstein_match_scipy(n1, n2, shift):
    rng = np.random.default_rng(n1)
    a, b = rng.normal(size=n1), rng.normal(shift, 1, size=n2)
    d, p = ks_test(a, b)
    sp = stats.ks_2samp(a, b, method='asymp')
    assert d == sp.statistic
    if n1 * n2 / (n1 + n2) <= 1000: assert p == sp.pvalue                      # scipy's own computation
    elif sp.pvalue > 1e-6: assert abs(p / sp.pvalue - 1) < 0.04 and abs(p - sp.pvalue) < 0.005   # Kolmogorov's limit, Stephens'
    else: assert p < 1e-5
    assert wasserstein(a, b) == pytest.approx(stats.wasserstein_distance(a, b), rel=1e-12)


def test_ks_and_wasserstein_with_ties_and_integers_match_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 20, 5000).astype(float), rng.integers(2, 25, 700).astype(float)
    assert ks_test(a, b) == tuple(stats.ks_2samp(a, b, method='asymp'))[:2]
    assert wasserstein(a, b) == pytest.approx(stats.wasserstein_distance(a, b), rel=1e-12)


@pytest.mark.parametrize('n', [200, 50_000])
def test_chi2_and_jensen_shannon_match_scipy(n):
    rng = np.random.default_rng(n)
    r = np.bincount(rng.choice(4, p=P, size=100_000), minlength=4)
    c = np.bincount(rng.choice(4, p=[.45, .35, .15, .05], size=n), minlength=4)
    stat, p = chi2_test(r, c)
    sp = stats.chisquare(c, r / r.sum() * c.sum())
    assert stat == pytest.approx(sp.statistic, rel=1e-12) and p == pytest.approx(sp.pvalue, rel=1e-9, abs=1e-300)
    assert js_distance(r, c) == pytest.approx(jensenshannon(r / r.sum(), c / c.sum(), base=2), rel=1e-12)


def test_new_category_chi2_uses_half_a_reference_row():
    "An unseen category goes to an `other` bucket that counts half a reference row: finite, very significant."
    rc = categorical_stats(['a'] * 600 + ['b'] * 400)
    row = categorical_drift(rc, ['a'] * 50 + ['b'] * 40 + ['new'] * 10, Thresholds())
    sp = stats.chisquare([50, 40, 10], np.array([600, 400, 0.5]) / 1000.5 * 100)
    assert row['chi2'] == pytest.approx(sp.statistic) and row['chi2_p'] == pytest.approx(sp.pvalue)
    assert row['js'] == pytest.approx(jensenshannon([.6, .4, 0], [.5, .4, .1], base=2))
    assert row['unseen'] == 0.1 and "new: 'new'" in row['reason'] and row['severity'] == 'critical'


@pytest.mark.parametrize('n', [1000, 1_000_000])
def test_sketch_statistics_are_within_their_stored_error(n):
    "Statistics from the reference's sketch are within the error stored with it of scipy's on the full reference."
    rng = np.random.default_rng(n)
    full, cur = rng.lognormal(0, 1, size=n), rng.lognormal(0.1, 1, size=5000)
    st = numeric_stats(full)
    sketch = (np.array(st['values']), np.array(st['weights']))
    assert st['error']['ks'] <= 1 / (2 * SKETCH) + 1e-12
    if n <= SKETCH: assert st['error'] == {'ks': 0.0, 'wasserstein': 0.0}
    assert abs(ks_test(sketch, cur, n_ref=n)[0] - stats.ks_2samp(full, cur).statistic) <= st['error']['ks'] + 1e-12
    assert abs(wasserstein(sketch, cur) - stats.wasserstein_distance(full, cur)) <= st['error']['wasserstein'] + 1e-12
    assert st['std'] == pytest.approx(np.std(full)) and (st['min'], st['max']) == (full.min(), full.max())
    assert len(json.dumps(st)) < 30_000                                          # small: it travels in model metadata


# ---- decisions: injected shifts are flagged, unshifted samples are not, at every size --------------------------------

@pytest.mark.parametrize('n', SIZES)
def test_unshifted_windows_are_not_flagged(ref, n):
    rn, rc = ref
    rng = np.random.default_rng(1000 + n)
    for _ in range(5):
        assert numeric_drift(rn, rng.normal(size=n), Thresholds())['severity'] == 'none'
        assert categorical_drift(rc, rng.choice(CATS, p=P, size=n), Thresholds())['severity'] == 'none'


@pytest.mark.parametrize('n', SIZES)
def test_injected_shifts_are_flagged(ref, n):
    rn, rc = ref
    rng = np.random.default_rng(2000 + n)
    th = Thresholds()
    assert numeric_drift(rn, rng.normal(1, 1, size=n), th)['severity'] == 'critical'                  # mean shift
    assert numeric_drift(rn, rng.normal(0, 2.5, size=n), th)['severity'] == 'critical'                # scale change
    assert categorical_drift(rc, rng.choice(CATS, p=[.15, .3, .5, .05], size=n), th)['severity'] == 'critical'  # swap
    assert categorical_drift(rc, rng.choice(CATS + ['zz'], p=[.4, .25, .1, .05, .2], size=n), th)['severity'] == 'critical'


def test_a_large_window_is_not_flagged_for_a_negligible_shift(ref):
    "0.03 standard deviations: hugely significant at 100,000 rows, and too small to matter."
    row = numeric_drift(ref[0], np.random.default_rng(3).normal(0.03, 1, size=100_000), Thresholds())
    assert row['ks_p'] < 1e-10 and row['severity'] == 'none'


def test_a_tiny_window_is_not_flagged_on_noise(ref):
    "30 unshifted rows: PSI above its critical level by chance alone, yet not significant."
    row = numeric_drift(ref[0], np.random.default_rng(4).normal(size=30), Thresholds())
    assert row['psi'] > 0.2 and row['severity'] == 'none' and 'not significant' in row['reason']


def test_thresholds_come_from_settings_ini(tmp_path):
    s = new_project(tmp_path/'p')
    s.write_text(s.read_text() + '\n[monitor]\npsi_warn = 0.05\npsi_critical = 0.3\n')
    th = Thresholds.from_project(load_project(s))
    assert (th.psi_warn, th.psi_critical, th.wasserstein_warn) == (0.05, 0.3, Thresholds().wasserstein_warn)


# ---- the report, and check_drift over the store ------------------------------------------------------------------------

def frames(rng, n, shift=0.0):
    X = pd.DataFrame({'age': rng.normal(40 + shift, 10, n), 'visits': rng.poisson(3, n),
                      'plan': rng.choice(['free', 'pro', 'team'], p=[.6, .3, .1], size=n)})
    proba = 1 / (1 + np.exp(-(X.age - 45) / 5))
    return X, (proba > .5).astype(int), pd.DataFrame({0: 1 - proba, 1: proba})

SCHEMA = {'target': 'y', 'features': [{'name': 'age', 'kind': 'float'}, {'name': 'visits', 'kind': 'int'}, {'name': 'plan', 'kind': 'str'}]}


def test_drift_report_rows_html_and_dict():
    rng = np.random.default_rng(5)
    X, y, p = frames(rng, 50_000)
    ref = reference_stats(X, SCHEMA, labels=y, proba=p)
    assert ref['features']['visits']['error'] == {'ks': 0.0, 'wasserstein': 0.0}            # few distinct values: exact
    C, yc, pc = frames(rng, 3000, shift=8)
    rep = drift_report(ref, C, labels=yc, proba=pc)
    assert rep.drifted == ['age', 'prediction', 'proba[1]'] and rep.severity == 'critical'
    html = rep._repr_html_()
    assert html.count('background:#f8d7da') == 3 and '<td><b>visits</b></td>' in html
    d = json.loads(json.dumps(rep.to_dict(), allow_nan=False))
    assert DriftReport.from_dict(d).to_dict() == d and d['rows'][0]['feature'] == 'age'
    assert str(rep).startswith('drift critical: 3 of 5 columns drifted (3 critical) in 3000 requests')


def log(st, tag, X, y, p, start, step=timedelta(seconds=1), prefix='r', latency=None):
    lat = np.full(len(X), 4.0) if latency is None else latency
    st.write(predictions.insert(), [dict(request_id=f'{prefix}{i}', model_tag=tag, inputs=rec, latency_ms=float(lat[i]),
                                         output={'label': int(y[i]), 'probabilities': {'0': float(p.iloc[i, 0]), '1': float(p.iloc[i, 1])}},
                                         created=start + i * step) for i, rec in enumerate(X.to_dict('records'))])


@pytest.fixture
def served_project(tmp_path):
    "A project whose champion `demo:v1` logged 500 requests like its training data, then 300 shifted ones."
    p = load_project(new_project(tmp_path/'proj'))
    st = Store(p.store_url)
    rng = np.random.default_rng(6)
    X, y, pr = frames(rng, 20_000)
    ref = reference_stats(X, SCHEMA, labels=y, proba=pr)
    st.set_alias('champion', 'demo:v1')
    t0 = datetime.utcnow() - timedelta(hours=1)
    log(st, 'demo:v1', *frames(rng, 500), t0)
    log(st, 'demo:v1', *frames(rng, 300, shift=8), t0 + timedelta(minutes=20), prefix='s')
    return p, st, ref


def test_check_drift_reads_the_window_and_stores_the_report(served_project):
    p, st, ref = served_project
    save_reference(ref, reference_path(p, 'demo:v1'))
    st.write(predictions.insert(), [dict(request_id=f'f{i}', model_tag='demo:v1', inputs={'age': 'old'}, output={'status': 422, 'error': 'age: not a number'},
                                         latency_ms=1.0, created=datetime.utcnow()) for i in range(100)])    # failed requests, the newest: not in the window
    rep = check_drift(p, last=300)
    assert rep.drifted == ['age', 'prediction', 'proba[1]'] and rep.window['rows'] == 300 and rep.model_tag == 'demo:v1'
    assert check_drift(p, last=200, since=None).window['last'] == 200
    early = check_drift(p, since='2h', reference=ref)
    assert early.window['rows'] == 800
    assert [r.window['rows'] for r in drift_history(p)] == [800, 200, 300]
    rows = st.read(sa.text('select model_tag, report from drift_reports'))
    assert len(rows) == 3 and json.loads(rows[0]['report'])['severity'] == 'critical'


def test_check_drift_finds_the_reference_in_bentoml_metadata_or_custom_objects(served_project, tmp_path):
    "The registry saves `reference_stats` in the model's metadata (or as a custom object): found by name only."
    p, st, ref = served_project
    ref_file = tmp_path/'ref.json'; save_reference(ref, ref_file)
    code = textwrap.dedent(f"""
        import json, sqlalchemy as sa
        from mlnb.config import load_project
        from pathlib import Path
        from mlnb.monitoring import check_drift, load_reference, read_reference
        from mlnb.registry import bentoml_for, model_key, sign_model
        from mlnb.store import Store
        p = load_project({str(p.path)!r}); ref = read_reference({str(ref_file)!r})
        bentoml = bentoml_for(p)
        m1 = bentoml.picklable_model.save_model('demo', object(), metadata={{'reference_stats': ref}})
        m2 = bentoml.picklable_model.save_model('other', object(), custom_objects={{'reference_stats': ref}})
        sign_model(Path(bentoml.models.get(m2.tag).path), model_key(p))     # custom objects are unpickled only from a signed model
        m3 = bentoml.picklable_model.save_model('bare', object())
        sign_model(Path(bentoml.models.get(m3.tag).path), model_key(p))
        out = [load_reference(p, str(m.tag)) == ref for m in (m1, m2)]
        try: load_reference(p, str(m3.tag)); out.append('no error')
        except Exception as e: out.append(str(e))
        Store(p.store_url).write(sa.text("UPDATE predictions SET model_tag = :t WHERE request_id LIKE 's%'").bindparams(t=str(m1.tag)))
        out.append(check_drift(p, model_tag=str(m1.tag), last=1000).drifted)
        print(json.dumps(out))
    """)
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    found_meta, found_custom, missing, drifted = json.loads(r.stdout.strip().splitlines()[-1])
    assert found_meta and found_custom and drifted == ['age', 'prediction', 'proba[1]']
    assert 'no reference statistics for model bare:' in missing and 'reference_stats' in missing


def test_check_drift_errors_name_what_is_missing(tmp_path):
    p = load_project(new_project(tmp_path/'proj'))
    with pytest.raises(Exception, match='no model to check'): check_drift(p)
    Store(p.store_url).set_alias('champion', 'demo:v9')
    with pytest.raises(Exception, match=r'no reference statistics for model demo:v9.*reference-?'): check_drift(p)
    save_reference(reference_stats(pd.DataFrame({'age': [1.0]}), [{'name': 'age', 'kind': 'float'}]), reference_path(p, 'demo:v9'))
    with pytest.raises(Exception, match='no logged requests to demo:v9'): check_drift(p)


# ---- service health ----------------------------------------------------------------------------------------------------------

def exact_health(df, window):
    "What health() computes, exactly, with pandas and numpy."
    df = df.assign(start=df.created.dt.floor(window))
    g = df.groupby(['model_tag', 'start']).latency_ms
    return pd.DataFrame({'requests': g.size(), 'p50_ms': g.quantile(.5), 'p95_ms': g.quantile(.95), 'p99_ms': g.quantile(.99),
                         'mean_ms': g.mean(), 'max_ms': g.max()}).reset_index()


def health_rows(st, n, start, rng, prefix):
    df = pd.DataFrame({'request_id': [f'{prefix}{i}' for i in range(n)], 'model_tag': rng.choice(['m:1', 'm:2'], p=[.7, .3], size=n),
                       'latency_ms': rng.lognormal(1.5, 0.7, n), 'created': start + pd.to_timedelta(rng.uniform(0, 3600, n), unit='s')})
    st.write(predictions.insert(), df.assign(created=df.created.dt.to_pydatetime(), inputs=None, output=None).to_dict('records'))
    return df


def test_health_matches_exact_percentiles_and_refreshes_incrementally(tmp_path):
    st = Store(f"sqlite:///{tmp_path/'h.db'}")
    p = load_project(new_project(tmp_path/'proj'))
    p.sections['project']['store'] = st.url
    rng = np.random.default_rng(8)
    t0 = pd.Timestamp('2026-03-01 10:00')
    df = health_rows(st, 20_000, t0, rng, 'a')
    for step in range(2):
        h, ex = health(p, '10min'), exact_health(df, '10min')
        assert h[['model_tag', 'start', 'requests']].values.tolist() == ex[['model_tag', 'start', 'requests']].values.tolist()
        for c in ("p50_ms", "p95_ms", "p99_ms"): assert np.all(np.abs(h[c] / ex[c] - 1) < 0.00502), c    # half a 1% bin: e^0.005 - 1
        assert np.allclose(h.mean_ms, ex.mean_ms, rtol=1e-12) and np.array_equal(h.max_ms, ex.max_ms)
        assert np.allclose(h.rps, h.requests / 600) and (h.errors == 0).all() and (h.error_rate == 0.0).all()    # none failed: 0, not NaN
        df = pd.concat([df, health_rows(st, 3000, t0 - pd.Timedelta('5min'), rng, f'late{step}')])   # late rows, older times
    st.write(predictions.insert(), [dict(request_id=f'f{i}', model_tag='m:2', latency_ms=3.0, created=t0.to_pydatetime() + timedelta(seconds=i),
                                         output={'status': 422, 'error': 'x: missing'}) for i in range(7)])
    fast = LatencyLog(st).refresh().hist
    assert fast['errors'].sum() == 7
    binned = LatencyLog(st); binned.fast = False                       # SQLite without ln(): rows binned in numpy
    other = LatencyLog(st); other.sqlite = other.fast = False          # any other database: every row read each time
    for log in (binned, other): pd.testing.assert_frame_equal(log.refresh().hist, fast, check_dtype=False)


def test_health_error_rate_from_failed_requests_and_its_alert(tmp_path):
    "A failed request is logged with its HTTP status as its output (CONTRACT: no schema change): health counts it, 0.0 when none failed."
    from mlnb.retraining import monitoring_pass
    st = Store(f"sqlite:///{tmp_path/'e.db'}")
    p = load_project(new_project(tmp_path/'proj')); p.sections['project']['store'] = st.url
    t0 = datetime.utcnow() - timedelta(minutes=30)
    ok = {'label': 1, 'probabilities': {'0': 0.1, '1': 0.9}}
    st.write(predictions.insert(), [dict(request_id=f'r{i}', model_tag='m:1', inputs={'x': 1.0}, output=ok, latency_ms=2.0,
                                         created=t0 + timedelta(seconds=i)) for i in range(40)])
    st.write(predictions.insert(), [dict(request_id=f'n{i}', model_tag='m:2', inputs={'x': 1.0}, output=ok, latency_ms=2.0,
                                         created=t0 + timedelta(seconds=i)) for i in range(10)])
    assert health(p, None)[['model_tag', 'errors', 'error_rate']].values.tolist() == [['m:1', 0, 0.0], ['m:2', 0, 0.0]]
    assert monitoring_pass(p)['alerts'] == []
    st.write(predictions.insert(), [dict(request_id=f'e{i}', model_tag='m:1', inputs={'x': 'a lot'}, latency_ms=1.0, created=t0 + timedelta(seconds=50 + i),
                                         output={'status': 422 if i else 500, 'error': 'x: not a number'}) for i in range(10)])
    h = health(p, None)
    assert h[['model_tag', 'requests', 'errors', 'error_rate']].values.tolist() == [['m:1', 50, 10, 0.2], ['m:2', 10, 0, 0.0]]
    fired = monitoring_pass(p)['alerts']
    assert [(a['kind'], a['level'], a['data']['model_tag']) for a in fired] == [('errors', 'critical', 'm:1')]
    assert '20.0% of 50 requests to m:1 failed' in fired[0]['message']


def test_health_histograms_are_saved_for_the_next_process_and_dropped_when_rows_go(tmp_path):
    from mlnb.service_health import _LOGS, health_cache
    st = Store(f"sqlite:///{tmp_path/'c.db'}")
    p = load_project(new_project(tmp_path/'proj')); p.sections['project']['store'] = st.url
    rng = np.random.default_rng(9)
    t0 = pd.Timestamp('2026-03-01 10:00')
    df = health_rows(st, 5000, t0, rng, 'a')
    first = health(p, '10min')
    assert health_cache(p).is_file()
    df = pd.concat([df, health_rows(st, 500, t0, rng, 'b')])                   # logged after the save
    _LOGS.clear()                                                               # as in a new process
    log = LatencyLog(st, health_cache(p))
    assert log.h is not None and int(log.h['count'].sum()) == 5000              # loaded, not read from the log
    h, ex = health(p, '10min'), exact_health(df, '10min')
    assert h[['model_tag', 'start', 'requests']].values.tolist() == ex[['model_tag', 'start', 'requests']].values.tolist()
    assert first.requests.sum() == 5000 and h.requests.sum() == 5500
    with st.engine.begin() as c: c.execute(sa.text("DELETE FROM predictions WHERE request_id LIKE 'a1%'"))
    _LOGS.clear()
    assert LatencyLog(st, health_cache(p)).h is None                             # rows were deleted: the saved histograms are not used
    assert health(p, '10min').requests.sum() == 5500 - df.request_id.str.startswith('a1').sum()
    health_cache(p).write_bytes(b'not a zip')
    _LOGS.clear()
    assert health(p, '10min').requests.sum() == 5500 - df.request_id.str.startswith('a1').sum()


# ---- issue 12: the five feature kinds, and numeric predictions -----------------------------------------------------

def daily(rng, start, days, per_day=4, shift=0.0, words=('cold soup', 'a fine evening out', 'late again')):
    "A table with a daily date (as the ISO strings a request carries) and a free-text note, `per_day` rows a day."
    day = pd.date_range(start, periods=days).repeat(per_day)
    note = rng.choice(list(words), len(day))
    return pd.DataFrame({'day': day.strftime('%Y-%m-%d'), 'note': note, 'x': rng.normal(shift, 1, len(day))})

KINDS12 = {'features': [{'name': 'day', 'kind': 'date'}, {'name': 'note', 'kind': 'text'}, {'name': 'x', 'kind': 'number'}],
           'task': 'regression'}


def test_a_daily_date_is_summarised_by_its_calendar_and_new_dates_are_not_drift():
    "The issue's daily table: 1,168 training days, then a year of days the model never saw. No drift, no new categories."
    rng = np.random.default_rng(12)
    train = daily(rng, '2021-01-01', 4 * 365)
    ref = reference_stats(train, KINDS12, labels=rng.normal(10, 2, len(train)))
    entry = ref['features']['day']
    assert entry['kind'] == 'date' and 'counts' not in entry and list(entry['parts']) == ['month', 'dayofweek', 'dayofyear']
    assert len(json.dumps(entry)) < 40_000                              # a few sketches, not a count per date
    for days in (30 * 12, 365):                                         # a window of requests over 360 or 365 new days
        rep = drift_report(ref, daily(rng, '2025-01-01', days), labels=rng.normal(10, 2, 4 * days))
        assert rep.drifted == [], str(rep)
        assert not any('new:' in r['reason'] for r in rep.rows)


def test_a_changed_calendar_or_text_length_is_drift():
    rng = np.random.default_rng(13)
    train = daily(rng, '2021-01-01', 4 * 365)
    ref = reference_stats(train, KINDS12, labels=rng.normal(10, 2, len(train)))
    weekends = daily(rng, '2025-01-01', 365)
    weekends = weekends[pd.to_datetime(weekends.day).dt.day_of_week >= 5]          # only weekend requests
    rep = drift_report(ref, weekends, labels=rng.normal(10, 2, len(weekends)))
    assert rep.drifted == ['day.dayofweek'] and rep['day.dayofweek']['kind'] == 'date'
    long = daily(rng, '2025-01-01', 365, words=('the soup was cold, the room was loud and the bill was wrong twice',))
    rep = drift_report(ref, long, labels=rng.normal(10, 2, len(long)))
    assert rep.drifted == ['note.length', 'note.tokens'] and rep['note.length']['kind'] == 'text'


def test_text_is_never_a_category():
    rng = np.random.default_rng(14)
    notes = pd.DataFrame({'note': [f'visit {i}: {w}' for i, w in enumerate(rng.choice(['cold soup', 'fine'], 5000))]})
    ref = reference_stats(notes, [{'name': 'note', 'kind': 'text'}])
    assert ref['features']['note']['kind'] == 'text' and list(ref['features']['note']['parts']) == ['length', 'tokens']
    new = pd.DataFrame({'note': [f'visit {i}: {w}' for i, w in enumerate(rng.choice(['cold soup', 'fine'], 2000), start=5000)]})
    rep = drift_report(ref, new)                                    # every note is new; their lengths barely moved
    assert [r['feature'] for r in rep.rows] == ['note.length', 'note.tokens'] and not any('new:' in r['reason'] for r in rep.rows)


def test_number_and_the_old_int_float_kinds_give_the_same_reference():
    rng = np.random.default_rng(15)
    X = pd.DataFrame({'a': rng.normal(size=1000), 'b': rng.integers(0, 9, 1000)})
    old = reference_stats(X, [{'name': 'a', 'kind': 'float'}, {'name': 'b', 'kind': 'int'}])
    new = reference_stats(X, [{'name': 'a', 'kind': 'number'}, {'name': 'b', 'kind': 'number'}])
    assert old == new and new['features']['b']['kind'] == 'numeric'


def test_regression_prediction_drift_from_the_logged_values(tmp_path):
    "A regression model logs {'value': v}: check_drift compares the values as a numeric distribution."
    p = load_project(new_project(tmp_path/'proj')); st = Store(p.store_url)
    rng = np.random.default_rng(16)
    X = pd.DataFrame({'x': rng.normal(size=20_000)})
    schema = {'features': [{'name': 'x', 'kind': 'number'}], 'task': 'regression'}
    save_reference(reference_stats(X, schema, labels=3 * X.x + 10), reference_path(p, 'reg:v1'))
    st.set_alias('champion', 'reg:v1')
    t0 = datetime.utcnow() - timedelta(hours=1)
    def send(xs, values, prefix, start):
        st.write(predictions.insert(), [dict(request_id=f'{prefix}{i}', model_tag='reg:v1', inputs={'x': float(x)}, latency_ms=4.0,
                                             output={'value': float(v)}, created=start + i * timedelta(seconds=1))
                                        for i, (x, v) in enumerate(zip(xs, values))])
    xs = rng.normal(size=1000); send(xs, 3 * xs + 10, 'a', t0)
    rep = check_drift(p, last=1000)
    assert rep.drifted == [] and rep['prediction']['kind'] == 'numeric' and abs(rep['prediction']['mean'] - 10) < 0.5
    send(xs[:500], 3 * xs[:500] + 13, 'b', t0 + timedelta(minutes=30))            # the model's answers moved by a std
    rep = check_drift(p, last=500)
    assert rep.drifted == ['prediction'] and rep['prediction']['severity'] == 'critical'
