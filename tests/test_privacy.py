"""Issue 18 on real components: the audit chain, scoped tokens, pseudonyms, erasure, retention and encryption at rest,
on SQLite and (with MLNB_TEST_PG_URL, as .ci/run sets it) PostgreSQL."""
import json, os, secrets, subprocess, sys, threading, time
from datetime import timedelta
from pathlib import Path
import pandas as pd, pyarrow as pa, pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from mlnb import config, privacy, erasure
from mlnb.config import load_project, new_project
from mlnb.core import free_port, hash_file
from mlnb.ingest import parquet_hash, write_snapshot
from mlnb.store import Store, audit_log, feedback, is_sealed, meta, models, predictions, runs, snapshots, tokens, utcnow

PG_URL = os.environ.get('MLNB_TEST_PG_URL')
CLI = ('import sys, mlnb.cli as c; c.COMMAND_MODULES = tuple(dict.fromkeys((*c.COMMAND_MODULES, "privacy", "erasure")));'
       'sys.exit(c.main(sys.argv[1:]))')
SUBJECT = 'CUST-7734-ANN'                       # distinctive, so a text search for it means something
EMAIL = 'ann.example.7734@example.com'
NOTE = 'zq-only-in-the-subjects-requests'          # a feature value only the subject's logged requests hold


