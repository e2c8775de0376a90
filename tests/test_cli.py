"""The command line: every mistake a user can make is one line, exit status 2, and nothing written."""
import subprocess, sys, time, textwrap
from pathlib import Path
import pytest
from conftest import MLNB, mlnb

GOOD = """
[project]
name = t
[data]
source = sklearn:breast_cancer
[pipeline]
stages = a b
[stage:a]
notebook = a.ipynb
[stage:b]
notebook = a.ipynb
needs = a
"""
EMPTY_NB = '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}'

BAD = {  # case -> (settings.ini text or None for no file, text expected in the one-line message)
    'missing file': (None, 'no such project file'),
    'malformed': ('[project\nname = t', 'malformed'),
    'unknown section': (GOOD + '[trainer]\nx = 1\n', '[trainer]: unknown section'),
    'unknown key': (GOOD.replace('needs = a', 'nedds = a'), '[stage:b], nedds: unknown key'),
    'needs no stage': (GOOD.replace('needs = a', 'needs = c'), "[stage:b], needs: needs 'c', which is no stage"),
    'cycle': (GOOD.replace('[stage:a]\n', '[stage:a]\nneeds = b\n'), 'dependency cycle'),
    'missing notebook': (GOOD.replace('notebook = a.ipynb\nneeds', 'notebook = gone.ipynb\nneeds'), 'notebook not found'),
    'missing data': (GOOD.replace('sklearn:breast_cancer', 'data/none.csv'), '[data], source: data source not found'),
    'missing target': (GOOD.replace('[data]\n', '[data]\ntarget = label\n'), "target column 'label' is not in"),
    'missing required key': (GOOD.replace('name = t\n', ''), '[project], name: required key is missing'),
}


@pytest.mark.parametrize('case', list(BAD))
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, case):
    text, expected = BAD[case]
    (tmp_path/'a.ipynb').write_text(EMPTY_NB)
    if text is not None: (tmp_path/'settings.ini').write_text(textwrap.dedent(text))
    r = mlnb('run', '-p', tmp_path/'settings.ini', check=False)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], r.stderr
    assert str(tmp_path/'settings.ini') in lines[0] or case == 'missing target'
    assert not (tmp_path/'.mlnb').exists()                        # no store, no run folder


def test_bad_params_and_stage_names(tmp_path):
    from mlnb.config import new_project
    s = new_project(tmp_path/'p')
    for args, expected in [(['--stage', 'trian'], "--stage: no stage 'trian'"), (['--params', 'train.cv'], 'expected stage.key=value'),
                           (['--params', 'tran.cv=3'], "--params: no stage 'tran'")]:
        r = mlnb('run', '-p', s, *args, check=False)
        assert r.returncode == 2 and expected in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert not (tmp_path/'p'/'.mlnb').exists()


def test_new_refuses_to_overwrite(tmp_path):
    mlnb('new', tmp_path/'p')
    before = (tmp_path/'p'/'settings.ini').read_text()
    r = mlnb('new', tmp_path/'p', check=False)
    assert r.returncode == 2 and 'already exists' in r.stderr
    assert (tmp_path/'p'/'settings.ini').read_text() == before


def test_runs_and_dag(project):
    root, _ = project
    out = mlnb('runs', cwd=root).stdout
    assert 'succeeded' in out and 'accuracy' in out
    assert mlnb('dag', cwd=root).stdout.splitlines()[2].startswith('train')


def test_import_is_light_and_help_is_fast():
    heavy = ['great_expectations', 'bentoml', 'shap', 'papermill', 'sklearn', 'matplotlib']
    code = f"import sys, mlnb; print([m for m in {heavy!r} if m in sys.modules])"
    assert subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.strip() == '[]'
    t = time.perf_counter(); r = subprocess.run([MLNB, '--help'], capture_output=True, text=True)
    assert r.returncode == 0 and 'demo' in r.stdout
    assert time.perf_counter() - t < 1.0


def test_version():
    import mlnb
    r = subprocess.run([MLNB, '--version'], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f'mlnb {mlnb.__version__}'
