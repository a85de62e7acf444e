#!/usr/bin/env python3
"""A CycloneDX 1.5 SBOM of the crates compiled into the kmsroute binary.

Reads `cargo metadata` (the resolved graph for the host platform, default features) and walks it
from kmsroute along normal dependencies only (no dev-dependencies; build-time crates that run at
build but are not linked are listed with scope "excluded"). Each component carries its purl
(pkg:cargo/NAME@VERSION), its licence expression as the crate declares it, and the SHA-256 of its
crates.io archive from Cargo.lock. Deterministic: the same tree and arguments give the same bytes.

    python3 scripts/sbom.py --version 0.1.0 --revision <git sha> --created <RFC 3339> > sbom.json
"""

import argparse
import json
import subprocess
import sys
import uuid

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None


def metadata():
    host = subprocess.run(
        ["rustc", "-vV"], check=True, capture_output=True, text=True
    ).stdout
    triple = next(l.split(": ", 1)[1] for l in host.splitlines() if l.startswith("host: "))
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked", "--filter-platform", triple],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def checksums():
    """name@version -> sha256 of the crate archive, from Cargo.lock."""
    sums = {}
    if tomllib is None:
        return sums
    with open("Cargo.lock", "rb") as f:
        lock = tomllib.load(f)
    for p in lock.get("package", []):
        if "checksum" in p:
            sums[f"{p['name']}@{p['version']}"] = p["checksum"]
    return sums


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--version", required=True)
    ap.add_argument("--revision", default="unknown")
    ap.add_argument("--created", required=True)
    args = ap.parse_args()

    meta = metadata()
    pkgs = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    root = next(p["id"] for p in meta["packages"] if p["name"] == "kmsroute")

    def deps(node_id, kinds):
        for d in nodes[node_id]["deps"]:
            if any(k["kind"] in kinds for k in d["dep_kinds"]):
                yield d["pkg"]

    # Linked: normal dependencies, transitively. Build-only: build dependencies of anything
    # linked, and their own normal dependencies, minus what is linked anyway.
    linked, todo = set(), [root]
    while todo:
        n = todo.pop()
        if n in linked:
            continue
        linked.add(n)
        todo.extend(deps(n, {None}))
    build, todo = set(), [b for n in linked for b in deps(n, {"build"})]
    while todo:
        n = todo.pop()
        if n in build or n in linked:
            continue
        build.add(n)
        todo.extend(deps(n, {None, "build"}))

    sums = checksums()

    def purl(p):
        return f"pkg:cargo/{p['name']}@{p['version']}"

    def component(pid, scope):
        p = pkgs[pid]
        c = {
            "type": "library",
            "bom-ref": purl(p),
            "name": p["name"],
            "version": p["version"],
            "purl": purl(p),
            "scope": scope,
        }
        if p.get("license"):
            c["licenses"] = [{"expression": p["license"]}]
        if p.get("description"):
            c["description"] = " ".join(p["description"].split())
        s = sums.get(f"{p['name']}@{p['version']}")
        if s:
            c["hashes"] = [{"alg": "SHA-256", "content": s}]
        if p.get("repository"):
            c["externalReferences"] = [{"type": "vcs", "url": p["repository"]}]
        return c

    components = [component(pid, "required") for pid in sorted(linked - {root}, key=lambda i: purl(pkgs[i]))]
    components += [component(pid, "excluded") for pid in sorted(build, key=lambda i: purl(pkgs[i]))]
    dependencies = [
        {
            "ref": purl(pkgs[n]),
            "dependsOn": sorted({purl(pkgs[d]) for d in deps(n, {None})}),
        }
        for n in sorted(linked, key=lambda i: purl(pkgs[i]))
    ]
    me = pkgs[root]
    bom = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": "urn:uuid:"
        + str(uuid.uuid5(uuid.NAMESPACE_URL, f"kmsroute/{args.version}/{args.revision}")),
        "version": 1,
        "metadata": {
            "timestamp": args.created,
            "tools": {"components": [{"type": "application", "name": "kmsroute scripts/sbom.py"}]},
            "component": {
                "type": "application",
                "bom-ref": purl(me),
                "name": "kmsroute",
                "version": args.version,
                "purl": f"pkg:cargo/kmsroute@{args.version}",
                "licenses": [{"expression": me.get("license") or "Apache-2.0"}],
                "externalReferences": [
                    {"type": "vcs", "url": "https://github.com/kmsroute/kmsroute"}
                ],
                "properties": [{"name": "git:revision", "value": args.revision}],
            },
        },
        "components": components,
        "dependencies": dependencies,
    }
    json.dump(bom, sys.stdout, indent=1, sort_keys=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
