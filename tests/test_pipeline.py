"""The pipeline for real: papermill runs the scaffold's stage notebooks in Jupyter kernels."""
import json, os, shutil
from pathlib import Path
import nbformat, pandas as pd, sqlalchemy as sa
from conftest import SAMPLE, mlnb
from mlnb.config import load_project
from mlnb.store import Store, runs, snapshots, stage_runs


def _store(root): return Store(load_project(root/'settings.ini').store_url)


def test_run_records_everything(project):
    root, r = project
    run = _store(root).get_run()
    assert run['status'] == 'succeeded'
    assert [s['status'] for s in run['stages'].values()] == ['done'] * 4
    for k in ('accuracy', 'precision', 'recall', 'f1', 'roc_auc', 'cv_accuracy'):
        assert 0.5 < run['metrics'][k] <= 1, (k, run['metrics'])
    assert run['metrics']['rows'] == int(SAMPLE)
    snap = _store(root).read(sa.select(snapshots))[0]
    assert snap['hash'] == run['data_hash'] and snap['rows'] == int(SAMPLE)
    assert pd.read_parquet(snap['path']).shape == (int(SAMPLE), 31)
    # executed notebooks are kept per run, with their outputs (the SHAP plot among them)
    nb = nbformat.read(Path(run['stages']['evaluate']['notebook']), as_version=4)
    assert any(o.get('output_type') == 'display_data' and 'image/png' in o.get('data', {}) for c in nb.cells for o in c.get('outputs', []))
    assert (root/'expectations'/'suite.json').is_file()          # profiled on the first run
    assert run['id'] in r.stdout and 'succeeded' in r.stdout


def test_second_run_is_cached_and_prose_edits_do_not_rerun(project):
    root, _ = project
    nb_path = root/'pipeline'/'train.ipynb'
    nb = nbformat.read(nb_path, as_version=4)
    nb.cells[0].source += '\n\nA note added by a reader.'
    nbformat.write(nb, nb_path)
    r = mlnb('run', '--params', f'ingest.sample={SAMPLE}', cwd=root)
    run = _store(root).get_run()
    assert [s['status'] for s in run['stages'].values()] == ['cached'] * 4, r.stdout
    assert run['metrics']['accuracy'] > 0.5                         # cached stages still report their metrics


def test_code_edit_reruns_stage_and_downstream(project):
    root, _ = project
    nb_path = root/'pipeline'/'train.ipynb'
    nb = nbformat.read(nb_path, as_version=4)
    nb.cells[-1].source += '\nprint("changed")'
    nbformat.write(nb, nb_path)
    from mlnb.pipeline import plan
    states = plan(root/'settings.ini', params=[f'ingest.sample={SAMPLE}'])           # what the sidebar and `mlnb status` show before the run
    assert {n: (x.state, x.why) for n, x in states.items()} == {'ingest': ('up to date', []), 'validate': ('up to date', []),
                                                                'train': ('stale', ['code']), 'evaluate': ('stale', ['upstream'])}
    mlnb('run', '--params', f'ingest.sample={SAMPLE}', cwd=root)
    run = _store(root).get_run()
    assert {n: s['status'] for n, s in run['stages'].items()} == {'ingest': 'cached', 'validate': 'cached', 'train': 'done', 'evaluate': 'done'}


def test_critical_expectation_stops_before_training(tmp_path):
    from sklearn.datasets import load_breast_cancer
    from mlnb.validate import profile, save_suite
    root = tmp_path/'gate'
    mlnb('new', root, '--source', 'data/cells.csv', '--target', 'diagnosis')
    df = load_breast_cancer(as_frame=True).frame.rename(columns={'target': 'diagnosis'}).head(120)
    save_suite(profile(df, 'diagnosis', 'gate'), root/'expectations'/'suite.json')
    df.loc[:9, 'mean radius'] = None          # nulls where the suite allows none: critical
    (root/'data').mkdir(); df.to_csv(root/'data'/'cells.csv', index=False)
    r = mlnb('run', cwd=root, check=False)
    assert r.returncode == 1
    assert "stage 'validate' failed" in r.stderr and 'ValidationFailed' in r.stderr and 'mean radius' in r.stderr
    assert 'Traceback' not in r.stderr
    st = _store(root)
    run = st.read(sa.select(runs))[0]
    assert run['status'] == 'failed'
    stages = {s['stage']: s for s in st.read(sa.select(stage_runs))}
    assert set(stages) == {'ingest', 'validate'}                     # train never started
    assert stages['validate']['error_name'] == 'ValidationFailed'
    failed_dir = Path(stages['validate']['notebook']).with_name('validate.failed')
    report = json.loads((failed_dir/'validation.json').read_text())
    assert not report['passed'] and any(f['column'] == 'mean radius' for f in report['failures'])


