"""Streams against real brokers on loopback: tansu (the Kafka protocol) and Debian's redis-server, started here."""
import json, os, random, signal, subprocess, sys, time
from pathlib import Path
import pandas as pd
import pytest
from conftest import MLNB, mlnb
from mlnb.config import new_project
from mlnb.streams import broker, consume, create_topic, local_broker, produce, read_manifest, store_folder, stream_url

pytestmark = pytest.mark.skipif(not Path('/usr/bin/redis-server').exists(), reason='redis-server: make services')


@pytest.fixture(scope='module')
def kafka():
    with local_broker('kafka') as url: yield url

@pytest.fixture(scope='module')
def redis():
    with local_broker('redis') as url: yield url

def source(kind, base, name):
    "A fresh topic or stream called `name` on the broker at `base`."
    if kind == 'kafka':
        create_topic(f'{base}/{name}', partitions=2)
        return f'{base}/{name}'
    return f'{base}?stream={name}'

def events(n, bad_every=0):
    "`n` records with a unique `n`, and every `bad_every`-th one bad in turn: not JSON, a wrong type, no target."
    out, bad = [], 0
    for i in range(n):
        rec = {'n': i, 'x': round(random.random(), 4), 'c': 'ab'[i % 2], 'target': i % 2}
        if bad_every and i % bad_every == bad_every - 1:
            rec, bad = [b'{not json', {**rec, 'x': 'high'}, {k: v for k, v in rec.items() if k != 'target'}][bad % 3], bad + 1
        out.append(rec)
    return out

def ingest_cmd(project, *args):
    "The `mlnb ingest` command line (through the CLI with mlnb.streams' commands plugged in, until COMMAND_MODULES lists it)."
    from mlnb.cli import COMMAND_MODULES
    if 'streams' in COMMAND_MODULES: return [MLNB, 'ingest', '-p', str(project), *args]
    code = f"import sys, mlnb.cli as c; c.COMMAND_MODULES = (*c.COMMAND_MODULES, 'streams'); sys.exit(c.main(sys.argv[1:]))"
    return [sys.executable, '-c', code, 'ingest', '-p', str(project), *args]

def rows_of(folder):
    m = read_manifest(folder)
    return m, (pd.read_parquet(folder) if m['rows'] else pd.DataFrame())


