"""mlnb in JupyterLab for real: JupyterLab on loopback with mlnb's server extension and its prebuilt sidebar (mlnb/labextension),
headless Debian chromium through Playwright (nothing downloaded). The API answers only with Jupyter's token or login cookie and its
XSRF token; the states it shows are what `mlnb run` then does; a background run can be cancelled; in the browser, an edit to the train
notebook turns train and evaluate stale, "run from here" re-runs only those, a failing stage shows failed with its cell, promote and
rollback move the champion. Screenshots: tests/artifacts/lab_*.png."""
import os, re, secrets, shutil, signal, subprocess, sys, time
from urllib.parse import urljoin
from pathlib import Path
import pytest, requests
from conftest import mlnb, wait_for
from mlnb.core import free_port

CHROMIUM = '/usr/bin/chromium'
ARTIFACTS = Path(__file__).parent/'artifacts'
EXTENSION = Path(__file__).parents[1]/'mlnb'/'labextension'
CONFIG = Path(__file__).parents[1]/'labextension'/'jupyter-config'/'mlnb.json'
SECONDS = 1000                  # Playwright counts milliseconds



def sources_hash(folder:Path) -> str:
    "SHA-256 of the sidebar's sources, as labextension/scripts/stamp.js writes it beside the build."
    import hashlib
    h = hashlib.sha256()
    for d in ('src', 'style'):
        for f in sorted(os.listdir(folder/d)): h.update(f'{d}/{f}\n'.encode()); h.update((folder/d/f).read_bytes())
    return h.hexdigest()


@pytest.mark.timeout(10)
def test_shipped_build_matches_its_sources():
    "The prebuilt sidebar in mlnb/labextension was built from the TypeScript and CSS in labextension/ as they are now."
    assert (EXTENSION/'package.json').is_file() and list((EXTENSION/'static').glob('remoteEntry.*.js'))
    assert (EXTENSION/'source.sha256').read_text().strip() == sources_hash(CONFIG.parents[1]), \
        "labextension/src or style changed since the build: cd labextension && jlpm install && jlpm build"


def store_of(settings:Path):
    from mlnb.config import load_project
    from mlnb.store import Store
    return Store(load_project(settings).store_url)


def save_model_of(s:Path) -> str:
    "Save the latest run's model of project `s` in a process of its own (BentoML's home is set once per process, and other tests load it for theirs); its tag."
    code = "import sys; from mlnb.config import load_project; from mlnb.registry import save_model; print(save_model(load_project(sys.argv[1])).tag)"
    return subprocess.run([sys.executable, '-c', code, str(s)], capture_output=True, text=True, check=True, timeout=300).stdout.split()[-1]

@pytest.fixture(scope='module')
def shop(tmp_path_factory):
    "A demo project (150 rows) run once, with two packaged models: champion (cv=5) and challenger (cv=3, the same final model)."
    root = tmp_path_factory.mktemp('lab')/'root'
    s = root/'shop'/'settings.ini'
    mlnb('new', s.parent)
    s.write_text(s.read_text().replace('[stage:ingest]\n', '[stage:ingest]\nparams = sample=150\n'))
    mlnb('run', cwd=s.parent)
    save_model_of(s)
    mlnb('run', '--params', 'train.cv=3', cwd=s.parent)
    save_model_of(s)
    return root, s


