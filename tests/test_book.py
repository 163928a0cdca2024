"""The website (``./tutorial.sh book``): built from the committed notebooks, then read
page by page in headless Chromium with every host name unresolvable, as on a machine
without network."""

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.repository import colab_url

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "book" / "_build" / "html"
SCREENSHOTS = HTML.parent / "screenshots"  # next to the site, not published with it
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
INSTALL = "apt-get install chromium chromium-driver"  # Debian and Ubuntu package names
pytestmark = pytest.mark.slow  # each test builds the site or starts Chromium: seconds each


def build(*args: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(ROOT / "book" / "build.py"), *map(str, args)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def site() -> Path:
    start = time.perf_counter()
    result = build()
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"site built in {time.perf_counter() - start:.1f} s into {HTML}")
    return HTML


def cells(notebook: Path, kind: str) -> list[dict[str, Any]]:
    return [cell for cell in json.loads(notebook.read_text())["cells"] if cell["cell_type"] == kind]


def title(notebook: Path) -> str:
    """The notebook's first heading, read from the .ipynb itself."""
    for cell in cells(notebook, "markdown"):
        for line in "".join(cell["source"]).splitlines():
            if line.startswith("# "):
                return line[2:].strip()
    raise AssertionError(f"{notebook.name} has no '# ' title")


def figure_count(notebook: Path) -> int:
    """How many images the notebook's committed outputs and markdown cells hold."""
    outputs = sum(
        "image/png" in output.get("data", {})
        for cell in cells(notebook, "code")
        for output in cell.get("outputs", [])
    )
    markdown = sum("".join(cell["source"]).count("![") for cell in cells(notebook, "markdown"))
    badges = sum("colab-badge" in "".join(cell["source"]) for cell in cells(notebook, "markdown"))
    return outputs + markdown - badges  # the site replaces the badge with a header button


def test_site_builds_small_and_local(site: Path) -> None:
    size = sum(path.stat().st_size for path in site.rglob("*") if path.is_file())
    print(f"site size {size / 1e6:.1f} MB")
    assert size < 50e6
    for notebook in NOTEBOOKS:
        page = site / "notebooks" / notebook.with_suffix(".html").name
        assert page.is_file(), f"{notebook.name} has no page"
        # The download button's file is the committed notebook.
        download = site / "_sources" / "notebooks" / notebook.name
        assert json.loads(download.read_text()) == json.loads(notebook.read_text())


