#!/usr/bin/env bash
# Installs, when missing, what crfailoverd's test bed needs on this host:
# debootstrap (to build the runtime's root file system), iproute2 (network
# namespaces, bridge, veth), util-linux (nsenter, unshare, setpriv) and the
# CA certificates. Idempotent: it runs apt only when something is missing.
# The Go toolchain is expected at /usr/local/go or on PATH.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
	echo "setup-host: run as root (the test bed creates namespaces and mounts)" >&2
	exit 1
fi

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have debootstrap || need+=(debootstrap)
have ip || need+=(iproute2)
{ have nsenter && have unshare && have setpriv; } || need+=(util-linux)
[ -d /usr/share/ca-certificates ] || need+=(ca-certificates)

if [ ${#need[@]} -gt 0 ]; then
	echo "setup-host: installing ${need[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! have go && [ ! -x /usr/local/go/bin/go ]; then
	echo "setup-host: no Go toolchain: install Go 1.26 or newer into /usr/local/go" >&2
	exit 1
fi
echo "setup-host: host ready"