def cli(*args, env=None):
    "The `mlnb` command with the privacy and erasure commands plugged in (until COMMAND_MODULES lists them)."
    return subprocess.run([sys.executable, '-c', CLI, *map(str, args)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.fixture(autouse=True)
def no_ambient_keys(monkeypatch):
    monkeypatch.delenv(privacy.KEY_ENV, raising=False)
    monkeypatch.delenv('MLNB_ENCRYPT', raising=False)
    yield
    privacy.drop_keys()


@pytest.fixture(params=['sqlite', pytest.param('postgresql', marks=pytest.mark.skipif(not PG_URL, reason='MLNB_TEST_PG_URL is not set: .ci/run starts PostgreSQL and sets it'))])
def store_url(request, tmp_path):
    "A fresh store: a SQLite file, or a PostgreSQL schema of its own (dropped afterwards)."
    if request.param == 'sqlite':
        yield f'sqlite:///{tmp_path}/store.db'
        return
    schema = f'mlnb_priv_{secrets.token_hex(4)}'
    eng = sa.create_engine(PG_URL)
    with eng.begin() as c: c.execute(sa.text(f'CREATE SCHEMA {schema}'))
    yield f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}"
    with eng.begin() as c: c.execute(sa.text(f'DROP SCHEMA {schema} CASCADE'))
    eng.dispose()


def make_project(root:Path, store_url:str, **keys):
    "A project made by `mlnb new` using `store_url`; `[section] key` settings go into settings.ini when declared, else in memory."
    f = new_project(root)
    text = f.read_text().replace('\n[project]\n', f'\n[project]\nstore = {store_url}\n', 1)
    memory = {}
    for name, value in keys.items():
        sec, key = name.split('__')
        if (sec, key) in config.SETTING:
            head = f'\n[{sec}]\n'
            text = text.replace(head, f'{head}{key} = {value}\n', 1) if head in text else text + f'{head}{key} = {value}\n'
        else: memory[sec, key] = value
    f.write_text(text)
    p = load_project(f)
    for (sec, key), value in memory.items(): p.sections.setdefault(sec, {})[key] = value
    return p


def in_file(p, **keys) -> bool:
    "Whether every one of these settings is declared (so the CLI sees them in settings.ini)."
    return all(tuple(k.split('__')) in config.SETTING for k in keys)


# ---------------------------------------------------------------- audit

def test_audit_chain_concurrent_writers_and_tampering(store_url, tmp_path):
    "Two processes append at once: one unbroken chain; an edited, a deleted and a cut row are each named by `mlnb audit --verify` (exit 2)."
    p = make_project(tmp_path/'proj', store_url)
    st = Store(p.store_url)
    code = (f'import sys; from mlnb.store import Store; st = Store({p.store_url!r})\n'
            'for i in range(15): st.audit("label", f"{sys.argv[1]}-{i}", {"i": i})')
    procs = [subprocess.Popen([sys.executable, '-c', code, w]) for w in ('a', 'b')]
    assert all(pr.wait(120) == 0 for pr in procs)
    problems, head = st.verify_audit()
    assert problems == [] and head['seq'] == 30
    assert [r['seq'] for r in st.read(sa.select(audit_log.c.seq).order_by(audit_log.c.seq))] == list(range(1, 31))
    r = cli('audit', '--verify', '-p', p.path)
    assert r.returncode == 0 and f"30 rows, head {head['hash']}" in r.stdout
    assert cli('audit', '--verify', '--expect', '0' * 64, '-p', p.path).returncode == 2        # a head recorded elsewhere that differs
    st.write(audit_log.update().where(audit_log.c.seq == 7).values(actor='mallory'))
    r = cli('audit', '--verify', '-p', p.path)
    assert r.returncode == 2 and 'row 7 (label' in r.stderr and 'was edited' in r.stderr
    st.write(audit_log.delete().where(audit_log.c.seq == 7))
    assert 'row 7 is missing (deleted)' in cli('audit', '--verify', '-p', p.path).stderr
    st.write(audit_log.delete().where(audit_log.c.seq >= 29))
    assert 'the head records 30 rows, the table ends at row 28' in cli('audit', '--verify', '-p', p.path).stderr


def test_store_made_before_these_columns_is_upgraded(tmp_path):
    "A store an older mlnb made (no token_id, subject, replaced_by, audit head) opens, gains them, and logs a token id."
    url = f'sqlite:///{tmp_path}/old.db'
    eng = sa.create_engine(url)
    with eng.begin() as c:
        c.execute(sa.text('CREATE TABLE predictions (request_id VARCHAR(64) PRIMARY KEY, model_tag VARCHAR(200), inputs JSON, output JSON, latency_ms FLOAT, created DATETIME)'))
        c.execute(sa.text("INSERT INTO predictions (request_id, model_tag) VALUES ('old', 'm:1')"))
        c.execute(sa.text('CREATE TABLE snapshots (hash VARCHAR(64) PRIMARY KEY, path TEXT, source TEXT, rows INTEGER, columns JSON, created DATETIME, run_id VARCHAR(40))'))
    eng.dispose()
    st = Store(url)
    st.write(predictions.insert().values(request_id='new', model_tag='m:1', token_id='ab12cd34', subject='x'))
    assert {r['request_id']: r['token_id'] for r in st.read(sa.select(predictions))} == {'old': None, 'new': 'ab12cd34'}
    assert st.audit('promote', 'm:1') == 1 and st.verify_audit()[0] == []


# ---------------------------------------------------------------- tokens

def test_tokens_cli_hashed_scoped_revocable_rate_limited(store_url, tmp_path):
    "`mlnb token add` shows the token once and stores its hash; scopes, 429s and revocation without restart through TokenChecker."
    p = make_project(tmp_path/'proj', store_url)
    r = cli('token', 'add', 'app', '--scope', 'predict', '--rate', '3', '-p', p.path)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip().splitlines()[-1]
    tid = token.split('_')[1]
    assert token.startswith('mlnb_') and tid in r.stdout.splitlines()[0]
    listed = cli('token', 'list', '-p', p.path).stdout
    assert 'app' in listed and 'live' in listed and token not in listed
    st = Store(p.store_url)
    assert token not in json.dumps(st.read(sa.select(tokens)), default=str)        # only the SHA-256 is kept
    ck = privacy.TokenChecker(p.store_url, refresh=0.2)
    auth = f'Bearer {token}'.encode()
    assert [ck.check(auth, '/predict')[0] for _ in range(4)] == [0, 0, 0, 429]     # 3 a second, bursts of 3
    time.sleep(0.4)
    assert ck.check(auth, '/predict') == (0, tid) and privacy.TOKEN.get() == tid
    assert ck.check(auth, '/feedback')[0] == 403
    assert ck.check(b'Bearer mlnb_' + tid.encode() + b'_forged', '/predict')[0] == 401
    assert cli('token', 'revoke', tid, '-p', p.path).returncode == 0
    time.sleep(0.6)
    assert ck.check(auth, '/predict')[0] == 401                                       # the running checker saw it
    assert cli('token', 'revoke', 'nobody', '-p', p.path).returncode == 2
    ck.close()
    assert [r['action'] for r in st.read(sa.select(audit_log.c.action))] == ['token add', 'token revoke']


def test_guard_answers_with_token_scopes_over_http(tmp_path, monkeypatch):
    "The service's Guard in front of an app, served by uvicorn on loopback: 401, 403, 429 and 200 by token (once the Guard uses TokenChecker)."
    from mlnb import service
    import uvicorn
    url = f'sqlite:///{tmp_path}/store.db'
    st = Store(url)
    _, ptok = privacy.add_token(st, 'app', ['predict'], rate=2)
    monkeypatch.setenv('MLNB_STORE', url)
    async def app(scope, receive, send):
        await send({'type': 'http.response.start', 'status': 200, 'headers': [(b'content-type', b'application/json')]})
        await send({'type': 'http.response.body', 'body': json.dumps({'token': privacy.TOKEN.get()}).encode()})
    g = service.Guard(app)
    if getattr(g, 'tokens', None) is None: pytest.skip("the service's Guard does not call privacy.TokenChecker yet (REQUESTS.md 5)")
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(g, host='127.0.0.1', port=port, log_level='error'))
    threading.Thread(target=srv.run, daemon=True).start()
    import httpx
    for _ in range(100):
        if srv.started: break
        time.sleep(0.05)
    try:
        base = f'http://127.0.0.1:{port}'
        assert httpx.get(f'{base}/predict').status_code == 401
        assert httpx.post(f'{base}/feedback', headers={'Authorization': f'Bearer {ptok}'}, json={}).status_code == 403
        codes = [httpx.get(f'{base}/predict', headers={'Authorization': f'Bearer {ptok}'}).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
    finally:
        srv.should_exit = True
        g.tokens.close()


# ---------------------------------------------------------------- personal data, erasure, retention

def people(n=40):
    ids = [SUBJECT if i % 10 == 0 else f'CUST-{1000 + i}' for i in range(n)]
    return pd.DataFrame({'customer': ids, 'email': [EMAIL if c == SUBJECT else f'u{i}@example.org' for i, c in enumerate(ids)],
                         'phone': ['+44 20 7946 %04d' % i for i in range(n)], 'spend': [float(i) for i in range(n)],
                         'target': [i % 2 for i in range(n)]})


def populate(p):
    "A snapshot and a holdout written through `protect`, a run and its model, logged predictions and labels, text files: the subject in each."
    st, keys = Store(p.store_url), privacy.project_keys(p)
    run = p.workspace/'runs'/'r1'
    snap = write_snapshot(privacy.protect(people(), p), run/'ingest')
    write_snapshot(privacy.protect(people().iloc[::3], p), run/'train', 'holdout.parquet')
    st.add_snapshot(snap.hash, snap.path, 'customers.csv', snap.rows, snap.columns, 'r1')
    st.write(runs.insert().values(id='r1', status='succeeded', data_hash=snap.hash))
    st.record('r1', 'ingest', artifacts_={'snapshot': (snap.path, hash_file(snap.path), snap.path.stat().st_size)})
    st.add_model('shop:1', 'r1', snap.hash, {'accuracy': 0.9})
    ann = privacy.pseudonym(SUBJECT, keys)
    rows = [dict(request_id=f'q{i}', model_tag='shop:1', inputs={'customer': ann if i % 3 == 0 else f'other{i}', 'spend': float(i),
                                                                 'note': NOTE if i % 3 == 0 else 'plain'},
                 output={'label': i % 2}, created=utcnow() - timedelta(days=i * 10), subject=ann if i % 3 == 0 else None) for i in range(12)]
    rows.append(dict(request_id='raw', model_tag='shop:1', inputs={'customer': SUBJECT, 'spend': 1.0}, output={'label': 1}, created=utcnow(), subject=None))
    st.write(predictions.insert(), rows)
    st.write(feedback.insert(), [dict(request_id=f'q{i}', label=i % 2, source='api', created=utcnow()) for i in range(0, 12, 2)])
    (run/'train.ipynb').write_text(json.dumps({'cells': [{'outputs': [{'text': f'| {ann} | 0.0 |'}]}]}))
    (p.workspace/'mlnb-log-spill.jsonl').write_text(json.dumps({'table': 'predictions', 'inputs': {'customer': ann}}) + '\n')
    return st, snap, ann


def counts(st) -> dict:
    return {t.name: len(st.read(sa.select(t))) for t in (predictions, feedback)}


def everything_but_the_audit(p, st) -> str:
    "Every table but the audit trail, and every file of the project, as one text to search."
    tables = [t for t in meta.sorted_tables if t.name not in ('audit', 'audit_head')]
    text = [json.dumps(st.read(sa.select(t)), default=str) for t in tables]
    for f in p.root.rglob('*'):
        if not f.is_file(): continue
        if f.suffix == '.parquet': text.append(privacy.read_parquet(f, p).to_pandas().to_csv())
        else: text.append(f.read_bytes().decode('utf-8', 'replace'))
    return '\n'.join(text)


def test_pii_never_reaches_a_snapshot(tmp_path):
    "[data] pii pseudonymized or dropped by protect: no raw e-mail or phone in the snapshot's bytes; joins keep working."
    p = make_project(tmp_path/'proj', f'sqlite:///{tmp_path}/s.db', data__pii='email phone:drop', data__subject='customer')
    snap = write_snapshot(privacy.protect(people(), p), tmp_path/'snap')
    raw = snap.path.read_bytes()
    phones = [phone.encode() for phone in people()['phone']]                              # a fragment such as b'7946' may occur in random pseudonyms' bytes
    assert EMAIL.encode() not in raw and SUBJECT.encode() not in raw and not any(phone in raw for phone in phones)
    df = pq.read_table(snap.path).to_pandas()
    assert list(df.columns) == ['customer', 'email', 'spend', 'target']
    assert df.groupby('customer').size().max() == 4                                       # the subject's 4 rows share one pseudonym
    warned = privacy.personal_warnings(people(), p)
    assert warned == [] and privacy.personal_warnings(people().rename(columns={'email': 'contact'}), p)[0].startswith("column 'contact' looks personal (e-mail")


def test_forget_export_and_purge(store_url, tmp_path):
    "forget removes the subject's predictions, labels and rows (snapshot rewritten with a new hash, lineage kept), leaving its id only in the audit trail."
    p = make_project(tmp_path/'proj', store_url, data__subject='customer', data__pii='email phone:drop', monitor__retention='90d')
    st, snap, ann = populate(p)
    before = counts(st)
    assert before == {'predictions': 13, 'feedback': 6}
    export = erasure.export_subject(p, SUBJECT)
    assert len(export['predictions']) == 5 and len(export['feedback']) == 2 and sum(map(len, export['rows'].values())) == 4 + 2
    if in_file(p, data__subject='x'):                                                        # the CLI, once the settings are declared
        r = cli('forget', SUBJECT, '-p', p.path)
        assert r.returncode == 0, r.stderr
        assert 'shop:1' in r.stdout                                                          # due for retraining
    else: erasure.forget(p, SUBJECT)
    assert counts(st) == {'predictions': 13 - 5, 'feedback': 6 - 2}
    new = parquet_hash(snap.path)
    assert new != snap.hash and pq.read_table(snap.path).num_rows == 36
    from mlnb.ingest import snapshot_meta
    assert snapshot_meta(snap.path)['hash'] == new and snapshot_meta(snap.path)['erased_rows'] == 4      # the footer says what it holds now
    lineage = {r['hash']: r['replaced_by'] for r in st.read(sa.select(snapshots))}
    assert lineage == {snap.hash: new, new: None}
    text = everything_but_the_audit(p, st)
    assert SUBJECT not in text and ann not in text and EMAIL not in text
    assert ann in json.dumps(st.read(sa.select(audit_log)), default=str)                   # the one place it stays
    if st.engine.dialect.name == 'sqlite':                                                   # nor in the file's free pages or its WAL
        db = Path(st.engine.url.database)
        assert all(NOTE.encode() not in f.read_bytes() for f in db.parent.glob(db.name + '*'))
    assert erasure.traces(p, SUBJECT) == []
    assert len(privacy.protect(people(), p)) == 36                                           # a source still holding them: left out at ingest
    assert st.verify_audit()[0] == []
    from mlnb.registry import verified
    assert verified(st, 'r1', 'ingest', 'snapshot') == snap.path                             # the artifact record follows the rewrite
    left = counts(st)['predictions']
    purged = erasure.purge(p)                                                                # q10, q11 are 100 and 110 days old
    assert purged == {'predictions': 2, 'feedback': 1} and counts(st)['predictions'] == left - 2
    assert [r['action'] for r in st.read(sa.select(audit_log.c.action).order_by(audit_log.c.seq))] == ['export-subject', 'forget', 'purge']


# ---------------------------------------------------------------- encryption at rest

def test_encryption_at_rest_and_key_rotation(store_url, tmp_path):
    "Snapshots (Parquet modular encryption) and log payloads (AES-GCM) are unreadable without the project key, readable with it, also after `keys rotate`."
    p = make_project(tmp_path/'proj', store_url, privacy__encrypt='on', data__subject='customer')
    keys = privacy.project_keys(p)
    f = p.workspace/'runs'/'r1'/'ingest'/'snapshot.parquet'
    f.parent.mkdir(parents=True)
    t = pa.Table.from_pandas(privacy.protect(people(), p), preserve_index=False)
    with pq.ParquetWriter(f, t.schema, **privacy.parquet_options(p)) as w: w.write_table(t)
    assert privacy.is_encrypted(f) and b'example.org' not in f.read_bytes()
    with pytest.raises(OSError): pq.read_table(f)
    assert privacy.read_parquet(f, p).equals(t)
    assert privacy.read_frame(f).equals(t.to_pandas())                                    # no keys given: those of the project holding the file
    privacy.use_keys(p)
    st = Store(p.store_url)
    st.write(predictions.insert().values(request_id='r', model_tag='m', inputs={'spend': 123.456, 'plan': 'gold'}, output={'label': 1}, created=utcnow()))
    with sa.create_engine(p.store_url).connect() as c: raw = c.execute(sa.text('SELECT CAST(inputs AS TEXT) FROM predictions')).scalar()
    assert '123.456' not in raw and 'gold' not in raw and '"sealed"' in raw
    privacy.drop_keys()
    assert is_sealed(st.read(sa.select(predictions.c.inputs))[0]['inputs'])
    before = f.read_bytes()
    out = erasure.rotate_keys(p)
    assert out['key'] == 2 and out['payloads'] == 1 and out['files'] == 1
    assert f.read_bytes() != before and privacy.read_parquet(f, p).equals(t)              # re-encrypted, same content
    privacy.use_keys(p)
    assert st.read(sa.select(predictions.c.inputs))[0]['inputs'] == {'spend': 123.456, 'plan': 'gold'}
    erasure.rotate_keys(p)                                                                 # key 1 retired now
    with pytest.raises(Exception): privacy.read_parquet(f, keys=privacy.Keys(keys.pseudonym, {1: keys.data[1]}))
    assert keys.data[1].hex() not in (p.workspace/'data.key').read_text()


# ---------------------------------------------------------------- the real server

def hooked() -> bool:
    "Whether the service uses the token checker, the cipher and the subject header (REQUESTS.md 5-8, 24)."
    import inspect
    from mlnb import serve, service
    return all(w in inspect.getsource(service) for w in ('TokenChecker', 'use_keys', 'take_subject')) and 'KEY_ENV' in inspect.getsource(serve)


@pytest.fixture(scope='module')
def own_project(request, tmp_path_factory):
    "A copy of the session's project, packaged, so tokens, keys and aliases made here reach no other test's server."
    import shutil
    from conftest import mlnb
    if not hooked(): pytest.skip("the service does not use privacy.TokenChecker / use_keys yet (REQUESTS.md 5-8)")
    root, _ = request.getfixturevalue('project')
    copy = tmp_path_factory.mktemp('priv')/'shop'
    shutil.copytree(root, copy, symlinks=True)
    mlnb('package', cwd=copy)                                  # packaged here: the session's project keeps its aliases
    return copy


def test_served_tokens_scopes_429_and_a_sealed_log_with_the_token_id(own_project):
    "`mlnb serve` with two tokens and encryption on: 401/403/429 by token, revocation live, the log holds the token id and sealed features."
    import requests
    from test_serve import holdout_X, mlnb_serve
    from mlnb.core import free_port
    p = load_project(own_project)
    st = Store(p.store_url)
    pid, ptok = privacy.add_token(st, 'app', ['predict'], rate=5)
    fid, ftok = privacy.add_token(st, 'labels', ['feedback'])
    f = own_project/'settings.ini'
    if '[privacy]' not in f.read_text():                             # the copy's own settings: encryption, and whom a request is about
        f.write_text(f.read_text().replace('\n[data]\n', '\n[data]\nsubject = customer\n', 1) + '\n[privacy]\nencrypt = on\n')
    p = load_project(own_project)
    proc, url = mlnb_serve(own_project, free_port())
    try:
        record = holdout_X(p).iloc[0].to_dict()
        post = lambda path, tok, body: requests.post(url + path, json=body, headers={'Authorization': f'Bearer {tok}'} if tok else {}, timeout=30)
        assert post('/predict', None, {'record': record}).status_code == 401    # a failed row first in the log batch: the subject must survive it
        r = requests.post(url + '/predict', json={'record': record}, headers={'Authorization': f'Bearer {ptok}', 'X-Subject-ID': SUBJECT}, timeout=30)
        assert r.status_code == 200, r.text
        rid = r.json()['request_id']
        assert post('/feedback', ptok, {'request_id': rid, 'label': 1}).status_code == 403
        codes = [post('/predict', ptok, {'record': record}).status_code for _ in range(12)]
        assert 429 in codes and codes.count(200) >= 4
        assert post('/feedback', ftok, {'request_id': rid, 'label': 1}).status_code == 200
        privacy.revoke_token(st, fid)
        time.sleep(3)
        assert post('/feedback', ftok, {'request_id': rid, 'label': 0}).status_code == 401
    finally:
        proc.terminate()
        proc.wait(60)
    raw = sa.create_engine(p.store_url).connect().execute(sa.text("SELECT token_id, inputs FROM predictions WHERE request_id = :r"), {'r': rid}).one()
    assert raw[0] == pid and '"sealed"' in raw[1] and str(round(next(iter(record.values())), 3)) not in raw[1]
    privacy.use_keys(p)
    assert st.read(sa.select(predictions.c.inputs).where(predictions.c.request_id == rid))[0]['inputs'].keys() == record.keys()
    assert st.read(sa.select(predictions.c.subject).where(predictions.c.request_id == rid))[0]['subject'] == privacy.pseudonym(SUBJECT, privacy.project_keys(p))
    r = cli('forget', SUBJECT, '-p', own_project)                                           # X-Subject-ID -> predictions.subject -> forget
    assert r.returncode == 0 and 'forgot subject' in r.stdout, r.stderr
    assert not st.read(sa.select(predictions).where(predictions.c.request_id == rid))
    assert not st.read(sa.select(feedback).where(feedback.c.request_id == rid))
    actions = [r['action'] for r in st.read(sa.select(audit_log.c.action).order_by(audit_log.c.seq))]
    assert {'package', 'serve', 'token add', 'token revoke'} <= set(actions), actions      # the commands' own audit rows, one chain
    r = cli('audit', '--verify', '-p', own_project)
    assert r.returncode == 0 and f"{len(actions)} rows" in r.stdout, r.stderr


# ---------------------------------------------------------------- a real pipeline run

def ingest_protects() -> bool:
    "Whether ingest pseudonymizes [data] pii (REQUESTS.md 10/18, the streams engineer's)."
    import inspect, mlnb.ingest
    tpl = (Path(mlnb.__file__).parent.parent/'templates'/'pipeline'/'ingest.ipynb').read_text()
    return 'protect' in inspect.getsource(mlnb.ingest) or 'protect' in tpl


def csv_project(tmp_path, df, name:str, edit) -> Path:
    "A project made by `mlnb new` whose source is `df` as data/`name`, its settings.ini text passed through `edit`."
    from conftest import mlnb
    root = tmp_path/'shop'
    mlnb('new', root)
    (root/'data').mkdir()
    df.to_csv(root/'data'/name, index=False)
    f = root/'settings.ini'
    f.write_text(edit(f.read_text().replace('sklearn:breast_cancer', f'data/{name}')))
    return root


def test_pipeline_run_keeps_no_personal_value_and_forget_leaves_no_trace(tmp_path):
    "A real `mlnb run` on a table with a subject and pii: no raw value in any file; `mlnb forget` then leaves the subject nowhere but the audit trail."
    if not ingest_protects(): pytest.skip("ingest does not call privacy.protect yet (REQUESTS.md 10/18)")
    import numpy as np
    from conftest import mlnb
    rng = np.random.default_rng(0)
    df = people(150)
    df['spend'], df['age'] = rng.gamma(4, 15, 150).round(2), rng.integers(18, 80, 150)
    df['target'] = (df.spend + rng.normal(0, 15, 150) > 60).astype(int)                 # learnable, not a copy of one column
    root = csv_project(tmp_path, df, 'people.csv', lambda t: t.replace('\n[data]\n', '\n[data]\npii = email phone:drop\nsubject = customer\n', 1))
    mlnb('run', cwd=root)
    p = load_project(root)
    for g in p.workspace.rglob('*'):
        if g.is_file() and g.suffix in ('.parquet', '.ipynb', '.json', '.html', '.csv'):
            data = g.read_bytes() if g.suffix != '.parquet' else privacy.read_frame(g).to_csv().encode()
            assert EMAIL.encode() not in data and b'20 7946' not in data and SUBJECT.encode() not in data, g
    r = cli('forget', SUBJECT, '-p', root)
    assert r.returncode == 0, r.stderr
    left = erasure.traces(p, SUBJECT)
    assert left == ['data/people.csv'], left          # the source, the user's to clean; no model holds the subject: personal columns are no features
    from mlnb.core import hash_file
    from mlnb.store import artifacts
    recorded = Store(p.store_url).read(sa.select(artifacts))                                # what the next run's cache and the loaders check
    assert recorded and all(hash_file(a['path']) == a['sha256'] for a in recorded if Path(a['path']).is_file())
    r = cli('forget', SUBJECT, '--check', '-p', root)
    assert r.returncode == 2 and 'data/people.csv' in r.stderr


def test_failed_and_answered_rows_share_a_log_batch(tmp_path):
    "An answered request (its row with the subject's pseudonym) and a refused one logged in the same writer batch both reach the store, the subject kept (REQUESTS.md 25/26: the batch was inserted with its first row's columns)."
    from types import SimpleNamespace
    from mlnb import service
    log = service.PredictionLog(f'sqlite:///{tmp_path}/s.db', tmp_path/'journal', every=1.0)   # the four rows below: one batch
    log.put('predictions', dict(request_id='ok', model_tag='m', inputs={'a': 1}, output={'label': 1}, latency_ms=1.0, created=utcnow(),
                                token_id='t', subject='pid'))                                   # the shape of service.answer's row
    service.log_failure(SimpleNamespace(log=log, current=SimpleNamespace(tag='m')), '/predict', 429, 'over its rate', 1.0)
    service.log_failure(SimpleNamespace(log=log, current=SimpleNamespace(tag='m')), '/predict', 401, 'no token', 1.0)
    log.put('predictions', dict(request_id='ok2', model_tag='m', inputs={'a': 2}, output={'label': 0}, latency_ms=1.0, created=utcnow(),
                                token_id='t', subject='pid2'))
    try: assert log.flush(tries=1)
    finally: log.close()
    rows = {r['request_id']: r['subject'] for r in Store(f'sqlite:///{tmp_path}/s.db').read(sa.select(predictions.c.request_id, predictions.c.subject))}
    assert len(rows) == 4 and rows['ok'] == 'pid' and rows['ok2'] == 'pid2'


def test_cli_run_encrypts_the_ingest_snapshot(tmp_path):
    "`mlnb run` on a project with `[privacy] encrypt = on`: the ingest stage writes its snapshot encrypted (no raw value in its bytes, no read without the key, the content hash of the plain data) and the later stages read it."
    import numpy as np
    from conftest import mlnb
    from mlnb.core import DataError
    from mlnb.ingest import frame_hash
    rng = np.random.default_rng(0)
    df = pd.DataFrame({'city': [f'Zqcity{i:03d}' for i in range(150)], 'spend': rng.gamma(4, 15, 150).round(2), 'age': rng.integers(18, 80, 150)})
    df['target'] = (df.spend + rng.normal(0, 15, 150) > 60).astype(int)                 # learnable, not a copy of one column
    root = csv_project(tmp_path, df, 'visits.csv', lambda t: t + '\n[privacy]\nencrypt = on\n')
    r = mlnb('run', '--params', 'train.cv=2', 'evaluate.shap_rows=20', cwd=root, check=False)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}\n(the ingest stage must read its encrypted snapshot through mlnb.privacy: REQUESTS.md 'ingest -> lead')"
    p = load_project(root)
    [snap] = p.workspace.glob('runs/*/ingest/snapshot.parquet')
    raw = snap.read_bytes()
    assert privacy.is_encrypted(snap) and not any(c.encode() in raw for c in df.city)
    with pytest.raises(OSError, match='encrypted'): pq.read_table(snap)                   # no key, no data
    with pytest.raises(DataError, match='does not open'):
        privacy.read_parquet(snap, keys=privacy.new_keys())                               # another project's key: no data either
    pd.testing.assert_frame_equal(privacy.read_frame(snap, p), df)                       # the project's key: every row as it was
    [run] = Store(p.store_url).read(sa.select(runs.c.data_hash, runs.c.status))
    assert run == {'data_hash': frame_hash(df), 'status': 'succeeded'}                    # the hash of the data, not of its encrypted bytes
