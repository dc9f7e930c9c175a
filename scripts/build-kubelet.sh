#!/usr/bin/env bash
# Builds kubelet from the Go module proxy into a cache directory, once per
# version: build-kubelet.sh VERSION OUTDIR (OUTDIR/kubelet is the result).
# k8s.io/kubernetes cannot be `go install`ed (its go.mod points its staging
# modules at ./staging/...), so a wrapper module requires it and replaces
# each staging module with the published k8s.io/<name> v0.<minor>.<patch>.
set -euo pipefail
version=${1:?usage: build-kubelet.sh VERSION OUTDIR}
out=${2:?usage: build-kubelet.sh VERSION OUTDIR}
export PATH="$PATH:/usr/local/go/bin"
if [[ -x "$out/kubelet" ]] && "$out/kubelet" --version 2>/dev/null | grep -qx "Kubernetes $version"; then
	echo "kubelet $version: cached in $out"
	exit 0
fi
staging="v0.${version#v1.}"
work="$out.build"
rm -rf "$work"
mkdir -p "$work" "$out"
cd "$work"
echo "kubelet $version: fetching k8s.io/kubernetes from the Go module proxy"
modfile=$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p')
[[ -f "$modfile" ]] || { echo "kubelet $version: no go.mod from the proxy" >&2; exit 1; }
{
	echo "module crfailoverd.local/kubelet-build"
	echo
	echo "go 1.26"
	echo
	echo "require k8s.io/kubernetes $version"
	echo
	awk '/=> \.\/staging\// { print "replace " $1 " => " $1 " '"$staging"'" }' "$modfile"
} > go.mod
cat > tools.go <<'GO'
//go:build tools

package tools

import _ "k8s.io/kubernetes/cmd/kubelet"
GO
echo "kubelet $version: resolving modules (go mod tidy)"
GOFLAGS=-mod=mod go mod tidy
echo "kubelet $version: compiling (about 5 minutes on 2 cores with empty caches, longer on a busy machine; runs at low priority)"
nice -n 10 go build -trimpath -tags tools -o "$out/kubelet.new" \
	-ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${version#v1.}" \
	k8s.io/kubernetes/cmd/kubelet
mv "$out/kubelet.new" "$out/kubelet"
cd /
rm -rf "$work"
echo "kubelet $version: built $out/kubelet"
