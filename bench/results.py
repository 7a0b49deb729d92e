"""Writing a benchmark's results: its JSON (the record; plots and tables are made from it) and its
markdown table, under one output folder, announced on stdout."""

from __future__ import annotations

import json
from pathlib import Path


def write_results(out: str | Path, stem: str, data: object, table: str, *extra: Path) -> None:
    """OUT/STEM.json and OUT/STEM.md; prints the table and the files written (`extra`: others already there)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(data, indent=1) + "\n")
    (out / f"{stem}.md").write_text(table)
    print(table)
    print("wrote " + ", ".join(str(p) for p in (out / f"{stem}.json", out / f"{stem}.md", *extra)))
