"""Model training benchmarks (issue 12): each figure is compared with a baseline measured in the same run.

1. agreement: on scikit-learn's breast_cancer (binary), wine and digits (multiclass), diabetes (regression) and a synthetic
   100,000-row binary set, `mlnb.train.train` and a plain scikit-learn script (StandardScaler + the same estimator, the
   same train_test_split and seed) give the same holdout metric (target: |difference| <= 1e-9); and the configuration
   mlnb's search chose scores at least the default one on the holdout, a split the search never saw;
2. the search alone (halving_search with train()'s inputs; the whole train() once, for context) on a Dask LocalCluster: 2 single-threaded workers vs 1, the same trials (one trial a joblib task, OpenMP threads
   set to 1 everywhere): wall ratio (target: <= 0.6);
3. training on a 1,200-row daily table with a date column (time-ordered holdout and CV): `train` vs a plain scikit-learn
   script fitting the same estimator on the same calendar features with the same splits (target: <= 3x).

Run: .venv/bin/python benchmarks/bench_models.py   (appends to benchmarks/RESULTS.md with --write; --quick: smaller sets,
     a smoke run of the script, not a result; --dask: only the Dask search, 3 alternating rounds)

On a cluster with one worker thread, joblib runs the tasks in the calling process (its dask backend reports one job, and
joblib runs one job sequentially): the 1-worker figure is the search without Dask's overhead.
"""
import os
os.environ['OMP_NUM_THREADS'] = '1'          # estimators' own threads: 1, here and in the Dask workers (they inherit it)
os.environ.setdefault('BENTOML_DO_NOT_TRACK', 'true'); os.environ.setdefault('GX_ANALYTICS_ENABLED', 'false')
import platform, sys, time, warnings
from datetime import datetime, timezone
from pathlib import Path
import numpy as np, pandas as pd
from sklearn import datasets
from sklearn.base import clone
from sklearn.metrics import f1_score, roc_auc_score, root_mean_squared_error
from sklearn.model_selection import KFold, StratifiedKFold, TimeSeriesSplit, cross_validate, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from mlnb.features import feature_schema
from mlnb.train import SEARCH_METRIC, estimator, halving_search, make_pipeline, search_space, split, train

QUICK = '--quick' in sys.argv
SYNTH_ROWS = 10_000 if QUICK else 100_000


def machine():
    mem = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30
    return f"{platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB, Python {platform.python_version()}, load {os.getloadavg()[0]:.1f} at start"


def timed(fn):
    t = time.perf_counter(); r = fn(); return time.perf_counter() - t, r


def tables() -> dict:
    "name -> (frame, target, task)."
    out = {n: (getattr(datasets, f'load_{n}')(as_frame=True).frame, 'target', task)
           for n, task in [('breast_cancer', 'binary'), ('wine', 'multiclass'), ('digits', 'multiclass'), ('diabetes', 'regression')]}
    X, y = datasets.make_classification(SYNTH_ROWS, 20, n_informative=8, random_state=0)
    out[f'synthetic {SYNTH_ROWS // 1000}k'] = (pd.DataFrame(X, columns=[f'x{i}' for i in range(20)]).assign(target=y), 'target', 'binary')
    return out


def holdout_score(task, model, X, y) -> float:
    "The task's primary metric (ROC AUC, macro F1, RMSE) of a fitted `model` on `X`, `y`."
    if task == 'binary': return roc_auc_score(y, model.predict_proba(X)[:, 1])
    if task == 'multiclass': return f1_score(y, model.predict(X), average='macro')
    return root_mean_squared_error(y, model.predict(X))


def plain_script(df, target, task, name) -> float:
    "What a user would write with scikit-learn alone: the same split, StandardScaler and the same estimator."
    X, y = df.drop(columns=target), df[target]
    Xf, Xh, yf, yh = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y if task != 'regression' else None)
    model = Pipeline([('scale', StandardScaler()), ('model', estimator(name, task, random_state=0))]).fit(Xf, yf)
    return holdout_score(task, model, Xh, yh)


