"""Find or install headless Chromium for the dashboard test (Debian's `chromium` package)."""

from __future__ import annotations

import os
import shutil
import subprocess

_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """Return the path of a Chromium binary on PATH, if any."""
    for name in _NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def ensure_chromium() -> tuple[str | None, str]:
    """Return (path, "") with Chromium installed, or (None, why not).

    Installs Debian's ``chromium`` with apt-get when missing, running
    ``apt-get update`` first if the plain install fails (a fresh machine has no
    package lists). Returns None only when apt itself is missing or the
    install failed, with the reason.
    """
    path = find_chromium()
    if path:
        return path, ""
    apt = shutil.which("apt-get")
    if apt is None:
        return None, "Chromium is not installed and apt-get is not available to install it (not a Debian-based machine)"
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*prefix, apt, "install", "-y", "--no-install-recommends", "chromium"]
    log = []
    for attempt in (install, [*prefix, apt, "update"], install):
        done = subprocess.run(attempt, env=env, capture_output=True, text=True, timeout=900, check=False)
        log.append(f"$ {' '.join(attempt)} -> {done.returncode}: {done.stderr.strip()[-400:]}")
        path = find_chromium()
        if path:
            return path, ""
    return None, "apt-get could not install chromium:\n" + "\n".join(log)
