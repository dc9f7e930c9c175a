#!/bin/sh
# crfailoverd post-removal. Reloads systemd; on a Debian purge also removes
# the state directory (checkpoint archives, Raft state). The configuration
# and TLS material in /etc/crfailoverd are conffiles or the administrator's:
# dpkg --purge removes config.toml, nothing removes the TLS material.
set -e

if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
if [ "$1" = purge ]; then
	rm -rf /var/lib/crfailoverd /run/crfailoverd
fi
exit 0
