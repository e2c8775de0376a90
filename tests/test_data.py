"""The data layer against real sources: files and fsspec URLs, SQLite and a PostgreSQL server, an HTTP API served here,
incremental ingestion across runs, every kind of bad input, both gate severities with Data Docs, and no training/serving skew."""
import gzip, json, os, subprocess, sys, textwrap, uuid
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit
import joblib, numpy as np, pandas as pd, pyarrow.parquet as pq, pytest, sqlalchemy as sa
from conftest import http_server, mlnb
import mlnb.ingest as ing
from mlnb.core import ConfigError, DataError, ValidationFailed
from mlnb.ingest import (SKLEARN_SETS, check_source, source_columns, frame_hash, ingest, list_snapshots, parquet_hash, previous_snapshot,
                         read_source, snapshot_meta)

PG_URL = os.environ.get('MLNB_TEST_PG_URL')
needs_pg = pytest.mark.skipif(not PG_URL, reason='MLNB_TEST_PG_URL is not set: .ci/run starts PostgreSQL and sets it')


def customers(n=60, seed=0) -> pd.DataFrame:
    "A user's own kind of data: numbers with gaps, categories with gaps, an id that grows, a binary target."
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({'id': np.arange(1, n + 1), 'age': rng.integers(18, 80, n).astype(float), 'income': rng.normal(50, 15, n).round(2),
                       'plan': rng.choice(['basic', 'plus', 'pro'], n), 'region': rng.choice(['north', 'south', 'east', 'west'], n)})
    df.loc[df.index % 7 == 3, 'age'] = np.nan
    df.loc[df.index % 9 == 4, 'plan'] = None
    df['churned'] = ((df['income'] < 50) ^ (df['plan'] == 'pro')).astype(int)
    return df


# ---- sources ---------------------------------------------------------------------------------------------------

def test_files_local_compressed_and_fsspec(tmp_path):
    df = customers()
    df.to_csv(tmp_path/'c.csv', index=False)
    df.to_parquet(tmp_path/'c.parquet', index=False)
    df.to_json(tmp_path/'c.jsonl', orient='records', lines=True)
    with gzip.open(tmp_path/'c.csv.gz', 'wt') as f: df.to_csv(f, index=False)
    hashes = set()
    for name in ['c.csv', 'c.parquet', 'c.jsonl', 'c.csv.gz', f'file://{tmp_path}/c.csv']:
        got = read_source({'source': name}, tmp_path)
        assert got.shape == df.shape and list(got.columns) == list(df.columns), name
        assert got['plan'].isna().sum() == df['plan'].isna().sum() and np.allclose(got['income'], df['income'])
        s = ingest({'source': name, 'target': 'churned'}, tmp_path/'out'/name.replace('/', '_'), tmp_path)
        assert s.rows == len(df) and s.hash == parquet_hash(s.path), name
        if name.endswith('csv') or name.endswith('gz'): hashes.add(s.hash)
    assert len(hashes) == 1                                           # the same CSV, however it is reached, hashes alike
    import fsspec                                                      # an in-memory fsspec filesystem stands in for s3://
    with fsspec.open('memory://bucket/c.parquet', 'wb') as f: df.to_parquet(f, index=False)
    assert read_source({'source': 'memory://bucket/c.parquet'}).shape == df.shape


def test_sklearn_sets():
    for name in SKLEARN_SETS:
        df = read_source({'source': f'sklearn:{name}'})
        assert len(df) > 100 and 'target' in df, name
    with pytest.raises(ConfigError, match="unknown scikit-learn data set 'mnist'"): read_source({'source': 'sklearn:mnist'})


