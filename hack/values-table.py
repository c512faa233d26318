#!/usr/bin/env python3
"""The chart's values table, from the `# --` comments of charts/zeroscale/values.yaml.

Every value gets a row: key path, default, and the comment above it. A value with no
comment of its own fails, unless an enclosing key is documented as a whole (its default
then shows the whole block). The table goes between the markers
`<!-- values-table:start -->` and `<!-- values-table:end -->` of a markdown file:

    values-table.py --write README.md   # rewrite the table in place
    values-table.py --check README.md   # exit 1 when the table there is stale

Needs PyYAML (the venv of hack/install-tools.sh has it).
"""

import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
VALUES = ROOT / "charts" / "zeroscale" / "values.yaml"
START, END = "<!-- values-table:start -->", "<!-- values-table:end -->"
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_]+):(?P<rest>.*)$")


def entries(text):
    """(path, documented, doc) for each key, in file order."""
    stack = []  # (indent, key)
    doc = None
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            doc = None
            continue
        if stripped.startswith("# --"):
            doc = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            if doc is not None:
                doc.append(stripped[1:].strip())
            continue
        match = KEY.match(line)
        if not match:
            if stripped.startswith("- "):
                continue  # an item of a block list, part of its key's default
            raise SystemExit(f"{VALUES}:{number}: cannot read {line!r}")
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        path = [key for _, key in stack]
        found.append((path, doc is not None, " ".join(doc or [])))
        doc = None
    return found


def lookup(values, path):
    for key in path:
        values = values[key]
    return values


def table():
    text = VALUES.read_text()
    values = yaml.safe_load(text)
    found = entries(text)
    documented = {tuple(path) for path, has_doc, _ in found if has_doc}
    rows, missing = [], []
    for index, (path, has_doc, doc) in enumerate(found):
        children = [p for p, *_ in found[index + 1 :] if p[: len(path)] == path and len(p) > len(path)]
        documented_children = any(tuple(child) in documented for child in children)
        if has_doc and not documented_children:
            default = json.dumps(lookup(values, path), separators=(", ", ": "))
            rows.append(f"| `{'.'.join(path)}` | `{default}` | {doc.replace('|', '&#124;')} |")
        elif not has_doc and not children:
            if not any(tuple(path[:n]) in documented for n in range(1, len(path))):
                missing.append(".".join(path))
    if missing:
        raise SystemExit("values without a `# --` comment: " + ", ".join(missing))
    header = ["| value | default | description |", "|---|---|---|"]
    return "\n".join(header + rows) + "\n"


def main(argv):
    if len(argv) == 1:
        sys.stdout.write(table())
        return 0
    if len(argv) != 3 or argv[1] not in ("--write", "--check"):
        sys.stderr.write(__doc__)
        return 2
    target = Path(argv[2])
    text = target.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{target}: no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    fresh = f"{head}{START}\n{table()}{END}{tail}"
    if argv[1] == "--write":
        target.write_text(fresh)
        return 0
    if fresh != text:
        sys.stderr.write(f"{target}: the values table is stale; run hack/values-table.py --write {target}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
