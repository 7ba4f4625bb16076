#!/bin/sh
# Image builds: add the *.crt files (PEM) in $1 to the system CA bundle before pip runs, so a build
# behind a TLS-intercepting proxy trusts it (put the proxy's CA into deploy/ca-certificates/).
set -eu
extra="$1"
bundle=/etc/ssl/certs/ca-certificates.crt
if ls "$extra"/*.crt >/dev/null 2>&1; then
  if command -v update-ca-certificates >/dev/null; then update-ca-certificates
  else cat "$extra"/*.crt >> "$bundle"; fi
fi
test -s "$bundle" || { echo "base image lacks $bundle (install ca-certificates)" >&2; exit 1; }
