"""Training paths too slow or too heavy for the 06_train notebook: the search on a Dask cluster."""
import numpy as np, pandas as pd
import pytest
from sklearn.datasets import make_classification
from mlnb.train import train


@pytest.fixture(scope='module')
def client():
    from distributed import Client, LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as c:
        yield c


def test_search_on_dask_matches_local(client):
    "The same trials and the same chosen configuration on a Dask cluster's workers as in local joblib processes; the fits run there."
    X, y = make_classification(400, 6, n_informative=4, n_classes=3, random_state=0)
    df = pd.DataFrame(X, columns=[f'x{i}' for i in range(6)]).assign(target=np.array(['a', 'b', 'c'])[y])
    space = {'max_depth': [2, 4, None], 'min_samples_leaf': [1, 5]}
    from distributed import get_task_stream
    with get_task_stream(client) as stream:
        on_dask = train(df, 'target', 'rf', cv=3, search=space, n_trials=5, model_params={'n_estimators': 10}, client=client)
    local = train(df, 'target', 'rf', cv=3, search=space, n_trials=5, model_params={'n_estimators': 10})
    cols = ['trial', 'iter', 'rows', 'max_depth', 'min_samples_leaf', 'score']
    pd.testing.assert_frame_equal(on_dask.trials[cols], local.trials[cols])
    assert on_dask.params == local.params and on_dask.task == 'multiclass'
    assert on_dask.cv_scores == local.cv_scores
    assert len(stream.data) >= len(on_dask.trials) * 3            # every trial's fits (and the CV) ran on the cluster's workers
