# mlnb: `make demo` runs the demo project, `make test` runs every test.
# Each target bootstraps .venv on first use and again whenever pyproject.toml changes.
SHELL := /bin/bash
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export BENTOML_DO_NOT_TRACK := true
export GX_ANALYTICS_ENABLED := false
# OpenMP threads sleep while they wait: tests run kernels side by side on few cores, and spinning threads starve each other
export OMP_WAIT_POLICY := PASSIVE
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# Byte-compiled modules are written and reused: without them every kernel compiles pandas, sklearn and
# friends from source again (20 s a process on this machine instead of 1 s).
unexport PYTHONDONTWRITEBYTECODE
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: demo test vendor chromium services labextension check-export export-only nbtest pytest bench docs export

$(STAMP): pyproject.toml
	@echo "== setting up $(VENV) (first run, or pyproject.toml changed)"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade uv
	@$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -e '.[dev]'
	@# the venv's JupyterLab gets the mlnb sidebar and its server extension (an editable install skips data-files)
	@mkdir -p $(VENV)/share/jupyter/labextensions $(VENV)/etc/jupyter/jupyter_server_config.d
	@ln -sfn $(CURDIR)/mlnb/labextension $(VENV)/share/jupyter/labextensions/mlnb-lab
	@cp labextension/jupyter-config/mlnb.json $(VENV)/etc/jupyter/jupyter_server_config.d/mlnb.json
	@touch $(STAMP)

demo: $(STAMP) vendor
	$(BIN)/mlnb demo

test: $(STAMP) vendor chromium services check-export nbtest docs pytest

# Great Expectations' Data Docs link Bootstrap, jQuery, Font Awesome and Vega from CDNs: the files named in
# mlnb/static/cdn.json are fetched once from npm into mlnb/static/vendor/ (not committed), which mlnb.validate links instead.
define VENDOR_PY
import json, pathlib, shutil, subprocess, sys, tarfile, tempfile
manifest, out = (pathlib.Path(a) for a in (sys.argv[1:] or ['mlnb/static/cdn.json', 'mlnb/static/vendor']))
files = json.loads(manifest.read_text()).values(); tmp = pathlib.Path(tempfile.mkdtemp())
specs = sorted({f.rsplit('@', 1)[0] + '@' + f.rsplit('@', 1)[1].split('/', 1)[0] for f in files})
for spec in specs:
    name = subprocess.run(['npm', 'pack', '--silent', '--pack-destination', str(tmp), spec], check=True, capture_output=True, text=True).stdout.split()[-1]
    with tarfile.open(tmp/name) as t:
        for f in files:
            if not f.startswith(spec + '/'): continue
            inner = 'package/' + f[len(spec) + 1:]
            for m in t.getmembers():
                if m.isfile() and (m.name == inner or (inner.endswith('/') and m.name.startswith(inner))):
                    dest = out/spec/m.name[len('package/'):]; dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(t.extractfile(m).read())
            if not any((out/spec/f[len(spec) + 1:]).exists() for _ in [0]): sys.exit(f'vendor: {f} is not in {spec}')
shutil.rmtree(tmp)
endef
export VENDOR_PY
vendor: mlnb/static/vendor/.done
mlnb/static/vendor/.done: mlnb/static/cdn.json
	@echo "== vendoring Data Docs' static files from npm"
	@command -v npm >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; }
	@python3 -c "$$VENDOR_PY" mlnb/static/cdn.json mlnb/static/vendor && touch $@

# The documentation site's MathJax (docs/cdn.json), fetched the same way into docs/_static/vendor/ (not committed).
docs/_static/vendor/.done: docs/cdn.json
	@echo "== vendoring MathJax for the docs from npm"
	@command -v npm >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; }
	@python3 -c "$$VENDOR_PY" docs/cdn.json docs/_static/vendor && touch $@

# The browser test (tests/test_browser.py) drives Debian's chromium with Playwright; Playwright never downloads a browser.
chromium:
	@test -x /usr/bin/chromium || { echo "== installing Debian's chromium for the browser test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# Servers the tests start on loopback themselves (never left running): Redis Streams, HAProxy in front of replicas,
# Prometheus and promtool for the alert rules. Debian's packages; their system services are not started here.
SERVICES := redis-server:redis-server haproxy:haproxy prometheus:prometheus promtool:prometheus
services:
	@missing=$$(for s in $(SERVICES); do command -v $${s%%:*} >/dev/null || echo $${s#*:}; done | sort -u | tr "\n" " "); \
	if [ -n "$$missing" ]; then echo "== installing Debian's $$missing for the tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi

# The JupyterLab sidebar's TypeScript (labextension/) is built into mlnb/labextension/, which is committed and shipped:
# `make demo` and `make test` never need Node. After editing labextension/src, `make labextension` rebuilds it.
labextension: mlnb/labextension/package.json
mlnb/labextension/package.json: labextension/package.json labextension/src/*.ts labextension/style/*.css
	cd labextension && ../$(BIN)/jlpm install --immutable && ../$(BIN)/jlpm build

# mlnb/ and README.md are generated from nbs/: fail when regenerating them would change them.
check-export: $(STAMP)
	@before=$$(find mlnb README.md -name '*.py' -o -name README.md | sort | xargs sha256sum); \
	$(MAKE) -s export-only; \
	after=$$(find mlnb README.md -name '*.py' -o -name README.md | sort | xargs sha256sum); \
	if [ "$$before" != "$$after" ]; then \
	  echo "mlnb/ or README.md disagrees with nbs/: regenerating changed them (run make export, commit nbs/, mlnb/ and README.md together)"; \
	  diff <(echo "$$before") <(echo "$$after"); exit 1; fi; \
	echo "== mlnb/ and README.md match nbs/"

export-only:
	@$(BIN)/nbdev-export
	@$(BIN)/jupyter nbconvert --to markdown --stdout nbs/index.ipynb 2>/dev/null > README.md

nbtest: $(STAMP)
	$(BIN)/nbdev-test --n-workers 2 --timing

pytest: $(STAMP)
	$(BIN)/pytest -q -ra

# The documentation site (docs/build.py): executes a copy of every notebook (tutorials included), processes it with nbdev,
# renders with Sphinx + myst-nb + furo (`-W`: a warning fails) into docs/_site/ (not committed); tests/test_docs.py checks it.
DOCS_STAMP := $(VENV)/.installed-docs
$(DOCS_STAMP): $(STAMP)
	@$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -e '.[dev,docs]'
	@touch $@

docs: $(DOCS_STAMP) vendor docs/_static/vendor/.done
	$(BIN)/python docs/build.py

# Each script prints its ratios and appends them, dated, to benchmarks/RESULTS.md.
bench: $(STAMP)
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(BIN)/python $$f --write || exit 1; done

# After editing notebooks: regenerate mlnb/ and README.md, clean the notebooks.
export: $(STAMP) export-only
	$(BIN)/nbdev-clean
