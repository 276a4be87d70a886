"""Every failure a user can cause ends ``shmpipe assets`` with one line on stderr and exit 1,
never a traceback: a database that does not exist, an unknown role, a refused password, an
unreachable server, a file that is not a database, a schema that cannot be created, a bad
``--pub`` / ``--sub`` endpoint or ``--listen`` socket path. A table locked by another session
fails ``sync`` after ``--db-timeout`` instead of hanging it. The commands run as child processes,
as a user runs them.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
import test_asset_sync
from test_asset_sync import V1, WAIT, _child_env

database = test_asset_sync.database
pub_endpoint = test_asset_sync.pub_endpoint

SMALL = Path(__file__).parent / "fixtures" / "assets" / "bad" / "assets_unknown_status.json"  # 6 assets


def run_assets(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "shmpipe_tools.cli", "assets", *args],
        capture_output=True,
        text=True,
        env=_child_env(),
        timeout=timeout,
    )


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The single stderr line of a command that failed as it should; checks exit 1, no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("shmpipe assets: "), proc.stderr
    return lines[0]


def command(verb: str, db: list[str], pub: str) -> list[str]:
    """``verb`` with what it needs to reach its database (and to stop on its own)."""
    if verb == "sync":
        return ["sync", "--from-file", str(V1), *db, "--pub", pub]
    if verb == "serve":
        return ["serve", "--listen", pub.replace("ipc://", "") + ".sock", *db, "--pub", pub]
    return ["watch", "--sub", pub, *db, "--idle-timeout", "0.1"]


# ------------------------------------------------------------------------------------ databases


@pytest.mark.parametrize("verb", ["sync", "serve", "watch"])
def test_database_that_does_not_exist(verb, postgres_dsn, pub_endpoint):
    missing = postgres_dsn.rsplit("/", 1)[0] + f"/no_such_db_{uuid.uuid4().hex[:8]}"
    line = one_line_error(run_assets(*command(verb, ["--db", missing], pub_endpoint)))
    assert "refused the connection" in line and "does not exist" in line and missing.rsplit("/", 1)[1] in line


def test_unknown_role(postgres_dsn, pub_endpoint):
    role = f"no_such_role_{uuid.uuid4().hex[:8]}"
    dsn = postgres_dsn.replace("postgres@", f"{role}@", 1)
    assert role in dsn
    line = one_line_error(run_assets(*command("sync", ["--db", dsn], pub_endpoint)))
    assert f'role "{role}" does not exist' in line


@contextmanager
def password_refusing_server():
    """A stand-in PostgreSQL server that asks for a cleartext password and refuses it with
    SQLSTATE 28P01, as a server with password authentication does (the local test server
    trusts everyone, so it cannot refuse one). Yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def message(kind: bytes, body: bytes) -> bytes:
        return kind + struct.pack("!I", len(body) + 4) + body

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed: the test is over
            with conn:
                conn.settimeout(WAIT)
                try:
                    length, code = struct.unpack("!II", conn.recv(8, socket.MSG_WAITALL))
                    if code == 80877103:  # SSLRequest: no SSL here, then the real startup
                        conn.sendall(b"N")
                        (length,) = struct.unpack("!I", conn.recv(4, socket.MSG_WAITALL))
                        conn.recv(length - 4, socket.MSG_WAITALL)
                    else:
                        conn.recv(length - 8, socket.MSG_WAITALL)
                    conn.sendall(message(b"R", struct.pack("!I", 3)))  # cleartext password, please
                    conn.recv(1, socket.MSG_WAITALL)  # 'p'
                    (length,) = struct.unpack("!I", conn.recv(4, socket.MSG_WAITALL))
                    conn.recv(length - 4, socket.MSG_WAITALL)
                    fields = [
                        b"SFATAL",
                        b"VFATAL",
                        b"C28P01",
                        b'Mpassword authentication failed for user "u"',
                    ]
                    conn.sendall(message(b"E", b"\0".join(fields) + b"\0\0"))
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        listener.close()
        thread.join(WAIT)


def test_refused_password_names_no_password(pub_endpoint):
    with password_refusing_server() as port:
        dsn = f"postgresql://u:s3cret-pw@127.0.0.1:{port}/test"
        line = one_line_error(run_assets(*command("sync", ["--db", dsn], pub_endpoint)))
    assert f"PostgreSQL at u@127.0.0.1:{port}/test refused the connection" in line
    assert 'password authentication failed for user "u"' in line
    assert "s3cret" not in line


def test_server_not_listening(pub_endpoint):
    with closing(socket.create_server(("127.0.0.1", 0))) as probe:
        port = probe.getsockname()[1]  # closed below: nothing listens there
    line = one_line_error(
        run_assets(*command("sync", ["--db", f"postgresql://u:pw@127.0.0.1:{port}/x"], pub_endpoint))
    )
    assert f"cannot connect to PostgreSQL at u@127.0.0.1:{port}/x" in line and "pw" not in line


def test_schema_that_cannot_be_created(postgres_dsn, pub_endpoint):
    line = one_line_error(
        run_assets(*command("serve", ["--db", postgres_dsn, "--schema", "pg_catalog"], pub_endpoint))
    )
    assert "creating the tables in schema 'pg_catalog'" in line


