#!/usr/bin/env bash
# Install Debian's chromium (used headless by tests/test_browser.py through Playwright's
# executable_path) when it is missing. Idempotent and quiet; exits 0 without root or apt so the
# browser tests can skip with a reason instead of failing CI.
set -uo pipefail
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [ -x "$CHROMIUM" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser: no apt-get here; browser tests will be skipped" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "install_browser: not root and no passwordless sudo; browser tests will be skipped" >&2
    exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
if $SUDO apt-get update -qq >"$log" 2>&1 &&
   $SUDO apt-get install -y -qq --no-install-recommends chromium >>"$log" 2>&1; then
  echo "install_browser: installed $($CHROMIUM --version 2>/dev/null || echo chromium)"
else
  echo "install_browser: could not install chromium (browser tests will be skipped):" >&2
  tail -n 20 "$log" >&2
fi
rm -f "$log"
exit 0
