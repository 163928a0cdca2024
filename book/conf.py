"""Sphinx configuration of the series' website (built by ``./tutorial.sh book``).

The source folder is the repository root, so that README.md's links to
notebooks/*.ipynb and benchmarks/README.md resolve as they do on GitHub; only the
files in ``include_patterns`` are read. Notebooks are rendered with their committed
outputs, never executed (nbval re-executes them in the tests).
"""

import json
import shutil
import sys
from pathlib import Path

import mathjax  # django-static-mathjax: a copy of MathJax 3, so that math renders offline

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from docutils import nodes  # noqa: E402
from sphinx.util import logging  # noqa: E402

from helpers.notebook_header import colab_cell_source  # noqa: E402
from helpers.repository import BRANCH, colab_url, repository_url  # noqa: E402

logger = logging.getLogger(__name__)

project = "Introduction to deep learning with JAX, Flax and Optax"
copyright = "the authors; Apache License 2.0"
root_doc = "README"  # the landing page; book/navigation.md is appended to it
include_patterns = ["README.md", "notebooks/*.ipynb", "benchmarks/README.md"]
exclude_patterns = [".*", "book/_build", "mutants"]  # ".*": .venv, .git; not even walked

extensions = ["myst_nb", "sphinx_copybutton", "sphinx.ext.githubpages"]  # .nojekyll: _static/
nb_execution_mode = "off"  # committed outputs, as they are
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3  # README's "#cifar-10"-style links work
suppress_warnings = []  # none: every warning fails the build (book/build.py passes -W)

# MathJax from the build folder instead of a CDN. Only the parts a page loads: the
# combined TeX component, its fonts, and the TeX extensions it may load on demand.
_MATHJAX = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
_MATHJAX_COPY = Path(__file__).parent / "_build" / "mathjax"
for part in ["tex-mml-chtml.js", "output/chtml/fonts/woff-v2", "input/tex/extensions"]:
    source, target = _MATHJAX / part, _MATHJAX_COPY / "mathjax" / part
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target, dirs_exist_ok=True)
    else:
        shutil.copy2(source, target)
html_static_path = [str(_MATHJAX_COPY), "_static"]
html_css_files = ["site.css"]  # hides a second search box (sphinx-book-theme issue 986)
mathjax_path = "mathjax/tex-mml-chtml.js"

html_theme = "sphinx_book_theme"
html_title = "Deep learning with JAX"
html_theme_options = {
    "repository_url": repository_url(),
    "repository_branch": BRANCH,
    "use_repository_button": True,
    "use_download_button": True,  # the .ipynb of a notebook page
    "show_toc_level": 2,
}
html_context = {"default_mode": "auto"}  # light or dark as the reader's system is
html_show_search_summary = False  # a summary is fetched, which browsers refuse for file://
templates_path = ["_templates"]
html_additional_pages = {"index": "redirect.html"}  # index.html opens README.html
html_copy_source = True  # the download button serves _sources/<page>.ipynb


def add_colab_button(app, pagename, templatename, context, doctree) -> None:
    """A Colab button on every notebook page, with the URL the notebooks' badges use.

    In a "launch" menu like the one sphinx-book-theme makes (its own builds the URL
    from the repository's parts; this one is helpers.repository's, the only one).
    """
    if pagename.startswith("notebooks/"):
        colab = {
            "type": "link",
            "text": "Colab",
            "tooltip": "Open in Colab",
            "icon": "_static/images/logo_colab.png",
            "url": colab_url(Path(pagename).name + ".ipynb"),
            "label": "colab-button",
        }
        context["header_buttons"].append(
            {
                "type": "group",
                "tooltip": "Run this notebook",
                "icon": "fas fa-rocket",
                "buttons": [colab],
                "label": "launch-buttons",
            }
        )


def prepare_notebook(app, docname: str, source: list[str]) -> None:
    """Two things myst-nb does not do by itself, done on the notebook's JSON.

    - Leave out the Colab install cell (plumbing for Colab, not a lesson) with myst-nb's
      own mechanism, a "remove-cell" tag, on the cell whose source is the one
      helpers.notebook_header writes.
    - Show images attached to markdown cells (``attachment:name``, which myst-nb does
      not resolve) by writing each into the page as a ``data:`` URI.
    """
    if not docname.startswith("notebooks/"):
        return
    notebook = json.loads(source[0])
    for cell in notebook["cells"]:
        text = "".join(cell["source"])
        if text == colab_cell_source():
            cell.setdefault("metadata", {}).setdefault("tags", []).append("remove-cell")
        for name, data in cell.get("attachments", {}).items():
            kind, encoded = next(iter(data.items()))  # one MIME type, base64 (nbformat)
            encoded = "".join(encoded).replace("\n", "")
            text = text.replace(f"attachment:{name}", f"data:{kind};base64,{encoded}")
        cell["source"] = text
    source[0] = json.dumps(notebook)


def drop_remote_images(app, doctree) -> None:
    """Keep every image local: an offline reader would not see one from the network.

    The one such image the notebooks have is their "Open in Colab" badge; the site
    drops it, as every notebook page has a Colab button in its header. Any other
    fails the build.
    """
    for image in list(doctree.findall(nodes.image)):
        if not image["uri"].startswith(("http://", "https://")):
            continue
        link = image.parent
        if isinstance(link, nodes.reference) and link.get("refuri", "").startswith(colab_url("")):
            paragraph = link.parent
            paragraph.remove(link)
            if not paragraph.astext().strip():
                paragraph.parent.remove(paragraph)
        else:
            uri = image["uri"]
            logger.warning(f"image from the network, missing offline: {uri}", location=image)


def add_navigation(app, docname: str, source: list[str]) -> None:
    """Append the site's navigation (toctrees) to README.md, which GitHub shows as is."""
    if docname == root_doc:
        source[0] += (Path(__file__).parent / "navigation.md").read_text()


def setup(app) -> None:
    app.connect("source-read", add_navigation)
    app.connect("source-read", prepare_notebook)
    app.connect("doctree-read", drop_remote_images, priority=100)  # before Sphinx's images
    # After sphinx-book-theme has made its header buttons (priority 501).
    app.connect("html-page-context", add_colab_button, priority=502)
