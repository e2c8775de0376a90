"""Build the documentation site from nbs/: execute each notebook (a copy: nbs/ is never written), process it with nbdev's
notebook processors, translate what still speaks Quarto for myst-nb, and render with `sphinx-build -W` into docs/_site.

    python docs/build.py            # what `make docs` runs; executed notebooks are cached in docs/_build/exec
    python docs/build.py --force    # execute every notebook again

nbdev's `nbdev-docs` / `nbdev-proc-nbs` are not used: they download Quarto. The notebooks are executed once, with the
`show_doc` cells nbdev adds already in place, so nbdev's `exec_show_docs` (which runs import cells a second time) is not needed."""
import argparse, concurrent.futures as cf, hashlib, json, multiprocessing as mp, os, re, shutil, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS, DOCS = ROOT/'nbs', ROOT/'docs'
EXEC, SRC, SITE = DOCS/'_build'/'exec', DOCS/'_build'/'src', DOCS/'_site'
SKIP_FLAGS = {'notest', 'slow'}                  # as `nbdev-test`: [tool.nbdev] tst_flags
SECTIONS = {'tutorials': 'Tutorials', 'explanations': 'Explanations'}


def page_name(f:Path) -> str:
    "The page a notebook becomes: `nbs/00_core.ipynb` -> `core`, `nbs/tutorials/x.ipynb` -> `tutorials/x`."
    rel = f.relative_to(NBS).with_suffix('')
    return str(rel.parent/re.sub(r'^\d+[a-z]?_', '', rel.name)) if rel.parent != Path('.') else re.sub(r'^\d+[a-z]?_', '', rel.name)


def notebooks() -> list[Path]:
    "The notebooks that become pages: numbered modules and index, then tutorials and explanations (a leading `_` keeps one out)."
    top = [f for f in sorted(NBS.glob('*.ipynb')) if not f.name.startswith('_')]
    return top + [f for d in SECTIONS for f in sorted((NBS/d).glob('*.ipynb')) if not f.name.startswith('_')]


