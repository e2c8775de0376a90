"""The data layer against real sources: files and fsspec URLs, SQLite and a PostgreSQL server, an HTTP API served here,
incremental ingestion across runs, every kind of bad input, both gate severities with Data Docs, and no training/serving skew."""
import gzip, json, os, threading, uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit
import joblib, numpy as np, pandas as pd, pyarrow.parquet as pq, pytest, sqlalchemy as sa
from conftest import mlnb
import mlnb.ingest as ing
from mlnb.core import ConfigError, DataError, ValidationFailed
from mlnb.ingest import (SKLEARN_SETS, check_source, frame_hash, ingest, list_snapshots, parquet_hash, previous_snapshot,
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
        assert check_source(data) == list(df.columns)
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
    srv = ThreadingHTTPServer(('127.0.0.1', 0), _Api)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{srv.server_address[1]}'
    srv.shutdown(); srv.server_close()


def test_http_api_paging(api, tmp_path):
    for data in [{'source': f'{api}/next'}, {'source': f'{api}/pages', 'records': 'data.items', 'paging': 'page'},
                 {'source': f'{api}/link'}]:
        df = read_source(data)
        assert df['id'].tolist() == list(range(1, 24)) and 'tag.kind' in df, data     # nested fields flattened
    assert len(read_source({'source': f'{api}/link', 'paging': 'none'})) == 5
    assert check_source({'source': f'{api}/next', 'target': 'y'}) == ['id', 'score', 'y', 'tag.kind']
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
    with pytest.raises(ValidationFailed, match=r"critical.*(income|churned).*Data Docs: data_docs/validations/.*\.html"):
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


# ---- end to end: the user's own CSV ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_own_csv_trains_and_corrupted_copy_is_stopped_at_the_gate(tmp_path):
    "A project on a user's CSV (missing values, categories) runs end to end; a corrupted copy fails the suite that run profiled."
    from mlnb.validate import gate, load_suite
    root = tmp_path/'churn'
    mlnb('new', root, '--source', 'data/customers.csv', '--target', 'churned')
    (root/'data').mkdir()
    customers(200).drop(columns='id').to_csv(root/'data'/'customers.csv', index=False)
    r = mlnb('run', '--params', 'train.cv=2', 'evaluate.shap_rows=20', cwd=root)
    assert 'succeeded' in r.stdout and (root/'expectations'/'suite.json').is_file()
    # the corrupted copy, through the same ingest and gate the stages call (test_pipeline runs a failing gate in kernels)
    bad = customers(200).drop(columns='id')
    bad['churned'] = bad['churned'].where(bad.index % 10 != 0, 9)        # labels nobody has seen
    bad['income'] = bad['income'].astype(object).where(bad.index != 3, 'unknown')
    bad.to_csv(root/'data'/'bad.csv', index=False)
    snap = ingest({'source': 'data/bad.csv', 'target': 'churned'}, tmp_path/'ingest', root)
    with pytest.raises(ValidationFailed, match="churned.*Data Docs"):
        gate(pd.read_parquet(snap.path), load_suite(root/'expectations'/'suite.json'), tmp_path/'validate')
    report = json.loads((tmp_path/'validate'/'validation.json').read_text())
    assert {'churned', 'income'} <= {f['column'] for f in report['failures'] if f['severity'] == 'critical'}
    assert (tmp_path/'validate'/report['docs']).is_file()
