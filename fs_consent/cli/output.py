"""Rendering rows for the CLI: table, json or csv."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

FORMATS = ("table", "json", "csv")


def _plain(value):
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="seconds") + "Z"
    return value


def render(rows: list[dict], fmt: str, *, single: bool = False) -> str:
    """``single`` renders one object (json: an object, table: key/value lines)."""
    rows = [{k: _plain(v) for k, v in row.items()} for row in rows]
    if fmt == "json":
        return json.dumps(rows[0] if single else rows, indent=2)
    if fmt == "csv":
        out = io.StringIO()
        if rows:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        return out.getvalue().rstrip("\n")
    if single:
        width = max(len(k) for k in rows[0])
        return "\n".join(f"{k.ljust(width)}  {'' if v is None else v}" for k, v in rows[0].items())
    if not rows:
        return "(none)"
    columns = list(rows[0])
    cells = [[("" if row[c] is None else str(row[c])) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)