def agreement() -> list[dict]:
    rows = []
    for data, (df, target, task) in tables().items():
        for name in ('linear', 'hist_gb'):
            t, res = timed(lambda: train(df, target, name, cv=5, random_state=0))
            h = res.holdout
            mine = holdout_score(task, res.pipeline, h.drop(columns=target), h[target])
            plain = plain_script(df, target, task, name)
            n_trials = 8 if QUICK or len(df) > 50_000 else 12
            ts, searched = timed(lambda: train(df, target, name, cv=5, random_state=0, search=True, n_trials=n_trials, n_jobs=-1))
            best = holdout_score(task, searched.pipeline, h.drop(columns=target), h[target])
            lower = task == 'regression'
            rows.append(dict(data=data, task=task, model=name, metric=SEARCH_METRIC[task][0], mlnb=mine, plain=plain, diff=abs(mine - plain),
                             train_s=t, searched=best, search_s=ts, trials=n_trials, features=len(res.schema), columns=df.shape[1] - 1,
                             not_worse=(best <= mine) if lower else (best >= mine)))
            print(rows[-1], flush=True)
    return rows


dask_rounds = {}

def searched(df, client):
    "mlnb's search alone, with train()'s inputs (split, features, pipeline, default space): the trials and the chosen parameters."
    task = 'binary'
    fit_df, _, folds = split(df, 'target', task, cv=3, random_state=0)
    X, y = fit_df.drop(columns='target'), fit_df['target']
    pipe = make_pipeline(feature_schema(X), 'hist_gb', 0, task=task)
    return halving_search(pipe, X, y, task, folds, search_space('hist_gb', pipe[-1], True), n_trials=18, random_state=0, client=client)

def dask_search() -> dict:
    "The same search (same trials) on a LocalCluster of 1 and of 2 single-threaded worker processes; then the whole train() once each."
    import dask
    from distributed import Client, LocalCluster
    dask.config.set({'distributed.worker.profile.enabled': False,             # the workers' stack sampler costs CPU-bound fits time
                     'distributed.nanny.pre-spawn-environ': {'OMP_NUM_THREADS': 1, 'MKL_NUM_THREADS': 1, 'OPENBLAS_NUM_THREADS': 1}})   # no malloc trim at 64 kB
    X, y = datasets.make_classification(6_000 if QUICK else 10_000, 20, n_informative=8, random_state=1)
    df = pd.DataFrame(X, columns=[f'x{i}' for i in range(20)]).assign(target=y)
    out, whole = {1: [], 2: []}, {}
    for i, workers in enumerate((1, 2) * (1 if QUICK else 3 if '--dask' in sys.argv else 2)):      # alternating rounds, best of each (a shared machine)
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
            client.run(lambda: __import__('mlnb.train'))                 # workers up and mlnb imported before the clock starts
            out[workers].append(timed(lambda: searched(df, client)))
            if i < 2: whole[workers] = timed(lambda: train(df, 'target', 'hist_gb', cv=3, search=True, n_trials=18, client=client))[0]
            print(workers, 'workers', round(out[workers][-1][0], 1), 's', flush=True)
    (t1, (r1, _)), (t2, (r2, _)) = min(out[1], key=lambda r: r[0]), min(out[2], key=lambda r: r[0])
    dask_rounds.update({w: [round(t, 1) for t, _ in out[w]] for w in out})
    same = r1.drop(columns=['fit_s', 'score_std', 'score']).equals(r2.drop(columns=['fit_s', 'score_std', 'score']))
    return dict(one=t1, two=t2, same=same, fits=int(len(r1)) * 3, rows=len(df), scores_equal=np.allclose(r1['score'], r2['score']),
                train_one=whole[1], train_two=whole[2])


def daily(n=1200) -> pd.DataFrame:
    "A daily sales table: a date (ISO strings), a store, a promotion flag, a temperature; sales depend on all of them."
    rng = np.random.default_rng(0)
    day = pd.date_range('2023-01-01', periods=n, freq='D')
    doy, dow = day.day_of_year.to_numpy(), day.day_of_week.to_numpy()
    temp = 12 + 10 * np.sin(2 * np.pi * (doy - 100) / 365) + rng.normal(0, 2, n)
    store = rng.choice(['north', 'south', 'east', 'west', 'centre'], n)
    promo = rng.random(n) < 0.2
    sales = 100 + 2 * temp + 15 * (dow >= 5) + 25 * promo + pd.Series(store).map({'north': 5, 'south': -5, 'east': 0, 'west': 10, 'centre': 20}).to_numpy() \
            + 0.02 * np.arange(n) + rng.normal(0, 5, n)
    return pd.DataFrame({'date': day.strftime('%Y-%m-%d'), 'store': store, 'promo': promo, 'temp': temp.round(1), 'sales': sales.round(2)})


