"""Failures a user can cause in the trading services: one line naming the thing, exit non-zero,
never a traceback."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from execution_helpers import KEYS

SHMPIPE = [sys.executable, "-m", "shmpipe_tools.cli"]


def run(args: list[str], tmp_path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(SHMPIPE + args, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **KEYS, "SHMPIPE_RUNTIME_DIR": str(tmp_path / "rt"), **env})


@pytest.mark.parametrize("args, words", [
    (["risk", "--limits", "/nonexistent/limits.toml", "--price", "X=1"], "limits file /nonexistent/limits.toml"),
    (["risk", "--limits", "x.toml"], "marks come from one of --books"),
    (["risk", "--limits", "x.toml", "--price", "X=abc"], "--price 'X=abc'"),
    (["risk", "--limits", "x.toml", "--books", "no-such-books-ring"], "no-such-books-ring"),
    (["alpaca-paper", "--faults", "boom=0.1"], "fault 'boom=0.1'"),
    (["alpaca-paper", "--faults", "rate=2"], "between 0 and 1"),
    (["alpaca-paper", "--price", "AAPL"], "--price 'AAPL'"),
    (["execute", "--journal", "/nonexistent/dir/j.sqlite", "--venue", "http://127.0.0.1:9"], "journal"),
    (["execute", "--journal", "j.sqlite", "--slippage-bps", "10"], "--slippage-bps needs --books"),
])
def test_bad_input_is_one_line(tmp_path, args, words):
    if args[0] == "risk" and args[2] == "x.toml":
        (tmp_path / "x.toml").write_text('[limits]\nmax_order_value = "1"\nmax_position_value = "1"\n'
                                         'buying_power = "1"\nmax_daily_loss = "1"\n')
        args = [str(tmp_path / "x.toml") if a == "x.toml" else a for a in args]
    done = run(args, tmp_path)
    assert done.returncode in (1, 2), done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_a_port_in_use_is_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        done = run(["alpaca-paper", "--port", str(port)], tmp_path)
    assert done.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command, module", [("execute", "httpx"), ("alpaca-paper", "aiohttp")])
def test_without_the_trading_extra_it_says_what_to_install(tmp_path, command, module):
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / f"{module}.py").write_text(f"raise ImportError('no module named {module} (blocked by the test)')\n")
    done = run([command, "--journal", "j.sqlite"] if command == "execute" else [command], tmp_path,
               PYTHONPATH=f"{blocker}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    assert done.returncode == 2 and "pip install 'shmpipe[trading]'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
