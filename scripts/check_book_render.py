#!/usr/bin/env python3
"""Check that the built book renders in a real browser (headless Chromium).

Usage::

    python scripts/check_book_render.py _build/html [--page intro.html --page book/07_family.html]

For the front page and a chapter with figures (by default the first of chapters 7, 4 and 5 that
was built), the script loads the page from ``file://`` in headless Chromium, takes a screenshot
and dumps the DOM *after* the page's scripts ran, then checks that

* the page has its title (the HTML ``<title>`` and a top-level ``<h1>``);
* chapter pages (``book/NN_*.html``) show rendered figures: ``<img>`` elements whose source is a ``data:`` URI or a
  file under ``_images/`` that exists, and no broken image sources;
* chapter pages contain typeset math (MathJax output, or at least MathJax loaded and math
  markup present);
* no error traces leaked into the page (Python tracebacks, error or stderr output cells,
  Sphinx "problematic" nodes and system messages, OS errors, unresolved citations);
* the screenshot was written and is not empty.

It exits with status 0 when every check passes and 1 otherwise, printing one line per failed
check; status 2 means Chromium could not be found or run. Chromium is Debian's ``chromium``
package (``apt-get install chromium``; ``make chromium`` does it), or set ``$CHROMIUM``.
"""
from __future__ import annotations

import argparse
import html
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional
from urllib.parse import unquote, urlparse

CHAPTERS_WITH_FIGURES = ("book/07_family.html", "book/04_dropblock_algorithm.html",
                         "book/05_dropblock_gamma.html")

ERROR_PATTERNS = [
    (re.compile(r"Traceback \(most recent call last\)"), "a Python traceback"),
    (re.compile(r'class="[^"]*\boutput[^"]*\berror\b'), "an error output cell"),
    (re.compile(r'class="[^"]*\bproblematic\b'), "a Sphinx 'problematic' node (broken markup or role)"),
    (re.compile(r'class="[^"]*\bsystem-message\b'), "a Sphinx system message"),
    (re.compile(r'class="[^"]*\boutput[^"]*\bstderr\b'), "a stderr output cell (a warning?)"),
    (re.compile(r'class="[^"]*\bmyst-nb-error\b|class="[^"]*\bcell_output[^"]*\berror\b'),
     "a notebook error output"),
    (re.compile(r"\[Errno \d+\]"), "an OS error message"),
]


def find_chromium() -> Optional[str]:
    candidates = [os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome",
                  "/usr/bin/chromium"]
    for c in candidates:
        if c and (shutil.which(c) or Path(c).is_file()):
            return shutil.which(c) or c
    return None


def chromium_args(chromium: str, profile: str) -> List[str]:
    return [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--hide-scrollbars", "--no-first-run", "--no-default-browser-check",
            "--disable-extensions", "--allow-file-access-from-files",
            f"--user-data-dir={profile}", "--virtual-time-budget=15000",
            "--run-all-compositor-stages-before-draw", "--window-size=1280,2000"]


