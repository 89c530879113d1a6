"""Regenerate this folder's text from Debian's python3.11-doc package (stdlib only).

    apt-get download python3.11-doc && dpkg -x python3.11-doc_*.deb x
    python3 extract.py x/usr/share/doc/python3.11/html

Each selected HTML page's main body becomes one plain-text file: headings and paragraphs
separated by blank lines, code blocks and interactive sessions dropped (we want English
prose for perplexity, not Python source), permalink markers removed.
"""

from __future__ import annotations

import re
import sys
import textwrap
from html.parser import HTMLParser
from pathlib import Path

# Evaluation and calibration come from disjoint documents: the tutorial for evaluation,
# library reference pages for calibration.
EVAL_PAGES = [
    "tutorial/appetite",
    "tutorial/interpreter",
    "tutorial/introduction",
    "tutorial/datastructures",
    "tutorial/inputoutput",
    "tutorial/errors",
    "tutorial/classes",
    "tutorial/stdlib",
    "tutorial/stdlib2",
    "tutorial/venv",
    "tutorial/whatnow",
]
CALIB_PAGES = [
    "library/intro",
    "library/functions",
    "library/exceptions",
    "library/logging",
    "library/threading",
    "library/pathlib",
    "library/json",
]

_BLOCK_TAGS = {"p", "div", "section", "h1", "h2", "h3", "h4", "h5", "h6", "li", "dt", "dd",
               "tr", "table", "blockquote", "dl", "ul", "ol", "br"}
_SKIP_TAGS = {"pre", "script", "style"}


class _BodyText(HTMLParser):
    """Collects the text of the Sphinx ``div.body`` element, block by block."""

    def __init__(self, keep_pre: bool = False) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[str] = []
        self._current: list[str] = []
        self._keep_pre = keep_pre
        self._in_pre = False  # inside a kept <pre>: whitespace is preserved verbatim
        self._body_depth = 0  # div nesting depth inside div.body; 0 = outside it
        self._skip_depth = 0  # nesting depth inside an element whose text we drop

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = (dict(attrs).get("class") or "").split()
        if self._body_depth == 0:
            if tag == "div" and "body" in classes:
                self._body_depth = 1
            return
        if tag == "div":
            self._body_depth += 1
        if self._skip_depth:
            if tag in _SKIP_TAGS or tag == "a" or tag == "div":
                self._skip_depth += 1
            return
        if tag == "pre" and self._keep_pre:
            self._flush()
            self._in_pre = True
            return
        if tag in _SKIP_TAGS or (tag == "a" and "headerlink" in classes):
            self._skip_depth = 1
            return
        if tag in _BLOCK_TAGS:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if self._body_depth == 0:
            return
        if self._skip_depth:
            if tag in _SKIP_TAGS or tag == "a" or tag == "div":
                self._skip_depth -= 1
            if tag == "div":
                self._body_depth -= 1
            return
        if tag == "pre" and self._in_pre:
            self.blocks.append(textwrap.dedent("".join(self._current)).strip("\n"))
            self._current = []
            self._in_pre = False
            return
        if tag in _BLOCK_TAGS:
            self._flush()
        if tag == "div":
            self._body_depth -= 1
            if self._body_depth == 0:
                self._flush()

    def handle_data(self, data: str) -> None:
        if self._body_depth and not self._skip_depth:
            self._current.append(data)

    def _flush(self) -> None:
        if self._in_pre:
            return
        text = re.sub(r"\s+", " ", "".join(self._current)).strip()
        self._current = []
        if text:
            self.blocks.append(text)


def page_text(html: str, keep_pre: bool = False) -> str:
    """Plain text of one Sphinx page's main body; ``keep_pre`` keeps <pre> blocks verbatim."""
    parser = _BodyText(keep_pre)
    parser.feed(html)
    parser.close()
    return "\n\n".join(parser.blocks) + "\n"


def main(html_root: str) -> None:
    root = Path(html_root)
    here = Path(__file__).parent
    for split, pages in (("eval", EVAL_PAGES), ("calib", CALIB_PAGES)):
        out = here / split
        out.mkdir(exist_ok=True)
        for page in pages:
            text = page_text((root / f"{page}.html").read_text(encoding="utf-8"))
            (out / f"{page.replace('/', '-')}.txt").write_text(text, encoding="utf-8")
    # The licence page's own text, up to the third-party acknowledgements.
    licence = page_text((root / "license.html").read_text(encoding="utf-8"), keep_pre=True)
    licence = licence.split("\n\nLicenses and Acknowledgements for Incorporated Software\n\n")[0]
    copyright_ = page_text((root / "copyright.html").read_text(encoding="utf-8"))
    (here / "LICENSE.txt").write_text(copyright_ + "\n" + licence.rstrip() + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1])