@pytest.mark.parametrize('kind', ['kafka', 'redis'])
def test_kill_9_mid_batch_and_restart_leave_each_message_exactly_once(kind, kafka, redis, tmp_path):
    base = kafka if kind == 'kafka' else redis
    url = source(kind, base, f'kill{random.randrange(10**6)}')
    recs = events(8_000, bad_every=97)
    produce(url, recs, keys=[str(i % 5) for i in range(len(recs))])
    settings = new_project(tmp_path/'p', source=url, target='target')
    store = store_folder(tmp_path/'p'/'.mlnb', stream_url(url), 'mlnb')
    for trial in range(3):                       # killed at a random moment while it writes (1000-row batches)
        proc = subprocess.Popen(ingest_cmd(settings, '--follow'), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        end = time.monotonic() + 60
        while read_manifest(store)['rows'] < 1500 * (trial + 1) and time.monotonic() < end and proc.poll() is None: time.sleep(0.005)
        time.sleep(random.random() * 0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    r = subprocess.run(ingest_cmd(settings), capture_output=True, text=True, timeout=120)     # until caught up
    assert r.returncode == 0, r.stderr
    m, df = rows_of(store)
    good = [x['n'] for x in recs if isinstance(x, dict) and 'target' in x and isinstance(x['x'], float)]
    assert sorted(df['n']) == good                                   # none lost, none twice
    assert m['dead'] == len(recs) - len(good) and m['rows'] == len(good)
    assert len(m["parts"]) >= 8 and m["hash"]
    assert df.dtypes.astype(str).to_dict() == {'n': 'int64', 'x': 'float64', 'c': 'str', 'target': 'int64'}
    proc = subprocess.Popen(ingest_cmd(settings, '--follow'), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    produce(url, [{'n': -i, 'x': 0.5, 'c': 'a', 'target': 1} for i in range(1, 101)])
    end = time.monotonic() + 60
    while read_manifest(store)['rows'] < len(good) + 100 and time.monotonic() < end: time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)                                   # a clean stop: what was read is written and committed
    so, se = proc.communicate(timeout=60)
    assert proc.returncode == 0 and '100 rows' in so, se
    assert read_manifest(store)['rows'] == len(good) + 100


@pytest.mark.parametrize('kind', ['kafka', 'redis'])
def test_bad_messages_go_to_the_dead_letter_stream_with_their_reason(kind, kafka, redis, tmp_path):
    base = kafka if kind == 'kafka' else redis
    url = source(kind, base, f'dead{random.randrange(10**6)}')
    produce(url, [{'x': 1.0, 'target': 0}, b'\xff not json', {'x': 'high', 'target': 1}, {'x': 2.0}, [1, 2], {'x': 3.0, 'target': 1, 'y': 2}, {'x': 4, 'target': 1}])
    got = consume({'source': url, 'target': 'target'}, tmp_path)
    assert (got.rows, got.dead, got.read) == (3, 4, 7)
    dead_url = f'{url}.dead'
    b, dead, end = broker(dead_url, group='check').start(), [], time.monotonic() + 20
    while len(dead) < 4 and time.monotonic() < end: dead += b.read(10, 0.5)
    b.close()
    assert sorted((m.value, m.headers['mlnb-reason']) for m in dead) == sorted([
        (b'\xff not json', "not JSON ('utf-8' codec can't decode byte 0xff in position 0: invalid start byte)"),
        (b'{"x": "high", "target": 1}', "field 'x' must be float, got 'high'"),
        (b'{"x": 2.0}', "no target 'target'"), (b'[1, 2]', 'not a JSON object (a list)')])
    assert {m.headers['mlnb-source'] for m in dead} == {str(stream_url(url))}
    again = consume({'source': url, 'target': 'target'}, tmp_path)
    assert (again.read, read_manifest(got.store)['dead']) == (0, 4)     # the group's position is past all of them


@pytest.fixture(scope='module')
def trained(kafka, tmp_path_factory):
    "A project whose data comes from a Kafka topic, run end to end (ingest from the stream ... evaluate)."
    from sklearn.datasets import load_breast_cancer
    url = source('kafka', kafka, 'cancer')
    df = load_breast_cancer(as_frame=True).frame.sample(200, random_state=0)
    produce(url, df.to_dict('records')[:120])
    root = tmp_path_factory.mktemp('streamed')/'p'
    new_project(root, source=url, target='target')
    mlnb('run', '--params', 'train.model=sgd', cwd=root)            # a model that learns online too
    return root, url, df


def test_stream_to_snapshot_to_a_trained_model(trained):
    root, url, df = trained
    assert list((root/'.mlnb'/'runs').glob('*/train/model.joblib'))
    produce(url, df.to_dict('records')[120:] + [b'oops'])                 # more data: the next run appends parts, never rewrites
    mlnb('run', '--stage', 'ingest', cwd=root)              # a stream source is never cached: new messages come at any time
    snaps = sorted((root/'.mlnb'/'runs').glob('*/ingest/snapshot.parquet'), key=lambda p: p.stat().st_mtime)
    first, second = (read_manifest(s) for s in snaps[-2:])
    assert (first['rows'], second['rows'], second['dead']) == (120, 200, 1)
    assert second['parts'][:len(first['parts'])] == first['parts'] and second['hash'] != first['hash']
    assert os.path.samefile(snaps[-2]/first['parts'][0]['file'], snaps[-1]/first['parts'][0]['file'])   # linked, not copied
    assert len(pd.read_parquet(snaps[-1])) == 200


def py(root, code):
    "Run Python `code` in a fresh process in project `root` (BentoML's home is per process); its stdout."
    r = subprocess.run([sys.executable, '-c', code], cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()

def cli(module, command, root, *args):
    "The command line of `mlnb COMMAND -p ROOT ARGS` (with `module`'s commands plugged in until COMMAND_MODULES lists it)."
    from mlnb.cli import COMMAND_MODULES
    if module in COMMAND_MODULES: return [MLNB, command, '-p', str(root), *args]
    code = f"import sys, mlnb.cli as c; c.COMMAND_MODULES = (*c.COMMAND_MODULES, {module!r}); sys.exit(c.main(sys.argv[1:]))"
    return [sys.executable, '-c', code, command, '-p', str(root), *args]

def score_cmd(root, *args): return cli('stream_scoring', 'stream-score', root, *args)

def read_all(url, n, group='check', timeout=30):
    b, got, end = broker(url, group=group).start(), [], time.monotonic() + timeout
    while len(got) < n and time.monotonic() < end: got += b.read(1000, 0.3)
    b.close()
    return got


def test_stream_scoring_logs_follows_promote_and_takes_labels(trained, kafka, redis):
    from mlnb.store import Store
    from mlnb.stream_scoring import request_id
    root, _, df = trained
    a, b = py(root, "from mlnb.registry import save_model as s; from mlnb.config import load_project as l; print(s(l('.')).tag, s(l('.')).tag)").split()
    st = Store(f"sqlite:///{root/'.mlnb'/'mlnb.db'}")
    assert st.alias('champion') == a
    src, out = source('kafka', kafka, 'events'), f'{kafka}/predictions'
    X = df.drop(columns='target')
    produce(src, X.iloc[:150].to_dict('records') + [{'mean radius': 'big'}, X.iloc[0].drop('mean area').to_dict()], keys=[f'k{i}' for i in range(152)])
    r = subprocess.run(score_cmd(root, src, out, '--batch-rows', '40', '--inflight', '2'), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert '150 events scored' in r.stdout and '2 refused' in r.stdout
    preds = [json.loads(m.value) for m in read_all(out, 150)]
    assert len(preds) == 150 and {p['model'] for p in preds} == {a}
    by_key = {p['key']: p for p in preds}
    truth = dict(zip([f'k{i}' for i in range(150)], df['target'].iloc[:150]))
    assert sum(by_key[k]['label'] == truth[k] for k in by_key) >= 120          # the champion's answers, not noise
    dead = read_all(f'{src}.dead', 2)
    assert sorted(m.headers['mlnb-reason'].split(':')[0] for m in dead) == ['mean area', 'mean radius']
    logged = {r_['request_id']: r_ for r_ in st.read(__import__('sqlalchemy').select(__import__('mlnb.store').store.predictions))}
    assert all(p['request_id'] in logged and p['request_id'] == request_id(stream_url(src), p['id']) for p in preds)
    mlnb('feedback', preds[0]['request_id'], truth[preds[0]['key']], cwd=root)     # labels join streamed predictions by request id
    mon = mlnb('monitor', cwd=root).stdout                                         # drift over the streamed traffic, and the consumer's lag
    assert 'drift' in mon.lower() and f'stream score   {stream_url(src)}: 150 events, 2 dead letters, lag 0' in mon, mon
    rin, rout = f'{redis}?stream=events', f'{redis}?stream=predictions'            # Redis in, Redis out
    produce(rin, X.iloc[:30].to_dict('records'), keys=[f'r{i}' for i in range(30)])
    r = subprocess.run(score_cmd(root, rin, rout), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and '30 events scored' in r.stdout, r.stderr
    assert sorted(json.loads(m.value)['key'] for m in read_all(rout, 30)) == sorted(f'r{i}' for i in range(30))

    proc = subprocess.Popen(score_cmd(root, src, out, '--follow', '--batch-rows', '20'), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        produce(src, X.iloc[150:170].to_dict('records'))
        assert len(read_all(out, 170, group='check2')) >= 170
        st.set_alias('champion', b)                                            # mlnb promote, as the store sees it
        time.sleep(2.5)
        produce(src, X.iloc[170:190].to_dict('records'))
        later = [json.loads(m.value) for m in read_all(out, 190, group='check3')][-20:]
    finally:
        proc.send_signal(signal.SIGTERM)
        so, se = proc.communicate(timeout=60)
    assert proc.returncode == 0, se                                            # SIGTERM: a clean stop after committing
    assert '40 events scored' in so
    assert len(logged) + 30 + 40 == len(st.read(__import__('sqlalchemy').select(__import__('mlnb.store').store.predictions)))
    assert {p['model'] for p in later} == {b}                                  # the promotion followed without a restart


def test_online_learning_from_a_stream_checkpoints_a_challenger_for_the_gate(trained, kafka):
    from mlnb.store import Store
    root, _, df = trained
    st = Store(f"sqlite:///{root/'.mlnb'/'mlnb.db'}")
    if not st.alias('champion'): py(root, "from mlnb.registry import save_model as s; s(__import__('mlnb.config').config.load_project('.'))")
    champion = st.alias('champion')
    src = source('kafka', kafka, 'labelled')
    produce(src, df.to_dict('records') + [{**df.iloc[0].to_dict(), 'target': 7}, df.drop(columns='target').iloc[0].to_dict()])
    learn = lambda: subprocess.run(cli('stream_scoring', 'stream-learn', root, src, '--every', '60'), capture_output=True, text=True, timeout=300)
    r = learn()
    assert r.returncode == 0, r.stderr
    assert '200 labelled events learned' in r.stdout and 'in 4 checkpoints, 2 refused' in r.stdout, r.stdout
    last = st.alias('challenger')
    assert last != champion and st.alias('champion') == champion              # a checkpoint never serves by itself
    meta = json.loads(py(root, f"import json; from mlnb.registry import stored_model as s; from mlnb.config import load_project as l; print(json.dumps(s(l('.'), {last!r}).info.metadata))"))
    assert meta['online_stream'] == str(stream_url(src)) and meta['online_rows'] == 20
    again = learn()                                                           # a restart: from the last checkpoint, nothing read twice
    assert again.returncode == 0 and again.stdout.startswith(f'0 labelled events learned from {src} by {last}'), again.stdout
    gate = mlnb('promote', cwd=root, check=False)                             # the promotion gate decides, on rows neither trained on
    assert gate.returncode in (0, 2) and (st.alias('champion') == last) == (gate.returncode == 0), gate.stderr


def test_personal_columns_are_pseudonymized_before_a_part_is_written(redis, tmp_path):
    url = source('redis', redis, f'pii{random.randrange(10**6)}')
    produce(url, [{'email': f'person{i}@example.org', 'x': float(i), 'target': i % 2} for i in range(30)])
    settings = new_project(tmp_path/'p', source=url, target='target')
    settings.write_text(settings.read_text().replace('target = target', 'target = target\npii = email'))
    mlnb('ingest', '-p', settings)
    store = store_folder(tmp_path/'p'/'.mlnb', stream_url(url), 'mlnb')
    df = pd.read_parquet(store)
    assert len(df) == 30 and df['email'].str.fullmatch('[0-9a-f]{32}').all()
    assert not any(b'example.org' in f.read_bytes() for f in store.iterdir() if f.is_file())


def test_a_streamed_snapshot_takes_the_feedback_loops_extra_rows_as_a_part(redis, tmp_path):
    from mlnb.streams import stream_snapshot
    url = source('redis', redis, f'extra{random.randrange(10**6)}')
    produce(url, [{'x': float(i), 'c': 'ab'[i % 2], 'target': i % 2} for i in range(10)])
    pd.DataFrame({'x': [1.5, 2.5, 3.5], 'c': ['a', 'b', 'a'], 'target': [1, 0, 1]}).to_csv(tmp_path/'labels.csv', index=False)
    data = {'source': url, 'target': 'target'}
    plain = stream_snapshot(data, tmp_path/'ws', tmp_path/'run1')
    snap = stream_snapshot(data, tmp_path/'ws', tmp_path/'run2', extra=tmp_path/'labels.csv')
    assert (plain.rows, snap.rows, snap.extra) == (10, 13, 3) and snap.hash != plain.hash
    assert pd.read_parquet(snap.path)['x'].tolist()[-3:] == [1.5, 2.5, 3.5]
    assert read_manifest(tmp_path/'ws'/'streams'/store_folder('.', stream_url(url), 'mlnb').name)['rows'] == 10   # the store holds the stream's rows only
    (tmp_path/'bad.csv').write_text('x,y\n1,2\n')
    with pytest.raises(Exception, match='extra rows file .*bad.csv has columns x, y'): stream_snapshot(data, tmp_path/'ws', tmp_path/'run3', extra=tmp_path/'bad.csv')