def run_chromium(chromium: str, url: str, extra: List[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run(chromium_args(chromium, profile) + extra + [url],
                              capture_output=True, text=True, timeout=timeout)


def dump_dom(chromium: str, page: Path, timeout: float) -> str:
    proc = run_chromium(chromium, page.as_uri(), ["--dump-dom"], timeout)
    if proc.returncode != 0 or "<html" not in proc.stdout.lower():
        raise RuntimeError(f"chromium --dump-dom failed for {page} (exit {proc.returncode}): "
                           f"{proc.stderr.strip()[-800:]}")
    return proc.stdout


def screenshot(chromium: str, page: Path, out: Path, timeout: float) -> None:
    proc = run_chromium(chromium, page.as_uri(), [f"--screenshot={out}"], timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium --screenshot failed for {page} (exit {proc.returncode}): "
                           f"{proc.stderr.strip()[-800:]}")


def strip_tags(text: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", text))


def visible_text(dom: str) -> str:
    """The page's text without scripts, styles and the source-code listings."""
    dom = re.sub(r"(?is)<(script|style|noscript)\b.*?</\1>", " ", dom)
    dom = re.sub(r'(?is)<div class="[^"]*\bcell_input\b.*?</pre>', " ", dom)
    dom = re.sub(r'(?is)<div class="highlight[^"]*">.*?</pre>', " ", dom)
    return strip_tags(dom)


def check_title(dom: str, problems: List[str]) -> str:
    m = re.search(r"(?is)<title>(.*?)</title>", dom)
    title = html.unescape(m.group(1)).strip() if m else ""
    if not title:
        problems.append("no <title> in the rendered page")
    h1 = re.search(r"(?is)<h1[^>]*>(.*?)</h1>", dom)
    if not h1 or not strip_tags(h1.group(1)).strip():
        problems.append("no <h1> heading in the rendered page")
    return title


def check_images(dom: str, page: Path, html_root: Path, problems: List[str]) -> int:
    """Count rendered figures; report missing or broken image files."""
    figures = 0
    for m in re.finditer(r"(?is)<img\b[^>]*?\bsrc=\"([^\"]*)\"", dom):
        src = html.unescape(m.group(1))
        if src.startswith("data:image/"):
            figures += 1
            continue
        parsed = urlparse(src)
        if parsed.scheme in ("http", "https"):
            continue                       # badges, launch-button icons: not ours to check
        path = Path(unquote(parsed.path)) if parsed.scheme == "file" else \
            (page.parent / unquote(parsed.path)).resolve()
        if not path.is_file():
            problems.append(f"image source does not exist: {src}")
        elif path.stat().st_size == 0:
            problems.append(f"image file is empty: {src}")
        elif "_images" in path.parts:
            figures += 1
    return figures


def check_math(dom: str, problems: List[str]) -> str:
    if re.search(r"(?i)<mjx-container\b|class=\"MathJax", dom):
        return "typeset by MathJax"
    has_markup = re.search(r'class="[^"]*\bmath\b', dom) is not None
    loads_mathjax = re.search(r"(?i)<script[^>]+mathjax", dom) is not None
    if has_markup and loads_mathjax:
        return "math markup present, MathJax loaded (not typeset offline)"
    if not has_markup:
        problems.append("no math markup (class=\"math\") in a page that should have formulas")
    if not loads_mathjax:
        problems.append("MathJax is not loaded")
    return "missing"


def check_errors(dom: str, problems: List[str]) -> None:
    text = visible_text(dom)
    for pattern, what in ERROR_PATTERNS:
        haystack = dom if pattern.pattern.startswith("class=") else text
        m = pattern.search(haystack)
        if m:
            start = max(m.start() - 80, 0)
            snippet = " ".join(haystack[start:m.end() + 80].split())
            problems.append(f"{what} in the page: ...{snippet}...")
    for m in re.finditer(r"\[\?\?\]|\?\?\]|citation not found", text):
        problems.append("an unresolved citation in the page")
        break


def check_page(chromium: str, html_root: Path, rel: str, shots: Path, *, chapter: bool,
               timeout: float) -> List[str]:
    page = html_root / rel
    problems: List[str] = []
    if not page.is_file():
        return [f"{rel}: page not built"]
    try:
        dom = dump_dom(chromium, page, timeout)
        shot = shots / (rel.replace("/", "_") + ".png")
        screenshot(chromium, page, shot, timeout)
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        return [f"{rel}: {err}"]
    if not shot.is_file() or shot.stat().st_size < 1000:
        problems.append("the screenshot is missing or empty")
    title = check_title(dom, problems)
    figures = check_images(dom, page, html_root, problems)
    math = check_math(dom, problems) if chapter else "not required"
    if chapter and figures == 0:
        problems.append("no rendered figure (<img> with a data: URI or an _images/ file)")
    check_errors(dom, problems)
    status = "ok" if not problems else "FAILED"
    print(f"{status:6s} {rel}: title {title!r}, {figures} figure(s), math {math}, "
          f"screenshot {shot.stat().st_size if shot.is_file() else 0} bytes")
    return [f"{rel}: {p}" for p in problems]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("html_root", type=Path, help="the built book, e.g. _build/html")
    parser.add_argument("--page", action="append", default=[],
                        help="page to check, relative to html_root (repeatable); the default is "
                             "the front page and one chapter with figures")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds allowed for each Chromium run (default 120)")
    parser.add_argument("--keep-screenshots", type=Path, default=None,
                        help="folder to keep the screenshots in (default: a temporary folder)")
    args = parser.parse_args(argv)

    root = args.html_root.resolve()
    if not (root / "index.html").is_file():
        print(f"error: {root} has no index.html; build the book first (make book)", file=sys.stderr)
        return 1
    chromium = find_chromium()
    if chromium is None:
        print("error: Chromium not found; install Debian's 'chromium' package (make chromium) "
              "or set $CHROMIUM", file=sys.stderr)
        return 2

    # numbered chapter pages (book/NN_*.html) must show figures and math; other pages need not
    pages = [(p, re.match(r"\d\d_", Path(p).name) is not None) for p in args.page]
    if not pages:
        front = "book/intro.html" if (root / "book/intro.html").is_file() else "index.html"
        chapter = next((c for c in CHAPTERS_WITH_FIGURES if (root / c).is_file()), None)
        if chapter is None:
            print(f"error: none of {', '.join(CHAPTERS_WITH_FIGURES)} was built", file=sys.stderr)
            return 1
        pages = [(front, False), (chapter, True)]

    with tempfile.TemporaryDirectory(prefix="book-render-") as tmp:
        shots = args.keep_screenshots or Path(tmp)
        shots.mkdir(parents=True, exist_ok=True)
        problems: List[str] = []
        for rel, is_chapter in pages:
            problems += check_page(chromium, root, rel, shots, chapter=is_chapter,
                                   timeout=args.timeout)
    if problems:
        print(f"\nbook render check FAILED ({len(problems)} problem(s)):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print(f"book render check passed: {len(pages)} page(s) rendered in {Path(chromium).name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
