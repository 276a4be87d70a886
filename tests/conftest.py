"""Shared fixtures: unique ring names that are always unlinked, and local services that skip
with a reason when absent (or fail, under SHMPIPE_REQUIRE_SERVICES=1, as CI sets)."""
from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REQUIRE_SERVICES = os.environ.get("SHMPIPE_REQUIRE_SERVICES") == "1"
FIXTURES = Path(__file__).parent / "fixtures"


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _service_or_skip(what: str, url: str, default_port: int) -> None:
    """Skip (or fail, under SHMPIPE_REQUIRE_SERVICES=1) unless the server the URL names listens."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    if _port_open(host, port):
        return
    reason = f"{what} is not reachable at {host}:{port}"
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason}, and SHMPIPE_REQUIRE_SERVICES=1 requires it")
    pytest.skip(reason)


@pytest.fixture
def postgres_dsn() -> str:
    """DSN of the local PostgreSQL (SHMPIPE_TEST_PG_DSN overrides)."""
    dsn = os.environ.get("SHMPIPE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
    _service_or_skip("PostgreSQL", dsn, 5432)
    return dsn


@pytest.fixture
def redis_url() -> str:
    """URL of the local Redis (SHMPIPE_TEST_REDIS_URL overrides)."""
    url = os.environ.get("SHMPIPE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    _service_or_skip("Redis", url, 6379)
    return url


@pytest.fixture(scope="session", autouse=True)
def private_symbol_registry(tmp_path_factory):
    """The suite's own host symbol registry (segment and file), so no test, and no capture or
    parser a test starts, touches the user's default one; removed at the end."""
    from shmpipe import symbols

    name = f"test-{os.getpid()}"
    saved = {k: os.environ.get(k) for k in ("SHMPIPE_SYMBOLS", "SHMPIPE_SYMBOLS_FILE")}
    os.environ["SHMPIPE_SYMBOLS"] = name
    os.environ["SHMPIPE_SYMBOLS_FILE"] = str(tmp_path_factory.mktemp("symbols") / "symbols.jsonl")
    yield name
    symbols.remove_segment(name)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session", autouse=True)
def suite_runtime_dir():
    """The suite's own directory of control and signal sockets (``shmpipe.control.runtime_dir``),
    so a service a test kills with SIGKILL leaves its socket file there, not in the user's; removed at
    the end. Short: an ipc:// path must fit in ~107 bytes."""
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="shmpipe-rt-", dir="/tmp")
    saved = os.environ.get("SHMPIPE_RUNTIME_DIR")
    os.environ["SHMPIPE_RUNTIME_DIR"] = path
    yield path
    shutil.rmtree(path, ignore_errors=True)
    if saved is None:
        os.environ.pop("SHMPIPE_RUNTIME_DIR", None)
    else:
        os.environ["SHMPIPE_RUNTIME_DIR"] = saved


@pytest.fixture
def private_runtime_dir(monkeypatch):
    """A control/signals directory of this test's own (processes it starts inherit it), emptied and
    removed after. Short: ipc:// socket paths are limited to ~107 bytes."""
    import shutil

    from shmpipe import control

    path = f"/tmp/shmpipe-test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("SHMPIPE_RUNTIME_DIR", path)
    control.runtime_dir()   # creates it, 0700
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def ring_name(request) -> str:
    """A ring name unique to this test. A segment left under it afterwards is removed and fails
    the test: every test unlinks what it made."""
    name = f"test-{os.getpid()}-{uuid.uuid4().hex[:10]}"
    yield name
    # A capture killed with SIGKILL leaves its stats segment by design (read() reports it stale);
    # tests that kill one must not litter /dev/shm, but that is no leak of the code under test.
    # test_capture_report checks that a clean exit removes it.
    for stale_stats in Path("/dev/shm").glob(f"shmpipe-stats.{name}*"):
        stale_stats.unlink(missing_ok=True)
    leftovers = sorted(Path("/dev/shm").glob(f"shmpipe.{name}*"))
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    if leftovers:   # removed so the next run starts clean, but a leak is a bug users would hit too
        pytest.fail(f"the test left {[p.name for p in leftovers]} in /dev/shm")
