"""The bad-input catalog: every user-facing entry (CLI flags, URL query params, page widgets, corpus files)
answers bad input with a message naming the problem and the valid range — no traceback, no hang, no damage to
the cache. One row per case; `python -m pytest tests/test_bad_inputs.py -v` lists them."""

import json
import re
import time
from pathlib import Path

import pytest

from core.cli import main
from tests.test_app import errors, open_page

GOOD = "I climbed up the pear tree and picked a pear. I climbed up the apple tree and picked"


def files(tmp: Path) -> dict[str, str]:
    """Bad files and folders the catalog points at."""
    (tmp / "empty.txt").write_text("")
    (tmp / "binary.txt").write_bytes(bytes(range(256)) * 40)
    (tmp / "latin1.txt").write_bytes("caf\xe9 cr\xe8me ".encode("latin-1") * 40)
    (tmp / "notext.jsonl").write_text(json.dumps({"body": "x", "title": "y"}) + "\n")
    (tmp / "noconfig").mkdir()
    (tmp / "noconfig" / "model.safetensors").write_bytes(b"\0" * 16)
    corrupt = tmp / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text(
        json.dumps(
            {"model_type": "gpt2", "n_layer": 1, "n_embd": 8, "n_head": 2, "vocab_size": 50257, "n_positions": 16}
        )
    )
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file at all")
    return {
        name: str(tmp / name)
        for name in ("empty.txt", "binary.txt", "latin1.txt", "notext.jsonl", "noconfig", "corrupt")
    }


