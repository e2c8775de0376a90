"""A real browser: JupyterLab on loopback runs a notebook showing `mlnb.monitor()`, `mlnb.label()` and `mlnb.abtest()` in headless
Chromium (Debian's, driven by Playwright: nothing is downloaded); a label is clicked and one typed, the feedback rows are read back
from the store, the dashboard shows them on its own, and the A/B button rolls back. Screenshot: tests/artifacts/browser_widgets.png."""
import json, os, secrets, signal, socket, subprocess, sys, time, urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
import pytest
from conftest import wait_for

CHROMIUM = '/usr/bin/chromium'
ARTIFACTS = Path(__file__).parent/'artifacts'
SECONDS = 1000                  # Playwright counts milliseconds
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300),
              pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"{CHROMIUM} missing: `make chromium` installs Debian's chromium")]


def logged_project(root:Path, n:int=60) -> Path:
    "A project whose SQLite store holds `n` logged predictions of the last 10 minutes, a drift report and an alert (no server)."
    import numpy as np, pandas as pd
    from mlnb.config import load_project, new_project
    from mlnb.alerting import alert
    from mlnb.monitoring import drift_report, reference_stats
    from mlnb.store import Store, drift_reports, predictions
    s = new_project(root/'shop'); st = Store(load_project(s).store_url)
    rng, now = np.random.default_rng(0), datetime.now(timezone.utc).replace(tzinfo=None)
    p = rng.uniform(0.05, 0.95, n)
    st.write(predictions.insert(), [dict(request_id=f'req-{i:03d}', model_tag='shop:v1', inputs={'radius': float(rng.normal(14, 3)), 'texture': float(rng.normal(19, 4))},
                                         output={'label': int(p[i] > .5), 'probabilities': {'0': float(1 - p[i]), '1': float(p[i])}},
                                         latency_ms=float(rng.lognormal(1.5, .4)), created=now - timedelta(seconds=10 * (n - i))) for i in range(n)])
    feats = [{'name': 'radius', 'kind': 'float'}, {'name': 'texture', 'kind': 'float'}]
    ref = reference_stats(pd.DataFrame({'radius': rng.normal(14, 3, 400), 'texture': rng.normal(19, 4, 400)}), feats)
    rep = drift_report(ref, pd.DataFrame({'radius': rng.normal(18, 3, 300), 'texture': rng.normal(19, 4, 300)})); rep.model_tag = 'shop:v1'
    st.write(drift_reports.insert().values(model_tag='shop:v1', created=now, report=rep.to_dict()))
    alert(s, 'warning', 'drift', 'radius drifted: PSI past critical')
    return s