def test_large_csv_is_chunked_and_hash_does_not_depend_on_chunks(tmp_path, monkeypatch):
    n = 30_000
    df = pd.DataFrame({'id': np.arange(n), 'x': np.random.default_rng(1).normal(size=n).round(6), 'k': np.arange(n) % 13,
                       'c': np.where(np.arange(n) % 3 == 0, 'a', 'bb')})
    df.to_csv(tmp_path/'big.csv', index=False)
    whole = ingest({'source': 'big.csv', 'target': 'k'}, tmp_path/'whole', tmp_path)
    monkeypatch.setattr(ing, 'CSV_BLOCK', 16 << 10)                   # 16 KB blocks, row groups of 4096 rows
    monkeypatch.setattr(ing, 'GROUP_ROWS', 4096)
    chunked = ingest({'source': 'big.csv', 'target': 'k'}, tmp_path/'chunked', tmp_path)
    assert pq.ParquetFile(chunked.path).metadata.num_row_groups >= 7 and pq.ParquetFile(whole.path).metadata.num_row_groups == 1
    assert chunked.hash == whole.hash == parquet_hash(chunked.path, batch_size=1000) == frame_hash(pd.read_csv(tmp_path/'big.csv'))
    assert snapshot_meta(chunked.path)['hash'] == chunked.hash


def _sql_table(url, name, df):
    eng = sa.create_engine(ing.sql_url(url))
    with eng.begin() as c: df.to_sql(name, c, index=False, if_exists='replace')
    return eng


def _incremental_sql(url, tmp_path):
    "Two runs over a growing SQL table: the second reads only the new rows and appends them."
    name = f't_{uuid.uuid4().hex[:8]}'
    df = customers(40)
    eng = _sql_table(url, name, df.head(25))
    data = {'source': url, 'query': f'SELECT * FROM {name}', 'target': 'churned', 'watermark': 'id'}
    try:
        check_source(data); assert source_columns(data) == list(df.columns)
        s1 = ingest(data, tmp_path/'r1')
        assert (s1.rows, s1.watermark) == (25, 25)
        with eng.begin() as c: df.iloc[25:].to_sql(name, c, index=False, if_exists='append')
        seen = []
        def spy(conn, cursor, statement, *a): seen.append(statement)
        sa.event.listen(sa.engine.Engine, 'before_cursor_execute', spy)
        try: s2 = ingest(data, tmp_path/'r2', previous=s1.path)
        finally: sa.event.remove(sa.engine.Engine, 'before_cursor_execute', spy)
        assert any('AS mlnb_src WHERE id > ' in q for q in seen), seen          # the database is asked for new rows only
        assert (s2.rows, s2.appended, s2.watermark) == (40, 15, 40)
        got = pd.read_parquet(s2.path)
        assert got['id'].tolist() == list(range(1, 41)) and got['plan'].isna().sum() == df['plan'].isna().sum()
        assert s2.hash == parquet_hash(s2.path)
        with pytest.raises(DataError, match=f'no such table|does not exist'):
            read_source({**data, 'query': 'SELECT * FROM no_such_table'})
    finally:
        with eng.begin() as c: c.execute(sa.text(f'DROP TABLE IF EXISTS {name}'))


def test_sqlite_incremental(tmp_path):
    _incremental_sql(f'sqlite:///{tmp_path}/shop.db', tmp_path)


@needs_pg
def test_postgresql_incremental(tmp_path):
    url = PG_URL.replace('postgresql+psycopg://', 'postgresql://')   # a plain URL works: the installed driver is picked
    _incremental_sql(url, tmp_path)
    with pytest.raises(DataError, match=r'mlnb:\*\*\*@'):            # the password never reaches a message
        read_source({'source': url.replace('/mlnb_test', '/no_such_db'), 'query': 'SELECT 1'})