CLI = [  # (case, argv, expected exit code, text the one-line message must contain)
    ("empty prompt", ["predict", "--prompt", ""], 2, "prompt is empty"),
    ("whitespace prompt", ["predict", "--prompt", "   \n "], 2, "only whitespace"),
    ("prompt over the context", ["predict", "--prompt", "word " * 9000], 2, "reads at most 8192"),
    ("control characters", ["predict", "--prompt", "hi\x07there\x1b[0m"], 2, "control characters"),
    ("emoji prompt is fine", ["predict", "--prompt", "I picked 🍐 and 🍎 from the"], 0, ""),
    ("right-to-left prompt is fine", ["predict", "--prompt", "שלום עולם and then"], 0, ""),
    ("empty target", ["lens", "--answer", ""], 2, "answer is empty"),
    ("target of 2+ tokens", ["lens", "--answer", " antelope"], 2, "is 2 tokens"),
    ("emoji target", ["lens", "--wrong", "🍐"], 2, "a target must be exactly one token"),
    ("answer equals wrong", ["lens", "--answer", " a", "--wrong", " a"], 2, "same token"),
    ("clean/corrupted lengths differ", ["patch", "--corrupted", "I climbed"], 2, "same number of tokens"),
    ("identical clean and corrupted", ["patch", "--corrupted", GOOD], 2, "same tokens"),
    ("layer out of range", ["patch", "--level", "neurons", "--layer", "30"], 2, "layers 0..29"),
    ("negative layer", ["patch", "--level", "neurons", "--layer", "-3"], 2, "layer -3 is out of range"),
    ("non-numeric layer", ["patch", "--layer", "five"], 2, "'five' is not a layer number"),
    ("neuron out of range", ["congruence", "--neuron", "L25.N9999"], 2, "neurons 0..1535"),
    ("malformed neuron", ["congruence", "--neuron", "N892"], 2, "write it as L31.N892"),
    ("unknown model", ["predict", "--model", "gpt-5"], 2, "unknown model 'gpt-5'"),
    ("hub model offline", ["predict", "--model", "gpt2-xl"], 2, "huggingface-cli download"),
    ("no CUDA", ["predict", "--device", "cuda"], 2, "no CUDA GPU"),
    ("top-k 0", ["predict", "--top-k", "0"], 2, "0 must be at least 1"),
    ("top-k absurd", ["search", "--top-k", "1000000"], 2, "use 1..49152"),
    ("token budget 0", ["scan", "--neurons", "L25.N1527", "--max-tokens", "0"], 2, "at least 1"),
    ("token budget absurd", ["scan", "--neurons", "L25.N1527", "--max-tokens", "999999999999"], 2, "out of range"),
    ("unknown flag value", ["patch", "--ablation", "shuffle"], 2, "invalid choice"),
    ("drivers: neuron out of range", ["drivers", "--neuron", "L25.N1536"], 2, "neurons 0..1535"),
    ("drivers: position outside", ["drivers", "--neuron", "L25.N1527", "--position", "19"], 2, "use 0..18"),
    ("drivers: half a pair", ["drivers", "--neuron", "L25.N1527", "--clean", GOOD], 2, "both --clean and"),
    (
        "drivers: pair of different lengths",
        ["drivers", "--neuron", "L25.N1527", "--clean", GOOD, "--corrupted", "I climbed"],
        2,
        "same number of tokens",
    ),
    ("attention: head out of range", ["attention", "--layer", "3", "--head", "9"], 2, "heads 0..8"),
    ("attention: layer out of range", ["attention", "--layer", "30", "--head", "0"], 2, "layers 0..29"),
]
FILES = [  # (case, argv with {file} placeholders, text)
    ("model folder missing", ["predict", "--model", "/no/such/folder"], "does not exist"),
    ("folder without config.json", ["predict", "--model", "{noconfig}"], "no config.json"),
    ("corrupt safetensors", ["predict", "--model", "{corrupt}"], "could not load weights"),
    ("corpus file missing", ["scan", "--neurons", "L25.N1527", "--dataset", "/no/such.jsonl"], "does not exist"),
    ("corpus file empty", ["scan", "--neurons", "L25.N1527", "--dataset", "{empty.txt}"], "is empty"),
    ("corpus file binary", ["scan", "--neurons", "L25.N1527", "--dataset", "{binary.txt}"], "looks binary"),
    ("corpus not UTF-8", ["scan", "--neurons", "L25.N1527", "--dataset", "{latin1.txt}"], "not UTF-8"),
    (
        "corpus without text column",
        ["scan", "--neurons", "L25.N1527", "--dataset", "{notext.jsonl}"],
        "found columns: body, title",
    ),
]
URL = [  # (case, page, query, text of the st.error)
    ("layer not a number", "2_Patching.py", {"layer": "abc"}, "layer 'abc' is not a whole number; valid: 0..29"),
    ("layer out of range", "2_Patching.py", {"layer": "99"}, "layer 99 is out of range; valid: 0..29"),
    ("negative neuron", "3_Neuron.py", {"layer": "25", "neuron": "-5"}, "neuron -5 is out of range"),
    ("unknown matrix", "3_Neuron.py", {"layer": "25", "neuron": "1527", "matrix": "W_Q"}, "valid: W_U, W_E"),
    ("multi-token token", "4_Token.py", {"token": " antelope"}, "a target must be exactly one token"),
    ("unknown search kind", "5_Search.py", {"kind": "best"}, "valid: standout, mutual"),
    ("token budget 0", "6_Corpus.py", {"budget": "0"}, "token budget 0 is out of range"),
    ("unknown model", "1_Logit_Lens.py", {"model": "no-such-model"}, "unknown model 'no-such-model'"),
    ("control characters in a prompt", "1_Logit_Lens.py", {"prompt": "a\x00b"}, "control characters"),
    ("drivers: position outside", "3_Neuron.py", {"layer": "25", "neuron": "1527", "position": "40"}, "use 0..18"),
    ("drivers: bad head", "3_Neuron.py", {"layer": "25", "neuron": "1527", "head": "L3.H9"}, "heads 0..8"),
    (
        "drivers: pair of different lengths",
        "3_Neuron.py",
        {"layer": "25", "neuron": "1527", "corrupted": "I climbed"},
        "same number of tokens",
    ),
    ("lens: bad head", "1_Logit_Lens.py", {"head": "L99.H0"}, "layers 0..29"),
]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    return files(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("case, argv, code, needle", CLI, ids=[c[0] for c in CLI])
def test_cli(capsys, case, argv, code, needle):
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code:
        assert needle in err and err.count("\n") == 1, err


@pytest.mark.parametrize("case, argv, needle", FILES, ids=[c[0] for c in FILES])
def test_files(capsys, bad_files, case, argv, needle):
    for name, path in bad_files.items():
        argv = [a.replace("{" + name + "}", path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and err.count("\n") == 1, err


@pytest.mark.parametrize("case, page, query, needle", URL, ids=[c[0] for c in URL])
def test_url(case, page, query, needle):
    at = open_page(page, **query)
    assert not at.exception, [e.message for e in at.exception]
    assert any(needle in e for e in errors(at)), errors(at)


@pytest.mark.parametrize(
    "case, page, widget, value, button, needle",
    [
        ("empty prompt typed", "1_Logit_Lens.py", "lens:prompt", "", None, "prompt is empty"),
        ("identical prompts typed", "2_Patching.py", "patching:corrupted", GOOD, "patching:run", "same tokens"),
        (
            "malformed neuron list typed",
            "6_Corpus.py",
            "corpus:neurons",
            "banana",
            "corpus:run",
            "write it as L31.N892",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and " " in v else "",
)
def test_widgets(case, page, widget, value, button, needle):
    at = open_page(page)
    at.text_area(key=widget).input(value).run() if widget.endswith(("prompt", "corrupted")) else at.text_input(
        key=widget
    ).input(value).run()
    if button and any(b.key == button for b in at.button):  # a page may refuse before offering its button
        at.button(key=button).click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert any(needle in e for e in errors(at)), errors(at)


def test_nothing_cached_is_damaged(capsys):
    """After all of the above, the cache holds no half-written entry and a good run gives the right answer."""
    from core.engine.model import cache_root

    assert not list(cache_root().rglob(".tmp-*")) and not list(cache_root().rglob(".convert-*"))
    assert main(["patch", "--level", "neurons", "--layer", "25", "--top-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["neurons"][0]["neuron"] == 1527


# ---------------------------------------------------------------- injection: user text is shown as text, never markup

from html.parser import HTMLParser  # noqa: E402

from markdown_it import MarkdownIt  # noqa: E402

from ui.text import literal, visible  # noqa: E402

INJECTION = {  # family → payload (no single quotes: repr() of it keeps the text as typed)
    "markdown link": "[Log in again](https://evil.example/login)",
    "image": "![t](http://127.0.0.1:9/tracker.png)",
    "html": '<img src="http://127.0.0.1:9/t.png" onerror="alert(1)"><a href="http://evil.example">x</a>',
    "backticks": "`tick` ```fence``` **bold** _it_ ~~gone~~",
    "latex": "$x^2$ and $$\\href{http://evil.example}{y}$$",
    "bidi and zero-width": "abc\u202edcba\u2066x\u2069\u200bz\ufeff",
    "autolinks": "https://evil.example www.evil.example mail@evil.example",
    "streamlit directives": ":red[x] :material/home: :smile:",
    "blocks": "# head\n- item\n1. one\n    code\n> quote\n===",
}
ALL = " ".join(v.replace("\n", " ") for k, v in INJECTION.items() if k != "blocks")
MARKDOWN = MarkdownIt("commonmark", {"html": True}).enable(["strikethrough", "table"])
OWN_TAGS = {"div", "span", "sub", "code"}  # what ui/text.py's HTML blocks are made of


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def rendered(source: str) -> tuple[list, str]:
    """Markdown → (its HTML's tags, its text) the way a CommonMark renderer sees it."""
    parser = _Tags()
    parser.feed(MARKDOWN.render(source))
    return parser.tags, "".join(parser.text)


def shown_elements(at) -> list[tuple[str, bool]]:
    """(Markdown source, allows HTML) of every element that renders Markdown, metric labels and values included."""
    out = []
    for kind in ("error", "warning", "info", "success", "caption", "markdown", "title", "header", "subheader"):
        for element in at.get(kind):
            out.append((str(element.value), bool(getattr(element.proto, "allow_html", False))))
    for metric in at.metric:
        out += [(str(metric.label), False), (str(metric.value), False)]
    return out


def assert_text_only(at, payload: str, echoed: bool) -> None:
    """No element turns the payload into a link, an image, HTML, maths, an autolink or a directive; where it is
    echoed, its characters are shown as typed (invisible ones written out)."""
    assert not at.exception, [e.message for e in at.exception]
    literally = {visible(payload), visible(repr(payload)[1:-1])}
    hits = 0
    for source, allow_html in shown_elements(at):
        tags, text = rendered(source)
        if allow_html:  # the app's own token HTML: only its own tags, no link or image, no event handler
            assert {t for t, _ in tags} <= OWN_TAGS, tags
            assert not [a for _, attrs in tags for a in attrs if a in ("href", "src") or a.startswith("on")], tags
            continue
        assert [
            t for t, _ in tags if t not in ("p", "strong", "em", "code", "br", "ul", "li", "h1", "h2", "h3")
        ] == [], (source, tags)
        assert not re.search(r"(?<!\\)\$", source), source  # maths
        assert not re.search(r"(?i)https?://|www\.|\w@\w|(?<!\\):[a-z][a-z0-9_-]*\[", source), source
        assert not any(c in source for c in "\u202e\u2066\u2069\u200b\ufeff"), source
        hits += any(shown in text.replace("\u2060", "") for shown in literally)  # joiners: see ui/text.py
    assert hits or not echoed, f"the payload is not shown literally: {shown_elements(at)}"


def test_literal_shows_every_family_as_typed():
    for family, payload in INJECTION.items():
        tags, text = rendered(literal(payload))
        assert [t for t, _ in tags if t not in ("p", "br")] == [], (family, tags)
        # the same characters (word joiners, invisible, break bare-URL/www./e-mail autolinks: Streamlit links those
        # after escapes are resolved)
        assert text.replace("\n", "").replace("\u2060", "") == visible(payload).replace("\n", ""), family
    assert literal("valid: 0..29, W_U, /no/such/folder, 'abc'") == "valid: 0..29, W_U, /no/such/folder, 'abc'"
    assert visible("a\u202eb\u200bc") == "a<U+202E>b<U+200B>c"


URL_INJECTION = [  # (page, parameter, the page echoes it in text)
    ("1_Logit_Lens.py", "prompt", False),
    ("1_Logit_Lens.py", "answer", True),
    ("1_Logit_Lens.py", "wrong", True),
    ("1_Logit_Lens.py", "model", True),
    ("1_Logit_Lens.py", "processing", True),
    ("2_Patching.py", "clean", False),
    ("2_Patching.py", "corrupted", False),
    ("2_Patching.py", "answer", False),
    ("2_Patching.py", "wrong", False),
    ("2_Patching.py", "ablation", True),
    ("2_Patching.py", "layer", True),
    ("3_Neuron.py", "layer", True),
    ("3_Neuron.py", "neuron", True),
    ("3_Neuron.py", "matrix", True),
    ("3_Neuron.py", "prompt", False),
    ("4_Token.py", "token", True),
    ("4_Token.py", "matrix", True),
    ("5_Search.py", "kind", True),
    ("5_Search.py", "matrix", True),
    ("6_Corpus.py", "corpus", False),
    ("6_Corpus.py", "neurons", False),
    ("6_Corpus.py", "target", False),
    ("6_Corpus.py", "budget", True),
    (None, "model", True),
]


@pytest.mark.parametrize("page, name, echoed", URL_INJECTION, ids=[f"{p or 'Home'}?{n}" for p, n, _ in URL_INJECTION])
def test_url_injection_is_shown_as_text(page, name, echoed):
    assert_text_only(open_page(page, **{name: ALL}), ALL, echoed)


@pytest.mark.parametrize("family", INJECTION)
def test_each_injection_family_in_the_token_url_is_shown_as_text(family):
    payload = INJECTION[family]
    assert_text_only(open_page("4_Token.py", token=payload), payload, echoed=True)


@pytest.mark.parametrize(
    "page, widget, button",
    [
        ("1_Logit_Lens.py", "lens:answer", None),
        ("2_Patching.py", "patching:wrong", "patching:run"),
        ("4_Token.py", "token:token", None),
        ("6_Corpus.py", "corpus:neurons", "corpus:run"),
        ("6_Corpus.py", "corpus:target", "corpus:run"),
        ("6_Corpus.py", "corpus:corpus", "corpus:run"),
    ],
    ids=lambda v: v if isinstance(v, str) and ":" in v and not v.endswith("run") else "",
)
def test_typed_injection_is_shown_as_text(page, widget, button):
    at = open_page(page)
    at.text_input(key=widget).input(ALL).run()
    if button and any(b.key == button for b in at.button):
        at.button(key=button).click().run()
    assert_text_only(at, ALL, echoed=widget != "corpus:neurons")  # that message quotes the first bad part only


def test_hosted_model_in_the_url_is_shown_as_text(monkeypatch):
    monkeypatch.setenv("TNE_HOSTED", "1")
    at = open_page("1_Logit_Lens.py", model=ALL, processing="none")
    assert_text_only(at, ALL, echoed=True)
    assert any("runs with processing 'tl-default', set by its host" in e for e in errors(at)), errors(at)


@pytest.mark.parametrize(
    "page, query, needle",
    [
        ("1_Logit_Lens.py", {"prompt": "x" * 3000}, "prompt is 3,000 characters; at most 2,000 are read here"),
        ("4_Token.py", {"token": "y" * 400_000}, "token is 400,000 characters; at most 2,000 are read here"),
        ("6_Corpus.py", {"neurons": ", ".join(f"L25.N{i}" for i in range(9))}, "at most 8 at once"),
        ("6_Corpus.py", {"budget": "60000"}, "token budget 60000 is out of range; valid: 100..50000"),
    ],
)
def test_hosted_caps_refuse_before_the_work(monkeypatch, page, query, needle):
    monkeypatch.setenv("TNE_HOSTED", "1")
    started = time.monotonic()
    at = open_page(page, **query)
    assert not at.exception and any(needle in e for e in errors(at)), errors(at)
    assert (
        time.monotonic() - started < 20
    )  # a 10M-character prompt took 31 s to refuse before (Streamlit drops query strings over 512 KiB)
    assert all(len(e) < 400 for e in errors(at))  # the notice quotes a little of it, not all
