"""Packaging and serving for real: BentoML's model store, a built bento, `bentoml serve` on loopback."""
import json, os, subprocess, sys
from pathlib import Path
import pandas as pd, pytest, requests
from conftest import MLNB, SAMPLE, mlnb
from mlnb.config import load_project
from mlnb.store import Store


@pytest.fixture(scope='module')
def packaged(project):
    root, _ = project
    r = mlnb('package', cwd=root)
    return root, r


def test_package_builds_a_bento_with_model_and_dockerfile(packaged):
    root, r = packaged
    bento_dir = Path(r.stdout.split('\n  at ')[1].split('\n')[0])
    assert (bento_dir/'env'/'docker'/'Dockerfile').is_file()
    assert 'FROM' in (bento_dir/'env'/'docker'/'Dockerfile').read_text()
    svc = (bento_dir/'src'/'service.py').read_text()
    assert '@bentoml.service' in svc and 'mean_radius: float | None' in svc
    bento_yaml = (bento_dir/'bento.yaml').read_text()
    assert 'models:' in bento_yaml and 'shop' in bento_yaml      # the declared model is packed
    reqs = (bento_dir/'env'/'python'/'requirements.txt').read_text()
    assert 'scikit-learn==' in reqs
    st = Store(load_project(root/'settings.ini').store_url)
    champion = st.alias('champion')
    row = st.read(__import__('sqlalchemy').text(f"select * from models where tag = '{champion}'"))[0]
    assert row['bento'] and row['run_id'] == st.get_run()['id'] or row['run_id']


def test_bentoml_serve_answers_http(packaged):
    from mlnb.serve import Server, champion_bento
    root, _ = packaged
    p = load_project(root/'settings.ini')
    run = Store(p.store_url).get_run()
    holdout = pd.read_parquet(Path(run['stages']['train']['out_dir'])/'holdout.parquet')
    X = holdout.drop(columns='target')
    with Server(p, champion_bento(p)) as srv:
        assert requests.get(f'{srv.url}/readyz', timeout=5).status_code == 200
        rec = X.iloc[0].to_dict()
        out = srv.predict(rec)
        local = __import__('joblib').load(Path(run['stages']['train']['out_dir'])/'model.joblib')
        assert out['label'] == int(local.predict(X.iloc[:1])[0])
        assert abs(sum(out['probabilities'].values()) - 1) < 1e-9 and out['request_id'] and out['model'].startswith('shop:')
        batch = requests.post(f'{srv.url}/predict_batch', json={'records': X.iloc[:5].to_dict('records')}, timeout=30)
        assert batch.status_code == 200 and [b['label'] for b in batch.json()] == local.predict(X.iloc[:5]).tolist()
        bad = requests.post(f'{srv.url}/predict', json={'record': {'mean radius': 'not a number'}}, timeout=30)
        assert bad.status_code == 400 and 'mean radius' in bad.text
        unknown = requests.post(f'{srv.url}/predict', json={'record': {'no such feature': 1}}, timeout=30)
        assert unknown.status_code == 400
        missing = dict(rec); missing.pop('mean radius')            # a missing value is imputed, not an error
        assert srv.predict(missing)['label'] in (0, 1)
    assert srv.proc.poll() is not None                               # the server stopped


def test_demo_command_end_to_end(project):
    root, _ = project
    r = mlnb('demo', '-p', root/'settings.ini', '--sample', SAMPLE)
    out = r.stdout
    for part in ('== 1/3 pipeline', '== 2/3 package', '== 3/3 serve', 'mlnb demo: done', 'holdout    accuracy=', 'bento      shop:', 'served     label='):
        assert part in out, (part, out)
