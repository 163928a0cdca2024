"""Build the series' website into book/_build/html: ``python book/build.py``.

``python book/build.py SOURCE HTML`` builds the pages of another copy of the
repository's README.md, notebooks/ and benchmarks/README.md (the tests do).

Every page is read afresh (``-E``), so that a warning of any page is reported, and
every warning fails the build (``-W``; ``--keep-going`` lists them all first).
"""

import sys
from pathlib import Path

from sphinx.cmd.build import build_main

BOOK = Path(__file__).resolve().parent
HTML = BOOK / "_build" / "html"


def build(source: Path = BOOK.parent, html: Path = HTML) -> int:
    """Build the pages of ``source`` (README.md, notebooks/, benchmarks/) into ``html``.

    Returns Sphinx's exit status: 0 when the build gave no warning.
    """
    doctrees = html.parent / "doctrees"  # outside html/: not published
    args = ["-E", "-a", "-W", "--keep-going", "-q", "-b", "html", "-c", str(BOOK)]
    status = build_main([*args, "-d", str(doctrees), str(source), str(html)])
    if status == 0:
        print(f"Site built: open {html / 'index.html'} in a browser")
    return status


if __name__ == "__main__":
    sys.exit(build(*map(Path, sys.argv[1:3])))
