#!/usr/bin/env bash
# Builds the kmsroute container image without pulling any base image from a registry: the
# runtime files come from Debian packages, as distroless is made (libc6, libgcc-s1,
# ca-certificates, netbase, tzdata; a passwd entry for the non-root user 65532), and the image
# is assembled with umoci into an OCI layout, then written as an OCI archive.
#
#   bash scripts/build-image.sh            # -> target/image/kmsroute.oci.tar (+ SBOM)
#   skopeo copy oci-archive:target/image/kmsroute.oci.tar docker://<registry>/kmsroute:<tag>
#
# Needs: cargo, umoci and skopeo (Debian: apt-get install umoci skopeo), apt-get download
# (Debian's archive), python3. Run as root or with fakeroot-free umoci (--rootless is used
# when not root). The same layout and labels as the Dockerfile and the release workflow.
# Environment: KMSROUTE_BIN=path skips the cargo build (an already built release binary);
# KMSROUTE_IMAGE_OUT=dir (default target/image).
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1 || { echo "build-image: $1 not found ($2)" >&2; exit 2; }; }
need umoci "apt-get install umoci"
need skopeo "apt-get install skopeo"
need dpkg-deb "Debian's dpkg"
need apt-get "Debian's apt"
need python3 "python3"

out="${KMSROUTE_IMAGE_OUT:-target/image}"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
# Reproducible timestamps: the commit's time, as SOURCE_DATE_EPOCH.
epoch="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}"
created="$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)"
source_url="https://github.com/kmsroute/kmsroute"
arch="$(dpkg --print-architecture)"

if [ -n "${KMSROUTE_BIN:-}" ]; then
  bin="$KMSROUTE_BIN"
else
  echo "== cargo build --release --locked" >&2
  KMSROUTE_BUILD_DATE="$created" cargo build --release --locked --bin kmsroute >&2
  bin=target/release/kmsroute
fi
[ -x "$bin" ] || { echo "build-image: no binary at $bin" >&2; exit 2; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
mkdir -p "$rootfs" "$work/debs"

echo "== runtime files from Debian packages" >&2
packages=(libc6 libgcc-s1 ca-certificates netbase tzdata)
(cd "$work/debs" && apt-get download "${packages[@]}" >&2 2>/dev/null || apt-get download "${packages[@]}" >&2)
for deb in "$work"/debs/*.deb; do
  dpkg-deb -x "$deb" "$rootfs"
  # What was installed, as dpkg would record it (scanners read /var/lib/dpkg/status.d, as in
  # distroless).
  name="$(dpkg-deb -f "$deb" Package)"
  mkdir -p "$rootfs/var/lib/dpkg/status.d"
  dpkg-deb -f "$deb" > "$rootfs/var/lib/dpkg/status.d/$name"
done
# What a static-ish Rust binary does not need: documentation, locales, iconv modules, tools.
# Each package's copyright file stays (its licence).
find "$rootfs/usr/share/doc" -type f ! -name copyright -delete 2>/dev/null || true
rm -rf "$rootfs/usr/share/man" "$rootfs/usr/share/lintian" "$rootfs/usr/share/locale" \
  "$rootfs/usr/lib/$(uname -m)-linux-gnu/gconv" "$rootfs/usr/bin" "$rootfs/usr/sbin" \
  "$rootfs/sbin" "$rootfs/bin" "$rootfs/usr/libexec"
# The CA bundle update-ca-certificates would make (no maintainer scripts run here).
mkdir -p "$rootfs/etc/ssl/certs"
cat "$rootfs"/usr/share/ca-certificates/mozilla/*.crt > "$rootfs/etc/ssl/certs/ca-certificates.crt"
# Users and groups: root and nonroot (65532), as distroless has them; no shell.
cat > "$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
cat > "$rootfs/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
EOF
cat > "$rootfs/etc/nsswitch.conf" <<'EOF'
passwd: files
group: files
hosts: files dns
EOF
mkdir -p "$rootfs/tmp" "$rootfs/home/nonroot" "$rootfs/root" "$rootfs/usr/local/bin" \
  "$rootfs/usr/share/doc/kmsroute"
chmod 1777 "$rootfs/tmp"
chown 65532:65532 "$rootfs/home/nonroot" 2>/dev/null || true
install -m 0755 "$bin" "$rootfs/usr/local/bin/kmsroute"
install -m 0644 LICENSE "$rootfs/usr/share/doc/kmsroute/LICENSE"
find "$rootfs" -exec touch -h -d "@$epoch" {} + 2>/dev/null || true

echo "== OCI image (umoci)" >&2
mkdir -p "$out"
layout="$out/oci"
rm -rf "$layout" "$out/kmsroute.oci.tar"
rootless=()
[ "$(id -u)" = 0 ] || rootless=(--rootless)
umoci init --layout "$layout"
umoci new --image "$layout:$version"
umoci unpack "${rootless[@]}" --image "$layout:$version" "$work/bundle" >&2
cp -a "$rootfs/." "$work/bundle/rootfs/"
umoci repack "${rootless[@]}" --image "$layout:$version" "$work/bundle" >&2
labels=(
  "org.opencontainers.image.source=$source_url"
  "org.opencontainers.image.url=$source_url"
  "org.opencontainers.image.documentation=$source_url#readme"
  "org.opencontainers.image.version=$version"
  "org.opencontainers.image.revision=$revision"
  "org.opencontainers.image.created=$created"
  "org.opencontainers.image.licenses=Apache-2.0"
  "org.opencontainers.image.title=kmsroute"
  "org.opencontainers.image.description=Declarative, self-healing KMS activation routes for force-tunneled Azure subnets"
  "org.opencontainers.image.vendor=kmsroute"
  "org.opencontainers.image.base.name=debian:bookworm packages ${packages[*]}"
)
config_args=(
  --config.user 65532:65532
  --config.entrypoint /usr/local/bin/kmsroute
  --config.cmd run
  --config.workingdir /
  --config.env PATH=/usr/local/bin
  --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
  --config.exposedports 8080/tcp
  --os linux --architecture "$arch"
  --created "$created" --author "kmsroute maintainers"
  --history.created "$created" --history.created_by "scripts/build-image.sh"
)
for l in "${labels[@]}"; do
  config_args+=(--config.label "$l" --manifest.annotation "$l")
done
umoci config --image "$layout:$version" "${config_args[@]}"
umoci gc --layout "$layout"

echo "== OCI archive and SBOM" >&2
skopeo copy --quiet "oci:$layout:$version" "oci-archive:$out/kmsroute.oci.tar:$version"
python3 scripts/sbom.py --version "$version" --revision "$revision" --created "$created" \
  > "$out/kmsroute.cdx.json"
# The Debian packages in the image, for the SBOM's readers.
for deb in "$work"/debs/*.deb; do
  dpkg-deb -f "$deb" Package Version Architecture | tr '\n' ' '; echo
done > "$out/debian-packages.txt"
(cd "$out" && sha256sum kmsroute.oci.tar kmsroute.cdx.json > SHA256SUMS)
echo "$out/kmsroute.oci.tar"
