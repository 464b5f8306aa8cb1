"""Generated input (Hypothesis) for every CLI flag of every command and every URL parameter of every page.

The property: a clear one-line message or a correct result, never a traceback, never a hang. CLI: exit 0, or exit 2
with one stderr line starting `error:`; heavy commands (patching, search, atlas, scans, dashboards, pairs,
reproduce) are followed up to the start of their computation (a stub raises `Reached` there: everything the command
parses and checks before computing has run). Page: no exception; a refused value is an st.error.

Strategies: wrong types, huge and tiny numbers, NaN/inf, unicode of every category (lone surrogates as argv's
surrogateescape gives them), control and bidi characters, multi-token strings where one token is expected, lengths
at and past each cap (hosted and local: `hosted` is drawn too). Seeds are fixed (derandomize) and examples few, so
the file runs in about two minutes. Inputs that found a bug are kept as `@example`s.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import story
from core.engine.model import EMBEDDED

GOOD = story.CLEAN
LAYERS, D_MLP, HEADS, VOCAB, TOTAL = 30, 1536, 9, 49152, 30 * 1536  # the embedded model's sizes
HANG_S = 60  # one CLI call or page run past this is a hang

# ---------------------------------------------------------------- strategies

BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c\u200b\u200d\ufeff"
SURROGATES = [chr(c) for c in (0xDC80, 0xDCFF, 0xD800)]  # what surrogateescape makes of undecodable argv bytes
CHAR = st.one_of(
    st.characters(),  # every category but surrogates
    st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp", "Co", "Cn", "Mn", "So"]),
    st.sampled_from(list(BIDI) + SURROGATES),
)
ANY_TEXT = st.text(CHAR, max_size=24)
NUMBERISH = st.one_of(
    st.sampled_from(
        [
            "nan",
            "NaN",
            "inf",
            "-inf",
            "Infinity",
            "1e308",
            "1e309",
            "-1e-320",
            "0",
            "-0",
            "+1",
            " 7 ",
            "1_0",
            "٣",
            "0x10",
            "1.5",
            "1e3",
            "",
            " ",
            "10" * 40,
            "-" + "9" * 40,
            "None",
            "true",
            "[1]",
        ]
    ),
    st.integers(-(10**30), 10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
TOKENISH = st.sampled_from(
    [" an", " a", " the", "a", " antelope", "🍐", "", " ", "\n", " an an", "\x00", "<|endoftext|>"]
)


def number(*good: object, at_cap: tuple[object, ...] = ()) -> st.SearchStrategy[str]:
    """In-range values, values at and past each cap, wrong types, NaN/inf, huge and tiny, any text."""
    return st.one_of(st.sampled_from([str(g) for g in (*good, *at_cap)]), NUMBERISH, ANY_TEXT)


def text_of(*good: str) -> st.SearchStrategy[str]:
    """Prompt-like text: good prompts, any unicode, and lengths at and past the caps (hosted: 128 tokens / 2,000
    characters; local: 8,192 tokens — only past it, as a prompt at it takes minutes here)."""
    long = st.sampled_from([126, 127, 128, 129, 9000]).map(lambda n: " an" * n)
    chars = st.sampled_from([1999, 2000, 2001]).map(lambda n: "a" * n)
    return st.one_of(st.sampled_from(list(good) or [GOOD]), ANY_TEXT, st.just(GOOD + "\u202e x"), long, chars)


def token_text() -> st.SearchStrategy[str]:
    return st.one_of(TOKENISH, ANY_TEXT)


def neuron_text() -> st.SearchStrategy[str]:
    ints = st.sampled_from([0, 25, 29, 30, -1, 1527, 1535, 1536, 10**20])
    return st.one_of(
        st.sampled_from(["L25.N1527", "25.1527", "L0.N0", "L29.N1535", "L30.N0", "L25.N1536", "N892", "L-1.N3"]),
        st.builds(lambda a, b, sep: f"L{a}{sep}N{b}", ints, ints, st.sampled_from([".", ". ", "", ":", ".\u200b"])),
        ANY_TEXT,
    )


def choice(*options: str) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(options), ANY_TEXT)


def intervention() -> st.SearchStrategy[str]:
    ops = st.sampled_from(["set", "scale", "add", "negate", "direction", "clamp", "SET", ""])
    values = st.one_of(NUMBERISH, st.sampled_from(["4", "-4", "2", "1e4", "10001"]))
    spec = st.builds(
        lambda n, o, v, eq: f"{n}:{o}{eq}{v}", neuron_text(), ops, values, st.sampled_from(["=", "", "=="])
    )
    return st.one_of(st.just("L25.N1527:negate"), spec, ANY_TEXT)


def positions() -> st.SearchStrategy[str]:
    indices = st.lists(st.sampled_from(["0", "3", "-1", "18", "19", "-20", "x", "", "1e9"]), max_size=4).map(",".join)
    return st.one_of(st.sampled_from(["all", "prompt", "new", "ALL", " last "]), indices, ANY_TEXT)


def layers_text() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(["0", "0-3", "28-29", "29-30", "3-1", "0,1", "-1", "", "all"]), ANY_TEXT)


MODEL = choice(EMBEDDED, "gpt-5", "/no/such/folder", "gpt2-xl", "")
DEVICE = choice("auto", "cpu", "cuda", "cuda:0", "cuda:99", "cpu:0", "")
PROCESSING = choice("tl-default")  # "none" is valid and loads a second model: left to tests/test_cli.py
CORPUS = choice("bundled", "brown", "/no/such.jsonl", "NeelNanda/pile-10k")
SMALL_COUNT = number(1, 2, 5)  # counts whose cap is cheap to reach are given `at_cap`


# command → (required argv, {flag: strategy}); flags that take no value map to None
COMMON = {
    "--model": MODEL,
    "--device": DEVICE,
    "--processing": PROCESSING,
    "--dtype": choice("float32"),  # bfloat16/float16 and the bridge loader load another copy: tests/test_loader.py
    "--loader": choice("stream"),
    "--json": None,
}
CLI: dict[str, tuple[list[str], dict]] = {
    "predict": ([], {"--prompt": text_of(), "--top-k": number(1, 10, at_cap=(VOCAB, VOCAB + 1))}),
    "lens": ([], {"--prompt": text_of(), "--answer": token_text(), "--wrong": token_text()}),
    "attention": (
        ["--layer", "3", "--head", "2"],
        {"--layer": number(0, 29, 30, -1), "--head": number(0, 8, 9, -1), "--prompt": text_of()},
    ),
    "top-neurons": (
        ["--prompt", GOOD],
        {
            "--prompt": text_of(),
            "--answer": token_text(),
            "--wrong": token_text(),
            "--position": number(0, -1, 18, 19, -19, -20),
            "--top-k": number(1, 3, TOTAL + 1),  # at the cap (46,080 exact total effects) takes minutes
            "--ablation": choice("zero", "mean"),
            "--corpus": CORPUS,
        },
    ),
    "patch": (
        [],
        {
            "--clean": text_of(),
            "--corrupted": text_of(story.CORRUPTED),
            "--answer": token_text(),
            "--wrong": token_text(),
            "--level": choice("layers", "heads", "neurons", "all-neurons"),
            "--method": choice("attribution", "exact-topk"),
            "--layer": number(0, 25, 29, 30, -1),
            "--top-k": number(1, 10, D_MLP, D_MLP + 1),
            "--ablation": choice("clean", "zero", "mean", "negate"),
            "--screen": None,
        },
    ),
    "congruence": (
        ["--neuron", "L25.N1527"],
        {
            "--neuron": neuron_text(),
            "--token": token_text(),
            "--top-k": number(1, 20, at_cap=(VOCAB, VOCAB + 1, TOTAL, TOTAL + 1)),
            "--matrix": choice("W_U", "W_E"),
        },
    ),
    "search": (
        [],
        {
            "--kind": choice("standout", "mutual"),
            "--top-k": number(1, 20, VOCAB, VOCAB + 1),
            "--matrix": choice("W_U", "W_E"),
            "--ray": None,
            "--ray-address": ANY_TEXT,
            "--workers": SMALL_COUNT,
        },
    ),
    "atlas": ([], {"--layers": layers_text(), "--top-k": number(1, 20, VOCAB + 1)}),
    "drivers": (
        ["--neuron", "L25.N1527"],
        {
            "--neuron": neuron_text(),
            "--prompt": text_of(),
            "--position": number(0, 18, 19, -1, -20),
            "--clean": text_of(),
            "--corrupted": text_of(story.CORRUPTED),
            "--answer": token_text(),
            "--wrong": token_text(),
            "--top-k": number(1, 10, 500),
            "--reads-from": number(0, 3, 9, 10, -1),
        },
    ),
    "steer": (
        ["--intervene", "L25.N1527:negate", "--max-new-tokens", "4"],
        {
            "--prompt": text_of(),
            "--intervene": intervention(),
            "--positions": positions(),
            "--max-new-tokens": number(1, 3, 0, -1, 1025),  # at the cap (1,024 new tokens): too slow here
            "--temperature": number(0, 0.7, 1, -1, 100),
            "--top-p": number(1, 0.9, 0, 1.5, -0.1),
            "--seed": number(0, 1, -1, 2**63, 2**64),
        },
    ),
    "dose": (
        ["--neuron", "L25.N1527"],
        {
            "--neuron": neuron_text(),
            "--prompt": text_of(),
            "--answer": token_text(),
            "--wrong": token_text(),
            "--from": number(-4, 0, 1e4, -1e300),
            "--to": number(4, 0, 1e300),
            "--points": number(2, 21, 1, 201, 202),
            "--positions": choice("last", "all"),
        },
    ),
    "scan": (
        ["--neurons", "L25.N1527"],
        {
            "--corpus": CORPUS,
            "--neurons": st.one_of(neuron_text(), st.lists(neuron_text(), max_size=12).map(",".join)),
            "--target": token_text(),
            "--max-tokens": number(1, 100, 10**12),
            "--bin-width": number(0.5, 0, -1, 1e-300, 1e300),
            "--spread": None,
            "--top-k": number(1, 10, 21, 10**9),
            "--ray": None,
            "--ray-address": ANY_TEXT,
            "--workers": SMALL_COUNT,
        },
    ),
    "dashboards build": (
        [],
        {
            "--corpus": CORPUS,
            "--max-tokens": number(1, 100, 10**12),
            "--top-k": number(1, 20, 10**9),
            "--ray": ANY_TEXT,
        },
    ),
    "examples": (
        ["--neuron", "L25.N1527"],
        {"--neuron": neuron_text(), "--corpus": CORPUS, "--max-tokens": number(1, 100, 10**12), "--top-k": SMALL_COUNT},
    ),
    "pairs": (
        [],
        {
            "--kind": choice("standout", "mutual"),
            "--top-k": number(1, 100, 0, -1, 10**9),
            "--corpus": CORPUS,
            "--max-tokens": number(1, 100, 10**12),
            "--matrix": choice("W_U", "W_E"),
            "--no-dashboards": None,
        },
    ),
    "reproduce": (
        ["--out", str(Path(tempfile.gettempdir()) / "tne-fuzz-reproduce")],
        {"--out": ANY_TEXT, "--dataset": CORPUS, "--corpus-tokens": number(1, 100, 10**12)},
    ),
}


class Reached(Exception):
    """A heavy command got past its checks to its computation: the stub stops it there."""


def _reached(*args, **kwargs):
    raise Reached


HEAVY = [  # (module, attribute): where each heavy command starts computing
    ("core.analyses.patching.PatchInputs", "prepare"),
    ("core.analyses.search", "search"),
    ("core.analyses.atlas", "atlas"),
    ("core.corpus.scan", "scan"),
    ("core.corpus.dashboards", "build"),
    ("core.corpus.distributed", "ray_tables"),
    ("core.corpus.distributed", "ray_scan"),
    ("core.corpus.pairs", "pairs"),
    ("core.reproduce", "run"),
]


@pytest.fixture(scope="module")
def cli_env(embedded_light):
    """The CLI with one shared embedded model (the real loader still answers for other names and devices) and the
    heavy computations stubbed; restored afterwards."""
    import importlib

    import core.cli as cli
    from core.cli import common
    from core.engine.model import pick_device

    real_load = common.load

    def load(args):
        light = getattr(args, "dtype", None) in ("float32", None) and getattr(args, "loader", None) in ("stream", None)
        if args.model == EMBEDDED and args.processing == "tl-default" and light:
            if str(pick_device(args.device)) == "cpu":  # a bad --device is refused by the real check
                return embedded_light
        return real_load(args)

    stubs = [(group, "load", load) for group in cli.GROUPS if hasattr(group, "load")]
    for path, attr in HEAVY:
        module_name, _, cls = path.partition(".PatchInputs")
        owner = importlib.import_module(module_name)
        stubs.append((owner.PatchInputs if cls else owner, attr, _reached))

    def main(argv: list[str]) -> int:
        """core.cli.main with the stubs in place for this call only (the page tests below run unstubbed)."""
        saved = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in stubs]
        for owner, attr, value in stubs:
            setattr(owner, attr, value)
        try:
            return cli.main(argv)
        finally:
            for owner, attr, value in saved:
                setattr(owner, attr, value)

    return main


@pytest.fixture(scope="module")
def embedded_light():
    from core.engine.model import load_model

    return load_model(EMBEDDED, device="cpu")


@contextmanager
def deadline(seconds: int):
    """Fail (instead of waiting forever) when a call runs past `seconds`."""

    def hang(signum, frame):
        raise TimeoutError(f"ran past {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@contextmanager
def hosting(hosted: bool):
    old = os.environ.get("TNE_HOSTED")
    os.environ["TNE_HOSTED"] = "1" if hosted else "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ["TNE_HOSTED"]
        else:
            os.environ["TNE_HOSTED"] = old


def run_cli(main, capsys, argv: list[str], hosted: bool) -> None:
    """The property: exit 0, or exit 2 with one line `error: …`; a heavy command may stop at Reached."""
    capsys.readouterr()
    with hosting(hosted), deadline(HANG_S):
        try:
            code = main(argv)
        except Reached:
            return
    out, err = capsys.readouterr()
    if os.environ.get("FUZZ_DEBUG"):
        with capsys.disabled():
            print("ARGV", hosted, code, [a[:30] for a in argv], err[:100].strip())
    assert "Traceback" not in err, (argv, err)
    if code == 0:
        return
    assert code == 2, (argv, code, err)
    assert err.startswith("error: ") and err.count("\n") == 1, (argv, err)


@st.composite
def cli_call(draw, command: str) -> tuple[list[str], bool]:
    """One to three of the command's own flags generated, sometimes one of the model flags too; the rest good."""
    base, flags = CLI[command]
    chosen = draw(st.lists(st.sampled_from(sorted(flags)), min_size=1, max_size=3, unique=True))
    if draw(st.integers(0, 3)) == 0:
        chosen.append(draw(st.sampled_from(sorted(COMMON))))
    argv = [*command.split(), *base]
    for flag in chosen:
        strategy = {**COMMON, **flags}[flag]
        argv += [flag] if strategy is None else [flag, draw(strategy)]
    return argv, draw(st.booleans())


