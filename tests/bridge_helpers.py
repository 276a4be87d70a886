"""Helpers for the bridge tests: bridge subprocesses, a private Redis server, and a pump that
feeds a source ring and checks the destination ring record by record."""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import redis

from shmpipe.records import TICK

REQUIRE_SERVICES = os.environ.get("SHMPIPE_REQUIRE_SERVICES") == "1"
BRIDGE = [sys.executable, "-m", "shmpipe_tools.cli", "bridge"]


def ticks(start: int, n: int) -> np.ndarray:
    t = np.zeros(n, TICK)
    seq = np.arange(start, start + n, dtype=np.uint64)
    t["sequence"] = seq
    t["symbol_id"] = seq % 11
    t["bid"] = seq % 1000
    t["timestamp_ns"] = seq * 7
    return t


def start_sender(ring: str, url: str, stream: str, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return _spawn(["ring-to-redis", "--ring", ring, "--redis", url, "--stream", stream, *extra], env)


def start_receiver(ring: str, url: str, stream: str, group: str, state_dir: Path, *extra: str,
                   env: dict | None = None) -> subprocess.Popen:
    return _spawn(["redis-to-ring", "--ring", ring, "--redis", url, "--stream", stream,
                   "--group", group, "--state-dir", str(state_dir), *extra], env)


def _spawn(args: list[str], env: dict | None) -> subprocess.Popen:
    # stderr to a file, not a pipe nobody drains: a chatty bridge must never block on it
    errors = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 -- lives as long as the process
    proc = subprocess.Popen(BRIDGE + args, stderr=errors, text=True, env=_env(env))
    proc.errors = errors
    return proc


def stderr_of(proc: subprocess.Popen) -> str:
    proc.errors.seek(0)
    return proc.errors.read()


def run_bridge(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(BRIDGE + list(args), capture_output=True, text=True, timeout=timeout, check=False)


# The bridges' control sockets go to a directory of this test run (short: ipc paths max ~107 bytes).
RUNTIME_DIR = tempfile.mkdtemp(prefix="shmpipe-bt-", dir="/tmp")
atexit.register(shutil.rmtree, RUNTIME_DIR, True)


def _env(extra: dict | None) -> dict:
    env = dict(os.environ)
    env["SHMPIPE_RUNTIME_DIR"] = RUNTIME_DIR
    env.pop("SHMPIPE_BRIDGE_CRASH", None)
    env.update(extra or {})
    return env


def stop(proc: subprocess.Popen | None, sig=signal.SIGTERM, timeout: float = 30) -> int | None:
    """Signal and reap; SIGKILL if it does not go. The exit status, or None if it had to be killed."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None
    return proc.returncode


def delete_keys(url: str, *patterns: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        for pattern in patterns:
            keys = list(client.scan_iter(match=pattern))
            if keys:
                client.delete(*keys)
    finally:
        client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A redis-server of this test's own (AOF, fsync on every write), so it can be killed and
    restarted without touching the machine's Redis."""

    def __init__(self, binary: str, directory: Path, password: str | None = None, tls: bool = False,
                 persistence: bool = True) -> None:
        self.binary, self.dir, self.password, self.persistence = binary, directory, password, persistence
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.ca = make_tls_files(directory) if tls else None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.ca:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.ca}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--appendonly", "yes" if self.persistence else "no", "--appendfsync", "always", "--save", "",
                "--daemonize", "no",
                "--logfile", str(self.dir / "redis.log")]
        if self.password:
            args += ["--requirepass", self.password]
        if self.ca:
            args[1:3] = ["--port", "0", "--tls-port", str(self.port)]
            args += ["--tls-cert-file", str(self.dir / "server.pem"), "--tls-key-file", str(self.dir / "server.key"),
                     "--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=5)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.BusyLoadingError:
                pass
            except redis.exceptions.ConnectionError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.proc.returncode}: "
                                       f"{(self.dir / 'redis.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer within 30 s")
            time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def make_tls_files(directory: Path) -> Path:
    """A throwaway CA and a server certificate for 127.0.0.1 (openssl CLI); returns the CA's path."""
    openssl = shutil.which("openssl")
    if openssl is None:
        if REQUIRE_SERVICES:
            pytest.fail("openssl is not installed, and SHMPIPE_REQUIRE_SERVICES=1 requires the TLS test")
        pytest.skip("openssl is not installed (needed to make a test certificate)")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")

    def run(*args):
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=shmpipe-test-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "san.ext")
    return directory / "ca.pem"


