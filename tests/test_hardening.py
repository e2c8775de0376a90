"""Issue 14, items 3, 4, 6, 8 and 13, probed as a user (or bad luck) would: through the `mlnb` command, with real kernels,
a real HTTP API that checks credentials, real SQLite files damaged on disk, SIGTERM and SIGKILL."""
import base64, json, os, signal, sqlite3, subprocess, textwrap, time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit
import pytest, sqlalchemy as sa
from conftest import MLNB, http_server, mlnb
from mlnb.config import load_project, new_project
from mlnb.store import Store, predictions, runs, stage_runs, utcnow


def one_line_exit_2(r, *expected):
    "The CLI's answer to a user's mistake: exit status 2, one line on stderr holding each of `expected`, no traceback."
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    assert all(e in lines[0] for e in expected), lines[0]
    assert 'Traceback' not in r.stderr and 'Exception ignored' not in r.stderr
    return lines[0]


def set_key(settings, section, key, value):
    "Add `key = value` at the top of `[section]` of the settings.ini at `settings` (whatever its comments say)."
    settings.write_text(settings.read_text().replace(f'[{section}]\n', f'[{section}]\n{key} = {value}\n', 1))


def files_holding(folder, *secrets) -> list:
    "Every file under `folder` (the store, its WAL, snapshots, records, executed notebooks, logs) whose bytes hold one of `secrets`."
    return [str(p) for p in Path(folder).rglob('*') if p.is_file() and any(s.encode() in p.read_bytes() for s in secrets)]


# ---- item 3: the store's password is never printed ------------------------------------------------------------------------

def test_store_password_is_redacted_in_every_message(tmp_path):
    s = new_project(tmp_path/'p')
    set_key(s, 'project', 'store', 'postgresql+psycopg://alice:S3cretPW_store@127.0.0.1:1/mlnb')
    for args in (['runs'], ['run'], ['data']):
        r = mlnb(*args, '-p', s, check=False)
        line = one_line_exit_2(r, 'store postgresql+psycopg://alice:***@127.0.0.1:1/mlnb: cannot open')
        assert 'S3cretPW_store' not in r.stdout + r.stderr, line


# ---- item 4: credentials in a data source URL are never recorded ----------------------------------------------------------

USER, PASSWORD, TOKEN = 'probe', 'PassW0rd_src', 'Tok3n_src_x'

class _AuthApi(BaseHTTPRequestHandler):
    "Two pages of records, only for Basic probe:PassW0rd_src and ?token=Tok3n_src_x; the next link carries the token, not the password."
    rows = [{'id': i, 'x': i * 0.5, 'y': i % 2} for i in range(1, 41)]
    def log_message(self, *a): pass
    def do_GET(self):
        u = urlsplit(self.path); q = {k: v[0] for k, v in parse_qs(u.query).items()}
        auth = base64.b64encode(f'{USER}:{PASSWORD}'.encode()).decode()
        if self.headers.get('Authorization') != f'Basic {auth}' or q.get('token') != TOKEN: return self._send(401, b'{"detail": "no"}')
        page = int(q.get('page', 1))
        body = {'results': self.rows[(page - 1) * 20: page * 20], 'next': f'/rows?page={page + 1}&token={TOKEN}' if page == 1 else None}
        self._send(200, json.dumps(body).encode())
    def _send(self, code, body):
        self.send_response(code); self.send_header('Content-Type', 'application/json'); self.end_headers(); self.wfile.write(body)


@pytest.fixture(scope='module')
def auth_api():
    with http_server(_AuthApi) as address: yield address