class _Api(BaseHTTPRequestHandler):
    "Pages of records three ways: a `next` link in the body, a page parameter, a Link header."
    rows = [{'id': i, 'score': i * 1.5, 'tag': {'kind': 'odd' if i % 2 else 'even'}, 'y': i % 2} for i in range(1, 24)]
    def log_message(self, *a): pass
    def do_GET(self):
        u = urlsplit(self.path); q = {k: v[0] for k, v in parse_qs(u.query).items()}
        page, size = int(q.get('page', 1)), 5
        recs = self.rows[(page - 1) * size: page * size]
        more = page * size < len(self.rows)
        if u.path == '/broken': return self._send(500, b'oops')
        if u.path == '/html': return self._send(200, b'<html>')
        if u.path == '/next': body = {'results': recs, 'next': f'/next?page={page + 1}' if more else None}
        elif u.path == '/pages': body = {'data': {'items': recs}}
        else: body = recs
        self._send(200, json.dumps(body).encode(), {'Link': f'</link?page={page + 1}>; rel="next"'} if u.path == '/link' and more else {})
    def _send(self, code, body, headers={}):
        self.send_response(code); self.send_header('Content-Type', 'application/json')
        for k, v in headers.items(): self.send_header(k, v)
        self.end_headers(); self.wfile.write(body)


@pytest.fixture(scope='module')
def api():
    with http_server(_Api) as address: yield f'http://{address}'


def test_http_api_paging(api, tmp_path):
    for data in [{'source': f'{api}/next'}, {'source': f'{api}/pages', 'records': 'data.items', 'paging': 'page'},
                 {'source': f'{api}/link'}]:
        df = read_source(data)
        assert df['id'].tolist() == list(range(1, 24)) and 'tag.kind' in df, data     # nested fields flattened
    assert len(read_source({'source': f'{api}/link', 'paging': 'none'})) == 5
    assert source_columns({"source": f"{api}/next", "target": "y"}) == ['id', 'score', 'y', 'tag.kind']
    s = ingest({'source': f'{api}/next', 'target': 'y', 'records': 'results'}, tmp_path/'api')
    assert s.rows == 23 and s.hash == parquet_hash(s.path)
    with pytest.raises(DataError, match='HTTP 500'): read_source({'source': f'{api}/broken'})
    with pytest.raises(DataError, match='not JSON'): read_source({'source': f'{api}/html'})
    with pytest.raises(ConfigError, match="unknown paging 'cursor'"): read_source({'source': f'{api}/next', 'paging': 'cursor'})


# ---- incremental files and the pipeline -----------------------------------------------------------------------------

def test_growing_file_incremental_across_two_runs(tmp_path):
    "Two `mlnb run`s of the ingest stage over a CSV that grew in between: the second appends only the new rows."
    root = tmp_path/'shop'
    mlnb('new', root, '--source', 'data/customers.csv', '--target', 'churned')
    ini = root/'settings.ini'
    ini.write_text(ini.read_text().replace('target = churned', 'target = churned\nwatermark = id'))
    df = customers(50)
    (root/'data').mkdir(); df.head(30).to_csv(root/'data'/'customers.csv', index=False)
    mlnb('run', '--stage', 'ingest', cwd=root)
    with open(root/'data'/'customers.csv', 'a') as f: df.iloc[30:].to_csv(f, index=False, header=False)
    r = mlnb('run', '--stage', 'ingest', cwd=root)
    snaps = list_snapshots(ini)
    assert snaps['rows'].tolist() == [50, 30] and all(snaps['runs'].str.len() > 0), snaps
    newest = pd.read_parquet(snaps['path'][0])
    assert newest['id'].tolist() == list(range(1, 51))
    assert snapshot_meta(snaps['path'][0])['watermark'] == 50
    assert previous_snapshot(f"sqlite:///{root/'.mlnb'/'mlnb.db'}", {'source': 'data/customers.csv', 'watermark': 'id'}) == Path(snaps['path'][0])
    assert 'new_rows=20' in r.stdout, r.stdout