@pytest.mark.parametrize("verb", ["sync", "watch"])
def test_file_that_is_not_a_database(verb, tmp_path, pub_endpoint):
    not_db = tmp_path / "notes.txt"
    not_db.write_text("these are notes, not a database\n" * 100)
    line = one_line_error(run_assets(*command(verb, ["--db", str(not_db)], pub_endpoint)))
    assert str(not_db) in line and "file is not a database" in line


def test_database_directory_that_cannot_be_made(tmp_path, pub_endpoint):
    blocker = tmp_path / "file"
    blocker.write_text("")
    line = one_line_error(
        run_assets(*command("serve", ["--db", str(blocker / "sub" / "a.sqlite")], pub_endpoint))
    )
    assert "cannot create the directory of SQLite database" in line


# ------------------------------------------------------------------------------------ endpoints


@pytest.mark.parametrize(
    "verb, endpoint, reason",
    [
        ("sync", "ipc:///nonexistent-shmpipe-dir/pub", "No such file or directory"),
        ("serve", "not-an-endpoint", "Invalid argument"),
        ("sync", "tcp://127.0.0.1:notaport", "Invalid argument"),
        ("watch", "not-an-endpoint", "Invalid argument"),
    ],
)
def test_bad_zeromq_endpoint(verb, endpoint, reason, tmp_path):
    args = command(verb, ["--db", str(tmp_path / "a.sqlite")], "ipc://" + str(tmp_path / "p"))
    flag = "--sub" if verb == "watch" else "--pub"
    args[args.index(flag) + 1] = endpoint
    line = one_line_error(run_assets(*args))
    assert f"ZeroMQ endpoint {endpoint!r}: {reason}" in line


@pytest.mark.parametrize(
    "path, reason",
    [("/nonexistent-shmpipe-dir/sync.sock", "No such file or directory"), ("/tmp/" + "s" * 120, "too long")],
)
def test_bad_listen_socket_path(path, reason, tmp_path):
    line = one_line_error(
        run_assets(
            "serve",
            "--listen",
            path,
            "--db",
            str(tmp_path / "a.sqlite"),
            "--pub",
            "ipc://" + str(tmp_path / "p"),
        )
    )
    assert "cannot listen on Unix socket" in line and reason in line


# ------------------------------------------------------------------------------------ http


def test_http_base_url_is_refused_before_anything_else(tmp_path):
    db = tmp_path / "a.sqlite"
    line = one_line_error(run_assets("sync", "--base-url", "http://127.0.0.1:9", "--db", str(db)))
    assert "refusing http://127.0.0.1:9: http:// sends the API keys in clear text" in line
    assert "--insecure-http" in line and not db.exists()  # refused before the database was opened


# ------------------------------------------------------------------------------------ locked table


def test_postgres_locked_table_fails_after_the_timeout(postgres_dsn):
    """Another session holds an ACCESS EXCLUSIVE lock on the assets table: sync gives up after
    --db-timeout with a message about the timeout and the lock, instead of waiting forever."""
    import asyncpg

    schema = f"asset_test_{uuid.uuid4().hex[:12]}"
    db = ["--db", postgres_dsn, "--schema", schema]

    async def scenario():
        with tempfile.TemporaryDirectory(prefix="shmpa-") as tmp:
            pub = ["--pub", f"ipc://{tmp}/pub"]
            first = await asyncio.to_thread(run_assets, "sync", "--from-file", str(SMALL), *db, *pub)
            assert first.returncode == 0, first.stderr  # the table exists (5 valid assets)
            holder = await asyncpg.connect(postgres_dsn)
            try:
                async with holder.transaction():
                    await holder.execute(f'LOCK TABLE "{schema}".assets IN ACCESS EXCLUSIVE MODE')
                    started = time.monotonic()
                    locked = await asyncio.to_thread(
                        run_assets, "sync", "--from-file", str(SMALL), *db, *pub, "--db-timeout", "1"
                    )
                    elapsed = time.monotonic() - started
            finally:
                await holder.close()
            return locked, elapsed

    try:
        proc, elapsed = asyncio.run(scenario())
    finally:
        asyncio.run(test_asset_sync._drop_schema(postgres_dsn, schema))
    line = one_line_error(proc)
    assert "ran past the 1 s statement timeout (--db-timeout)" in line and "lock" in line
    assert elapsed < 30  # the default timeout is 30 s: this one must not have been waited out


def test_sqlite_locked_database_fails_after_the_timeout(tmp_path):
    path = tmp_path / "a.sqlite"
    pub = ["--pub", "ipc://" + str(tmp_path / "p")]
    first = run_assets("sync", "--from-file", str(SMALL), "--db", str(path), *pub)
    assert first.returncode == 0, first.stderr
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # the write lock, held
        started = time.monotonic()
        proc = run_assets("sync", "--from-file", str(V1), "--db", str(path), *pub, "--db-timeout", "0.2")
        elapsed = time.monotonic() - started
    finally:
        holder.close()
    line = one_line_error(proc)
    assert "database is locked" in line and str(path) in line
    assert elapsed < 30