def test_own_csv_with_missing_values_and_categories(tmp_path):
    "Pointing settings.ini at a CSV with gaps, categories and yes/no labels is all a user's own data needs."
    import numpy as np
    rng = np.random.default_rng(0)
    n = 240
    df = pd.DataFrame({'age': rng.integers(18, 80, n).astype(float), 'plan': rng.choice(['basic', 'plus', 'pro'], n),
                       'monthly': rng.gamma(2, 20, n), 'region': rng.choice(['north', 'south', None], n)})
    df.loc[rng.choice(n, 20, replace=False), 'age'] = np.nan
    df['churned'] = np.where((df.plan == 'basic') & (df.monthly > 30) | (rng.random(n) < 0.15), 'yes', 'no')
    root = tmp_path/'churn'
    mlnb('new', root)
    (root/'data').mkdir(); df.to_csv(root/'data'/'customers.csv', index=False)
    ini = (root/'settings.ini').read_text()
    ini = ini.replace('source = sklearn:breast_cancer', 'source = data/customers.csv').replace('target = target', 'target = churned')
    (root/'settings.ini').write_text(ini.replace('model=hist_gb cv=5', 'model=logreg cv=3'))
    mlnb('run', cwd=root)
    run = _store(root).get_run()
    assert run['status'] == 'succeeded' and run['metrics']['rows'] == n
    assert 0.5 < run['metrics']['roc_auc'] <= 1
    suite = json.loads((root/'expectations'/'suite.json').read_text())
    plan_set = [e for e in suite['expectations'] if e['kwargs'].get('column') == 'plan' and 'value_set' in e['kwargs']]
    assert plan_set and sorted(plan_set[0]['kwargs']['value_set']) == ['basic', 'plus', 'pro']


def _nb(path, *cells):
    n = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    n.cells[0].metadata['tags'] = ['parameters']
    n.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'python3', 'language': 'python'}
    nbformat.write(n, path)


def chain_project(d:Path) -> Path:
    "Three tiny stages on a CSV: a counts its rows, b (parameter k, and a file named by parameter f) scales a's count, c reads b's."
    ctx = 'from mlnb.pipeline import StageContext\nctx = StageContext(mlnb_context)'
    (d/'data.csv').write_text('x\n1\n2\n3\n')
    (d/'factor.txt').write_text('1')
    _nb(d/'a.ipynb', 'mlnb_context = {}', ctx, 'import pandas as pd\nctx.output("n.txt").write_text(str(len(pd.read_csv(ctx.project.resolve("data.csv")))))')
    _nb(d/'b.ipynb', 'mlnb_context = {}\nk = 2\nf = ""', ctx, 'n = int(ctx.input("a", "n.txt").read_text()) * k * int(open(f).read())\nctx.output("m.txt").write_text(str(n))')
    _nb(d/'c.ipynb', 'mlnb_context = {}', ctx, 'ctx.record({"m": int(ctx.input("b", "m.txt").read_text())})')
    (d/'settings.ini').write_text("[project]\nname = chain\n[data]\nsource = data.csv\ntarget = x\n[pipeline]\nstages = a b c\njobs = 1\n"
                                  "[stage:a]\nnotebook = a.ipynb\n[stage:b]\nnotebook = b.ipynb\nneeds = a\nparams = k=2 f=factor.txt\n"
                                  "[stage:c]\nnotebook = c.ipynb\nneeds = b\n")
    return d/'settings.ini'


def test_stale_stages_are_exactly_what_run_executes(tmp_path):
    "For each kind of change, `plan` (what the sidebar and `mlnb status` show) names as stale exactly the stages the next run executes, and why."
    from mlnb.pipeline import plan, run
    s = chain_project(tmp_path)
    def check(stale:dict, metric=None):
        states = plan(s)
        assert {n: x.why for n, x in states.items() if x.state != 'up to date'} == stale
        r = run(s, on_event=lambda *a: None)
        assert {n for n, x in r.stages.items() if x.status == 'done'} == set(stale)
        assert {x.status for n, x in r.stages.items() if n not in stale} <= {'cached'}
        assert {x.state for x in plan(s).values()} == {'up to date'}           # and after the run, nothing is stale
        if metric is not None: assert r.metrics['m'] == metric
    check({'a': ['never run'], 'b': ['upstream'], 'c': ['upstream']}, 6)
    nb = nbformat.read(tmp_path/'b.ipynb', as_version=4)
    nb.cells[-1].source += '\nprint(n)'                                      # code
    nbformat.write(nb, tmp_path/'b.ipynb')
    check({'b': ['code'], 'c': ['upstream']})
    ini = (s.read_text())
    s.write_text(ini.replace('k=2', 'k=5'))                                  # a parameter's value
    check({'b': ['parameters'], 'c': ['upstream']}, 15)
    (tmp_path/'factor.txt').write_text('2')                                  # the content of a file a parameter names
    check({'b': ['parameters'], 'c': ['upstream']}, 30)
    (tmp_path/'data.csv').write_text('x\n1\n2\n3\n4\n')                       # the data's content
    check({'a': ['data'], 'b': ['data', 'upstream'], 'c': ['data', 'upstream']}, 40)
    for f in ('data.csv', 'a.ipynb', 'b.ipynb', 'factor.txt'): os.utime(tmp_path/f, ns=(10**18, 10**18))   # a touch: nothing
    check({})
    s.write_text(s.read_text().replace('target = x\n', 'target = x\ntask = auto\nsample = 0\n'))   # [data] settings written at their defaults: nothing
    check({})
    last = _store(tmp_path).get_run()
    shutil.rmtree(last['stages']['a']['out_dir'])                            # a deleted output: a runs again, writes the same bytes, b and c stay cached
    check({'a': ['outputs']})
    Path(_store(tmp_path).get_run()['stages']['b']['out_dir'], 'm.txt').write_text('999')   # an output changed by hand: b runs again
    check({'b': ['outputs']}, 40)
    nb = nbformat.read(tmp_path/'c.ipynb', as_version=4)
    nb.cells[-1].source += '\n1/0'                                           # a failure: c is failed, with its cell and error
    nbformat.write(nb, tmp_path/'c.ipynb')
    try: run(s, on_event=lambda *a: None); raise AssertionError('c should fail')
    except Exception as e: assert type(e).__name__ == 'StageFailed'
    c = plan(s)['c']
    assert (c.state, c.why, c.cell, c.error.split(':')[0]) == ('failed', ['code'], 3, 'ZeroDivisionError')
