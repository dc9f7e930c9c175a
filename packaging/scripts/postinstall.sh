#!/bin/sh
# crfailoverd post-installation (deb: "configure" [OLD-VERSION]; rpm: 1 on
# install, 2 on upgrade). Creates the directories with their modes, reloads
# systemd, and restarts the daemon on an upgrade if it was running. A fresh
# install does not start it: the configuration needs the node's cluster
# settings first (the ansible role writes them and enables the service).
set -e

install -d -m 0750 /etc/crfailoverd
install -d -m 0700 /etc/crfailoverd/tls
install -d -m 0700 /var/lib/crfailoverd

upgrade=false
case "$1" in
configure) [ -n "$2" ] && upgrade=true ;;
2) upgrade=true ;;
esac

# The data key (store.data_key_file) is the cluster's, made once and shared
# by every node: the package never makes one. Without it the daemon does
# not start (unless store.plaintext = true), so say so, also on an upgrade
# from a version that kept archives in plaintext.
if [ ! -e /etc/crfailoverd/data.key ]; then
	echo "crfailoverd: no data key at /etc/crfailoverd/data.key, the default store.data_key_file: unless the configuration names another, or sets store.plaintext = true, the daemon does not start." >&2
	echo "crfailoverd: make the cluster's key once (crfailoverd keygen --data-key FILE) and copy it, 0600, to every node; the ansible role does this." >&2
fi

if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
	if $upgrade; then
		systemctl try-restart crfailoverd.service >/dev/null 2>&1 || true
	fi
fi
exit 0
