"""A short run of benchmarks/load.py against the real server: mixed traffic, no errors, bounded."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from servers import ROOT

pytestmark = pytest.mark.slow


def test_short_mixed_load_has_no_errors(server, server_process, tmp_path):
    out = tmp_path / "load.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "load.py"), "--url", server_process.base]
    cmd += ["--pid", str(server_process.proc.pid), "--clients", "8,32", "--seconds", "6", "--soak", "0"]
    done = subprocess.run([*cmd, "--json", str(out)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    levels = json.loads(out.read_text())["levels"]
    assert [lv["clients"] for lv in levels] == [8, 32]
    for lv in levels:
        assert lv["errors"] == 0, lv
        assert lv["requests"] > 50 and lv["throughput"] > 5, lv
        # Bounded: no request waited anywhere near the 30 s client timeout (a stuck worker).
        # Generous, as CI's cores may be shared: under 3-4x oversubscription p99 was 2-8 s.
        assert lv["p99_ms"] < 15_000, lv
        assert lv["rss_start_mb"] > 0
        # A few seconds cannot show a leak (the 10-minute soak does); this catches a runaway.
        assert lv["rss_end_mb"] < 1.5 * lv["rss_start_mb"], lv
    assert "| clients |" in done.stdout