def test_incremental_snapshot_carries_source_rows_not_earlier_extra_rows(tmp_path):
    "A retraining's labelled rows are not copied into the next incremental snapshot, nor do their ids move the watermark."
    df = customers(50)
    df.head(30).to_csv(tmp_path/'c.csv', index=False)
    labels = customers(5, seed=7).assign(id=range(1001, 1006))            # ids past every source row
    labels.to_csv(tmp_path/'labels.csv', index=False)
    data = {'source': 'c.csv', 'target': 'churned', 'watermark': 'id'}
    first = ingest(data, tmp_path/'one', tmp_path, extra=tmp_path/'labels.csv')
    assert (first.rows, first.extra) == (35, 5)
    df.to_csv(tmp_path/'c.csv', index=False)                                # the file grew to 50 rows
    second = ingest(data, tmp_path/'two', tmp_path, previous=first.path, extra=tmp_path/'labels.csv')
    got = pd.read_parquet(second.path)
    assert got['id'].tolist() == list(range(1, 51)) + list(range(1001, 1006))   # 50 source rows once, the labels once
    assert second.appended == 20 and snapshot_meta(second.path)['watermark'] == 50


# ---- bad input -----------------------------------------------------------------------------------------------------

def _fails(tmp_path, text, match, name='bad.csv', **data):
    (tmp_path/name).write_text(text)
    out = tmp_path/f'out_{uuid.uuid4().hex[:6]}'
    with pytest.raises(DataError, match=match): ingest({'source': name, 'target': 'y', **data}, out, tmp_path)
    assert not out.exists() or not any(out.iterdir())                 # a failed read writes no snapshot


def test_bad_input_stops_the_read(tmp_path):
    _fails(tmp_path, 'a,b,y\n1,2,0\n3,4\n5,6,1,9\n7,8,1\n', r"2 malformed rows, expected 3 fields: line 3 has 2 fields .*line 4 has 4 fields")
    _fails(tmp_path, '', 'the file is empty')
    _fails(tmp_path, 'a,b,y\n', 'no rows')
    _fails(tmp_path, 'a,b\n1,2\n', "target column 'y' is not in bad.csv")
    _fails(tmp_path, 'a,b,y\n1,,0\n2,,1\n', "column 'b' is empty \\(all 2 rows null\\)")
    _fails(tmp_path, 'id,a,y\n1,2,0\n,3,1\n', r"watermark column 'id' is empty in row 2", watermark='id')
    with pytest.raises(ConfigError, match='sample cannot be combined with a watermark'):
        ingest({'source': 'bad.csv', 'target': 'y', 'watermark': 'id'}, tmp_path/'o', tmp_path, sample=5)
    with pytest.raises(DataError, match="target column 'label' is not in"): check_source({'source': 'sklearn:iris', 'target': 'label'})


def test_type_and_schema_changes_between_runs(tmp_path):
    data = {'source': 'ev.csv', 'target': 'y', 'watermark': 'id'}
    (tmp_path/'ev.csv').write_text('id,x,c,y\n1,1.5,a,0\n2,2.5,b,1\n')
    s1 = ingest(data, tmp_path/'r1', tmp_path)
    with open(tmp_path/'ev.csv', 'a') as f: f.write('3,3.5,a,0\n4,n0pe,b,1\n5,oops,a,1\n')
    with pytest.raises(DataError, match=r"column 'x' must hold double \(its type in earlier snapshots\), but rows 4, 5 hold \['n0pe', 'oops'\]"):
        ingest(data, tmp_path/'r2', tmp_path, previous=s1.path)
    (tmp_path/'ev.csv').write_text('id,x,c,z,y\n1,1.5,a,1,0\n2,2.5,b,1,1\n3,3.5,a,1,0\n')
    with pytest.raises(DataError, match="the columns changed since the last snapshot: 'z' is new"):
        ingest(data, tmp_path/'r3', tmp_path, previous=s1.path)
    assert not (tmp_path/'r2'/'snapshot.parquet').exists() and not (tmp_path/'r3'/'snapshot.parquet').exists()


# ---- extra labelled rows (the feedback loop) ------------------------------------------------------------------------

