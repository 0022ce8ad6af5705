#!/usr/bin/env bash
# The dashboard test drives Debian's Chromium through playwright-core (Playwright's own browser
# download cannot work on machines that reach only package registries). `npm test` runs this first:
# it installs the `chromium` package when it is missing and we may (root, apt-get present).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "mesh: installing Debian's chromium for the dashboard test" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  exit 0
fi
echo "mesh: the dashboard test needs Chromium at /usr/bin/chromium: install Debian's chromium package (sudo apt-get install chromium)" >&2
exit 1
