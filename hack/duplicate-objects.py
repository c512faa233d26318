"""Fails when a multi-document YAML file (a rendered chart) holds two objects of one
kind, namespace and name: one would overwrite the other when applied.

    python hack/duplicate-objects.py rendered.yaml
"""

import sys

import yaml


def main(path):
    seen, duplicates = set(), []
    with open(path) as file:
        for doc in yaml.safe_load_all(file):
            if not doc:
                continue
            meta = doc.get("metadata") or {}
            key = (doc.get("kind"), meta.get("namespace", ""), meta.get("name"))
            if key in seen:
                duplicates.append("%s %s/%s" % key)
            seen.add(key)
    if duplicates:
        sys.exit("rendered twice: " + ", ".join(duplicates))


if __name__ == "__main__":
    main(sys.argv[1])