@pytest.fixture(scope='module')
def lab(shop, tmp_path_factory):
    "JupyterLab on a free loopback port serving the folder of the project, with mlnb's server extension and sidebar; stopped, kernels and all."
    import psutil
    root, s = shop
    home = tmp_path_factory.mktemp('jupyter')
    (home/'config'/'jupyter_server_config.d').mkdir(parents=True)
    shutil.copy(CONFIG, home/'config'/'jupyter_server_config.d'/'mlnb.json')          # as the package installs it
    (home/'data'/'labextensions').mkdir(parents=True)
    (home/'data'/'labextensions'/'mlnb-lab').symlink_to(EXTENSION)                     # the prebuilt extension
    news = home/'settings'/'@jupyterlab'/'apputils-extension'
    news.mkdir(parents=True)
    (news/'notification.jupyterlab-settings').write_text('{"fetchNews": "false", "checkForUpdates": false}')
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, 'JUPYTER_CONFIG_DIR': str(home/'config'), 'JUPYTER_DATA_DIR': str(home/'data'),
           'JUPYTER_RUNTIME_DIR': str(home/'runtime'), 'PATH': f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    log = open(home/'jupyter.log', 'w')
    proc = subprocess.Popen([sys.executable, '-m', 'jupyterlab', '--no-browser', '--allow-root', '--LabApp.extension_manager=readonly',
                             '--ServerApp.ip=127.0.0.1', f'--ServerApp.port={port}', '--ServerApp.port_retries=0',
                             f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={root}',
                             f'--LabApp.user_settings_dir={home/"settings"}', f'--LabApp.workspaces_dir={home/"workspaces"}'],
                            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f'http://127.0.0.1:{port}'
    auth = {'Authorization': f'token {token}'}
    try:
        deadline = time.time() + 90
        while True:
            if proc.poll() is not None: raise RuntimeError(f"jupyter lab exited with {proc.returncode}:\n{(home/'jupyter.log').read_text()}")
            try:
                if requests.get(f'{url}/api/status', headers=auth, timeout=5).ok: break
            except requests.ConnectionError: pass
            if time.time() > deadline: raise RuntimeError(f"jupyter lab did not answer in 90 s:\n{(home/'jupyter.log').read_text()}")
            time.sleep(0.3)
        yield url, token, root, s
    finally:
        kids = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
        if proc.poll() is None: os.killpg(proc.pid, signal.SIGTERM)
        try: proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        for k in kids:
            try: k.kill()
            except psutil.NoSuchProcess: pass
        log.close()


def get(lab, route:str, **params):
    url, token, *_ = lab
    r = requests.get(f'{url}/mlnb/{route}', params=params, headers={'Authorization': f'token {token}'}, timeout=30)
    assert r.ok, (r.status_code, r.text)
    return r.json()


def post(lab, route:str, body:dict, ok:bool=True):
    url, token, *_ = lab
    r = requests.post(f'{url}/mlnb/{route}', json=body, headers={'Authorization': f'token {token}'}, timeout=60)
    if ok: assert r.ok, (r.status_code, r.text)
    return r


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_api_auth_states_and_cancel(lab):
    "Jupyter's auth and XSRF guard the routes; the states come fast and match the store; a background run is cancelled cleanly."
    import psutil
    url, token, root, s = lab
    assert requests.get(f'{url}/mlnb/state', params={'path': 'shop'}, timeout=10).status_code == 403       # no token, no cookie
    web = requests.Session()
    assert web.get(f'{url}/lab?token={token}', timeout=30).ok                                             # the login cookie and _xsrf
    assert web.get(f'{url}/mlnb/state', params={'path': 'shop'}, timeout=10).ok
    assert web.post(f'{url}/mlnb/rollback', json={'path': 'shop'}, timeout=10).status_code == 403          # cookie without XSRF token
    # the states: computed by the runner's own planning, for the demo well under 200 ms, no kernel
    times = []
    for _ in range(5):
        st = get(lab, 'state', path='shop/pipeline/train.ipynb')
        times.append(st['ms'])
    assert [(x['stage'], x['state']) for x in st['stages']] == [(n, 'up to date') for n in ('ingest', 'validate', 'train', 'evaluate')]
    assert sorted(times)[2] < 200, times
    print(f"states of the demo in {sorted(times)[2]} ms (median of 5: {times})")
    assert get(lab, 'state', path='shop')['settings'] == 'shop/settings.ini'
    r = requests.get(f'{url}/mlnb/state', params={'path': '../..'}, headers={'Authorization': f'token {token}'}, timeout=10)
    assert r.status_code == 400 and 'outside the folder' in r.json()['message']
    r = post(lab, 'jobs', {'path': 'shop', 'stage': 'nope'}, ok=False)
    assert r.status_code == 400 and "no stage 'nope'" in r.json()['message']
    models = get(lab, 'models', path='shop')
    assert models['aliases']['champion']['tag'] and models['aliases']['challenger']['tag']
    r = post(lab, 'rollback', {'path': 'shop'}, ok=False)                                                  # the first champion has none before it
    assert r.status_code == 409 and 'nothing to roll back' in r.json()['message']
    runs = get(lab, 'runs', path='shop')
    assert [r['status'] for r in runs] == ['succeeded', 'succeeded'] and runs[0]['stages']['validate']['report']
    auth = {'Authorization': f'token {token}'}
    page = requests.get(f"{url}/mlnb/files/{st['stages'][2]['executed']}", headers=auth, timeout=60)
    assert page.ok and 'text/html' in page.headers['Content-Type'] and 'mlnb_context' in page.text          # the executed notebook, rendered
    assert requests.get(f'{url}/mlnb/files/shop/settings.ini', headers=auth, timeout=10).status_code == 404   # only the project's workspace
    report = requests.get(f"{url}/mlnb/files/{runs[0]['stages']['validate']['report']}", headers=auth, timeout=10)
    docs = requests.get(urljoin(report.url, re.search(r"href='(data_docs/[^']+)'", report.text).group(1)), headers=auth, timeout=10)
    assert docs.ok and 'text/html' in docs.headers['Content-Type']                                         # the report's Data Docs page...
    css = requests.get(urljoin(docs.url, re.search(r'href="([^"]+bootstrap\.min\.css)"', docs.text).group(1)), headers=auth, timeout=10)
    assert css.ok and css.headers['Content-Type'].startswith('text/css')                                   # ...and its styles, by their relative links
    # a run of everything from ingest, cancelled while ingest runs: the run is interrupted, no kernel is left, nothing stale
    job = post(lab, 'jobs', {'path': 'shop', 'from': 'ingest'}).json()
    assert post(lab, 'jobs', {'path': 'shop'}, ok=False).status_code == 409                                # one run per project at a time
    wait_for(lambda: get(lab, 'state', path='shop')['stages'][0]['state'] == 'running', timeout=60)
    kids = psutil.Process(job['pid']).children(recursive=True)                                          # its zygote and kernel
    assert kids
    j = requests.delete(f"{url}/mlnb/jobs/{job['id']}", headers={'Authorization': f'token {token}'}, timeout=10).json()
    assert j['status'] in ('running', 'cancelled')
    wait_for(lambda: get(lab, f"jobs/{job['id']}")['status'] == 'cancelled', timeout=60)
    assert store_of(s).list_runs(1)[0]['status'] == 'interrupted'
    time.sleep(1)
    assert not [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]
    assert {x['state'] for x in get(lab, 'state', path='shop')['stages']} == {'up to date'}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sidebar_in_jupyterlab(lab):
    """The sidebar shows the DAG up to date; an edit saved in the train notebook turns train and evaluate stale; run from here re-runs only
    those; a failing stage shows failed with its cell; promote and rollback move the champion."""
    if not os.access(CHROMIUM, os.X_OK): pytest.skip(f"{CHROMIUM} missing: `make chromium` installs Debian's chromium")
    from playwright.sync_api import sync_playwright
    url, token, root, s = lab
    st = store_of(s)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS/'lab_failure.png').unlink(missing_ok=True)
    row = lambda page, n: page.locator(f'.mlnb-stage-row[data-stage="{n}"]')
    def states(page, want:dict, timeout=120):
        for n, v in want.items(): page.locator(f'.mlnb-stage-row[data-stage="{n}"][data-state="{v}"]').wait_for(timeout=timeout * SECONDS)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=['--disable-dev-shm-usage'])
        page = browser.new_page(viewport={'width': 1500, 'height': 1000})
        page.set_default_timeout(60 * SECONDS)
        try:
            page.goto(f'{url}/lab/tree/shop/pipeline/train.ipynb?token={token}')
            page.wait_for_selector('.jp-NotebookPanel .jp-Cell', timeout=90 * SECONDS)
            page.locator('.lm-TabBar-tab[data-id="mlnb-pipeline"]').click()
            # the demo's DAG, all up to date, in the graph and the list; the notebook's toolbar says so too
            states(page, dict.fromkeys(('ingest', 'validate', 'train', 'evaluate'), 'up to date'), timeout=60)
            assert page.locator('svg.mlnb-dag g.mlnb-node[data-state="up to date"]').count() == 4
            assert page.locator('svg.mlnb-dag path.mlnb-edge').count() == 4               # ingest->validate, ingest->train, validate->train, train->evaluate
            page.locator('.mlnb-toolbar-state[data-state="up to date"]').wait_for()
            page.screenshot(path=str(ARTIFACTS/'lab_up_to_date.png'))

            # an edit in the train notebook, saved: train and evaluate turn stale (code, upstream); the others stay up to date
            cell = page.locator('.jp-NotebookPanel .jp-CodeCell .cm-content').last
            cell.click()
            page.keyboard.press('Control+End')
            page.keyboard.type("\nprint('edited in JupyterLab')")
            page.keyboard.press('Control+s')
            states(page, {'train': 'stale', 'evaluate': 'stale', 'ingest': 'up to date', 'validate': 'up to date'}, timeout=8)   # the save refreshed it (idle polls are 15 s apart)
            assert 'code' in row(page, 'train').locator('.mlnb-why').inner_text()
            assert 'upstream' in row(page, 'evaluate').locator('.mlnb-why').inner_text()
            page.locator('.mlnb-toolbar-state[data-state="stale"]', has_text='train: stale').wait_for(timeout=30 * SECONDS)
            page.screenshot(path=str(ARTIFACTS/'lab_stale.png'))

            # run from here: the job's progress shows, train and evaluate run (only they), and turn up to date
            before = {r['id'] for r in st.list_runs(50)}
            row(page, 'train').locator('button.mlnb-run-from').click()
            page.locator('.mlnb-job').first.wait_for(timeout=30 * SECONDS)
            try:
                page.locator('.mlnb-stage-row[data-state="running"]').first.wait_for(timeout=60 * SECONDS)
                page.screenshot(path=str(ARTIFACTS/'lab_running.png'))
            except Exception: pass                                                   # a fast machine may finish before a poll sees it
            states(page, dict.fromkeys(('ingest', 'validate', 'train', 'evaluate'), 'up to date'), timeout=180)
            page.locator('.mlnb-job[data-status="succeeded"]').wait_for(timeout=30 * SECONDS)
            page.locator('.mlnb-toolbar-state[data-state="up to date"]', has_text='train').wait_for(timeout=10 * SECONDS)   # the toolbar follows
            new = [r for r in st.list_runs(50, stages=True) if r['id'] not in before]
            assert len(new) == 1
            assert {n: x['status'] for n, x in new[0]['stages'].items()} == {'ingest': 'cached', 'validate': 'cached', 'train': 'done', 'evaluate': 'done'}
            page.locator(f'.mlnb-runs tr[data-run="{new[0]["id"]}"]').wait_for(timeout=30 * SECONDS)

            # a failing stage: evaluate raises in a new last cell; run it from the sidebar: failed, with its cell and error
            import nbformat
            ev = s.parent/'pipeline'/'evaluate.ipynb'
            original = ev.read_bytes()
            nb = nbformat.read(ev, as_version=4)
            nb.cells.append(nbformat.v4.new_code_cell("raise RuntimeError('broken on purpose')"))
            nbformat.write(nb, ev)
            cells = len(nb.cells)
            page.locator('.mlnb-stage-row[data-stage="evaluate"][data-state="stale"]').wait_for(timeout=30 * SECONDS)
            row(page, 'evaluate').locator('button.mlnb-run-stage').click()
            states(page, {'evaluate': 'failed'}, timeout=180)
            page.locator('.mlnb-job[data-status="failed"]').wait_for(timeout=60 * SECONDS)
            err = row(page, 'evaluate').locator('.mlnb-error').inner_text()
            assert 'RuntimeError: broken on purpose' in err and f'cell {cells}' in err, err        # papermill's executed copy has one cell more
            assert page.locator('svg.mlnb-dag g.mlnb-node[data-stage="evaluate"][data-state="failed"]').count() == 1
            page.screenshot(path=str(ARTIFACTS/'lab_failed.png'))
            ev.write_bytes(original)                                                 # fixed: evaluate is up to date again (its earlier outputs)
            page.locator('button.mlnb-refresh').click()
            states(page, {'evaluate': 'up to date'}, timeout=30)

            # promote the challenger through the gate, then roll back: the champion moves both ways
            champ, chall = st.alias('champion'), st.alias('challenger')
            page.locator('button.mlnb-promote').click()
            page.locator('.mlnb-models tr[data-alias="champion"] .mlnb-tag', has_text=chall).wait_for(timeout=60 * SECONDS)
            assert st.alias('champion') == chall and 'promoted' in page.locator('.mlnb-message').inner_text()
            page.screenshot(path=str(ARTIFACTS/'lab_promoted.png'))
            page.locator('button.mlnb-rollback').click()
            page.locator('.mlnb-models tr[data-alias="champion"] .mlnb-tag', has_text=champ).wait_for(timeout=60 * SECONDS)
            assert st.alias('champion') == champ and 'rolled back' in page.locator('.mlnb-message').inner_text()
            page.screenshot(path=str(ARTIFACTS/'lab_rolled_back.png'))

            # a worse challenger (one boosting iteration: accuracy 0.63 against 0.93): the gate refuses it with its reason
            mlnb('run', '--params', "train.model_params={'max_iter': 1}", cwd=s.parent)
            bad = save_model_of(s)
            page.locator('button.mlnb-refresh').click()
            page.locator('.mlnb-models tr[data-alias="challenger"] .mlnb-tag', has_text=bad).wait_for(timeout=30 * SECONDS)
            page.locator('button.mlnb-promote').click()
            page.locator('.mlnb-message', has_text='not promoting').wait_for(timeout=60 * SECONDS)
            assert 'worse than champion' in page.locator('.mlnb-message').inner_text() and st.alias('champion') == champ
            page.screenshot(path=str(ARTIFACTS/'lab_gate_refused.png'))

            # the last run of a stage: its executed copy, rendered by the server in a page of its own
            with page.context.expect_page() as opened:
                row(page, 'train').locator('button.mlnb-open-executed').click()
            executed = opened.value
            executed.wait_for_load_state()
            assert 'mlnb_context' in executed.content() and 'edited in JupyterLab' in executed.content()
            executed.close()

            # a click on a stage in the graph opens its notebook; its toolbar shows its state
            page.locator('svg.mlnb-dag g.mlnb-node[data-stage="validate"]').click()
            page.locator('.lm-TabBar-tab', has_text='validate.ipynb').wait_for(timeout=30 * SECONDS)
            page.locator('.jp-NotebookPanel:visible .mlnb-toolbar-state[data-state="up to date"]', has_text='validate').wait_for(timeout=30 * SECONDS)
        except Exception:
            page.screenshot(path=str(ARTIFACTS/'lab_failure.png'))
            raise
        finally:
            browser.close()