def test_every_command_is_fuzzed():
    from core.cli import COMMANDS, build_parser

    assert {name.split()[0] for name in CLI} == set(COMMANDS)
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, sub in commands.items():
        if name == "dashboards":
            name, sub = "dashboards build", sub._subparsers._group_actions[0].choices["build"]  # type: ignore[union-attr]
        flags = {s for a in sub._actions for s in a.option_strings if s.startswith("--") and s != "--help"}
        covered = set(CLI[name][1]) | set(COMMON)
        aliases = {"--dataset"} if name == "scan" else set()
        assert flags - aliases <= covered, (name, flags - covered)


CLI_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", 5))


@pytest.mark.parametrize("command", sorted(CLI))
@settings(derandomize=True, max_examples=CLI_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_cli_flags(cli_env, capsys, command, data):
    argv, hosted = data.draw(cli_call(command))
    run_cli(cli_env, capsys, argv, hosted)


# Found by the generator (kept as plain tests: the draws above go through st.data()).


def test_undecodable_argv_is_refused_in_one_line(cli_env, capsys):
    """Bytes that are not UTF-8 reach argv as lone surrogates; the tokenizer raised a TypeError on them."""
    capsys.readouterr()
    assert cli_env(["lens", "--answer", " an", "--prompt", "\udc80"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument '\\udc80' is not valid UTF-8") and err.count("\n") == 1, err


# ---------------------------------------------------------------- pages (AppTest: seconds per run, few examples)

PAGE_PARAMS: dict[str | None, dict[str, st.SearchStrategy[str]]] = {
    None: {},
    "0_Prompt.py": {
        "prompt": text_of(),
        "answer": token_text(),
        "wrong": token_text(),
        "position": number(0, 18, 19, 8191, 8192, -1),
        "top_k": number(1, 5, TOTAL, TOTAL + 1),
        "ablation": choice("zero", "mean"),
    },
    "1_Logit_Lens.py": {
        "prompt": text_of(),
        "answer": token_text(),
        "wrong": token_text(),
        "head": st.one_of(st.sampled_from(["L3.H2", "3.2", "L29.H8", "L30.H0", "L3.H9"]), ANY_TEXT),
    },
    "2_Patching.py": {
        "clean": text_of(),
        "corrupted": text_of(story.CORRUPTED),
        "answer": token_text(),
        "wrong": token_text(),
        "ablation": choice("clean", "zero", "mean", "negate"),
        "layer": number(0, 25, 29, 30, -1),
    },
    "3_Neuron.py": {
        "layer": number(0, 25, 29, 30, -1),
        "neuron": number(0, 1527, 1535, 1536, -1),
        "matrix": choice("W_U", "W_E"),
        "prompt": text_of(),
        "position": number(0, 18, 19, -1),
        "corrupted": text_of(story.CORRUPTED, ""),
        "answer": token_text(),
        "wrong": token_text(),
        "head": st.one_of(st.sampled_from(["L3.H2", "L30.H0", "L3.H9"]), ANY_TEXT),
        "mlp": number(0, 24, 29, 30, -1),
    },
    "4_Token.py": {"token": token_text(), "matrix": choice("W_U", "W_E")},
    "5_Search.py": {"kind": choice("standout", "mutual"), "matrix": choice("W_U", "W_E")},
    "6_Corpus.py": {
        "corpus": CORPUS,
        "neurons": st.one_of(neuron_text(), st.lists(neuron_text(), max_size=12).map(",".join)),
        "target": token_text(),
        "budget": number(100, 20000, 99, 50000, 50001, 10**12),
    },
    "7_Atlas.py": {
        "show": choice("any class"),
        "layers": layers_text(),
        "label": ANY_TEXT,
        "token": token_text(),
    },
    "8_Steer.py": {
        "prompt": text_of(),
        "neuron": neuron_text(),
        "op": choice("set", "scale", "add", "negate", "direction"),
        "value": number(0, 4, -4, 1e4, 10001),
        "more": st.lists(intervention(), max_size=5).map(";".join),
        "positions": positions(),
        "new": number(1, 8, 0, 1025),
        "temperature": number(0, 0.7, -1),
        "top_p": number(1, 0.5, 0, 1.5),
        "samples": number(1, 2, 0, 9),
        "answer": token_text(),
        "wrong": token_text(),
    },
}
PICKER = {"model": MODEL, "processing": PROCESSING}
PAGE_EXAMPLES = int(os.environ.get("FUZZ_PAGE_EXAMPLES", 2))


def test_every_page_is_fuzzed():
    from pathlib import Path

    pages = {p.name for p in (Path(__file__).resolve().parents[1] / "pages").glob("*.py")}
    assert pages <= set(PAGE_PARAMS), pages - set(PAGE_PARAMS)


@st.composite
def page_query(draw, page: str | None) -> tuple[dict[str, str], bool]:
    params = {**PAGE_PARAMS[page], **PICKER}
    chosen = draw(st.lists(st.sampled_from(sorted(params)), min_size=1, max_size=3, unique=True))
    return {name: draw(params[name]) for name in chosen}, draw(st.booleans())


def url_safe(query: dict[str, str]) -> bool:
    """A real URL carries no lone surrogate (browsers percent-encode UTF-8) and no NUL."""
    return all("\x00" not in v and not any(0xD800 <= ord(c) <= 0xDFFF for c in v) for v in query.values())


@pytest.mark.parametrize("page", list(PAGE_PARAMS), ids=lambda p: p or "Home")
@settings(derandomize=True, max_examples=PAGE_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_page_url_params(page, data):
    from tests.test_app import open_page

    query, hosted = data.draw(page_query(page))
    query = {k: v for k, v in query.items() if url_safe({k: v})}
    started = time.monotonic()
    with hosting(hosted):
        at = open_page(page, **query)
    assert not at.exception, (query, [e.message for e in at.exception])
    assert not any("Traceback" in str(e.value) for e in at.error), query
    assert time.monotonic() - started < HANG_S, query
