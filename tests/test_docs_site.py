"""The documentation site: ``mkdocs build --strict`` (mkdocs.yml, docs/,
the API reference from the docstrings) succeeds into a temporary directory,
and the built pages, rendered by headless Chromium, show their title and
the site's navigation."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def needed(what: str, found: object) -> None:
    if not found:
        message = f"{what} is not installed (.ci/run installs it)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    needed("mkdocs (pip install -e '.[test]')", shutil.which("mkdocs", path=str(
        pathlib.Path(sys.executable).parent)) or shutil.which("mkdocs"))
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def render(page: pathlib.Path, tmp_path: pathlib.Path) -> str:
    """The page's DOM after its scripts ran, as headless Chromium shows it."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    needed("chromium (apt-get install chromium)", browser)
    done = subprocess.run(
        [str(browser), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=3000",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, HOME=str(tmp_path)))
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def title(dom: str) -> str:
    match = re.search(r"<title>(.*?)</title>", dom, re.S)
    assert match, "no <title>"
    return match.group(1).strip()


def primary_nav(dom: str) -> str:
    match = re.search(r'<nav class="md-nav md-nav--primary".*?</nav>\s*</div>', dom, re.S)
    assert match, "no primary navigation"
    return match.group(0)


def test_the_site_builds_strictly_and_keeps_its_pages(site: pathlib.Path) -> None:
    for page in ("index.html", "quickstart/index.html", "migration/index.html",
                 "reference/limiters/index.html", "security/index.html",
                 "changelog/index.html", "fleet/index.html"):
        assert (site / page).is_file(), page
    assert not (ROOT / "site").exists(), "mkdocs wrote into the repository"


def test_the_index_shows_its_title_and_the_navigation(site: pathlib.Path, tmp_path) -> None:
    dom = render(site / "index.html", tmp_path)
    assert title(dom) == "fastlimit"
    assert re.search(r"<h1[^>]*>fastlimit", dom)
    nav = primary_nav(dom)
    for label in ("Quickstart", "Policies", "Redis", "Migration", "API reference", "Changelog"):
        assert f">{label}" in nav or f"{label}\n" in nav, label


def test_a_reference_page_shows_the_api_and_the_navigation(site: pathlib.Path,
                                                            tmp_path) -> None:
    dom = render(site / "reference" / "limiters" / "index.html", tmp_path)
    assert title(dom).startswith("Limiters"), title(dom)
    assert 'id="fastlimit.limiters.limiter.Limiter"' in dom
    assert 'id="fastlimit.limiters.limiter.Limiter.allow"' in dom
    assert "Quickstart" in primary_nav(dom)
