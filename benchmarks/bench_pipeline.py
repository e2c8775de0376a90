"""Pipeline engine benchmarks (issue 3): each figure is a ratio against a baseline measured in the same run.

1. a no-op `mlnb run` of the scaffold from the shell vs its cold run from the shell (target: at most 1%, issue 12;
   process start included), and the same through the API (at most 2%);
2. a chain of 6 trivial stage notebooks: mlnb vs plain papermill, one after another in one process (target: at most 0.5x);
3. a diamond of 4 stages with two equal-cost branches: --jobs 2 vs --jobs 1 (target: at most 0.65x).

Run: .venv/bin/python benchmarks/bench_pipeline.py   (appends to benchmarks/RESULTS.md with --write)
"""
import os, platform, subprocess, sys, tempfile, time
from datetime import datetime, timezone
from pathlib import Path
import nbformat

os.environ.setdefault('BENTOML_DO_NOT_TRACK', 'true'); os.environ.setdefault('GX_ANALYTICS_ENABLED', 'false')
import papermill as pm
from mlnb.config import new_project
from mlnb.pipeline import run

quiet = lambda *a, **k: None


def notebook(path, *cells):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.cells[0].metadata['tags'] = ['parameters']
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'python3', 'language': 'python'}
    nbformat.write(nb, path)


def tiny_project(root, stages, sleep=0.0):
    "Stages {name: needs}; each sleeps `sleep` seconds and writes one file."
    root.mkdir(parents=True)
    text = f"[project]\nname = bench\n[data]\nsource = sklearn:iris\n[pipeline]\nstages = {' '.join(stages)}\n"
    for n, needs in stages.items():
        notebook(root/f'{n}.ipynb', f'mlnb_context = {{}}\nsleep = {sleep}',
                 'import time, json, pathlib; time.sleep(sleep)',
                 f'if mlnb_context: pathlib.Path(mlnb_context["out_dir"], "{n}.txt").write_text("ok")')
        text += f"[stage:{n}]\nnotebook = {n}.ipynb\nneeds = {' '.join(needs)}\n"
    (root/'settings.ini').write_text(text)
    return root/'settings.ini'


def timed(fn):
    t = time.perf_counter(); fn(); return time.perf_counter() - t


def bench_noop(tmp):
    s = new_project(tmp/'demo')
    shell = lambda: subprocess.run([str(Path(sys.executable).parent/'mlnb'), 'run', '-p', str(s)], capture_output=True, check=True)
    cold = timed(shell)
    cli = min(timed(shell) for _ in range(3))
    noop = min(timed(lambda: run(s, on_event=quiet)) for _ in range(3))
    return cold, noop, cli


def bench_chain(tmp):
    chain = {f's{i}': ([f's{i-1}'] if i else []) for i in range(6)}
    s = tiny_project(tmp/'chain', chain)
    plain = timed(lambda: [pm.execute_notebook(str(s.parent/f'{n}.ipynb'), str(tmp/f'plain-{n}.ipynb'), kernel_name='python3',
                                               progress_bar=False, parameters={'mlnb_context': {}}) for n in chain])
    mlnb = timed(lambda: run(s, on_event=quiet, force=True))
    return plain, mlnb


def bench_parallel(tmp, cost=6.0):
    s = tiny_project(tmp/'diamond', {'a': [], 'b': ['a'], 'c': ['a'], 'd': ['b', 'c']})
    params = ['b.sleep=%s' % cost, 'c.sleep=%s' % cost]
    one = timed(lambda: run(s, jobs=1, force=True, params=params, on_event=quiet))
    two = timed(lambda: run(s, jobs=2, force=True, params=params, on_event=quiet))
    return one, two


def machine():
    mem = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30
    return f"{platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB, Python {platform.python_version()}"


def main():
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cold, noop, cli = bench_noop(tmp)
        plain, chain = bench_chain(tmp)
        one, two = bench_parallel(tmp)
    rows = [("no-op `mlnb run` of the scaffold from the shell (process start included) / its cold run", cli, cold, 0.01),
            ("no-op re-run through the API / the cold run", noop, cold, 0.02),
            ("6-stage trivial chain: mlnb / plain papermill in one process", chain, plain, 0.5),
            ("diamond, 2 branches of 6 s: --jobs 2 / --jobs 1", two, one, 0.65)]
    lines = [f"\n## Pipeline engine ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {machine()})\n",
             "`.venv/bin/python benchmarks/bench_pipeline.py --write`\n",
             "| measure | mlnb | baseline | ratio | target |", "|---|---|---|---|---|"]
    for name, a, b, target in rows:
        ok = '' if target is None else (' (met)' if a / b <= target else ' (MISSED)')
        lines.append(f"| {name} | {a:.2f} s | {b:.2f} s | {a/b:.3f} | {'-' if target is None else f'<= {target}'}{ok} |")
    text = '\n'.join(lines) + '\n'
    print(text)
    if '--write' in sys.argv:
        with open(Path(__file__).parent/'RESULTS.md', 'a') as f: f.write(text)


if __name__ == '__main__':
    main()
