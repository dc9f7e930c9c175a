#!/usr/bin/env bash
# Builds CRI-O from the Go module proxy into a cache directory, once per
# version: build-crio.sh VERSION PATCH OUTDIR. Results:
#   OUTDIR/crio           CRI-O as released
#   OUTDIR/crio-patched   the same source with PATCH applied (refreshed when
#                         the patch changes: OUTDIR/crio-patched.sha256)
#   OUTDIR/pinns          CRI-O's namespace pinning helper, static
# `go install github.com/cri-o/cri-o/cmd/crio@VERSION` is refused (the proxy
# lists no versions of the module), so a wrapper module requires it; the
# patched build replaces it with a patched copy of the module's source.
set -euo pipefail
version=${1:?usage: build-crio.sh VERSION PATCH OUTDIR}
patchfile=${2:?usage: build-crio.sh VERSION PATCH OUTDIR}
out=${3:?usage: build-crio.sh VERSION PATCH OUTDIR}
export PATH="$PATH:/usr/local/go/bin"
export CGO_ENABLED=1
tags="containers_image_openpgp containers_image_ostree_stub exclude_graphdriver_btrfs exclude_graphdriver_devicemapper"
plain=${version#v}
patchfile=$(realpath "$patchfile")
patchsum=$(sha256sum "$patchfile" | cut -d' ' -f1)

# Outputs are read whole before they are searched: grep -q would stop
# reading early, and pipefail would count the writer's SIGPIPE as a failure.
is_version() { # BINARY: it runs and reports the wanted version
	local v
	[[ -x "$1" ]] && v=$("$1" --version 2>/dev/null) && grep -q "^crio version $plain\$" <<<"$v"
}
plain_ok() { is_version "$out/crio"; }
patched_ok() {
	local help
	is_version "$out/crio-patched" && [[ "$(cat "$out/crio-patched.sha256" 2>/dev/null)" == "$patchsum" ]] &&
		help=$("$out/crio-patched" --help 2>/dev/null) && grep -q -- --keep-checkpoint-logs <<<"$help"
}
pinns_ok() { [[ -x "$out/pinns" ]]; } # pinns has no version or help option

if plain_ok && patched_ok && pinns_ok; then
	echo "crio $version: cached in $out (crio, crio-patched, pinns)"
	exit 0
fi
work="$out.build"
rm -rf "$work"
mkdir -p "$work/plain" "$work/patched" "$out"
echo "crio $version: fetching github.com/cri-o/cri-o from the Go module proxy"
src=$(go mod download -json "github.com/cri-o/cri-o@$version" | sed -n 's/^\s*"Dir": "\(.*\)",\?$/\1/p')
[[ -f "$src/go.mod" ]] || { echo "crio $version: no module source from the proxy" >&2; exit 1; }
commit=$(go mod download -json "github.com/cri-o/cri-o@$version" | sed -n 's/^\s*"Hash": "\(.*\)",\?$/\1/p')

wrapper() { # DIR EXTRA-GO.MOD-LINE
	{
		echo "module crfailoverd.local/crio-build"
		echo
		echo "go 1.26"
		echo
		echo "require github.com/cri-o/cri-o $version"
		[[ -z "$2" ]] || printf '\n%s\n' "$2"
	} > "$1/go.mod"
	cat > "$1/tools.go" <<'GO'
//go:build tools

package tools

import _ "github.com/cri-o/cri-o/cmd/crio"
GO
}

compile() { # DIR OUTPUT BUILDCOMMIT
	(cd "$1" && nice -n 10 go build -trimpath -tags "$tags" -o "$2.new" \
		-ldflags="-s -w -X github.com/cri-o/cri-o/internal/version.buildCommit=$3" \
		github.com/cri-o/cri-o/cmd/crio)
	mv "$2.new" "$2"
}

if ! plain_ok; then
	wrapper "$work/plain" ""
	echo "crio $version: resolving modules (go mod tidy)"
	(cd "$work/plain" && GOFLAGS=-mod=mod go mod tidy)
	echo "crio $version: compiling crio (about 4 minutes on 2 cores, longer on a busy machine; runs at low priority)"
	compile "$work/plain" "$out/crio" "$commit"
	echo "crio $version: built $out/crio"
fi

if ! patched_ok; then
	echo "crio $version: applying $(basename "$patchfile") to a copy of the module source"
	cp -r "$src" "$work/src"
	chmod -R u+w "$work/src"
	# The module zip does not keep executable bits; git apply warns about
	# the patch's file modes, which do not matter for the build.
	if ! (cd "$work/src" && git apply --check "$patchfile" 2> >(grep -v 'has type 100644, expected 100755' >&2)); then
		echo "crio $version: $patchfile does not apply to CRI-O $version: refresh it" >&2
		exit 1
	fi
	(cd "$work/src" && git apply "$patchfile" 2> >(grep -v 'has type 100644, expected 100755' >&2))
	wrapper "$work/patched" "replace github.com/cri-o/cri-o => ../src"
	echo "crio $version: resolving modules of the patched build (go mod tidy)"
	(cd "$work/patched" && GOFLAGS=-mod=mod go mod tidy)
	echo "crio $version: compiling crio-patched (most packages come from the build cache)"
	compile "$work/patched" "$out/crio-patched" "$commit+patch-${patchsum:0:12}"
	echo "$patchsum" > "$out/crio-patched.sha256"
	echo "crio $version: built $out/crio-patched"
fi

if ! pinns_ok; then
	echo "crio $version: compiling pinns (static)"
	(cd "$src/pinns" && nice -n 10 gcc -std=c99 -O2 -static -o "$out/pinns.new" src/*.c)
	mv "$out/pinns.new" "$out/pinns"
	echo "crio $version: built $out/pinns"
fi

rm -rf "$work"
echo "crio $version: ready in $out (crio, crio-patched, pinns)"