def tree_hash(*paths) -> str:
    "A hash of the files under `paths` (the library and templates a notebook runs against)."
    h = hashlib.sha256()
    for p in paths:
        for f in sorted(Path(p).rglob('*')) if Path(p).is_dir() else [Path(p)]:
            if f.is_file() and '__pycache__' not in f.parts and f.name != '_modidx.py' and f.suffix in ('.py', '.ipynb', '.ini', '.json', '.md'):
                h.update(str(f.relative_to(ROOT)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()


def _skip(cell) -> bool:
    "Cells the executor leaves out, as `nbdev-test` does: markdown, `#| eval: false` and cells flagged `notest` or `slow`."
    if cell.cell_type != 'code': return True
    d = getattr(cell, 'directives_', None) or {}
    if str((d.get('eval') or ['true'])[0]).lower() == 'false': return True
    return bool(SKIP_FLAGS & d.keys())


def execute(src:str, dest:str) -> tuple[str, float, str|None]:
    "Run notebook `src` in a fresh process (cwd its folder, like `nbdev-test`) with nbdev's `show_doc` cells added; write it to `dest`."
    from execnb.shell import CaptureShell
    from fastcore.foundation import working_directory
    from fastcore.nbio import write_nb
    from nbdev.process import NBProcessor
    from nbdev.processors import add_show_docs, populate_language
    os.environ['IN_TEST'] = '1'
    start, src = time.time(), Path(src)
    proc = NBProcessor(src, procs=[populate_language, add_show_docs], rm_directives=False)
    proc.process()
    k = CaptureShell(src)
    k.run_cell('from nbdev.showdoc import show_doc')
    try:
        with working_directory(src.parent): k.run_all(proc.nb, exc_stop=True, preproc=_skip)
    except Exception as e:
        return str(src), time.time() - start, k.prettytb(fname=src) or f'{type(e).__name__}: {e}'
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    write_nb(proc.nb, dest)
    return str(src), time.time() - start, None


def execute_all(files:list[Path], force:bool, workers:int, keep_going:bool=False) -> None:
    "Execute the notebooks whose source, library or templates changed since their cached copy; fail if any fails."
    import inspect
    lib = tree_hash(ROOT/'mlnb', ROOT/'templates', ROOT/'settings.ini') + inspect.getsource(execute) + inspect.getsource(_skip)
    todo = []
    for f in files:
        dest = EXEC/f.relative_to(NBS)
        key = hashlib.sha256(f.read_bytes() + lib.encode()).hexdigest()
        stamp = dest.with_suffix('.key')
        if force or not dest.exists() or not stamp.exists() or stamp.read_text() != key: todo.append((f, dest, stamp, key))
    print(f'== executing {len(todo)} of {len(files)} notebooks ({len(files) - len(todo)} cached)', flush=True)
    failed = []
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context('spawn'), max_tasks_per_child=1) as pool:
        futs = {pool.submit(execute, str(f), str(dest)): (f, stamp, key) for f, dest, stamp, key in todo}
        for fut in cf.as_completed(futs):
            f, stamp, key = futs[fut]
            name, secs, err = fut.result()
            print(f'   {f.relative_to(ROOT)}: {secs:.1f} s' + (' FAILED' if err else ''), flush=True)
            if err: failed.append((f, err))
            else: stamp.write_text(key)
    for f, err in failed: print(f'\n== {f.relative_to(ROOT)} failed:\n{err}', file=sys.stderr)
    if failed and keep_going:                   # a draft site: the failed notebooks' pages show their source without outputs
        for f, _ in failed: shutil.copy2(f, EXEC/f.relative_to(NBS))
        return print(f'docs: {len(failed)} notebook(s) failed, rendered without outputs (--keep-going)', file=sys.stderr)
    if failed: sys.exit(f'docs: {len(failed)} notebook(s) failed: ' + ', '.join(str(f.relative_to(ROOT)) for f, _ in failed))


# ---- translation: what nbdev's processing leaves for Quarto, made into what myst-nb and Sphinx read
def anchor(a:str) -> str:
    "nbdev's anchor (`store.write`) as the id docutils gives the heading (`store-write`)."
    from docutils.nodes import make_id
    return make_id(a)


def relink(text:str, page:str) -> str:
    "Absolute site links (`/core.html#x`) and links to notebooks (`00_core.ipynb`) -> relative `.html` links with docutils anchors."
    up = '../' * page.count('/')
    def site(m):
        target, frag = m.group(2), m.group(3)
        return f"{m.group(1)}({up}{target}.html{'#' + anchor(frag[1:]) if frag else ''})"
    def nb(m):
        target, frag = m.group(2), m.group(3)
        path = Path(target)
        target = str(path.parent/re.sub(r'^\d+[a-z]?_', '', path.stem)) if str(path.parent) != '.' else re.sub(r'^\d+[a-z]?_', '', path.stem)
        return f"{m.group(1)}({target}.html{'#' + anchor(frag[1:]) if frag else ''})"
    text = re.sub(r'(\]|\bhref=)\(/([\w/.-]+?)\.html(#[^)\s]*)?\)', site, text)
    return re.sub(r'(\])\((?![a-z]+:)([\w/.-]+?)\.ipynb(#[^)\s]*)?\)', nb, text)


def _source(c) -> str:
    return ''.join(c.source) if isinstance(c.source, list) else (c.source or '')


def translate(nb, page:str, fm:dict) -> dict:
    "A plain nbformat notebook for myst-nb: title cell from the front matter, `#|` directives as myst-nb tags, relative links."
    import nbformat
    out = nbformat.v4.new_notebook(metadata={'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'},
                                             'language_info': {'name': 'python'}})
    title, desc = fm.get('title') or page.rsplit('/', 1)[-1], fm.get('description')
    out.cells.append(nbformat.v4.new_markdown_cell(f'# {title}' + (f'\n\n{desc}' if desc else '')))
    for c in nb.cells:
        src = _source(c)
        if c.cell_type == 'raw': continue
        if c.cell_type == 'markdown':
            if src.strip(): out.cells.append(nbformat.v4.new_markdown_cell(relink(src, page)))
            continue
        d = getattr(c, 'directives_', None) or {}
        if (doc := show_doc_markdown(c)) is not None:
            out.cells.append(nbformat.v4.new_markdown_cell(relink(doc, page)))
            continue
        tags = []
        code = '\n'.join(l for l in src.splitlines() if not re.match(r'\s*#\|', l)).strip('\n')
        if str((d.get('echo') or ['true'])[0]).lower() == 'false' or re.match(r'show_doc\(', code) or getattr(c, 'has_sd', False):
            tags.append('remove-input')
        if str((d.get('output') or ['true'])[0]).lower() == 'false': tags.append('remove-output')
        if str((d.get('include') or ['true'])[0]).lower() == 'false': continue
        outputs = [_output(o, page) for o in c.get('outputs', [])]
        if not code and not outputs: continue
        cell = nbformat.v4.new_code_cell(code, outputs=outputs, execution_count=None, metadata={'tags': tags} if tags else {})
        out.cells.append(cell)
    if page == 'index': out.cells.append(nbformat.v4.new_markdown_cell(toctree()))
    nbformat.validate(out)
    return out


