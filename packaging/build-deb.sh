#!/usr/bin/env bash
# Builds the Debian package of kubelet-resource-wrapper from a release binary, with dpkg-deb
# from a staged tree (no debian/ source package, no debhelper):
#   /usr/bin/kubelet-resource-wrapper                          the binary
#   /lib/systemd/system/kubelet-resource-wrapper-standby.service  the standby unit (enabled on install)
#   /etc/default/kubelet-resource-wrapper                      settings file (conffile)
#   /usr/share/man/man1, /usr/share/doc, /usr/share/lintian/overrides
#
#   packaging/build-deb.sh BINARY OUTDIR [REVISION]     (REVISION default 1)
#
# The version is the binary's own (`--version`) plus the Debian revision. Depends comes from
# dpkg-shlibdeps (libc6 for the glibc build, nothing for the static musl build). Needs dpkg-dev.
# Prints the path of the .deb on its last line.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${1:?usage: build-deb.sh BINARY OUTDIR [REVISION]}
outdir=${2:?usage: build-deb.sh BINARY OUTDIR [REVISION]}
revision=${3:-1}
pkg=kubelet-resource-wrapper
maintainer=${KRW_DEB_MAINTAINER:-kubelet-resource-wrapper maintainers <maintainers@kubelet-resource-wrapper.org>}
# reproducible: the date of the last commit (or SOURCE_DATE_EPOCH)
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || date +%s)}

reported=$("$bin" --version)
upstream=${reported#"$pkg "}
[[ "$reported" == "$pkg $upstream" && -n "$upstream" ]] || {
  echo "build-deb: $bin reports '$reported', expected '$pkg <version>'" >&2
  exit 1
}
version="$upstream-$revision"
arch=$(dpkg --print-architecture)

work=$(mktemp -d /tmp/krw-build-deb.XXXXXX)
trap 'rm -rf "$work"' EXIT
root="$work/root"
install -d -m 0755 "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/default" \
  "$root/usr/share/doc/$pkg" "$root/usr/share/man/man1" "$root/usr/share/lintian/overrides"
install -m 0755 "$bin" "$root/usr/bin/$pkg"
install -m 0644 "$REPO/packaging/$pkg-standby.service" "$root/lib/systemd/system/"
install -m 0644 "$REPO/packaging/deb/default" "$root/etc/default/$pkg"
install -m 0644 "$REPO/packaging/deb/copyright" "$root/usr/share/doc/$pkg/copyright"
install -m 0644 "$REPO/packaging/deb/lintian-overrides" "$root/usr/share/lintian/overrides/$pkg"
gzip -9n <"$REPO/packaging/deb/$pkg.1" >"$root/usr/share/man/man1/$pkg.1.gz"
{
  printf '%s (%s) unstable; urgency=medium\n\n' "$pkg" "$version"
  printf '  * Release %s, built from the release binary (packaging/build-deb.sh).\n\n' "$upstream"
  printf ' -- %s  %s\n' "$maintainer" "$(LC_ALL=C date -u -R -d "@$epoch")"
} | gzip -9n >"$root/usr/share/doc/$pkg/changelog.Debian.gz"
for s in postinst prerm postrm; do install -m 0755 "$REPO/packaging/deb/$s" "$root/DEBIAN/$s"; done
echo "/etc/default/$pkg" >"$root/DEBIAN/conffiles"
chmod 0644 "$root/DEBIAN/conffiles"

# Depends from the binary's shared libraries (dpkg-shlibdeps wants a debian/control to read)
mkdir -p "$work/src/debian"
printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$pkg" "$pkg" >"$work/src/debian/control"
depends=$(cd "$work/src" && dpkg-shlibdeps -O -e"$root/usr/bin/$pkg" 2>/dev/null |
  sed -n 's/^shlibs:Depends=//p')
size=$(du -k -s --exclude=DEBIAN "$root" | cut -f1)
{
  echo "Package: $pkg"
  echo "Version: $version"
  echo "Architecture: $arch"
  echo "Maintainer: $maintainer"
  echo "Installed-Size: $size"
  [[ -n "$depends" ]] && echo "Depends: $depends"
  echo "Recommends: containerd"
  echo "Section: admin"
  echo "Priority: optional"
  echo "Homepage: https://github.com/kubelet-resource-wrapper/kubelet-resource-wrapper"
  echo "Description: run kubelet so that node allocatable equals the Mesos lease"
  echo " kubelet-resource-wrapper runs kubelet as a Marathon task on a Mesos host. It"
  echo " computes kubelet's --system-reserved so that the node's allocatable equals"
  echo " the task's lease, supervises kubelet, answers Marathon's MESOS_HTTP health"
  echo " check and drains the node when the task is killed."
  echo " ."
  echo " The standby service keeps kubelet registered with zero allocatable while no"
  echo " Marathon task holds the host."
} >"$root/DEBIAN/control"

mkdir -p "$outdir"
out="$(cd "$outdir" && pwd)/${pkg}_${version}_${arch}.deb"
SOURCE_DATE_EPOCH=$epoch dpkg-deb --root-owner-group -Zxz --build "$root" "$out" >&2
echo "$out"
