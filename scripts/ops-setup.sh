#!/usr/bin/env bash
# Installs, when missing, what the operations side of crfailoverd needs on
# this host: ansible and ansible-lint (the playbook and its lint),
# systemd-container (systemd-nspawn, for the nodes of the ansible e2e test),
# the OpenSSH client, systemd's own tools (systemd-analyze verify for the
# unit), debootstrap, iproute2 and util-linux (the test's root file system,
# network namespaces, nsenter/unshare), rpm (to look into the built .rpm)
# and git (the package version comes from git describe).
#
# Idempotent: apt runs only when something is missing, and then installs
# only what is missing. Everything comes from the Debian mirror configured
# in the machine's apt sources.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
	echo "ops-setup: run as root" >&2
	exit 1
fi

have() { command -v "$1" >/dev/null 2>&1; }
need=()
have ansible-playbook || need+=(ansible-core)
have ansible-lint || need+=(ansible-lint)
have systemd-nspawn || need+=(systemd-container)
have ssh || need+=(openssh-client)
have ssh-keygen || need+=(openssh-client)
have systemd-analyze || need+=(systemd)
have debootstrap || need+=(debootstrap)
have ip || need+=(iproute2)
{ have nsenter && have unshare; } || need+=(util-linux)
have rpm || need+=(rpm)
have git || need+=(git)
[ -d /usr/share/ca-certificates ] || need+=(ca-certificates)

if [ ${#need[@]} -gt 0 ]; then
	# shellcheck disable=SC2207 # package names have no white space
	need=($(printf '%s\n' "${need[@]}" | sort -u))
	echo "ops-setup: installing ${need[*]}"
	apt-get update -qq
	# --no-install-recommends keeps systemd (a dependency of
	# systemd-container) from pulling in anything that would start services.
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The role uses ansible.builtin modules only (they ship with ansible-core):
# no collection to fetch.
for t in ansible-playbook ansible-lint systemd-nspawn ssh ssh-keygen systemd-analyze debootstrap; do
	have "$t" || { echo "ops-setup: $t still missing after apt" >&2; exit 1; }
done
echo "ops-setup: host ready ($(ansible-playbook --version | head -1), ansible-lint $(ansible-lint --nocolor --version 2>/dev/null | head -1 | awk '{print $2}'))"