def show_doc_markdown(c) -> str|None:
    "The markdown a `show_doc` cell printed, without its rule and its `[source]` link (no git_url is set), as a markdown cell's text."
    if not (getattr(c, 'has_sd', False) or re.match(r'(#\|.*\n)*show_doc\(', _source(c))): return None
    outs = c.get('outputs', [])
    if not outs or any('text/markdown' not in o.get('data', {}) for o in outs): return None
    md = '\n\n'.join(''.join(o['data']['text/markdown']) if isinstance(o['data']['text/markdown'], list) else o['data']['text/markdown'] for o in outs)
    md = re.sub(r'^\s*---\s*\n', '', md)
    return re.sub(r'\[source\]\([^)]*\)(\{[^}]*\})?\s*', '', md)


def _output(o, page:str) -> dict:
    "An output as nbformat wants it: markdown outputs relinked, widget views dropped where a fallback exists, no stray keys."
    import nbformat
    o = json.loads(json.dumps(o))
    if o.get('output_type') in ('display_data', 'execute_result'):
        data = o.get('data', {})
        if 'text/markdown' in data:
            md = data['text/markdown']
            data['text/markdown'] = relink(''.join(md) if isinstance(md, list) else md, page)
        o = {k: v for k, v in o.items() if k in ('output_type', 'data', 'metadata', 'execution_count')}
        o.setdefault('metadata', {})
        if o['output_type'] == 'execute_result': o['execution_count'] = None
    elif o.get('output_type') == 'stream': o = {k: o[k] for k in ('output_type', 'name', 'text')}
    elif o.get('output_type') == 'error': o = {k: o[k] for k in ('output_type', 'ename', 'evalue', 'traceback')}
    return nbformat.from_dict(o)


def heading_ids(nb) -> set[str]:
    "The ids docutils will give the headings of translated notebook `nb` (markup stripped from the heading text)."
    ids = set()
    for c in nb.cells:
        if c.cell_type != 'markdown': continue
        for m in re.finditer(r'^#{1,6}\s+(.+?)\s*$', c.source, re.MULTILINE):
            text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', m.group(1))
            ids.add(anchor(re.sub(r'[`*_]{1,2}(?=\S)|(?<=\S)[`*_]{1,2}', '', text)))
    return ids