def calendar_script(df, cv=5):
    "The plain script: calendar features by hand, one-hot store, the same time split, TimeSeriesSplit CV and fit."
    d = pd.to_datetime(df['date'])
    X = pd.concat([pd.DataFrame({'year': d.dt.year, 'month': d.dt.month, 'dow': d.dt.day_of_week, 'doy': d.dt.day_of_year,
                                 'promo': df['promo'].astype(float), 'temp': df['temp']}),
                   pd.get_dummies(df['store'], dtype=float)], axis=1).iloc[np.argsort(d.to_numpy(), kind='stable')]
    y = df['sales'].loc[X.index]
    n = int(np.ceil(0.2 * len(X)))
    model = estimator('hist_gb', 'regression', random_state=0)
    cross_validate(clone(model), X.iloc[:-n], y.iloc[:-n], cv=TimeSeriesSplit(cv), scoring=['neg_root_mean_squared_error', 'r2'])
    model.fit(X.iloc[:-n], y.iloc[:-n])
    return root_mean_squared_error(y.iloc[-n:], model.predict(X.iloc[-n:]))


def calendar_fit_only(df):
    "The plain script without its cross-validation: one fit."
    d = pd.to_datetime(df['date'])
    X = pd.concat([pd.DataFrame({'year': d.dt.year, 'month': d.dt.month, 'dow': d.dt.day_of_week, 'doy': d.dt.day_of_year,
                                 'promo': df['promo'].astype(float), 'temp': df['temp']}), pd.get_dummies(df['store'], dtype=float)], axis=1)
    return estimator('hist_gb', 'regression', random_state=0).fit(X.iloc[:-240], df['sales'].iloc[:-240])


def dates() -> dict:
    df = daily()
    train(df.head(200), 'sales', 'hist_gb', time='date')                       # warm: first-call imports on both sides
    calendar_script(df.head(200))
    runs = {'mlnb': [], 'plain': [], 'fit': []}
    for _ in range(3):                                                          # alternating, best of three
        t, res = timed(lambda: train(df, 'sales', 'hist_gb', time='date', random_state=0)); runs['mlnb'].append(t)
        t, plain_rmse = timed(lambda: calendar_script(df)); runs['plain'].append(t)
        runs['fit'].append(timed(lambda: calendar_fit_only(df))[0])
    h = res.holdout
    mine_rmse = root_mean_squared_error(h['sales'], res.pipeline.predict(h.drop(columns='sales')))
    prep = res.pipeline.named_steps['prep']
    return dict(mlnb=min(runs['mlnb']), plain=min(runs['plain']), fit=min(runs['fit']), rows=len(df), mlnb_rmse=mine_rmse, plain_rmse=plain_rmse,
                columns=len(prep.get_feature_names_out()), plan='; '.join(f"{r['column']}: {r['became']}" for r in res.plan.rows))


