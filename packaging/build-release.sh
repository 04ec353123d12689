#!/usr/bin/env bash
# Builds the release artifacts that the Ansible role and the Packer image consume:
#   dist/kubelet-resource-wrapper-<version>-<target>  and  <that>.sha256
#   dist/kubelet-resource-wrapper_<version>-1_<arch>.deb  and  <that>.sha256 (packaging/build-deb.sh)
# A fully static musl build when the x86_64-unknown-linux-musl target and musl-tools are
# installed; otherwise the glibc build (dynamically linked against glibc only, fine on Debian 12).
# Prints the path of the .deb on stderr and the path of the binary on its last line.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
target=x86_64-unknown-linux-gnu
if rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl && command -v musl-gcc >/dev/null; then
  target=x86_64-unknown-linux-musl
fi
cargo build --release --locked --target "$target" -p kubelet-resource-wrapper --bin kubelet-resource-wrapper >&2
built="target/$target/release/kubelet-resource-wrapper"
reported=$("$built" --version)
if [[ "$reported" != "kubelet-resource-wrapper $version" ]]; then
  echo "build-release: $built reports '$reported', expected version $version" >&2
  exit 1
fi
mkdir -p dist
out="dist/kubelet-resource-wrapper-$version-$target"
cp "$built" "$out"
(cd dist && sha256sum "$(basename "$out")" > "$(basename "$out").sha256")
deb=$(packaging/build-deb.sh "$out" dist | tail -n 1)
(cd dist && sha256sum "$(basename "$deb")" > "$(basename "$deb").sha256")
echo "build-release: $deb" >&2
echo "$REPO/$out"
