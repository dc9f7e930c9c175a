#!/bin/sh
# crfailoverd pre-removal (deb: "remove" | "upgrade" | ...; rpm: 0 on
# erase, 1 on upgrade). Stops and disables the service when the package
# goes away; an upgrade leaves it running (postinstall restarts it).
set -e

remove=false
case "$1" in
remove | deconfigure | 0) remove=true ;;
esac

if $remove && [ -d /run/systemd/system ]; then
	systemctl disable --now crfailoverd.service >/dev/null 2>&1 || true
fi
exit 0