def test_extra_labelled_rows_are_appended_validated_and_hashed(tmp_path):
    df = customers(40).drop(columns='id')
    df.to_csv(tmp_path/'c.csv', index=False)
    data = {'source': 'c.csv', 'target': 'churned'}
    labels = customers(5, seed=7).drop(columns='id')[['churned', 'region', 'plan', 'income', 'age']]   # any column order
    labels.to_parquet(tmp_path/'labels.parquet', index=False); labels.to_csv(tmp_path/'labels.csv', index=False)
    base = ingest(data, tmp_path/'base', tmp_path)
    for f in ['labels.parquet', 'labels.csv']:
        s = ingest(data, tmp_path/f'with_{f}', tmp_path, extra=tmp_path/f)
        got = pd.read_parquet(s.path)
        assert (s.rows, s.extra) == (45, 5) and s.hash != base.hash and s.hash == parquet_hash(s.path), f
        pd.testing.assert_frame_equal(got.tail(5).reset_index(drop=True), labels[list(df.columns)].reset_index(drop=True), check_dtype=False)
        assert snapshot_meta(s.path)['extra_rows'] == 5
    assert ingest(data, tmp_path/'again', tmp_path, extra=tmp_path/'labels.csv').hash == s.hash
    sampled = ingest(data, tmp_path/'sampled', tmp_path, sample=10, extra=tmp_path/'labels.csv')
    assert sampled.rows == 15 and pd.read_parquet(sampled.path).tail(5)['income'].round(2).tolist() == labels['income'].round(2).tolist()
    with pytest.raises(DataError, match=r"extra rows file .*nowhere.csv does not exist"):
        ingest(data, tmp_path/'o1', tmp_path, extra=tmp_path/'nowhere.csv')
    labels.drop(columns='plan').assign(score=1).to_csv(tmp_path/'other.csv', index=False)
    with pytest.raises(DataError, match=r"other.csv has columns churned, region, income, age, score; the data has age, income, plan, region, churned; missing: 'plan'; not in the data: 'score'"):
        ingest(data, tmp_path/'o2', tmp_path, extra=tmp_path/'other.csv')
    labels.assign(income=labels['income'].astype(object).where(labels.index != 2, 'lots')).to_csv(tmp_path/'typo.csv', index=False)
    with pytest.raises(DataError, match=r"typo.csv: column 'income' must hold double.*row 3 holds \['lots'\]"):
        ingest(data, tmp_path/'o3', tmp_path, extra=tmp_path/'typo.csv')
    assert not any((tmp_path/d/'snapshot.parquet').exists() for d in ['o1', 'o2', 'o3'])   # a failed read writes no snapshot


@pytest.mark.slow
def test_extra_rows_param_reaches_the_ingest_stage_and_its_cache_key(tmp_path):
    "What retraining calls: mlnb.pipeline.run(..., params={'ingest.extra': path}); new labels in the file mean a new snapshot."
    from mlnb.pipeline import run
    root = tmp_path/'shop'
    mlnb('new', root, '--source', 'data/customers.csv', '--target', 'churned')
    (root/'data').mkdir(); customers(30).drop(columns='id').to_csv(root/'data'/'customers.csv', index=False)
    labels = root/'feedback'/'labels.csv'; labels.parent.mkdir()
    customers(4, seed=3).drop(columns='id').to_csv(labels, index=False)
    r1 = run(root/'settings.ini', stage='ingest', params={'ingest.extra': str(labels)}, on_event=lambda *a, **k: None)
    r2 = run(root/'settings.ini', stage='ingest', params={'ingest.extra': str(labels)}, on_event=lambda *a, **k: None)
    customers(6, seed=4).drop(columns='id').to_csv(labels, index=False)
    r3 = run(root/'settings.ini', stage='ingest', params={'ingest.extra': str(labels)}, on_event=lambda *a, **k: None)
    assert [r.stages['ingest'].status for r in (r1, r2, r3)] == ['done', 'cached', 'done']
    assert (r1.metrics['rows'], r1.metrics['extra_rows'], r3.metrics['rows'], r3.metrics['extra_rows']) == (34, 4, 36, 6)
    assert len(pd.read_parquet(Path(r3.stages['ingest'].out_dir)/'snapshot.parquet')) == 36


