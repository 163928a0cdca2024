"""Build the series' website into book/_build/html: ``python book/build.py``.

Every page is read afresh (``-E``), so that a warning of any page is reported, and
every warning fails the build (``-W``; ``--keep-going`` lists them all first).
"""

import sys
from pathlib import Path

from sphinx.cmd.build import build_main

BOOK = Path(__file__).resolve().parent
HTML = BOOK / "_build" / "html"


def main() -> int:
    doctrees = BOOK / "_build" / "doctrees"  # outside html/: not published
    args = ["-E", "-a", "-W", "--keep-going", "-q", "-b", "html", "-c", str(BOOK)]
    status = build_main([*args, "-d", str(doctrees), str(BOOK.parent), str(HTML)])
    if status == 0:
        print(f"Site built: open {HTML / 'index.html'} in a browser")
    return status


if __name__ == "__main__":
    sys.exit(main())
