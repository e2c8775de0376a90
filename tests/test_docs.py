"""The documentation site `make docs` builds (docs/_site): every page checked for broken internal links, error outputs and widgets
rendered blank; the home page, a reference page with math (monitoring) and a tutorial opened in headless Chromium (Debian's, driven by
Playwright: nothing is downloaded) from file:// with every other request blocked: nothing requested off the disk, no script error,
math typeset by the vendored MathJax. Screenshots: tests/artifacts/docs_home.png, docs_reference.png, docs_tutorial.png."""
import os, re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit
import pytest

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT/'docs'/'_site'
CHROMIUM = '/usr/bin/chromium'
ARTIFACTS = Path(__file__).parent/'artifacts'
OPENED = {'home': 'index.html', 'reference': 'monitoring.html', 'tutorial': 'tutorials/monitoring_and_feedback.html'}
WIDGET_REPR = re.compile(r'^\s*(VBox|HBox|Box|GridBox|Button|Output|HTML|Tab|Accordion|IntProgress|FloatProgress|Label|Dropdown|Text|Textarea|ToggleButtons)\(')
pytestmark = pytest.mark.skipif(not (SITE/'index.html').exists(), reason='docs/_site missing: `make docs` builds it (make test does)')


class Page(HTMLParser):
    "Ids, links and the text of each cell output of one built page."
    def __init__(self):
        super().__init__()
        self.ids, self.links, self.outputs, self.errors, self._depth, self._out = set(), [], [], [], 0, None
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get('id'): self.ids.add(a['id'])
        if tag == 'a' and a.get('href'): self.links.append(a['href'])
        cls = (a.get('class') or '').split()
        if self._out is not None: self._depth += 1
        elif tag == 'div' and 'output' in cls:
            self._out, self._depth = [], 1
            if {'error', 'traceback'} & set(cls): self.errors.append(' '.join(cls))
    def handle_endtag(self, tag):
        if self._out is None: return
        self._depth -= 1
        if self._depth == 0: self.outputs.append(''.join(self._out)); self._out = None
    def handle_data(self, data):
        if self._out is not None: self._out.append(data)


def parse(f:Path) -> Page:
    p = Page()
    p.feed(f.read_text(encoding='utf-8'))
    return p


def site_pages() -> list[Path]:
    return sorted(f for f in SITE.rglob('*.html') if '_static' not in f.parts)


def broken_links(pages:dict) -> list[str]:
    "Internal links (relative hrefs) whose file is missing or whose #fragment names no id on the target page."
    bad = []
    for f, p in pages.items():
        for href in p.links:
            if urlsplit(href).scheme or href.startswith('//'): continue
            path, frag = urldefrag(href)
            target = (f.parent/unquote(path)).resolve() if path else f
            if target.is_dir(): target = target/'index.html'
            if not target.exists(): bad.append(f'{f.relative_to(SITE)}: {href} (no file)')
            elif frag and target.suffix == '.html' and unquote(frag) not in pages.get(target, parse(target)).ids:
                bad.append(f'{f.relative_to(SITE)}: {href} (no id {frag!r})')
    return bad


def test_site_has_every_page():
    "One reference page per numbered notebook, the five tutorials and the explanations, each linked from the home page."
    nbs = ROOT/'nbs'
    want = {re.sub(r'^\d+[a-z]?_', '', f.stem) + '.html' for f in nbs.glob('*.ipynb') if not f.name.startswith('_')}
    want |= {f'{d}/{f.stem}.html' for d in ('tutorials', 'explanations') for f in (nbs/d).glob('*.ipynb') if not f.name.startswith('_')}
    have = {str(f.relative_to(SITE)) for f in site_pages()}
    assert want <= have, f'pages missing: {sorted(want - have)}'
    assert len([w for w in want if w.startswith('tutorials/')]) >= 5
    home = parse(SITE/'index.html')
    linked = {str((SITE/urldefrag(h)[0]).resolve().relative_to(SITE.resolve())) for h in home.links if not urlsplit(h).scheme and urldefrag(h)[0]}
    assert want - {'index.html'} <= linked, f'not in the table of contents: {sorted(want - linked - {"index.html"})}'


def test_no_broken_link_error_or_blank_widget_anywhere():
    "Across the whole site: no internal link to a missing page or anchor, no error output, no widget shown as its bare repr."
    pages = {f.resolve(): parse(f) for f in site_pages()}
    assert not broken_links(pages), '\n'.join(broken_links(pages))
    errors = [f'{f.name}: {e}' for f, p in pages.items() for e in p.errors]
    assert not errors, errors
    tracebacks = [f'{f.name}: {o[:200]}' for f, p in pages.items() for o in p.outputs if 'Traceback (most recent call last)' in o]
    assert not tracebacks, tracebacks
    blank = [f'{f.name}: {o.strip()[:120]}' for f, p in pages.items() for o in p.outputs if WIDGET_REPR.match(o)]
    assert not blank, f'widgets with no static fallback: {blank}'
    for f in pages: assert 'application/vnd.jupyter.widget' not in f.read_text(encoding='utf-8'), f'{f.name} embeds a widget view'


@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"{CHROMIUM} missing: `make chromium` installs Debian's chromium")
@pytest.mark.timeout(180)
def test_pages_in_chromium_offline():
    "Home, a reference page and a tutorial from file:// with everything else blocked: no request leaves the disk, no script error, math typeset."
    from playwright.sync_api import sync_playwright
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=['--disable-dev-shm-usage'])
        try:
            for name, rel in OPENED.items():
                page = browser.new_page(viewport={'width': 1300, 'height': 1400})
                blocked, failed, script_errors = [], [], []
                page.route('**/*', lambda route: route.continue_() if route.request.url.startswith('file:') else (blocked.append(route.request.url), route.abort()))
                page.on('requestfailed', lambda r: failed.append(r.url))
                page.on('pageerror', lambda e: script_errors.append(str(e)))
                page.on('console', lambda m: script_errors.append(m.text) if m.type == 'error' else None)
                page.goto((SITE/rel).resolve().as_uri(), wait_until='load')
                assert page.title() and 'mlnb' in page.title()
                math = page.locator('.math').count()
                if math:
                    page.wait_for_function('() => window.MathJax && MathJax.startup && MathJax.startup.promise', timeout=30_000)
                    page.evaluate('() => MathJax.startup.promise')
                    page.wait_for_function('n => document.querySelectorAll("mjx-container").length >= n', arg=math, timeout=30_000)
                    assert page.locator('mjx-merror').count() == 0, f'{rel}: MathJax could not typeset a formula'
                hrefs = page.eval_on_selector_all('a[href]', 'as => as.map(a => a.getAttribute("href"))')
                p = parse(SITE/rel)
                p.links = hrefs
                assert not broken_links({(SITE/rel).resolve(): p}), broken_links({(SITE/rel).resolve(): p})
                page.screenshot(path=str(ARTIFACTS/f'docs_{name}.png'), full_page=False)
                assert not blocked, f'{rel} requested from the network: {blocked}'
                assert not [u for u in failed if u.startswith('file:')], f'{rel}: missing files {failed}'
                assert not script_errors, f'{rel}: {script_errors}'
                if name == 'reference': assert math >= 5, f'{rel}: expected its formulas, found {math}'
                if name == 'tutorial':
                    assert page.locator('.cell_output').count() >= 5, f'{rel}: a tutorial shows its outputs'
                    assert page.locator('mjx-container').count() >= 1, f'{rel}: the PSI formula is typeset'
                page.close()
        finally:
            browser.close()
