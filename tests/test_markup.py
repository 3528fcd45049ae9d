"""Values shown through Markdown stay plain text: a model label, a DICOM field or a file name can never
become a link, an image, coloured text, an icon or HTML (dashboard/text.py; rendered by Streamlit in a real browser
in tests/test_browser.py). And no page builds Markdown from an f-string."""

import re
from pathlib import Path

from dashboard.text import md, plain

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = ("**bold** [link](http://example.org) ![img](http://example.org/x.png) :red[red] <b>html</b> `code` "
           ":material/home: $x^2$ www.example.org a@b.com")


def _unescaped(text: str, mark: str) -> int:
    """How many times `mark` appears without a backslash in front of it."""
    return len(re.findall(r"(?<!\\)" + re.escape(mark), text))


def test_every_markdown_sign_of_a_value_is_escaped():
    out = plain(HOSTILE)
    for mark in ("*", "[", "]", "(", ")", "!", "<", ">", "`", "$", ":"):
        assert _unescaped(out, mark) == 0, mark


def test_text_level_transforms_are_broken_by_an_invisible_joiner():
    out = plain(HOSTILE)
    assert "://" not in out.replace("\\", "") and "www." not in out.replace("\\", "")
    assert ":material" not in out.replace("\\", "") and "@b" not in out.replace("\\", "")
    assert out.replace("\\", "").replace("\u2060", "") == HOSTILE  # what the reader sees is the value itself


def test_the_template_keeps_its_markdown_and_format_specs_apply_before_escaping():
    assert md("**{label}** at {p:.1%}", label="pneumonia", p=0.3634) == "**pneumonia** at 36\\.3%"
    assert md("Case {n}:\n{reason}", n=3, reason="line one\nline two") == "Case 3:\nline one line two"


def test_no_page_or_widget_builds_markdown_from_an_f_string():
    pattern = re.compile(r"\.(markdown|caption|warning|error|info|success|write|toast)\(f[\"']")
    offenders = [f"{p.relative_to(ROOT)}:{i}" for folder in ("dashboard", "pages")
                 for p in (ROOT / folder).glob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == [], "use dashboard.text.md(template, **values) so values are escaped"