def ab_project(root:Path, n:int=40) -> Path:
    "A project whose champion `ab:v1` replaced `ab:v0`; `n` labelled predictions each, v0 right on all, v1 on a quarter."
    from mlnb.config import load_project, new_project
    from mlnb.feedback import add_label
    from mlnb.store import Store, predictions
    s = new_project(root/'ab'); st = Store(load_project(s).store_url)
    st.set_alias('champion', 'ab:v0'); st.set_alias('champion', 'ab:v1')
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    st.write(predictions.insert(), [dict(request_id=f'{t}-{i}', model_tag=f'ab:{t}', inputs={'x': float(i)}, latency_ms=5.0, created=now,
                                         output={'label': 1, 'probabilities': {'0': 0.3, '1': 0.7}}) for t in ('v0', 'v1') for i in range(n)])
    for i in range(n): add_label(s, f'v0-{i}', 1, source='api'); add_label(s, f'v1-{i}', int(i < n // 4), source='api')
    return s


def notebook(path:Path):
    "The notebook the browser runs: the dashboard and the labeller of the project in ./shop."
    import mlnb
    setup = 'import mlnb'
    if not {'monitor', 'label', 'abtest'} <= set(getattr(mlnb, '_API', {})):        # until mlnb/__init__ maps the widget names
        setup += "\nimport mlnb.widgets as _w\nmlnb.monitor, mlnb.label, mlnb.abtest = _w.monitor, _w.label, _w.abtest"
    cells = [setup, "mlnb.monitor('shop/settings.ini', every=2)", "mlnb.label('shop/settings.ini', n=5)", "mlnb.abtest('ab/settings.ini')"]
    nb = {'nbformat': 4, 'nbformat_minor': 5, 'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}},
          'cells': [{'cell_type': 'code', 'id': f'c{i}', 'metadata': {}, 'execution_count': None, 'outputs': [], 'source': src} for i, src in enumerate(cells)]}
    path.write_text(json.dumps(nb))


def free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def api(url:str, token:str, path:str, method:str='GET'):
    "A JSON answer of the Jupyter server's REST API."
    req = urllib.request.Request(f'{url}{path}', method=method, headers={'Authorization': f'token {token}'})
    with urllib.request.urlopen(req, timeout=5) as r: body = r.read()
    return json.loads(body) if body else None


@pytest.fixture
def lab(tmp_path):
    "JupyterLab serving a temp folder with the notebook and the project; stopped, kernels and all, afterwards."
    import psutil
    root, home = tmp_path/'root', tmp_path/'jupyter'
    root.mkdir()
    store, ab = logged_project(root), ab_project(root); notebook(root/'widgets.ipynb')
    news = home/'settings'/'@jupyterlab'/'apputils-extension'
    news.mkdir(parents=True); (news/'notification.jupyterlab-settings').write_text('{"fetchNews": "false", "checkForUpdates": false}')
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, 'JUPYTER_CONFIG_DIR': str(home/'config'), 'JUPYTER_DATA_DIR': str(home/'data'),
           'JUPYTER_RUNTIME_DIR': str(home/'runtime'), 'PATH': f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    log = open(tmp_path/'jupyter.log', 'w')
    proc = subprocess.Popen([sys.executable, '-m', 'jupyterlab', '--no-browser', '--allow-root', '--LabApp.extension_manager=readonly', '--ServerApp.ip=127.0.0.1', f'--ServerApp.port={port}',
                             '--ServerApp.port_retries=0', f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={root}',
                             f'--LabApp.user_settings_dir={home/"settings"}', f'--LabApp.workspaces_dir={home/"workspaces"}'],
                            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f'http://127.0.0.1:{port}'
    try:
        deadline = time.time() + 90
        while True:
            if proc.poll() is not None: raise RuntimeError(f"jupyter lab exited with {proc.returncode}:\n{(tmp_path/'jupyter.log').read_text()}")
            try: api(url, token, '/api/status'); break
            except OSError:
                if time.time() > deadline: raise RuntimeError(f"jupyter lab did not answer in 90 s:\n{(tmp_path/'jupyter.log').read_text()}")
                time.sleep(0.3)
        yield url, token, store, ab
    finally:
        kids = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
        try:
            for k in api(url, token, '/api/kernels') or []: api(url, token, f"/api/kernels/{k['id']}", 'DELETE')
        except OSError: pass
        if proc.poll() is None: os.killpg(proc.pid, signal.SIGTERM)
        try: proc.wait(timeout=20)
        except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL); proc.wait(timeout=10)
        for k in kids:                                             # kernels run in sessions of their own
            try: k.kill()
            except psutil.NoSuchProcess: pass
        log.close()
        assert proc.poll() is not None and not [k for k in kids if alive(k)], "jupyter lab or its kernels still running"


def alive(p) -> bool:
    "Whether psutil process `p` still runs (a zombie does not)."
    import psutil
    try: return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess: return False


def widget_labels(store:Path) -> list[dict]:
    "Feedback rows the widget wrote."
    import sqlalchemy as sa
    from mlnb.config import load_project
    from mlnb.store import Store, feedback
    st = Store(load_project(store).store_url)
    return st.read(sa.select(feedback).where(feedback.c.source == 'widget').order_by(feedback.c.created))


def champion(settings:Path) -> str|None:
    from mlnb.config import load_project
    from mlnb.store import Store
    return Store(load_project(settings).store_url).alias('champion')


def test_widgets_in_jupyterlab(lab):
    "Run All in JupyterLab shows the three widgets live; a click and a key label records, the dashboard follows, the A/B button rolls back."
    from playwright.sync_api import sync_playwright
    url, token, store, ab = lab
    ARTIFACTS.mkdir(exist_ok=True); (ARTIFACTS/'browser_failure.png').unlink(missing_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=['--disable-dev-shm-usage'])
        page = browser.new_page(viewport={'width': 1400, 'height': 1700})
        page.set_default_timeout(60 * SECONDS)
        try:
            page.goto(f'{url}/lab/tree/widgets.ipynb?token={token}')
            page.wait_for_selector('.jp-NotebookPanel .jp-Cell', timeout=90 * SECONDS)
            # the kernel is up and idle before Run All
            wait_for(lambda: any(s['kernel']['execution_state'] == 'idle' for s in api(url, token, '/api/sessions')), timeout=90)
            page.locator('.lm-MenuBar-itemLabel', has_text='Run').first.click()
            page.locator('.lm-Menu-itemLabel', has_text='Run All Cells').first.click()

            # the dashboard: a widget (not text), with its latency chart, drift table and alert, refreshing itself
            dash = page.locator('.mlnb-monitor')
            dash.locator('svg.mlnb-chart').first.wait_for(timeout=90 * SECONDS)
            assert dash.locator('table.mlnb-drift tr', has_text='radius').first.inner_text().split()[1] == 'critical'
            assert 'radius drifted' in dash.locator('table.mlnb-alerts').inner_text()
            status = dash.locator('.widget-html', has_text='refreshed').first
            first = status.inner_text()
            wait_for(lambda: status.inner_text() != first, timeout=20)

            # the labeller: click the button of class 1 for the least certain record
            labeller = page.locator('.mlnb-label')
            labeller.locator('.mlnb-record code').first.wait_for(timeout=60 * SECONDS)
            rid = labeller.locator('.mlnb-record code').first.inner_text()
            labeller.locator('button', has_text='2: 1').click()
            rows = wait_for(lambda: widget_labels(store), timeout=30)
            assert [(r['request_id'], r['label']) for r in rows] == [(rid, 1)]
            labeller.get_by_text('1 labelled').wait_for()

            # and one by key: the key box took the focus after the click, so 1 labels the next record with class 0
            rid2 = labeller.locator('.mlnb-record code').first.inner_text()
            assert rid2 != rid
            keys = labeller.locator('input[type=text]')
            wait_for(lambda: keys.evaluate('e => e === document.activeElement'), timeout=20)
            page.keyboard.press('1')
            rows = wait_for(lambda: len(widget_labels(store)) == 2 and widget_labels(store), timeout=30)
            assert [(r['request_id'], r['label']) for r in rows] == [(rid, 1), (rid2, 0)]
            labeller.get_by_text('2 labelled').wait_for()

            # the dashboard picks the labels up on its own: accuracy appears at a following refresh
            dash.get_by_text('2 labels').wait_for(timeout=30 * SECONDS)
            assert dash.locator('svg.mlnb-chart').count() == 2

            # the A/B test: the champion is clearly worse than the model before it; one click rolls back
            abtest = page.locator('.mlnb-abtest')
            abtest.locator('button', has_text='roll back').click()
            abtest.get_by_text('rolled back').first.wait_for(timeout=30 * SECONDS)
            assert champion(ab) == 'ab:v0'
            page.screenshot(path=str(ARTIFACTS/'browser_widgets.png'))
        except Exception:
            page.screenshot(path=str(ARTIFACTS/'browser_failure.png'))
            raise
        finally:
            browser.close()