@contextmanager
def private_redis(tmp_path: Path, password: str | None = None, tls: bool = False, persistence: bool = True):
    """persistence=False: a restart comes back empty (no AOF, no snapshot)."""
    binary = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    if binary is None:
        if REQUIRE_SERVICES:
            pytest.fail("redis-server is not installed, and SHMPIPE_REQUIRE_SERVICES=1 requires it")
        pytest.skip("redis-server is not installed (a private server is needed to restart Redis mid-run)")
    server = PrivateRedis(binary, tmp_path, password, tls, persistence)
    server.start()
    try:
        yield server
    finally:
        server.kill()


class Pump:
    """Writes ticks 0..total-1 into the source producer and reads the destination consumer,
    checking that what arrives is exactly the next expected sequence numbers (in order, no gap,
    no duplicate)."""

    def __init__(self, producer, consumer, total: int, chunk: int = 8192) -> None:
        self.producer, self.consumer, self.total, self.chunk = producer, consumer, total, chunk
        self.written = 0
        self.received = 0
        self._source = ticks(0, total)

    def step(self, read_timeout: float = 0.02) -> None:
        if self.written < self.total:
            self.written += self.producer.write_batch(
                self._source[self.written:self.written + self.chunk], timeout=0)
        got = self.consumer.read(65536, timeout=read_timeout)
        if len(got):
            expected = self._source[self.received:self.received + len(got)]
            if len(expected) != len(got) or not np.array_equal(got, expected):
                bad = got["sequence"]
                raise AssertionError(
                    f"after {self.received} good records got sequences {bad[:5]}..{bad[-5:]} "
                    f"({len(got)} records), expected {self.received}..{self.received + len(got) - 1}")
            self.received += len(got)

    @property
    def done(self) -> bool:
        return self.received >= self.total

    def run_until(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout} s (written {self.written}, "
                                     f"received {self.received} of {self.total})")
            self.step()


def assert_alive(*procs: subprocess.Popen) -> None:
    for proc in procs:
        if proc is not None and proc.poll() is not None:
            err = stderr_of(proc) if hasattr(proc, "errors") else ""
            raise AssertionError(f"bridge exited with {proc.returncode}: {err[-2000:]}")


def wait_started(procs, *stats_names: str, timeout: float = 30) -> None:
    """Until each bridge publishes its counters (it has set up its SIGTERM handling by then)."""
    from shmpipe import stats

    deadline = time.monotonic() + timeout
    for name in stats_names:
        while True:
            try:
                if stats.read(name)["live"]:
                    break
            except (FileNotFoundError, ValueError):
                pass
            assert_alive(*procs)
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}: no live counters within {timeout} s")
            time.sleep(0.02)


@contextmanager
def private_cluster(tmp_path: Path, nodes: int = 3):
    """A Redis Cluster of `nodes` masters of this test's own (no replicas), slots split evenly."""
    binary = shutil.which("redis-server")
    cli = shutil.which("redis-cli")
    if binary is None or cli is None:
        if REQUIRE_SERVICES:
            pytest.fail("redis-server/redis-cli are not installed, and SHMPIPE_REQUIRE_SERVICES=1 requires them")
        pytest.skip("redis-server/redis-cli are not installed (a private cluster is needed)")
    procs, ports = [], []
    try:
        for i in range(nodes):
            port = _free_cluster_port()
            node_dir = tmp_path / f"node{i}"
            node_dir.mkdir(parents=True)
            procs.append(subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir), "--cluster-enabled",
                 "yes", "--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            ports.append(port)
        for port in ports:
            _wait_ping(f"redis://127.0.0.1:{port}/0")
        subprocess.run([cli, "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports], "--cluster-replicas", "0",
                        "--cluster-yes"], check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 30
        for port in ports:
            client = redis.Redis(port=port)
            while client.cluster("info").get("cluster_state") != "ok":
                if time.monotonic() > deadline:
                    raise RuntimeError("the private cluster did not reach cluster_state:ok in 30 s")
                time.sleep(0.05)
            client.close()
        yield [f"redis://127.0.0.1:{p}/0" for p in ports]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too, and below 65536."""
    import random

    for _ in range(200):
        port = random.randint(20000, 50000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _wait_ping(url: str) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within 30 s")
            time.sleep(0.05)
    client.close()
