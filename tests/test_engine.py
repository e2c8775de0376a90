"""The pipeline engine with tiny notebooks in real kernels: resume, kill -9, Ctrl-C, sweeps, parallel branches, Dask."""
import os, signal, subprocess, textwrap, time
from pathlib import Path
import nbformat, pytest, sqlalchemy as sa
from conftest import MLNB, mlnb
from mlnb.config import load_project
from mlnb.store import Store, runs, stage_runs


def notebook(path, *cells):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.cells[0].metadata['tags'] = ['parameters']
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'python3', 'language': 'python'}
    nbformat.write(nb, path)

CTX = 'from mlnb.pipeline import StageContext\nctx = StageContext(mlnb_context)'

def project(root, stages, extra=''):
    "A project of tiny stages: {name: (needs, code)}; each records `k` and waits `sleep` seconds."
    root.mkdir(parents=True, exist_ok=True)
    text = f"[project]\nname = tiny\n[data]\nsource = sklearn:iris\n[pipeline]\nstages = {' '.join(stages)}\n{extra}\n"
    for n, (needs, code) in stages.items():
        notebook(root/f'{n}.ipynb', 'mlnb_context = {}\nk = 1\nsleep = 0', CTX, 'import time; time.sleep(sleep)', code,
                 f'ctx.output("{n}.txt").write_text(str(k)); ctx.record({{"k_{n}": k}})')
        text += f"[stage:{n}]\nnotebook = {n}.ipynb\nneeds = {' '.join(needs)}\n"
    (root/'settings.ini').write_text(text)
    return root

def stages_of(root, run_id=None):
    st = Store(load_project(root/'settings.ini').store_url)
    run = st.get_run(run_id) if run_id else st.read(sa.select(runs).order_by(runs.c.started.desc()))[0]
    rows = st.read(sa.select(stage_runs).where(stage_runs.c.run_id == run['id']).order_by(stage_runs.c.id))
    return run, {r['stage']: r for r in rows}


def test_failure_then_resume(tmp_path):
    root = project(tmp_path/'p', {'a': ([], ''), 'b': (['a'], 'assert not __import__("pathlib").Path("broken").exists(), "broken flag"'),
                                  'c': (['b'], '')})
    (root/'broken').touch()
    r = mlnb('run', cwd=root, check=False)
    assert r.returncode == 1 and "stage 'b' failed" in r.stderr and 'AssertionError: broken flag' in r.stderr
    run, st = stages_of(root)
    assert run['status'] == 'failed' and st['b']['status'] == 'failed' and st['b']['error_name'] == 'AssertionError'
    assert st['b']['error_cell'] is not None and 'c' not in st                   # nothing after the failure started
    nb = nbformat.read(st['b']['notebook'], as_version=4)                          # the failed notebook is kept, error shown
    assert any(o.get('output_type') == 'error' for c in nb.cells for o in c.get('outputs', []))
    assert (root/'.mlnb'/'runs'/run['id']/'b.failed').is_dir() and not (root/'.mlnb'/'runs'/run['id']/'b').exists()
    (root/'broken').unlink()
    r = mlnb('run', '--resume', run['id'], cwd=root)
    run2, st2 = stages_of(root)
    assert run2['status'] == 'succeeded'
    assert {n: s['status'] for n, s in st2.items()} == {'a': 'cached', 'b': 'done', 'c': 'done'}


def test_killed_kernel_is_reported_fast(tmp_path):
    root = project(tmp_path/'p', {'a': ([], 'import os, signal; os.kill(os.getpid(), signal.SIGKILL)')})
    t = time.time()
    r = mlnb('run', cwd=root, check=False, timeout=120)
    assert time.time() - t < 60 and r.returncode == 1, r.stderr               # reported, never a hang (kernel start included)
    assert "stage 'a' failed" in r.stderr and 'Dead' in r.stderr, r.stderr
    run, st = stages_of(root)
    assert run['status'] == 'failed' and st['a']['status'] == 'failed'


