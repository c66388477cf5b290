#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# Builds swift-virtiofsd for release with the Swift runtime linked in (the binary then runs on a machine with no
# Swift toolchain: it needs only glibc, libstdc++, libseccomp and libcap-ng) and installs it:
#
#   PREFIX/libexec/swift-virtiofsd                     the daemon
#   PREFIX/share/man/man1/swift-virtiofsd.1            its manual, generated from its argument parser
#   JSONDIR/40-swift-virtiofsd.json                    a vhost-user back-end descriptor (type "fs"): libvirt
#                                                      takes the first by name as its default virtiofsd
#
# Usage: ./install.sh [--prefix DIR] [--json-dir DIR] [--destdir DIR] [--no-build]
#   --prefix DIR    default /usr/local
#   --json-dir DIR  default PREFIX/share/qemu/vhost-user; /etc/qemu/vhost-user makes it libvirt's default
#                   ahead of the distribution's 50-qemu-virtiofsd.json (which it searches as well)
#   --destdir DIR   stage the files under DIR (for packaging); the descriptor still names PREFIX's binary
#   --no-build      install what the last run built
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
prefix=/usr/local
json_dir=""
destdir=""
build=yes
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix=$2; shift 2 ;;
        --json-dir) json_dir=$2; shift 2 ;;
        --destdir) destdir=$2; shift 2 ;;
        --no-build) build=no; shift ;;
        -h|--help) sed -n '3,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
json_dir=${json_dir:-$prefix/share/qemu/vhost-user}
scratch="$here/.build/static"
# One install at a time per checkout (they share the build and the manual's folder).
mkdir -p "$here/.build"
exec 9>"$here/.build/install.lock"
flock 9
if [ $build = yes ]; then
    missing=()
    for package in libseccomp-dev libcap-ng-dev pkg-config; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    # The manual, from the argument parser's own description of every option: its generate-manual plugin,
    # which builds the package for release (with the runtime as shared libraries: in a build folder of its own,
    # as the two builds' links would otherwise overwrite each other) and writes a page per program.
    rm -rf "$scratch/man" && mkdir -p "$scratch/man"
    (cd "$here" && swift package --scratch-path "$here/.build/manual" --allow-writing-to-directory "$scratch/man" \
        generate-manual --output-directory "$scratch/man" >/dev/null)
    (cd "$here" && swift build -c release --static-swift-stdlib --product swift-virtiofsd --scratch-path "$scratch")
    if ldd "$scratch/release/swift-virtiofsd" | grep -q libswift; then
        echo "install.sh: the build still needs the Swift runtime's shared libraries" >&2
        exit 1
    fi
fi
binary="$scratch/release/swift-virtiofsd"
[ -x "$binary" ] && [ -f "$scratch/man/swift-virtiofsd.1" ] || { echo "install.sh: nothing built yet (run without --no-build)" >&2; exit 1; }

install -D -m 755 "$binary" "$destdir$prefix/libexec/swift-virtiofsd"
install -D -m 644 "$scratch/man/swift-virtiofsd.1" "$destdir$prefix/share/man/man1/swift-virtiofsd.1"
mkdir -p "$destdir$json_dir"
cat > "$destdir$json_dir/40-swift-virtiofsd.json" <<EOF
{
  "description": "swift-virtiofsd: a vhost-user virtio-fs back-end",
  "type": "fs",
  "binary": "$prefix/libexec/swift-virtiofsd"
}
EOF
echo "installed $prefix/libexec/swift-virtiofsd, $prefix/share/man/man1/swift-virtiofsd.1 and $json_dir/40-swift-virtiofsd.json${destdir:+ under $destdir}"
