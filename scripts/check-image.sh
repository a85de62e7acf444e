#!/usr/bin/env bash
# Checks the image scripts/build-image.sh wrote (CI runs it after the build):
#   - its config: user 65532, entrypoint kmsroute, the OCI labels (source, version, revision,
#     licenses), linux;
#   - the SBOM beside it: CycloneDX, naming kmsroute's crates;
#   - `kmsroute demo` run from the unpacked root filesystem as uid 65532 with that root
#     read-only: with crun when it can run containers here, else in a private mount namespace
#     with the root bind-mounted read-only and a chroot (the same files, user and read-only
#     root; no seccomp or cgroup limits).
# Usage: check-image.sh [target/image]   Exit 0 when every check passes.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/image}"
archive="$out/kmsroute.oci.tar"
[ -f "$archive" ] || { echo "check-image: no $archive (run scripts/build-image.sh)" >&2; exit 2; }
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
fail() { echo "check-image: FAIL: $*" >&2; exit 1; }
pass() { echo "check-image: ok: $*"; }

config="$(skopeo inspect --config "oci-archive:$archive")"
python3 - "$config" "$version" <<'PY' || exit 1
import json, sys
c = json.loads(sys.argv[1]); version = sys.argv[2]
cfg = c.get("config", {})
def check(cond, what):
    if not cond:
        print(f"check-image: FAIL: {what}: {json.dumps(cfg)}", file=sys.stderr); sys.exit(1)
    print(f"check-image: ok: {what}")
check(cfg.get("User") in ("65532:65532", "65532"), "runs as user 65532")
check(cfg.get("Entrypoint") == ["/usr/local/bin/kmsroute"], "entrypoint kmsroute")
check(cfg.get("Cmd") == ["run"], "default command run")
labels = cfg.get("Labels") or {}
for k in ["source", "version", "revision", "licenses", "created", "title"]:
    check(f"org.opencontainers.image.{k}" in labels, f"label org.opencontainers.image.{k}")
check(labels["org.opencontainers.image.version"] == version, f"version label {version}")
check(labels["org.opencontainers.image.licenses"] == "Apache-2.0", "licenses Apache-2.0")
check(len(labels["org.opencontainers.image.revision"]) == 40, "revision is a commit")
check(c.get("os") == "linux", "os linux")
PY

python3 - "$out/kmsroute.cdx.json" <<'PY' || exit 1
import json, sys
b = json.load(open(sys.argv[1]))
assert b["bomFormat"] == "CycloneDX" and b["specVersion"] == "1.5", "not CycloneDX 1.5"
names = {c["name"] for c in b["components"]}
for crate in ["tokio", "kube", "azure_mgmt_network", "azure_identity", "rustls"]:
    assert crate in names, f"SBOM lacks {crate}"
assert all(c["purl"].startswith("pkg:cargo/") for c in b["components"])
print(f"check-image: ok: SBOM with {len(b['components'])} crates")
PY

work="$(mktemp -d)"
cleanup() {
  umount "$work/ro" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
skopeo copy --quiet "oci-archive:$archive" "oci:$work/oci:check"
umoci unpack --image "$work/oci:check" "$work/bundle" >/dev/null
rootfs="$work/bundle/rootfs"
[ -x "$rootfs/usr/local/bin/kmsroute" ] || fail "no /usr/local/bin/kmsroute in the image"
[ ! -e "$rootfs/bin/sh" ] && [ ! -e "$rootfs/usr/bin/sh" ] || fail "the image has a shell"
grep -q '^nonroot:x:65532:65532:' "$rootfs/etc/passwd" || fail "no passwd entry for 65532"
[ -s "$rootfs/etc/ssl/certs/ca-certificates.crt" ] || fail "no CA bundle"
pass "root filesystem: the binary, passwd 65532, CA bundle, no shell ($(du -sh "$rootfs" | cut -f1))"

log="$work/demo.log"
ran=""
if command -v crun >/dev/null 2>&1; then
  # The runtime bundle umoci made, with the demo as the process, the root read-only.
  python3 - "$work/bundle/config.json" <<'PY'
import json, sys
p = sys.argv[1]; c = json.load(open(p))
c["process"]["args"] = ["/usr/local/bin/kmsroute", "demo"]
c["process"]["terminal"] = False
c["root"]["readonly"] = True
# Loopback only: the demo's emulator listens on 127.0.0.1 inside the container.
json.dump(c, open(p, "w"))
PY
  if (cd "$work/bundle" && timeout 300 crun --cgroup-manager=disabled run "kmsroute-check-$$" >"$log" 2>&1); then
    ran="crun (uid $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["process"]["user"]["uid"])' "$work/bundle/config.json"), read-only root)"
  else
    echo "check-image: crun could not run the container here; falling back to a chroot" >&2
    tail -5 "$log" >&2 || true
  fi
fi
if [ -z "$ran" ]; then
  mkdir -p "$work/ro"
  # A private mount namespace: the root bind-mounted read-only (checked: a write to it fails),
  # a tmpfs /tmp, and the demo in a chroot as 65532:65532.
  unshare --mount --fork sh -c "
    set -e
    mount --bind '$rootfs' '$work/ro'
    mount -o remount,bind,ro '$work/ro'
    if touch '$work/ro/written' 2>/dev/null; then echo 'the root is writable' >&2; exit 9; fi
    mount -t tmpfs -o size=16m,mode=1777 tmpfs '$work/ro/tmp'
    exec chroot --userspec=65532:65532 '$work/ro' /usr/local/bin/kmsroute demo
  " >"$log" 2>&1 || { tail -20 "$log" >&2; fail "kmsroute demo did not run in the read-only chroot"; }
  ran="chroot as 65532:65532 in a private mount namespace, the root bind-mounted read-only"
fi
grep -q "Steady state" "$log" || { tail -20 "$log" >&2; fail "kmsroute demo did not reach its last step"; }
pass "kmsroute demo ran from the image's root filesystem: $ran"
echo "check-image: $("$rootfs/usr/local/bin/kmsroute" --version)"