def test_ctrl_c_stops_cleanly(tmp_path):
    root = project(tmp_path/'p', {'a': ([], '')})
    notebook(root/'a.ipynb', 'mlnb_context = {}', CTX, 'import time; time.sleep(120)')
    proc = subprocess.Popen([MLNB, 'run'], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 90
    while time.time() < deadline and not list((root/'.mlnb'/'runs').glob('*/a.ipynb')): time.sleep(0.5)
    time.sleep(3)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    run, st = stages_of(root)
    assert run['status'] == 'interrupted'
    left = subprocess.run(['pgrep', '-f', 'ipykernel_launcher'], capture_output=True, text=True).stdout.split()
    assert not [p for p in left if os.path.exists(f'/proc/{p}') and os.readlink(f'/proc/{p}/cwd') == str(root)], 'a kernel was left running'


def test_sweep_fans_out_and_compares(tmp_path):
    root = project(tmp_path/'p', {'a': ([], ''), 'b': (['a'], ''), 'c': (['b'], '')})
    r = mlnb('run', '--sweep', 'b.k=1,2,3', cwd=root)
    run, st = stages_of(root)
    assert run['status'] == 'succeeded'
    assert sorted(st) == ['a', 'b@1', 'b@2', 'b@3', 'c@1', 'c@2', 'c@3']
    assert 'sweep:' in r.stdout and 'k_b' in r.stdout
    table = r.stdout.split('sweep:')[1]
    assert all(v in table for v in ('1', '2', '3'))


def test_independent_branches_run_at_once(tmp_path):
    stages = {'a': ([], ''), 'b': (['a'], ''), 'c': (['a'], ''), 'd': (['b', 'c'], '')}
    root = project(tmp_path/'p', stages)
    mlnb('run', '--jobs', '2', '--params', 'b.sleep=4', 'c.sleep=4', cwd=root)
    run, st = stages_of(root)
    b, c = st['b'], st['c']
    assert b['started'] < c['finished'] and c['started'] < b['finished'], 'b and c did not overlap'


def test_dask_local_cluster(tmp_path):
    from distributed import Client, LocalCluster
    record_parent = 'ctx.record(parent_pid=__import__("os").getppid())'     # the kernel's parent: who ran papermill
    root = project(tmp_path/'p', {'a': ([], record_parent), 'b': (['a'], record_parent)})
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
        worker_pids = set(client.run(os.getpid).values())
        mlnb('run', '--scheduler', cluster.scheduler_address, cwd=root)
    run, st = stages_of(root)
    assert run['status'] == 'succeeded' and {s['status'] for s in st.values()} == {'done'}
    assert {s['values']['parent_pid'] for s in st.values()} <= worker_pids      # the stages ran on Dask workers


def test_unreachable_scheduler_is_a_clear_error(tmp_path):
    root = project(tmp_path/'p', {'a': ([], '')})
    r = mlnb('run', '--scheduler', 'tcp://127.0.0.1:1', cwd=root, check=False, timeout=120)
    assert r.returncode == 2 and 'cannot reach the Dask scheduler' in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert not (root/'.mlnb').exists()


def test_a_stage_on_a_one_thread_dask_worker_can_use_the_cluster(tmp_path):
    "A stage run on the cluster's only worker thread submits tasks to the same cluster (as a search does): it leaves the thread pool while it runs."
    from distributed import LocalCluster
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        submit = (f'import distributed; c = distributed.Client({cluster.scheduler_address!r}, set_as_default=False); '
                  'ctx.record({"answer": c.submit(lambda: 21 * 2, pure=False).result(timeout=120)}); c.close()')
        root = project(tmp_path/'p', {'a': ([], submit)})
        mlnb('run', '--scheduler', cluster.scheduler_address, cwd=root, timeout=300)
    run, st = stages_of(root)
    assert run['status'] == 'succeeded' and Store(load_project(root/'settings.ini').store_url).get_run()['metrics']['answer'] == 42
