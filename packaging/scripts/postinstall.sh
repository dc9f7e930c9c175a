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

if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
	if $upgrade; then
		systemctl try-restart crfailoverd.service >/dev/null 2>&1 || true
	fi
fi
exit 0