def test_source_credentials_reach_the_api_but_no_record(tmp_path, auth_api):
    root = tmp_path/'p'
    literal = f'http://{USER}:{PASSWORD}@{auth_api}/rows?token={TOKEN}'                 # the probe: secrets written into settings.ini
    new_project(root, source=literal, target='y')
    mlnb('run', '--stage', 'ingest', cwd=root)
    st = Store(load_project(root).store_url)
    snap = st.read(sa.select(sa.text('source, rows FROM snapshots')))[0]
    assert snap == {'source': f'http://{USER}:***@{auth_api}/rows?token=***', 'rows': 40}   # the credentials worked, and are not kept
    assert files_holding(root/'.mlnb', PASSWORD, TOKEN) == []                         # store, stage record, Parquet footer, notebook
    st.engine.dispose()

    s = root/'settings.ini'                                                           # the documented way: ${NAME}, values elsewhere
    s.write_text(s.read_text().replace(literal, f'http://{USER}:${{SRC_PASS}}@{auth_api}/rows?token=${{SRC_TOKEN}}'))
    set_key(s, 'data', 'secrets', '.secrets.env')
    (root/'.secrets.env').write_text(f'SRC_PASS={PASSWORD}\n')
    r = mlnb('run', '--stage', 'ingest', cwd=root, check=False)
    one_line_exit_2(r, 'settings.ini, [data], source: ${SRC_TOKEN} is not set')      # before any stage, naming the missing one
    env = {**os.environ, 'SRC_TOKEN': TOKEN}
    r = subprocess.run([MLNB, 'run', '--stage', 'ingest'], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    st = Store(load_project(root).store_url)
    last = st.read(sa.select(stage_runs.c['values']).order_by(stage_runs.c.id.desc()).limit(1))[0]['values']
    assert last['snapshot']['source'] == f'http://{USER}:${{SRC_PASS}}@{auth_api}/rows?token=${{SRC_TOKEN}}'   # the references, as written
    st.engine.dispose()
    assert files_holding(root/'.mlnb', PASSWORD, TOKEN) == []


# ---- item 6: SIGTERM, SIGKILL and stale runs ------------------------------------------------------------------------------

def slow_project(root):
    "A one-stage project whose stage sleeps: a run to stop from outside."
    import nbformat
    root.mkdir(parents=True)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('mlnb_context = {}'), nbformat.v4.new_code_cell('import time; time.sleep(300)')])
    nb.cells[0].metadata['tags'] = ['parameters']
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'python3', 'language': 'python'}
    nbformat.write(nb, root/'slow.ipynb')
    (root/'settings.ini').write_text('[project]\nname = slow\n[data]\nsource = sklearn:iris\n[pipeline]\nstages = slow\n[stage:slow]\nnotebook = slow.ipynb\n')
    return root


