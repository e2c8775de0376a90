"""The pipeline for real: papermill runs the scaffold's stage notebooks in Jupyter kernels."""
import json, shutil
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
