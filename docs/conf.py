"""Sphinx configuration of the mlnb site: myst-nb reads the notebooks docs/build.py executed and translated (never executes them),
furo styles them, MathJax is the copy vendored from npm (docs/_static/vendor): a built page requests nothing from the network."""
from pathlib import Path

project = 'mlnb'
author = 'mlnb team'
copyright = '2026, mlnb team'
extensions = ['myst_nb']
here = Path(__file__).parent

# myst-nb renders the saved outputs; show_doc's markdown output is read as MyST
nb_execution_mode = 'off'
nb_render_markdown_format = 'myst'
nb_merge_streams = True
# no CDN: widgets show their static HTML fallback (text/html ranks above the widget view), and no require.js / widget manager is linked
nb_ipywidgets_js = {}
nb_mime_priority_overrides = [('html', 'application/vnd.jupyter.widget-view+json', None),
                              ('html', 'application/vnd.jupyter.widget-state+json', None)]
myst_enable_extensions = ['dollarmath', 'amsmath', 'colon_fence', 'deflist']
myst_all_links_external = True          # the build writes relative .html links with docutils anchors; the browser test checks each
myst_heading_anchors = 0

html_theme = 'furo'
html_title = 'mlnb'
html_static_path = ['_static']
html_css_files = ['mlnb.css']
html_show_sourcelink = False
html_copy_source = False
exclude_patterns = ['_build', '_site', '**.ipynb_checkpoints']
mathjax_path = 'vendor/mathjax@3.2.2/es5/tex-mml-chtml.js'
suppress_warnings = ['myst.header']     # show_doc outputs start at ### under a page's ## sections
