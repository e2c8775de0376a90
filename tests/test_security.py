"""Model protection (issue 14, item 2): every unpickling goes through mlnb.registry's two verifying loaders, and a payload
planted in a run's model.joblib or in the model store's files runs in none of package, evaluate, serve, score or monitor.

The payload is a real pickle whose loading creates a marker file: the marker's absence is the proof nothing unpickled it."""
import os, pickle, re, shutil, subprocess, sys
from pathlib import Path
import pandas as pd, pytest
from conftest import MLNB, SAMPLE, mlnb
from mlnb.config import load_project
from mlnb.store import Store

ROOT = Path(__file__).parents[1]
# Each way to unpickle, and the only place it may appear: registry.py's loaders (features.py's __setstate__ runs inside
# an unpickling those loaders already checked: it restores the cloudpickled feature functions of a FeatureSteps).
UNPICKLING = re.compile(r'joblib\.load\(|pickle\.loads?\(|cloudpickle\.loads?\(|bentoml\.\w+\.load_model\(|\.custom_objects\b|pd\.read_pickle\(')
ALLOWED = {('mlnb/registry.py', 'bentoml.sklearn.load_model('), ('mlnb/registry.py', 'joblib.load('),
           ('mlnb/registry.py', '.custom_objects'), ('mlnb/features.py', 'pickle.loads(')}


class Payload:
    "Unpickling this creates `marker`: what an attacker's code would do instead."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (open, (self.marker, 'w'))


def plant(path: Path, marker: Path):
    path.write_bytes(pickle.dumps(Payload(marker)))


def sources():
    for f in sorted([*ROOT.glob('mlnb/*.py'), *ROOT.glob('templates/**/*.py'), *ROOT.glob('templates/**/*.ipynb')]):
        yield str(f.relative_to(ROOT)), f.read_text()


def test_every_unpickling_goes_through_the_verifying_loaders():
    found = {(name, m.group(0).split('(')[0] + ('(' if '(' in m.group(0) else '')) for name, text in sources() for m in UNPICKLING.finditer(text)}
    assert found - ALLOWED == set(), f"unpickling outside mlnb.registry's loaders: {sorted(found - ALLOWED)}"
    assert ('mlnb/registry.py', 'joblib.load(') in found          # the scan sees the loaders themselves


@pytest.fixture(scope='module')
def packaged(tmp_path_factory):
    "A scaffold project run and packaged from the shell; its run's model file and its stored model's folder."
    root = tmp_path_factory.mktemp('sec')/'shop'
    mlnb('new', root)
    mlnb('run', '--params', f'ingest.sample={SAMPLE}', cwd=root)
    mlnb('package', cwd=root)
    p = load_project(root/'settings.ini')
    st = Store(p.store_url)
    run = st.get_run()
    model_file = Path(run['stages']['train']['out_dir'])/'model.joblib'
    stored = next((p.workspace/'bentoml'/'models').glob('*/*/saved_model.pkl')).parent
    return root, p, model_file, stored


@pytest.fixture
def marker(tmp_path):
    m = tmp_path/'PAYLOAD_RAN'
    yield m
    assert not m.exists(), 'the planted pickle was unpickled'


def test_a_payload_in_a_runs_model_file_runs_neither_in_package_nor_in_the_next_run(packaged, marker, tmp_path):
    root, p, model_file, _ = packaged
    keep = tmp_path/'model.joblib'
    shutil.copy(model_file, keep)
    plant(model_file, marker)
    try:
        r = mlnb('package', cwd=root, check=False)
        assert r.returncode == 2 and 'is not the' in r.stderr and 'refusing to load a changed file' in r.stderr, (r.returncode, r.stderr)
        assert 'Traceback' not in r.stderr
        mlnb('run', '--from', 'evaluate', '--params', f'ingest.sample={SAMPLE}', cwd=root)
        run = Store(p.store_url).get_run()                                # the cache saw the changed output: train ran again, and
        assert run['stages']['train']['status'] == 'done', run['stages']  # evaluate unpickled the new model.joblib, never the planted one
    finally:
        shutil.copy(keep, model_file)


@pytest.mark.parametrize('name', ['saved_model.pkl', 'custom_objects.pkl'])
def test_a_payload_in_the_model_store_runs_in_no_command(packaged, marker, tmp_path, name):
    root, p, _, stored = packaged
    keep = tmp_path/name
    shutil.copy(stored/name, keep)
    plant(stored/name, marker)
    try:
        holdout = pd.read_parquet(Path(Store(p.store_url).get_run()['stages']['train']['out_dir'])/'holdout.parquet')
        holdout.drop(columns=p.data['target']).to_csv(tmp_path/'rows.csv', index=False)
        r = mlnb('score', tmp_path/'rows.csv', tmp_path/'scored.csv', cwd=root, check=False)
        assert r.returncode == 2 and 'refusing to load a changed model' in r.stderr and 'Traceback' not in r.stderr, (r.returncode, r.stderr[-1500:])
        mlnb('monitor', cwd=root, check=False)                                  # reads the reference statistics (a custom object)
        from mlnb.core import free_port
        r = subprocess.run([MLNB, 'serve', '--port', str(free_port())], cwd=root, capture_output=True, text=True, timeout=300)
        assert r.returncode != 0 and 'refusing to load a changed model' in r.stdout + r.stderr, (r.returncode, r.stdout[-1500:], r.stderr[-1500:])
    finally:
        shutil.copy(keep, stored/name)


def test_a_model_signed_with_another_key_is_refused(packaged, tmp_path):
    from mlnb.registry import SIGNATURE, check_signature, model_key, sign_model
    root, p, _, stored = packaged
    keep = tmp_path/SIGNATURE
    shutil.copy(stored/SIGNATURE, keep)
    try:
        sign_model(stored, os.urandom(32))                    # an attacker re-signs the files with a key of their own
        with pytest.raises(Exception, match="does not match this project's model key"): check_signature(stored, model_key(p))
    finally:
        shutil.copy(keep, stored/SIGNATURE)
    assert check_signature(stored, model_key(p)) == stored
