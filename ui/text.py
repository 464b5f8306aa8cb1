"""User text on the page, shown literally: as Markdown source (`literal`) or as HTML (`literal_html`); and tokens as
HTML: tokenization chips with ids, and text coloured by a neuron's activation.

Streamlit renders st.markdown/st.error/st.caption/st.info/metric labels as Markdown with GitHub's extensions
(bare URLs, www. and e-mail addresses become links), LaTeX between `$`, `:name[…]` directives, `:shortcode:` emoji
and, with unsafe_allow_html, raw HTML. Anything a visitor typed or put in a URL reaches the page only through
these two functions, so it can never become a link, an image, HTML, maths or formatting.
"""

from __future__ import annotations

import html
import re
import unicodedata

from ui.charts import shown

# Escaped wherever they stand: inline constructs (emphasis, code, links/images, autolinks and HTML, maths, tables,
# entities, headings, strikethrough, e-mail autolinks). Other punctuation is safe where it is left unescaped below,
# and leaving it keeps messages readable in the page source and in tests ("valid: 0..29", "W_U", "/no/such").
_ALWAYS = set("\\`*~[]<>$|&#")
# Streamlit turns bare URLs, www. addresses and e-mail addresses into links *after* Markdown escapes are resolved
# (seen in Chromium: `https\://x.example` still rendered as a link). A WORD JOINER (U+2060: invisible, zero-width)
# inside "://", "www." and before "@" breaks those patterns while the visitor still reads the same characters.
_JOINER = "\u2060"
# A `:shortcode:` makes Streamlit load its emoji plugin and turn the text into an emoji; escaping the closing colon
# hides it from both (Streamlit tests the source, before escapes are resolved). Wider than Streamlit's own pattern.
_SHORTCODE = re.compile(r":([A-Za-z0-9_+/-]+):")
# Invisible characters that change how text reads (bidi overrides, zero-width joiners, line separators, BOM).
_INVISIBLE = ("Cc", "Cf", "Co", "Cs", "Zl", "Zp")


def visible(value: object) -> str:
    """`value` as text with every invisible or direction-changing character written out as <U+XXXX>
    (newlines and tabs are kept: they show as line breaks and spaces)."""
    return "".join(
        f"<U+{ord(c):04X}>" if c not in "\n\t" and unicodedata.category(c) in _INVISIBLE else c
        for c in str(value).replace("\r\n", "\n")
    )


def _escape_line(line: str) -> str:
    out = []
    for i, char in enumerate(line):
        before, after = line[i - 1 : i], line[i + 1 : i + 2]
        if char in _ALWAYS:
            out.append("\\" + char)
        elif char == "_" and not (before.isalnum() and after.isalnum()):  # intraword _ cannot emphasise
            out.append("\\_")
        elif char == ":" and line[i + 1 : i + 3] == "//":  # scheme:// autolinks
            out.append(":" + _JOINER)
        elif char == ":" and (after.isalpha() or after == "/"):  # :directive[…], :material/…:
            out.append("\\:")
        elif char == "." and line[max(i - 3, 0) : i].lower() == "www":  # www. autolinks
            out.append(_JOINER + ".")
        elif char == "@":  # e-mail autolinks
            out.append(_JOINER + "@")
        elif char == "/" and line[max(i - 9, 0) : i] == ":material":  # Streamlit rewrites :material/ to an icon
            out.append("\\/")
        else:
            out.append(char)
    text = "".join(out)
    while (match := _SHORTCODE.search(text)) is not None:
        text = text[: match.end() - 1] + "\\" + text[match.end() - 1 :]
    # Block syntax only counts at a line's start: indentation (code block), list markers, setext underlines.
    indent = len(text) - len(text.lstrip(" \t"))
    text = "".join(f"&#{ord(c)};" for c in text[:indent]) + text[indent:]
    text = re.sub(r"^((?:&#\d+;)*)([-+=])", r"\1\\\2", text)
    return re.sub(r"^((?:&#\d+;)*\d+)([.)])", r"\1\\\2", text)


def literal(value: object) -> str:
    """Markdown source that Streamlit shows as exactly the characters of `str(value)` (invisible ones written out
    as <U+XXXX>, line breaks kept). Use it for every user-supplied string inside st.markdown, st.error, st.caption,
    st.info, st.warning, titles and metric labels; the surrounding Markdown of the app's own text still works."""
    return "\\\n".join(_escape_line(line) for line in visible(value).split("\n"))


def literal_html(value: object) -> str:
    """`value` as HTML text (for unsafe_allow_html blocks): tags and entities escaped, invisible characters written
    out, and line breaks as character references, so the HTML block never ends early and nothing after it is read
    as Markdown."""
    return html.escape(visible(value), quote=True).replace("\n", "&#10;")


_CHIP = (
    "display:inline-block;margin:2px 3px;padding:1px 6px;border:1px solid #d0d4d9;border-radius:4px;"
    "background:#f6f8fa;font-family:monospace;font-size:0.9em;white-space:pre"
)


def chips(pieces: list[str], ids: list[int]) -> str:
    """One chip per token: the token with visible spaces (␣) and its id."""
    spans = [
        f'<span style="{_CHIP}" title="position {i}, id {t}">{literal_html(shown(p))}'
        f'<sub style="color:#6a737d;margin-left:3px">{t}</sub></span>'
        for i, (p, t) in enumerate(zip(pieces, ids))
    ]
    return f'<div class="token-chips" style="line-height:2.1">{"".join(spans)}</div>'


_TOKEN = "padding:1px 0;border-radius:2px;white-space:pre-wrap"


def activation_colour(value: float, scale: float) -> str:
    """Blue for positive, red for negative, opacity ∝ |value| / scale."""
    alpha = 0.0 if scale <= 0 else min(abs(value) / scale, 1.0) * 0.85
    rgb = "31,95,168" if value >= 0 else "181,68,59"
    return f"rgba({rgb},{alpha:.2f})"


def activation_text(pieces: list[str], values: list[float], highlight: int | None = None) -> str:
    """The prompt with each token's background coloured by the activation (hover shows the value).

    highlight: a position to outline (e.g. the max-activating token of a corpus example).
    """
    scale = max((abs(v) for v in values), default=0.0)
    spans = []
    for i, (piece, value) in enumerate(zip(pieces, values)):
        outline = "outline:2px solid #111;" if i == highlight else ""
        style = f"background:{activation_colour(value, scale)};{outline}{_TOKEN}"
        title = f"{literal_html(repr(piece))}: {value:+.3f}"
        spans.append(f'<span title="{title}" style="{style}">{literal_html(piece)}</span>')
    return f'<div class="activation-text" style="font-family:monospace;line-height:1.9">{"".join(spans)}</div>'
