#!/usr/bin/env bash
# The classic Datadog buildpack's build mechanics, for the benchmark: apt-get update with a
# private state directory, apt-get download, dpkg-deb -x, then the deletions its compile
# step makes for agent 7 with default settings (Python 3, APM on, process agent off).
# Usage: classic-mechanics.sh REPO_URL KEYRING BUILD_DIR STATE_DIR PACKAGE=VERSION
set -euo pipefail
repo=$1 keyring=$2 build=$3 state=$4 package=$5

mkdir -p "$state/lists/partial" "$state/cache/archives/partial" "$state/etc" "$state/download"
echo "deb [signed-by=$keyring] $repo/ stable 7" > "$state/etc/sources.list"
opts=(-o debug::nolocking=true -o "Dir::Cache=$state/cache" -o "Dir::State=$state"
      -o "Dir::State::status=/var/lib/dpkg/status"
      -o "Dir::Etc::SourceList=$state/etc/sources.list" -o Dir::Etc::SourceParts=/dev/null)
apt-get "${opts[@]}" -qq update
(cd "$state/download" && apt-get "${opts[@]}" -qq download "$package")
deb=$(ls "$state/download/"*.deb)

apt="$build/.apt"
mkdir -p "$apt"
dpkg-deb -x "$deb" "$apt"
dd="$apt/opt/datadog-agent"
rm -rf "$dd/sources" "$dd/embedded/share/doc" "$dd/embedded/share/man" "$dd/embedded/sbin/gstatus" \
       "$dd/embedded/.installed_by_pkg.txt"
rm -rf "$dd"/embedded/lib/python*/site-packages/Cryptodome/SelfTest
for svc in "$dd"/embedded/lib/python*/site-packages/botocore/data/*; do
    [ "$(basename "$svc")" = s3 ] || rm -rf "$svc"
done
for p in kubernetes lxml openstack pysnmp_mibs pyVim pyVmomi cm_client; do
    rm -rf "$dd"/embedded/lib/python*/site-packages/"$p"
done
rm -rf "$dd/embedded/bin/system-probe" "$dd/embedded/share/system-probe" "$dd/embedded/bin/clang-bpf" \
       "$dd/embedded/bin/llc-bpf" "$dd"/embedded/lib/libbcc* "$dd/embedded/nikos" \
       "$dd/embedded/bin/secret-generic-connector" "$dd"/embedded/lib/*.a \
       "$dd"/embedded/lib/python*/config*/*.a "$dd/embedded/bin/security-agent"
rm -rf "$dd"/embedded/lib/python2.* "$dd"/embedded/lib/libpython2* "$dd"/embedded/bin/pip2* \
       "$dd"/embedded/bin/python2* "$dd"/embedded/bin/pydoc*
rm -f "$dd/embedded/bin/2to3" "$dd/embedded/bin/pip" "$dd/embedded/ssl/cert.pem" "$dd/embedded/bin/installer"
find "$apt" -type f -ipath '*/pkgconfig/*.pc' | xargs --no-run-if-empty -n 1 \
    sed -i -e 's!^prefix=\(.*\)$!prefix='"$apt"'\1!g'