def prune_links(nb, page:str, ids:dict) -> None:
    "Unlink `[text](page.html#x)` where `page` has no heading `x` (nbdev links every name it knows; private helpers have no heading)."
    base = Path(page).parent
    def fix(m):
        target, frag = m.group(2), m.group(3)
        known = ids.get(os.path.normpath(base/target)[:-len('.html')])
        return m.group(0) if known is None or frag in known else m.group(1)
    pat = re.compile(r'\[((?:[^\[\]]|\[[^\]]*\])*)\]\((?![a-z]+:)([\w/.-]+\.html)#([^)\s]+)\)')
    for c in nb.cells:
        if c.cell_type == 'markdown': c.source = pat.sub(fix, c.source)
        for o in c.get('outputs', []):
            if 'text/markdown' in o.get('data', {}): o['data']['text/markdown'] = pat.sub(fix, o['data']['text/markdown'])


def toctree() -> str:
    "The site's table of contents, appended to the home page: tutorials, the reference (one page a module), explanations."
    groups = {'Tutorials': [f'tutorials/{f.stem}' for f in sorted((NBS/'tutorials').glob('*.ipynb')) if not f.name.startswith('_')],
              'Reference': [page_name(f) for f in sorted(NBS.glob('*.ipynb')) if not f.name.startswith('_') and f.stem != 'index'],
              'Explanations': [f'explanations/{f.stem}' for f in sorted((NBS/'explanations').glob('*.ipynb')) if not f.name.startswith('_')]}
    return '\n\n'.join(f'```{{toctree}}\n:caption: {c}\n:maxdepth: 1\n\n' + '\n'.join(ps) + '\n```' for c, ps in groups.items() if ps)


def process(f:Path) -> tuple[str, dict]:
    "nbdev's processors (those that need no Quarto) on the executed copy of `f`, then the translation."
    from nbdev.frontmatter import FrontmatterProc
    from nbdev.process import NBProcessor
    from nbdev.processors import add_links, clean_magics, filter_stream_, hide_, hide_line, mv_exports, rm_export, rm_header_dash, strip_ansi, strip_hidden_metadata
    page = page_name(f)
    proc = NBProcessor(EXEC/f.relative_to(NBS), procs=[FrontmatterProc, strip_ansi, hide_line, filter_stream_, rm_header_dash, rm_export,
                                                       clean_magics, hide_, add_links, mv_exports, strip_hidden_metadata], rm_directives=False)
    proc.process()
    return page, translate(proc.nb, page, getattr(proc.nb, 'frontmatter_', {}) or {})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--force', action='store_true', help='execute every notebook again')
    ap.add_argument('--keep-going', action='store_true', help='render a failed notebook without outputs instead of stopping (drafts only)')
    ap.add_argument('--workers', type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args(argv)
    os.environ.setdefault('BENTOML_DO_NOT_TRACK', 'true')
    os.environ.setdefault('GX_ANALYTICS_ENABLED', 'false')
    if not (DOCS/'_static'/'vendor'/'.done').exists(): sys.exit('docs: MathJax is not vendored: run `make docs` (its vendor step fills docs/_static/vendor)')
    t0 = time.time()
    files = notebooks()
    execute_all(files, args.force, args.workers, args.keep_going)
    t1 = time.time()
    import nbformat
    if SRC.exists(): shutil.rmtree(SRC)
    done = dict(process(f) for f in files)
    ids = {page: heading_ids(nb) for page, nb in done.items()}
    for page, nb in done.items():
        prune_links(nb, page, ids)
        dest = SRC/f'{page}.ipynb'
        dest.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, dest)
    for extra in (DOCS/'assets').glob('*'): shutil.copy2(extra, SRC/extra.name)
    t2 = time.time()
    print(f'== processed {len(files)} notebooks ({t2 - t1:.1f} s)', flush=True)
    cmd = [sys.executable, '-m', 'sphinx', '-W', '--keep-going', '-q', '-b', 'html', '-c', str(DOCS), str(SRC), str(SITE)]
    r = subprocess.run(cmd)
    if r.returncode: sys.exit(f'docs: sphinx-build failed ({r.returncode})')
    print(f'== site in {SITE.relative_to(ROOT)}/index.html: executed {t1 - t0:.0f} s, processed {t2 - t1:.0f} s, rendered {time.time() - t2:.0f} s')


if __name__ == '__main__': main()
