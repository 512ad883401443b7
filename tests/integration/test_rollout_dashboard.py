"""The dashboard in a real headless Chromium: it renders the live status of a running server.

Chromium is installed with apt-get when missing (Debian's ``chromium``
package, ``apt-get update`` first if a plain install fails); the test skips
only where apt itself is not available.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import httpx
import numpy as np
import pytest

from modelpress.serve.app import create_app
from modelpress.serve.config import ServeConfig
from modelpress.serve.runner import ModelRunner
from modelpress.serve.testing import OrtSession, ThreadedServer, linear_model

TOKEN = "dashboard-token"
_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _find_chromium() -> str | None:
    return next((p for p in map(shutil.which, _NAMES) if p), None)


def ensure_chromium() -> str:
    """Return a Chromium binary, installing Debian's package if needed; skip only without apt."""
    path = _find_chromium()
    if path:
        return path
    apt = shutil.which("apt-get")
    if apt is None:
        pytest.skip("Chromium is not installed and apt-get is not available to install it (not a Debian-based machine)")
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*prefix, apt, "install", "-y", "--no-install-recommends", "chromium"]
    log = []
    # a fresh machine has no package lists: the first install fails until `apt-get update` ran
    for command in (install, [*prefix, apt, "update"], install):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200, check=False)
        log.append(f"$ {' '.join(command)} -> exit {done.returncode}: {done.stderr.strip()[-500:]}")
        path = _find_chromium()
        if path:
            return path
    pytest.fail("apt-get could not install chromium:\n" + "\n".join(log))


def chromium(binary: str, profile, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)


@pytest.mark.browser
@pytest.mark.slow
def test_dashboard_renders_live_status_in_chromium(tmp_path):
    binary = ensure_chromium()
    linear_model(tmp_path / "a.onnx", seed=1)
    linear_model(tmp_path / "b.onnx", seed=2)
    runners = [
        ModelRunner(name, v, [s], s.input_meta())
        for name in ("digits-lin", "shadowed", "canaried")
        for v, s in (("v1", OrtSession(tmp_path / "a.onnx")), ("v2", OrtSession(tmp_path / "b.onnx")))
    ]
    app = create_app(runners, ServeConfig(access_log=False, token=TOKEN))
    x = np.ones((1, 4), np.float32)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": x.ravel().tolist()}]}
    with ThreadedServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        r = client.post("/management/models/digits-lin/split", json={"weights": {"v1": 0.75, "v2": 0.25}}, headers=auth)
        assert r.status_code == 200, r.text
        client.post("/management/models/shadowed/shadow", json={"primary": "v1", "candidate": "v2", "share": 1.0}, headers=auth).raise_for_status()
        client.post("/management/models/canaried/canary", json={"stable": "v1", "candidate": "v2"}, headers=auth).raise_for_status()
        for i in range(40):
            client.post("/v2/models/digits-lin/infer", json=body, headers={"X-Caller-Id": f"c{i}"}).raise_for_status()
        for i in range(20):
            client.post("/v2/models/shadowed/infer", json=body).raise_for_status()
        deadline = time.monotonic() + 10
        while client.get("/management/models/shadowed").json()["shadow"]["requests"] < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        started = time.monotonic()
        done = chromium(binary, tmp_path / "profile", "--virtual-time-budget=8000", "--dump-dom", f"{server.url}/dashboard/")
        screenshot = chromium(
            binary, tmp_path / "profile2", "--virtual-time-budget=8000", "--window-size=1400,1100",
            f"--screenshot={tmp_path / 'dashboard.png'}", f"{server.url}/dashboard/",
        )
        httpx_status = {m["model"]: m for m in client.get("/management/status").json()["models"]}
    dom = done.stdout
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'data-loaded="true"' in dom, f"the page never loaded the status (after {time.monotonic() - started:.1f} s): {dom[:2000]}"
    assert 'data-model="digits-lin"' in dom
    # the traffic split as the server reports it, drawn as one bar segment per version
    assert re.search(r'data-version="v1"[^>]*>v1 75\.0%<', dom), dom
    assert re.search(r'data-version="v2"[^>]*>v2 25\.0%<', dom), dom
    assert "A/B v1:75.0% / v2:25.0%" in dom
    # live numbers: QPS of both versions is positive (40 requests in the last 10 s)
    qps = [float(q) for q in re.findall(r'<td class="qps">([0-9.]+)</td>', dom)]
    # models in name order (canaried, digits-lin, shadowed), versions in order: the split and the shadow primary got traffic
    assert len(qps) == 6 and qps[2] > 0 and qps[3] > 0 and qps[4] > 0 and qps[5] == 0, qps
    # shadow agreement and canary progress, as the server reports them
    shadow = httpx_status["shadowed"]["shadow"]
    assert f"requests compared: <b>{shadow['requests']}</b>" in dom
    assert f'<b class="agreement">{100 * shadow["top1_agreement"]:.1f}%</b>' in dom
    assert 'class="state-running">running</b> · step 1/4 (candidate share 5.0%)' in dom
    assert "disagreement" in dom and "error_rate" in dom
    assert screenshot.returncode == 0 and (tmp_path / "dashboard.png").stat().st_size > 10_000
