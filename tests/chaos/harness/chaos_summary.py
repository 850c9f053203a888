#!/usr/bin/env python3
"""Prints the summary table of a chaos run: one row per chaos-*.json report in DIR.

Usage: chaos_summary.py DIR   (exit status 1 when a report is invalid or none exists)
"""
import glob
import json
import os
import sys


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: chaos_summary.py REPORT_DIR", file=sys.stderr)
        return 2
    paths = sorted(glob.glob(os.path.join(sys.argv[1], "chaos-*.json")))
    if not paths:
        print(f"no chaos reports (chaos-*.json) in {sys.argv[1]}", file=sys.stderr)
        return 1
    cols = ["test", "seed", "cycles", "acknowledged", "lost", "duplicated", "reordered",
            "unexpected", "internal", "refused", "duplicate_acks", "valid"]
    rows = []
    for p in paths:
        with open(p) as f:
            r = json.load(f)
        rows.append([str(r.get(c, "")) for c in cols])
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    print(line(cols))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))
    return 0 if all(row[-1] == "True" or row[-1] == "true" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
