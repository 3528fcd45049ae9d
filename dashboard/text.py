"""Markdown that carries data. The template is ours and may use Markdown; every value put into it (a label
from a model card, a name a user typed, a DICOM field, a message) is escaped, so it shows as the plain text
it is and can never become a link, an image, coloured text, a badge or HTML.

    st.caption(md("Evidence for **{label}** at layer `{layer}`", label=h.target, layer=h.layer))
"""

from __future__ import annotations

import re
import string

__all__ = ["plain", "md"]

# Every ASCII punctuation mark that means something to Markdown or to Streamlit's directives (:red[..],
# :material/..:, $math$); CommonMark allows a backslash before any of them.
_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+\-.!|~:$^=&\"'@])")
# Some transforms run on the parsed text, where escapes are already gone: bare URLs and e-mail addresses
# become links (GFM autolinks), ":name:" becomes an emoji or an icon. An invisible word joiner breaks them.
_JOIN = "\u2060"
_TEXT_TRANSFORMS = re.compile(r"(?i)(:(?=//|[a-z])|@|\bwww(?=\.))")


def plain(value: object) -> str:
    """`value` as text that Markdown shows literally, on one line."""
    text = _TEXT_TRANSFORMS.sub(lambda m: m.group(1) + _JOIN, " ".join(str(value).split()))
    return _SPECIAL.sub(r"\\\1", text)


class _Escaping(string.Formatter):
    def format_field(self, value, format_spec):
        return plain(super().format_field(value, format_spec))


def md(template: str, /, **values) -> str:
    """`template.format(**values)` with every value (after its format spec) escaped by `plain`."""
    return _Escaping().format(template, **values)