# ---- the gate ------------------------------------------------------------------------------------------------------

def test_gate_severities_data_docs_and_scoring_batches(tmp_path):
    from mlnb.validate import gate, load_suite, profile, save_suite, validate_batch
    ref = customers(200).drop(columns='id')
    suite = load_suite(save_suite(profile(ref, 'churned', 'shop'), tmp_path/'suite.json'))
    assert gate(ref, suite, tmp_path/'ok').passed
    # a warning: an unseen category is recorded (with the column and value) and the run goes on
    new_cat = ref.copy(); new_cat.loc[5, 'region'] = 'moon'
    rep = gate(new_cat, suite, tmp_path/'warn')
    assert rep.passed and [(f.column, f.examples, f.rows) for f in rep.warnings] == [('region', ['moon'], [5])]
    assert 'moon' in rep.docs.read_text() and (tmp_path/'warn'/'data_docs'/'index.html').is_file()
    # critical: a wrong type (text in a numeric column), a column gone, a target value never seen: the run stops
    bad = ref.copy(); bad['income'] = bad['income'].astype(object); bad.loc[3, 'income'] = 'n/a'
    bad.loc[7, 'churned'] = 5
    with pytest.raises(ValidationFailed, match=r"critical.*(income|churned).*Data Docs: (\S+/)?data_docs/validations/.*\.html"):
        gate(bad.drop(columns='plan'), suite, tmp_path/'crit')
    report = json.loads((tmp_path/'crit'/'validation.json').read_text())
    failed = {(f['column'], f['severity']) for f in report['failures']}
    assert {('income', 'critical'), ('churned', 'critical'), (None, 'critical')} <= failed            # None: the column set
    assert [f['examples'] for f in report['failures'] if f['column'] == 'income' and f['severity'] == 'critical'] == [['n/a']]
    assert (tmp_path/'crit'/report['docs']).is_file() and 'Data Docs' in (tmp_path/'crit'/'validation.html').read_text()
    # the same suite checks a batch sent for scoring: no target, no row count
    batch = ref.drop(columns='churned').head(3)
    assert validate_batch(batch, suite).passed
    batch.loc[batch.index[0], 'region'] = 'moon'
    rep = validate_batch(batch.drop(columns='income'), suite)
    assert {f.column for f in rep.critical} == {None, 'income'} and ('region', ['moon']) in [(f.column, f.examples) for f in rep.warnings]


def test_type_expectations_pass_on_pandas3_str_and_object_columns():
    from mlnb.validate import profile, validate
    df = customers(60).drop(columns='id')
    as_str, as_object = df.astype({'plan': 'str', 'region': 'str'}), df.astype({'plan': object, 'region': object})
    assert str(as_str['plan'].dtype) == 'str' and as_object['plan'].dtype == object
    for ref in (as_str, as_object):
        suite = profile(ref, 'churned')
        types = {e['kwargs']['column']: e['kwargs']['type_list'] for e in suite['expectations'] if e['type'] == 'expect_column_values_to_be_in_type_list'}
        assert types['plan'] == types['region'] == ['str'] and 'int' in types['income'], types
        for batch in (as_str, as_object):
            rep = validate(batch, suite)
            assert rep.passed and not rep.failures, rep.failures
        wrong = as_object.assign(region=as_object['region'].where(as_object.index != 4, 12))           # a number in a text column
        assert [(f.column, f.examples) for f in validate(wrong, suite).critical] == [('region', [12])]
        text = as_str.assign(income=as_str['income'].astype(str))                                         # numbers arriving as text
        assert 'income' in {f.column for f in validate(text, suite).critical}