def report(when, where, ag, dk, dt):
    met = lambda ok: ' (met)' if ok else ' (MISSED)'
    ratio_dask, ratio_dates = dk['two'] / dk['one'], dt['mlnb'] / dt['plain']
    worst = max(r['diff'] for r in ag)
    lines = [f"\n## Models: tasks, search, Dask, dates ({when:%Y-%m-%d %H:%M} UTC; {where})\n",
             f"`.venv/bin/python benchmarks/bench_models.py --write`{' (--quick: NOT a result)' if QUICK else ''}\n",
             "| measure | mlnb | baseline | ratio | target |", "|---|---|---|---|---|",
             f"| holdout metric, mlnb train vs a plain scikit-learn script (same estimator, split, seed), worst of {len(ag)} | "
             f"see below | | max abs diff {worst:.1e} | <= 1e-9{met(worst <= 1e-9)} |",
             f"| searched best vs default on the holdout (never seen by the search) | {sum(r['not_worse'] for r in ag)} of {len(ag)} at least the default | | | all{met(all(r['not_worse'] for r in ag))} |",
             f"| search alone (halving_search with train()'s split, features and default space), hist_gb, {dk['rows']:,} rows, 18 trials (best of 2 alternating rounds) by successive halving ({dk['fits']} CV fits), Dask LocalCluster: 2 workers / 1 (1 thread each) "
             f"| {dk['two']:.1f} s | {dk['one']:.1f} s | {ratio_dask:.2f} | <= 0.6{met(ratio_dask <= 0.6)} |",
             f"| train on a {dt['rows']:,}-row daily table with a date column (time holdout, 5 time-series folds, fit) vs plain script with the same calendar features, CV and fit "
             f"| {dt['mlnb']:.2f} s | {dt['plain']:.2f} s | {ratio_dates:.2f} | <= 3{met(ratio_dates <= 3)} |",
             f"| same, vs the plain script's single fit (no CV) | {dt['mlnb']:.2f} s | {dt['fit']:.2f} s | {dt['mlnb'] / dt['fit']:.1f} | - |",
             "", "| data | task | model | metric | mlnb holdout | plain script | abs diff | searched (trials) | best >= default | train s | search s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in ag:
        lines.append(f"| {r['data']} | {r['task']} | {r['model']} | {r['metric']} | {r['mlnb']:.6f} | {r['plain']:.6f} | {r['diff']:.1e} "
                     f"| {r['searched']:.6f} ({r['trials']}) | {'yes' if r['not_worse'] else 'no'} | {r['train_s']:.1f} | {r['search_s']:.1f} |")
    lines += ["", f"- Dask: the same trials on 1 and 2 workers: {'yes' if dk['same'] else 'NO'} (scores equal: {'yes' if dk['scores_equal'] else 'no'}); "
                  f"cluster start-up not timed; the whole train() call (plan, search, CV of the best, final fit, one round each): 2 workers {dk['train_two']:.1f} s / 1 worker {dk['train_one']:.1f} s = {dk['train_two'] / dk['train_one']:.2f}",
              f"- dates: {dt['columns']} model columns (date as calendar features); holdout RMSE mlnb {dt['mlnb_rmse']:.3f}, plain {dt['plain_rmse']:.3f}; "
              f"mlnb's time includes the column plan (identifier and leak checks); column plan: {dt['plan']}",
              "- 'primary metric' per task: binary ROC AUC, multiclass macro F1, regression RMSE (lower is better); search: 12 trials (8 on the 100k set), "
              "default space, 5 folds, n_jobs=-1"]
    text = '\n'.join(lines) + '\n'
    print(text)
    if '--write' in sys.argv and not QUICK:
        with open(Path(__file__).parent/'RESULTS.md', 'a') as f: f.write(text)


def dask_report(when, where, dk):
    ratio = dk['two'] / dk['one']
    text = '\n'.join([f"\n## Models: search on Dask only ({when:%Y-%m-%d %H:%M} UTC; {where})\n",
                      "`.venv/bin/python benchmarks/bench_models.py --dask --write`\n",
                      "| measure | mlnb | baseline | ratio | target |", "|---|---|---|---|---|",
                      f"| search alone (halving_search with train()'s split, features and default space), hist_gb, {dk['rows']:,} rows, 18 trials by successive halving ({dk['fits']} CV fits), LocalCluster: 2 workers / 1 "
                      f"(1 thread each; best of {len(dask_rounds[1])} alternating rounds) | {dk['two']:.1f} s | {dk['one']:.1f} s | {ratio:.2f} "
                      f"| <= 0.6{' (met)' if ratio <= 0.6 else ' (MISSED)'} |", "",
                      f"- rounds (s): 1 worker {dask_rounds[1]}, 2 workers {dask_rounds[2]}; the same trials: {'yes' if dk['same'] else 'NO'}; "
                      "with one worker thread joblib runs the fits in the calling process (no Dask overhead in the baseline); "
                      "workers without Dask's stack profiler and malloc trimming; OMP_NUM_THREADS=1 everywhere; "
                      f"the whole train() call (plan, search, CV of the best, final fit; one round each): 2 workers {dk['train_two']:.1f} s / 1 worker {dk['train_one']:.1f} s "
                      f"= {dk['train_two'] / dk['train_one']:.2f}"]) + '\n'
    print(text)
    if '--write' in sys.argv and not QUICK:
        with open(Path(__file__).parent/'RESULTS.md', 'a') as f: f.write(text)


def main():
    warnings.filterwarnings('ignore', category=UserWarning)
    when, where = datetime.now(timezone.utc), machine()
    if '--dask' in sys.argv: return dask_report(when, where, dask_search())
    dt = dates()
    print(dt, flush=True)
    dk = dask_search()
    print(dk, flush=True)
    ag = agreement()
    report(when, where, ag, dk, dt)


if __name__ == '__main__':
    main()
