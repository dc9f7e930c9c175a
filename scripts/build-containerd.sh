#!/usr/bin/env bash
# Builds containerd and containerd-shim-runc-v2 from the Go module proxy
# into a cache directory, once per version: build-containerd.sh VERSION
# [OUTDIR]. VERSION is 2.3.7, 2.4.2, ... (a leading v is accepted); OUTDIR
# defaults to ${CRF_BED_CACHE:-/var/cache/crfailoverd-bed}/containerd-vVERSION.
# Results: OUTDIR/containerd, OUTDIR/containerd-shim-runc-v2, both reporting
# VERSION. Every containerd v2 release is a Go module without replace
# directives, so `go install MODULE/cmd/...@vVERSION` builds it.
set -euo pipefail
version=${1:?usage: build-containerd.sh VERSION [OUTDIR]}
version=${version#v}
out=${2:-${CRF_BED_CACHE:-/var/cache/crfailoverd-bed}/containerd-v$version}
export PATH="$PATH:/usr/local/go/bin"
module=github.com/containerd/containerd/v2

# Outputs are read whole before they are searched (see build-crio.sh).
is_version() { # BINARY: it runs and reports the wanted version
	local v
	[[ -x "$1" ]] && v=$("$1" --version 2>/dev/null) && grep -Eq "(^| )v?$version( |\$)" <<<"$v"
}
shim_ok() { # the shim has -v: "containerd-shim-runc-v2:\n  Version:  v2.4.2"
	local v
	[[ -x "$1" ]] && v=$("$1" -v 2>/dev/null) && grep -Eq "Version: +v?$version\$" <<<"$v"
}

if is_version "$out/containerd" && shim_ok "$out/containerd-shim-runc-v2"; then
	echo "containerd v$version: cached in $out (containerd, containerd-shim-runc-v2)"
	exit 0
fi
work="$out.build"
rm -rf "$work"
mkdir -p "$work" "$out"
echo "containerd v$version: building containerd and containerd-shim-runc-v2 from the Go module proxy (a few minutes on 2 cores; runs at low priority)"
# The version is stamped as containerd's own Makefile does.
ldflags="-s -w -X $module/version.Version=v$version -X $module/version.Package=$module"
start=$(date +%s)
# CGO off: static binaries that run in any node root file system.
GOBIN="$work" CGO_ENABLED=0 nice -n 10 go install -trimpath -ldflags "$ldflags" \
	"$module/cmd/containerd@v$version" "$module/cmd/containerd-shim-runc-v2@v$version"
for b in containerd containerd-shim-runc-v2; do
	mv "$work/$b" "$out/$b"
done
rmdir "$work"
if ! is_version "$out/containerd"; then
	echo "containerd v$version: $out/containerd reports $("$out/containerd" --version 2>&1 || true), not v$version" >&2
	exit 1
fi
if ! shim_ok "$out/containerd-shim-runc-v2"; then
	echo "containerd v$version: $out/containerd-shim-runc-v2 reports $("$out/containerd-shim-runc-v2" -v 2>&1 || true), not v$version" >&2
	exit 1
fi
echo "containerd v$version: $("$out/containerd" --version)"
echo "containerd v$version: ready in $out in $(($(date +%s) - start)) s (containerd, containerd-shim-runc-v2)"