def start_and_wait_for_stage(root):
    proc = subprocess.Popen([MLNB, 'run'], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((root/'.mlnb'/'runs').glob('*/slow.ipynb')): time.sleep(0.3)
    time.sleep(2)
    return proc


def kernels_in(root) -> list:
    out = subprocess.run(['pgrep', '-f', 'ipykernel'], capture_output=True, text=True).stdout.split()
    def cwd(p):
        try: return os.readlink(f'/proc/{p}/cwd')
        except OSError: return None
    return [p for p in out if cwd(p) == str(root)]


def the_run(root):
    st = Store(load_project(root).store_url)
    run = st.list_runs(1, stages=True)[0]                  # list_runs is what `mlnb runs` and the runs widget call
    st.engine.dispose()
    return run


def test_sigterm_is_handled_as_ctrl_c(tmp_path):
    root = slow_project(tmp_path/'p')
    proc = start_and_wait_for_stage(root)
    proc.send_signal(signal.SIGTERM)                     # to the runner alone, as `kill PID` or systemd does
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and 'mlnb: interrupted (SIGTERM)' in err and 'Traceback' not in err, (out, err)   # 128 + 15, as a supervisor expects
    run = the_run(root)
    assert run['status'] == 'interrupted' and 'SIGTERM' in run['error'], run
    assert run['params']['runner']['pid'] == proc.pid and run['stages']['slow']['status'] == 'interrupted'
    time.sleep(1)
    assert kernels_in(root) == [], 'a kernel was left running'


def test_a_killed_runner_is_marked_interrupted_at_the_next_command(tmp_path):
    root = slow_project(tmp_path/'p')
    proc = start_and_wait_for_stage(root)
    proc.kill(); proc.communicate(timeout=30)
    st = Store(load_project(root).store_url)
    assert st.read(sa.select(runs.c.status))[0]['status'] == 'running'               # nobody could write its end
    st.engine.dispose()
    r = mlnb('runs', cwd=root)
    assert 'interrupted' in r.stdout and 'runner process ended' in r.stdout, r.stdout
    run = the_run(root)
    assert run['status'] == 'interrupted' and run['stages']['slow']['status'] == 'interrupted'
    deadline = time.time() + 30                                                        # its zygote ends its kernels when it sees the runner gone
    while kernels_in(root) and time.time() < deadline: time.sleep(0.5)
    assert kernels_in(root) == []


# ---- item 8: a damaged store is refused, in one line ----------------------------------------------------------------------

def store_with_history(root, rows=3000):
    "A project whose store holds a run and `rows` logged predictions (a few hundred KB), and its run folder."
    s = new_project(root)
    p = load_project(s); st = Store(p.store_url)
    rid = st.start_run('p'); st.finish_run(rid, 'succeeded')
    st.write(predictions.insert(), [dict(request_id=f'r{i}', model_tag='m:1', inputs={'x': i, 'pad': 'x' * 40}, output={'label': 1},
                                         latency_ms=1.0, created=utcnow()) for i in range(rows)])
    (p.workspace/'runs'/rid).mkdir(parents=True)
    st.engine.dispose()
    db = p.workspace/'mlnb.db'
    with sqlite3.connect(db) as c: c.execute('PRAGMA wal_checkpoint(TRUNCATE)')
    return s, db


@pytest.mark.parametrize('damage', ['empty', 'garbage header', 'truncated', 'garbage in the middle', 'missing'])
def test_damaged_store_is_refused_and_left_as_it_was(tmp_path, damage):
    s, db = store_with_history(tmp_path/'p')
    good = db.read_bytes()
    assert len(good) > 100_000
    bad = {'empty': b'', 'garbage header': os.urandom(512) + good[512:], 'truncated': good[:len(good) * 2 // 3],
           'garbage in the middle': good[:len(good) // 2] + os.urandom(8192) + good[len(good) // 2 + 8192:], 'missing': None}[damage]
    db.unlink()
    if bad is not None: db.write_bytes(bad)
    for args in (['runs'], ['run']):
        r = mlnb(*args, '-p', s, check=False)
        one_line_exit_2(r, f'store {db} is', 'history is gone' if damage in ('empty', 'missing') else 'damaged')
        assert (db.read_bytes() if db.exists() else None) == bad                        # not re-created, not repaired over
    db.write_bytes(good)
    assert 'succeeded' in mlnb('runs', '-p', s).stdout                                  # restored from a backup: back as it was


def test_integrity_check_runs_once_per_change_of_the_file(tmp_path, monkeypatch):
    import mlnb.store as store
    s, db = store_with_history(tmp_path/'p', rows=10)
    calls = []
    real = store._quick_check
    monkeypatch.setattr(store, '_quick_check', lambda f: calls.append(f) or real(f))
    monkeypatch.setattr(store, '_CHECKED', {})
    url = load_project(s).store_url
    for _ in range(5): Store(url).engine.dispose()                                     # a widget refreshing: one check
    assert len(calls) == 1 and json.loads((db.parent/'.mlnb.db.checked').read_text())[0] == db.stat().st_size
    monkeypatch.setattr(store, '_CHECKED', {})
    Store(url).engine.dispose()                                                        # a new process: the sidecar says it was checked
    assert len(calls) == 1
    os.utime(db, ns=(1, 1))                                                            # the file changed: checked again
    Store(url).engine.dispose()
    assert len(calls) == 2


# ---- item 13: data and config errors, each one line naming the file, column or key, exit 2 ---------------------------------

ROWS = ''.join(f'{i},{(i * 7) % 11},{i % 2}\n' for i in range(60))

def csv_project(root, text, **settings):
    "A project on data/x.csv holding `text`; its store already holds a run, which every failure must leave as it was."
    s = new_project(root, source='data/x.csv', target='y')
    (root/'data').mkdir()
    (root/'data'/'x.csv').write_bytes(text) if isinstance(text, bytes) else (root/'data'/'x.csv').write_text(text)
    st = Store(load_project(s).store_url)
    st.finish_run(st.start_run('p', run_id='earlier'), 'succeeded')
    st.engine.dispose()
    for k, v in settings.items(): set_key(s, *k.split('_', 1), v)     # section_key=value, e.g. pipeline_jobs='-3'
    return s


def earlier_run_intact(s):
    st = Store(load_project(s).store_url)
    rows = st.read(sa.select(runs.c.id, runs.c.status).where(runs.c.id == 'earlier'))
    snaps = st.read(sa.text('SELECT count(*) AS n FROM snapshots'))[0]['n']
    st.engine.dispose()
    return rows == [{'id': 'earlier', 'status': 'succeeded'}] and snaps == 0


@pytest.mark.parametrize('case,text,expected', [
    ('duplicate column names', 'a,b,a,y\n' + ''.join(f'{i},{i},{i},{i % 2}\n' for i in range(60)), ["x.csv: column name 'a' appears twice (columns 1 and 3)"]),
    ('binary file named .csv', bytes(range(256)) * 40, ['x.csv: not a CSV text file (a NUL byte at byte 0']),
])
def test_bad_file_stops_the_run_before_it_starts(tmp_path, case, text, expected):
    s = csv_project(tmp_path/'p', text)
    one_line_exit_2(mlnb('run', '-p', s, check=False), *expected)
    assert earlier_run_intact(s) and not (tmp_path/'p'/'.mlnb'/'runs').exists()


@pytest.mark.parametrize('case,text,expected', [
    ('one class', 'a,b,y\n' + ROWS.replace(',0\n', ',1\n'), ["target column 'y' of data/x.csv holds one value (1) in all 60 rows: nothing to learn"]),
    ('NaN in the target', 'a,b,y\n' + ROWS.replace('\n7,5,1\n', '\n7,5,\n'), ["target column 'y' of data/x.csv has no label in row 8"]),
    ('a word in a numeric column', 'a,b,y\n' + ROWS.replace('\n40,5,0\n', '\n40,oops,0\n'), ["column 'b' of data/x.csv holds numbers, but row 41 holds ['oops']"]),
])
def test_bad_rows_stop_the_run_at_ingest(tmp_path, case, text, expected):
    s = csv_project(tmp_path/'p', text)
    r = mlnb('run', '-p', s, check=False)
    one_line_exit_2(r, "stage 'ingest' failed", 'DataError', *expected)
    assert earlier_run_intact(s)
    assert not list((tmp_path/'p'/'.mlnb'/'runs').glob('*/ingest/snapshot.parquet'))   # no snapshot kept


def test_bad_settings_and_notebooks_are_one_line(tmp_path):
    s = csv_project(tmp_path/'jobs', 'a,b,y\n' + ROWS, pipeline_jobs='-3')
    one_line_exit_2(mlnb('run', '-p', s, check=False), f'{s}, [pipeline], jobs: expected an int from 0 up, got \'-3\'')

    s = csv_project(tmp_path/'nb', 'a,b,y\n' + ROWS)
    (tmp_path/'nb'/'pipeline'/'train.ipynb').write_text('import sklearn  # a script saved as .ipynb\n')
    one_line_exit_2(mlnb('run', '-p', s, check=False), f"{tmp_path/'nb'/'pipeline'/'train.ipynb'}: not a notebook")
    assert earlier_run_intact(s)

    s = tmp_path/'bin'/'settings.ini'; s.parent.mkdir()
    s.write_bytes(os.urandom(64) + b'\x00\xff')
    one_line_exit_2(mlnb('run', '-p', s, check=False), f'{s}: not a text file')

    s = new_project(tmp_path/'store')
    outside = tmp_path/'elsewhere'/'db'
    set_key(s, 'project', 'store', f'sqlite:///{outside}/mlnb.db')
    one_line_exit_2(mlnb('run', '-p', s, check=False), f'{s}, [project], store: the folder {outside} does not exist')
    assert not (tmp_path/'elsewhere').exists()
    s.write_text(s.read_text().replace(f'sqlite:///{outside}/mlnb.db', 'sqlite:///.mlnb/own/mlnb.db'))   # in the workspace: made as today
    assert 'no runs yet' in mlnb('runs', '-p', s).stdout and (tmp_path/'store'/'.mlnb'/'own'/'mlnb.db').exists()
