#!/usr/bin/env bash
# Builds crfailoverd's .deb and .rpm into dist/:
#   1. a static binary (CGO_ENABLED=0) with the version stamped in
#      (-X main.version=$VERSION) into dist/build/crfailoverd;
#   2. both packages with nfpm (packaging/nfpm.yaml), run as a Go tool at a
#      pinned version; no docker, no system packaging tools.
#
# Environment:
#   VERSION  package and binary version (default: from git describe:
#            v1.2.3 -> 1.2.3, v1.2.3-4-gabc -> 1.2.3+4.gabc, no tag ->
#            0.0.0~gitYYYYMMDDhhmmss.abcdef1 from the last commit)
#   GOARCH   target architecture (default: go env GOARCH)
#   NFPM     nfpm command (default: go run github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2)
#   PACKAGERS  which packages (default: "deb rpm")
# Prints the paths of the packages it wrote, one a line, last.
set -euo pipefail

cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
GO="${GO:-go}"

version_from_git() {
	local d
	if d=$(git describe --tags --match 'v[0-9]*' 2>/dev/null); then
		d=${d#v}
		# 1.2.3-4-gabcdef -> 1.2.3+4.gabcdef
		if [[ $d =~ ^(.*)-([0-9]+)-(g[0-9a-f]+)$ ]]; then
			d="${BASH_REMATCH[1]}+${BASH_REMATCH[2]}.${BASH_REMATCH[3]}"
		fi
		echo "$d"
	elif git rev-parse --git-dir >/dev/null 2>&1; then
		echo "0.0.0~git$(TZ=UTC git log -1 --format=%cd --date=format-local:%Y%m%d%H%M%S).$(git rev-parse --short=7 HEAD)"
	else
		echo "0.0.0~dev"
	fi
}

VERSION="${VERSION:-$(version_from_git)}"
GOARCH="${GOARCH:-$("$GO" env GOARCH)}"
export VERSION GOARCH
if [[ ! $VERSION =~ ^[0-9][A-Za-z0-9.+~]*$ ]]; then
	echo "build.sh: VERSION=$VERSION: want a digit first, then letters, digits, '.', '+' or '~'" >&2
	exit 2
fi

mkdir -p dist/build
echo "build.sh: building crfailoverd $VERSION for linux/$GOARCH" >&2
CGO_ENABLED=0 GOOS=linux GOARCH="$GOARCH" "$GO" build -trimpath \
	-ldflags "-s -w -X main.version=$VERSION" -o dist/build/crfailoverd ./crfailoverd

read -r -a nfpm <<<"${NFPM:-$GO run github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2}"
out=()
for p in ${PACKAGERS:-deb rpm}; do
	log=$("${nfpm[@]}" package --config packaging/nfpm.yaml --packager "$p" --target dist/ 2>&1) || {
		echo "$log" >&2
		exit 1
	}
	f=$(sed -n 's/.*created package: \(.*\)$/\1/p' <<<"$log" | tail -1)
	[ -n "$f" ] || { echo "$log" >&2; echo "build.sh: nfpm did not say which $p it wrote" >&2; exit 1; }
	out+=("$f")
done
printf '%s\n' "${out[@]}"
