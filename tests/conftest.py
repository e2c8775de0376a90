"""Shared fixtures: a real project made by `mlnb new` and run once by `mlnb run` in real kernels."""
import os, subprocess, sys, threading, time
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path
import pytest

os.environ['BENTOML_DO_NOT_TRACK'] = 'true'
os.environ['GX_ANALYTICS_ENABLED'] = 'false'
MLNB = str(Path(sys.executable).parent/'mlnb')
SAMPLE = '150'   # rows of breast-cancer data: small enough for quick kernels, big enough for 5-fold CV


def mlnb(*args, cwd=None, check=True, timeout=900):
    "Run the `mlnb` command; returns the CompletedProcess (text output)."
    r = subprocess.run([MLNB, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0: raise AssertionError(f"mlnb {' '.join(map(str, args))} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture(scope='session')
def project(tmp_path_factory):
    "A scaffolded project after one successful `mlnb run` on a sample."
    root = tmp_path_factory.mktemp('proj')/'shop'
    mlnb('new', root)
    r = mlnb('run', '--params', f'ingest.sample={SAMPLE}', cwd=root)
    return root, r


@contextmanager
def http_server(handler):
    "A real HTTP server on a free loopback port answering with `handler` (a BaseHTTPRequestHandler class): its `host:port`."
    srv = ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try: yield f'127.0.0.1:{srv.server_address[1]}'
    finally:
        srv.shutdown()
        srv.server_close()


def wait_for(f, timeout:float=30, every:float=0.25):
    "The first truthy `f()` within `timeout` seconds, else an AssertionError."
    end = time.time() + timeout
    while not (v := f()):
        if time.time() > end: raise AssertionError(f"{getattr(f, '__name__', f)} still false after {timeout} s")
        time.sleep(every)
    return v
