"""JupyterLab sidebar benchmark (issue 19): the time to compute every stage's state of the demo, as the server extension does.

1. `pipeline_state` in a fresh process, imports included (what the first sidebar request would cost without the warm-up);
2. its first call once the modules are imported (the extension imports SQLAlchemy when it loads) — target: at most 200 ms;
3. its median over 20 warm calls (each sidebar poll and each notebook save) — target: at most 200 ms;
and, as the baseline of the same run, a no-op `mlnb run` of the same project from the shell (everything cached).
No kernel is started by 1-3 (checked: the process has no child).

Run: .venv/bin/python benchmarks/bench_lab.py   (appends to benchmarks/RESULTS.md with --write)
"""
import os, platform, statistics, subprocess, sys, tempfile, time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault('BENTOML_DO_NOT_TRACK', 'true'); os.environ.setdefault('GX_ANALYTICS_ENABLED', 'false')
MLNB = str(Path(sys.executable).parent/'mlnb')
PROBE = """
import os, sys, time, json
t0 = time.perf_counter()
from mlnb.lab import pipeline_state
import mlnb.store
t1 = time.perf_counter()
pipeline_state(sys.argv[1])
t2 = time.perf_counter()
warm = []
for _ in range(20):
    a = time.perf_counter(); st = pipeline_state(sys.argv[1]); warm.append(time.perf_counter() - a)
import psutil; kids = psutil.Process().children(recursive=True)
print(json.dumps({'cold': t2 - t0, 'first': t2 - t1, 'warm': sorted(warm)[10], 'states': [s['state'] for s in st['stages']], 'children': len(kids)}))
"""


def main(write=False):
    import json
    root = Path(tempfile.mkdtemp(prefix='bench-lab-'))/'demo'
    subprocess.run([MLNB, 'new', str(root)], check=True, capture_output=True)
    s = root/'settings.ini'
    s.write_text(s.read_text().replace('target = target\n', 'target = target\nsample = 150\n'))
    subprocess.run([MLNB, 'run'], cwd=root, check=True, capture_output=True)
    r = json.loads(subprocess.run([sys.executable, '-c', PROBE, str(s)], check=True, capture_output=True, text=True).stdout)
    assert r['states'] == ['up to date'] * 4 and r['children'] == 0, r
    t = time.perf_counter(); subprocess.run([MLNB, 'run'], cwd=root, check=True, capture_output=True); noop = time.perf_counter() - t
    lines = [f"- states of the demo (4 stages), fresh process with imports: {1000 * r['cold']:.0f} ms",
             f"- first call after the imports: {1000 * r['first']:.0f} ms (target <= 200)",
             f"- warm median of 20: {1000 * r['warm']:.1f} ms (target <= 200); no kernel started",
             f"- baseline, a no-op `mlnb run` from the shell: {noop:.2f} s (states: {r['warm'] / noop:.3f}x of it)"]
    print('\n'.join(lines))
    if write:
        with open(Path(__file__).parent/'RESULTS.md', 'a') as f:
            f.write(f"\n## bench_lab {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC ({platform.node()}, {os.cpu_count()} cores)\n" + '\n'.join(lines) + '\n')


if __name__ == '__main__': main('--write' in sys.argv)