def test_gate_is_not_slowed_by_result_order_or_details(tmp_path):
    "GX returns results grouped by column: details come back to the right expectation, and only failed ones are detailed."
    from mlnb.validate import gate, profile, validate
    ref = customers(200).drop(columns='id')
    suite = profile(ref, 'churned', 'shop')
    bad = ref.copy(); bad.loc[3, 'region'] = 'moon'; bad.loc[[5, 9], 'churned'] = 7
    rep = validate(bad, suite)
    assert [(f.column, f.severity, f.unexpected, f.examples, f.rows) for f in rep.failures] == [
        ('region', 'warning', 1, ['moon'], [3]), ('churned', 'critical', 2, [7, 7], [5, 9])]
    assert rep.evaluated == len(suite['expectations'])
    big = pd.concat([ref] * 50, ignore_index=True); big.loc[::7, 'region'] = 'moon'
    rep = validate(big, suite)
    assert rep.warnings[0].unexpected == len(big[::7]) and len(rep.warnings[0].examples) == 20    # bounded lists
    with pytest.raises(ValidationFailed): gate(bad, suite, tmp_path/'g')
    page = json.loads((tmp_path/'g'/'validation.json').read_text())['docs']
    assert 'moon' in (tmp_path/'g'/page).read_text() and 'mlnb_index' not in (tmp_path/'g'/page).read_text()


# ---- features: no training/serving skew ----------------------------------------------------------------------------

def test_served_pipeline_holds_the_trained_transformer(tmp_path):
    from mlnb.features import preprocessor
    from mlnb.train import train
    df = customers(120).drop(columns='id')
    res = train(df, 'churned', 'logreg', cv=3)
    prep = res.pipeline.named_steps['prep']
    assert res.pipeline[0] is prep and type(prep) is type(preprocessor(res.schema))     # preprocessing is inside the model
    joblib.dump(res.pipeline, tmp_path/'model.joblib')
    served = joblib.load(tmp_path/'model.joblib')
    X = res.holdout.drop(columns='churned')
    req = pd.concat([X, pd.DataFrame([{'age': None, 'income': 1e6, 'plan': 'enterprise', 'region': None}])], ignore_index=True)
    np.testing.assert_array_equal(served.named_steps['prep'].transform(req), prep.transform(req))
    np.testing.assert_array_equal(served.predict_proba(req), res.pipeline.predict_proba(req))
    with pytest.raises(DataError, match="column 'income' must hold numbers"):
        served.predict(req.assign(income=req['income'].astype(object).where(req.index != 0, 'lots')))


TRAIN_WITH_STEP = """
import joblib, json, sys, pandas as pd
sys.path.insert(0, {tests!r})
from test_data import customers
from mlnb.train import train

def ratio(X):                                   # defined in __main__, like a function in the train notebook
    return X.assign(income_per_age=pd.to_numeric(X['income']) / pd.to_numeric(X['age']))

res = train(customers(120).drop(columns='id'), 'churned', 'logreg', cv=2, steps=[ratio])
joblib.dump(res.pipeline, {model!r})
X = res.holdout.drop(columns='churned'); X.to_parquet({X!r})
json.dump(res.pipeline.predict_proba(X).tolist(), open({proba!r}, 'w'))
"""

LOAD = """
import joblib, json, pandas as pd
model = joblib.load({model!r})                  # a fresh process: no `ratio` anywhere but inside the model file
steps = model.named_steps['features']
assert [s.__name__ for s in steps.steps] == ['ratio'] and 'income_per_age' in model[:-1].get_feature_names_out()
print(json.dumps(model.predict_proba(pd.read_parquet({X!r})).tolist()))
joblib.dump(model, {again!r})                   # saved again after loading, as the registry does into BentoML's store
"""


