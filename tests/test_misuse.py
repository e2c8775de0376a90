"""Model misuse on a real `mlnb serve`: each answer's out-of-distribution score and its /metrics series, a probing script
raising an alert, a token's daily query budget, and the model's fingerprint in `mlnb runs` and the store."""
import re, shutil
import pytest, requests
import sqlalchemy as sa
from conftest import mlnb, wait_for
from test_serve import holdout_X, mlnb_serve
from mlnb import privacy
from mlnb.config import load_project
from mlnb.core import free_port
from mlnb.registry import fingerprint
from mlnb.store import Store, alerts, models


@pytest.fixture(scope='module')
def misuse_project(request, tmp_path_factory):
    "A copy of the session's project, packaged, so the tokens and aliases made here reach no other test's server."
    root, _ = request.getfixturevalue('project')
    copy = tmp_path_factory.mktemp('misuse')/'shop'
    shutil.copytree(root, copy, symlinks=True)
    mlnb('package', cwd=copy)
    return copy


def metric(text:str, name:str, **labels) -> float:
    "The value of series `name` with `labels` in a Prometheus text exposition (0 when absent)."
    got = [float(l.rsplit(' ', 1)[1]) for l in text.splitlines() if l.startswith(f'{name}{{') and all(f'{k}="{v}"' in l for k, v in labels.items())]
    return sum(got) if got else 0.0


def test_fingerprint_of_the_packaged_model_in_runs_and_the_store(misuse_project):
    "The fingerprint `mlnb runs` shows is the store's, and it is the one computed from the signed model's files."
    p = load_project(misuse_project)
    row = Store(p.store_url).read(sa.select(models).order_by(models.c.created.desc()))[0]
    name, version = row['tag'].split(':')
    assert row['fingerprint'] == fingerprint(p.workspace/'bentoml'/'models'/name/version)
    assert re.fullmatch(r'[0-9a-f]{16}/[0-9a-f]{8}', row['fingerprint'])
    assert row['fingerprint'] in mlnb('runs', cwd=misuse_project).stdout


def test_ood_scores_probing_alert_and_query_budget_on_a_served_model(misuse_project):
    "Answers carry `ood` (1 outside training), /metrics counts them per model; 60 near-duplicates from one token raise one probing alert, ordinary traffic none; a budget of 3 answers the 4th query 429."
    p = load_project(misuse_project)
    st = Store(p.store_url)
    prober, prober_token = privacy.add_token(st, 'prober', ['predict'])
    user, user_token = privacy.add_token(st, 'user', ['predict'])
    trial, trial_token = privacy.add_token(st, 'trial', ['predict'], budget=3)
    X = holdout_X(p)
    proc, url = mlnb_serve(misuse_project, free_port())
    try:
        ask = lambda token, record: requests.post(url + '/predict', json={'record': record}, headers={'Authorization': f'Bearer {token}'}, timeout=30)
        ordinary = [ask(user_token, X.iloc[i].to_dict()) for i in range(len(X))]
        assert all(r.status_code == 200 for r in ordinary), ordinary[0].text
        scores = [r.json()['ood'] for r in ordinary]
        assert all(0 <= s <= 1 for s in scores) and sorted(scores)[len(scores) // 2] < 0.95, scores
        far = ask(user_token, {k: v * 10 + 1000 for k, v in X.iloc[0].to_dict().items()})
        assert far.json()['ood'] == 1.0, far.text
        base, col = X.iloc[0].to_dict(), X.columns[0]
        probes = [ask(prober_token, {**base, col: base[col] * (1 + 0.0001 * i)}) for i in range(60)]
        assert all(r.status_code == 200 for r in probes)
        budget = [ask(trial_token, base).status_code for _ in range(4)]
        assert budget == [200, 200, 200, 429], budget
        tag = far.json()['model']
        text = requests.get(url + '/metrics', timeout=30).text
        assert metric(text, 'mlnb_ood_score_count', model=tag) >= len(X) + 61
        assert metric(text, 'mlnb_ood_score_bucket', model=tag, le='1.0') >= len(X) + 61
        assert metric(text, 'mlnb_outside_training_total', model=tag, feature=col) >= 1
        assert metric(text, 'mlnb_probing_alerts_total', token=prober) == 1.0
        assert metric(text, 'mlnb_probing_alerts_total', token=user) == 0.0
    finally:
        proc.terminate()
        proc.wait(60)
    rows = wait_for(lambda: st.read(sa.select(alerts).where(alerts.c.kind == 'probing')))
    assert [(r['level'], r['data']['token'], r['data']['near_duplicates']) for r in rows] == [('warning', prober, 50)]