def test_a_warning_fails_the_build(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(ROOT / "notebooks", source / "notebooks", ignore=shutil.ignore_patterns(".*"))
    (source / "benchmarks").mkdir()
    shutil.copy(ROOT / "benchmarks" / "README.md", source / "benchmarks")
    readme = (ROOT / "README.md").read_text()
    broken = "[a notebook that is not there](notebooks/99_missing.ipynb)"
    (source / "README.md").write_text(f"{readme}\n{broken}\n\n#### A heading two levels down\n")
    result = build(source, tmp_path / "html")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "99_missing.ipynb" in output, output
    assert "Non-consecutive header level increase" in output, output


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = next(filter(None, map(shutil.which, ["chromium", "chromium-browser"])), None)
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip(f"headless Chromium and chromedriver are not installed: {INSTALL}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in [
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--window-size=1280,1400",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # offline: a CDN request fails loudly
    ]:
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(options=options, service=Service(driver))
    chrome.set_page_load_timeout(30)
    yield chrome
    chrome.quit()


def load(browser: Any, page: Path) -> None:
    """Open a page and wait until its images and its math are done."""
    browser.get(page.as_uri())
    browser.execute_async_script(
        """const done = arguments[arguments.length - 1];
        const images = [...document.images].map(i => i.decode().catch(() => null));
        const math = window.MathJax?.startup?.promise ?? Promise.resolve();
        Promise.all([...images, math]).then(() => done(true));"""
    )


def check_page(browser: Any, page: Path) -> dict[str, Any]:
    """What every page must show: a title, its images, its math, and no errors."""
    load(browser, page)
    assert browser.title.endswith("Deep learning with JAX"), (page, browser.title)
    facts = browser.execute_script(
        """const images = [...document.querySelectorAll("article img")];
        return {
          broken: images.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src),
          images: images.length,
          math: document.querySelectorAll("article .math").length,
          typeset: document.querySelectorAll("article .math mjx-container").length,
          mathErrors: document.querySelectorAll("mjx-merror").length,
          remote: performance.getEntriesByType("resource").map(r => r.name)
            .filter(name => !name.startsWith("file:")),
          colab: [...document.querySelectorAll("a.btn-colab-button")].map(a => a.href),
        };"""
    )
    assert facts["broken"] == [], (page, facts["broken"])
    assert facts["remote"] == [], (page, facts["remote"])
    assert facts["typeset"] == facts["math"] and facts["mathErrors"] == 0, (page, facts)
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == [], (page, errors)
    return facts


def test_every_page_renders(site: Path, browser: Any) -> None:
    start = time.perf_counter()
    pages = [
        page
        for page in sorted(site.rglob("*.html"))
        if page.relative_to(site).parts[0] not in {"_static", "index.html", "search.html"}
    ]
    math = 0
    for page in pages:
        facts = check_page(browser, page)
        math += facts["math"]
        notebook = ROOT / "notebooks" / page.with_suffix(".ipynb").name
        if page.parent.name == "notebooks":
            assert browser.title.startswith(title(notebook)), (page, browser.title)
            assert facts["images"] == figure_count(notebook), (page, facts["images"])
            assert facts["colab"] == [colab_url(notebook.name)], (page, facts["colab"])
        else:
            assert facts["colab"] == [], page
    assert math > 0, "no page had math to typeset"
    # index.html, the folder's entry point, opens the landing page.
    load(browser, site / "index.html")
    assert browser.current_url == (site / "README.html").as_uri()
    print(f"{len(pages) + 1} pages checked in {time.perf_counter() - start:.1f} s")


def test_navigation_lists_the_notebooks_in_order(site: Path, browser: Any) -> None:
    load(browser, site / "README.html")
    links = browser.execute_script(
        """return [...document.querySelectorAll("nav.bd-links a.reference.internal")]
        .map(a => a.getAttribute("href"));"""
    )
    expected = [f"notebooks/{notebook.stem}.html" for notebook in NOTEBOOKS]
    assert [link for link in links if link.startswith("notebooks/")] == expected
    assert "benchmarks/README.html" in links
    # README's own links to the notebooks lead to their pages.
    readme_links = browser.execute_script(
        """return [...document.querySelectorAll("article a.reference.internal")]
        .map(a => a.getAttribute("href"));"""
    )
    assert {f"notebooks/{notebook.stem}.html" for notebook in NOTEBOOKS} <= set(readme_links)
    assert "benchmarks/README.html" in readme_links


def test_search_finds_a_word_of_notebook_03(site: Path, browser: Any) -> None:
    notebook = next(path for path in NOTEBOOKS if path.name.startswith("03_"))
    word = max(title(notebook).split(), key=len)  # a word of its title, the longest
    browser.get(f"{(site / 'search.html').as_uri()}?q={word}")
    deadline = time.monotonic() + 20
    found: list[str] = []
    while not found and time.monotonic() < deadline:
        found = browser.execute_script(
            """return [...document.querySelectorAll("#search-results li a")]
            .map(a => a.getAttribute("href"));"""
        )
        time.sleep(0.1)
    assert any(f"notebooks/{notebook.stem}.html" in link for link in found), (word, found)
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == [], errors


def test_screenshots_for_a_person(site: Path, browser: Any) -> None:
    """The landing page, and notebook 05 at its title and at its first figure."""
    SCREENSHOTS.mkdir(exist_ok=True)
    load(browser, site / "README.html")
    shots = [SCREENSHOTS / "landing.png"]
    browser.save_screenshot(shots[-1])
    notebook = next(path for path in NOTEBOOKS if path.name.startswith("05_"))
    load(browser, site / "notebooks" / notebook.with_suffix(".html").name)
    shots.append(SCREENSHOTS / "notebook05.png")
    browser.save_screenshot(shots[-1])
    browser.execute_script(
        """const image = document.querySelector("article .cell_output img");
        if (image) image.scrollIntoView({block: "center"});"""
    )
    shots.append(SCREENSHOTS / "notebook05_figure.png")
    browser.save_screenshot(shots[-1])
    for shot in shots:
        assert shot.stat().st_size > 10_000, shot  # a blank page compresses to less
    print("screenshots:", *shots)