def test_user_feature_step_is_in_the_saved_pipeline_and_loads_in_a_fresh_process(tmp_path):
    f = {k: str(tmp_path/v) for k, v in dict(model='model.joblib', X='X.parquet', proba='proba.json', again='again.joblib').items()}
    env = {**os.environ, 'PYTHONPATH': str(Path(__file__).parent)}
    run = lambda code: subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True, text=True, env=env, cwd=tmp_path)
    r = run(TRAIN_WITH_STEP.format(tests=str(Path(__file__).parent), **f)); assert r.returncode == 0, r.stderr
    trained = json.loads(Path(f['proba']).read_text())
    for model in (f['model'], f['again']):
        r = run(LOAD.format(**{**f, 'model': model})); assert r.returncode == 0, r.stderr
        np.testing.assert_allclose(json.loads(r.stdout.strip().splitlines()[-1]), trained, rtol=0, atol=1e-12)


# ---- end to end: the user's own CSV ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_own_csv_trains_and_corrupted_copy_is_stopped_at_the_gate(tmp_path):
    """Done when: a project on a user's CSV (missing values, categories; settings.ini edits only) runs ingest -> validate -> train
    -> evaluate, and a corrupted copy of the CSV is stopped at the gate with a Data Docs report."""
    root = tmp_path/'churn'
    mlnb('new', root, '--source', 'data/customers.csv', '--target', 'churned')
    (root/'data').mkdir()
    good = customers(200).drop(columns='id')
    good.to_csv(root/'data'/'customers.csv', index=False)
    r = mlnb('run', '--params', 'train.cv=2', 'evaluate.shap_rows=20', cwd=root)
    assert 'succeeded' in r.stdout and (root/'expectations'/'suite.json').is_file()
    train_dir = next((root/'.mlnb'/'runs').glob('*/train'))
    # the template's example feature step is inside the saved model, which loads and predicts in a fresh process
    code = ("import joblib, pandas as pd; m = joblib.load('model.joblib'); print(m.named_steps['features'].steps[0].__name__, "
            "len(m.predict(pd.read_parquet('holdout.parquet').drop(columns='churned'))))")
    out = subprocess.run([sys.executable, '-c', code], cwd=train_dir, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split() == ['ratio', '40'], out.stderr
    # reference statistics for drift: the raw features of the schema and the model's answers on the training rows
    ref, schema = json.loads((train_dir/'reference.json').read_text()), json.loads((train_dir/'schema.json').read_text())
    assert set(ref['features']) == {f['name'] for f in schema['features']} == {'age', 'income', 'plan', 'region'}
    assert ref['rows'] == 160 and 'prediction' in ref['prediction'] and any(k.startswith('proba[') for k in ref['prediction'])
    # the corrupted copy, by editing settings.ini only: labels nobody has seen and text in a numeric column (in 10 % of its
    # rows: ingest keeps the column as text and the gate stops it; one stray word would be named by ingest itself)
    bad = good.copy()
    bad['churned'] = bad['churned'].where(bad.index % 10 != 0, 9)
    bad['income'] = bad['income'].astype(object).where(bad.index % 10 != 3, 'unknown')
    bad.to_csv(root/'data'/'bad.csv', index=False)
    ini = root/'settings.ini'; ini.write_text(ini.read_text().replace('data/customers.csv', 'data/bad.csv'))
    r = mlnb('run', '--params', 'train.cv=2', cwd=root, check=False)
    assert r.returncode != 0 and 'validate' in r.stdout + r.stderr and 'critical' in r.stdout + r.stderr, (r.stdout, r.stderr)
    run_dir = max((root/'.mlnb'/'runs').iterdir(), key=lambda d: d.stat().st_mtime)
    assert (run_dir/'ingest').is_dir() and not (run_dir/'train').exists()          # stopped before training
    report = json.loads((run_dir/'validate.failed'/'validation.json').read_text())
    assert not report['passed'] and {'churned', 'income'} <= {f['column'] for f in report['failures'] if f['severity'] == 'critical'}
    page = run_dir/'validate.failed'/report['docs']
    assert page.is_file() and 'churned' in page.read_text() and (run_dir/'validate.failed'/'data_docs'/'index.html').is_file()
