"""The control plane: every service answers commands on its own ZeroMQ endpoint, and people
(``shmpipe ctl``), the launcher and other services ask.

    server = control.ControlServer("capture", {"status": status, "stop": stop})
    server.start_thread()                       # or server.poll(0) from the service's own loop
    control.request("capture", "status")        # -> {"feed": ..., ...}, from any process

Endpoints are ``ipc://`` sockets in a directory private to this user (see ``runtime_dir``), one per
service name, so finding a service needs no registry: its name is its address.

Envelopes are JSON objects, one per ZeroMQ message, after an empty delimiter frame (the REQ/DEALER
convention, so a plain ``zmq.REQ`` socket can talk to a service too):

    request: {"command": "status", "args": {...}}           args optional, an object
    reply:   {"ok": true, "result": {...}}                  result always an object
             {"ok": false, "error": "one line"}

A malformed request (not JSON, not an object, no command, an unknown command, a handler that
raises) gets an ``ok: false`` reply naming what was wrong; the service keeps running. Every server
answers ``ping`` (service name and pid) and ``help`` (its commands) itself.
"""
from __future__ import annotations

import json
import logging
import os
import re
import stat
import threading
from collections.abc import Callable, Mapping
from typing import Any

from .errors import InvalidArgumentError, ShmpipeError

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], "dict[str, Any] | None"]
# The commands every service of the pipeline is expected to answer (capture adds "resnapshot").
STANDARD_COMMANDS = ("status", "stats", "pause", "resume", "stop")
DEFAULT_TIMEOUT_S = 2.0
_SERVICE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_ENDPOINT_PREFIX = "shmpipe-ctl."
MAX_REQUEST_BYTES = 1 << 20


class ControlError(ShmpipeError, RuntimeError):
    """A service answered a request with an error, or its endpoint is unusable."""


class ServiceNotRunningError(ControlError, ConnectionRefusedError):
    """No service of that name listens on this host (no endpoint, or nobody answering it)."""


class ControlTimeoutError(ControlError, TimeoutError):
    """The service did not answer within the timeout (busy, hung or dead)."""


class ServiceNameTakenError(ControlError, FileExistsError):
    """A live service already answers on this name's endpoint."""


class CommandRefused(ShmpipeError, ValueError):
    """Raised by a handler for a request it will not carry out (bad arguments, an unknown symbol):
    the requester gets the message as its error reply, and the service logs no traceback, since the
    fault is the request's, not the service's."""


def runtime_dir() -> str:
    """The directory holding this user's control and signal sockets: $SHMPIPE_RUNTIME_DIR, else
    $XDG_RUNTIME_DIR/shmpipe, else /tmp/shmpipe-<uid>. Created 0700; refused if another user owns
    it or others may write into it (a socket there could be an impostor)."""
    path = os.environ.get("SHMPIPE_RUNTIME_DIR")
    if not path:
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        path = os.path.join(xdg, "shmpipe") if xdg else f"/tmp/shmpipe-{os.getuid()}"
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        raise ControlError(f"control directory {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise ControlError(f"control directory {path} is not a directory of this user closed to others "
                           "(set SHMPIPE_RUNTIME_DIR to one that is)")
    return path


def check_service_name(service: str) -> str:
    if not isinstance(service, str) or not _SERVICE_NAME.fullmatch(service):
        raise InvalidArgumentError(f"service name {service!r} must be 1-64 of A-Z a-z 0-9 _ . -")
    return service


def endpoint_for(service: str) -> str:
    """``ipc://<runtime dir>/shmpipe-ctl.<service>``."""
    return f"ipc://{os.path.join(runtime_dir(), _ENDPOINT_PREFIX + check_service_name(service))}"


def list_services() -> list[str]:
    """Names of the services with an endpoint on this host (some may be dead: ``ping`` tells)."""
    try:
        names = os.listdir(runtime_dir())
    except OSError:
        return []
    return sorted(n[len(_ENDPOINT_PREFIX):] for n in names if n.startswith(_ENDPOINT_PREFIX))


def _ipc_path(endpoint: str) -> str | None:
    return endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else None


def _zmq():
    try:
        import zmq
    except ImportError:   # the control plane is part of the services extra
        raise ControlError("the control plane needs pyzmq: pip install 'shmpipe[services]'") from None
    return zmq


# -- client ----------------------------------------------------------------------------------------
def request(service: str, command: str, args: Mapping[str, Any] | None = None, *,
            timeout: float = DEFAULT_TIMEOUT_S, endpoint: str | None = None) -> dict[str, Any]:
    """Send one command to a service and return its result. Raises ServiceNotRunningError (no
    endpoint), ControlTimeoutError (no answer within ``timeout`` s) or ControlError (the service
    replied with an error), each one line naming the service and the command."""
    zmq = _zmq()
    if not isinstance(command, str) or not command:
        raise InvalidArgumentError(f"command must be a non-empty string, not {command!r}")
    if endpoint is None:
        endpoint = endpoint_for(service)
    path = _ipc_path(endpoint)
    if path is not None and not os.path.exists(path):
        raise ServiceNotRunningError(f"service {service!r} is not running (no endpoint at {endpoint})")
    body = json.dumps({"command": command, "args": dict(args or {})}).encode()
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send_multipart([b"", body])
        if not sock.poll(max(0, int(timeout * 1000))):
            raise ControlTimeoutError(f"service {service!r} did not answer {command!r} within {timeout:g} s "
                                      f"(at {endpoint}; is it running?)")
        frames = sock.recv_multipart()
    finally:
        sock.close(linger=0)
    reply = _decode_reply(frames[-1], service, command)
    if not reply.get("ok"):
        raise ControlError(f"service {service!r} refused {command!r}: {reply.get('error', 'no reason given')}")
    result = reply.get("result")
    return result if isinstance(result, dict) else {}


def _decode_reply(body: bytes, service: str, command: str) -> dict:
    try:
        reply = json.loads(body)
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise ControlError(f"service {service!r} sent a reply to {command!r} that is not a JSON object")
    return reply


def ping(service: str, timeout: float = 0.5) -> dict[str, Any] | None:
    """The service's ``ping`` answer, or None when it is not running or does not answer."""
    try:
        return request(service, "ping", timeout=timeout)
    except ControlError:
        return None


# -- server ----------------------------------------------------------------------------------------
class ControlServer:
    """Answers commands for one service on ``endpoint_for(service)`` (or ``endpoint``).

    ``handlers`` maps a command to a function taking the request's args (a dict) and returning a
    dict (or None for ``{}``). Handlers run in whichever thread answers: the caller's, with
    ``poll()``, or the server's own, with ``start_thread()``.

    Binding checks the name first: if a live service answers ``ping`` on the endpoint, this one
    refuses with ServiceNameTakenError instead of silently stealing its address (ipc:// binding
    replaces a socket file); a file nobody answers on is a dead service's and is taken over.
    """

    def __init__(self, service: str, handlers: Mapping[str, Handler], *, endpoint: str | None = None,
                 context=None) -> None:
        zmq = _zmq()
        self.service = check_service_name(service)
        self.endpoint = endpoint or endpoint_for(service)
        self._handlers: dict[str, Handler] = {"ping": self._ping, "help": self._help}
        for name, fn in handlers.items():
            if not callable(fn):
                raise InvalidArgumentError(f"handler for {name!r} is not callable")
            self._handlers[name] = fn
        path = _ipc_path(self.endpoint)
        if path is not None and os.path.exists(path):
            owner = ping(self.service) if endpoint is None else None
            if owner is not None:
                raise ServiceNameTakenError(
                    f"service name {self.service!r} is taken: pid {owner.get('pid')} answers at {self.endpoint}")
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        try:
            self._socket.bind(self.endpoint)
        except zmq.ZMQError as exc:
            self._socket.close(linger=0)
            raise ControlError(f"service {self.service!r} cannot bind {self.endpoint}: {exc.strerror}") from None
        self._ipc_path = path
        # Our socket file's identity: close() removes it only if no later service replaced it.
        self._ipc_inode = os.stat(path).st_ino if path is not None else None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._closed = False
        self._answering = False
        self._close_lock = threading.Lock()
        self.requests = 0
        self.errors = 0

    # built-in commands
    def _ping(self, _args: dict) -> dict:
        return {"service": self.service, "pid": os.getpid()}

    def _help(self, _args: dict) -> dict:
        return {"commands": sorted(self._handlers)}

    def handle(self, body: bytes) -> bytes:
        """One request body -> one reply body. Never raises: every fault becomes an error reply."""
        self.requests += 1
        try:
            req = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return self._error("the request is not JSON")
        if not isinstance(req, dict) or not isinstance(req.get("command"), str):
            return self._error('the request must be a JSON object with a string "command"')
        command, args = req["command"], req.get("args", {})
        if args is None:
            args = {}
        if not isinstance(args, dict):
            return self._error(f'"args" of {command!r} must be a JSON object')
        handler = self._handlers.get(command)
        if handler is None:
            return self._error(f"unknown command {command!r} (this service answers: "
                               f"{', '.join(sorted(self._handlers))})")
        try:
            result = handler(args)
        except CommandRefused as exc:
            return self._error(f"{command}: {exc}")
        except Exception as exc:   # a handler's fault is the requester's answer, not our crash
            log.warning("%s: command %r failed: %s", self.service, command, exc, exc_info=True)
            return self._error(f"{command} failed: {type(exc).__name__}: {exc}")
        try:
            return json.dumps({"ok": True, "result": result if result is not None else {}}).encode()
        except (TypeError, ValueError) as exc:
            return self._error(f"{command}: the result is not JSON-serialisable ({exc})")

    def _error(self, message: str) -> bytes:
        self.errors += 1
        return json.dumps({"ok": False, "error": message}).encode()

    def poll(self, timeout_ms: int = 0) -> int:
        """Answer the requests waiting now (waiting up to ``timeout_ms`` for the first); returns how
        many were answered. For services with a loop of their own."""
        zmq = _zmq()
        if self._closed:
            return 0
        answered = 0
        wait = timeout_ms
        self._answering = True
        try:
            while not self._stop.is_set() and self._socket.poll(wait, zmq.POLLIN):
                frames = self._socket.recv_multipart()
                wait = 0
                # [identity, b"", body] from REQ/DEALER peers; anything else is not a request.
                if len(frames) < 3 or frames[1] != b"":
                    continue
                self._socket.send_multipart([frames[0], b"", self.handle(frames[-1])])
                answered += 1
        finally:
            self._answering = False
        if self._stop.is_set() and self._thread is None:
            self._finish()     # a handler closed the server: its reply has gone out
        return answered

    def start_thread(self) -> None:
        """Answer requests from a daemon thread until ``close()``."""
        if self._thread is not None or self._closed:
            return
        self._thread = threading.Thread(target=self._serve, name=f"control-{self.service}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            self.poll(100)
        self._finish()

    def close(self) -> None:
        """Stop answering and remove the endpoint. Safe from a handler (the reply still goes out)
        and from any thread."""
        self._stop.set()
        serving_thread = self._thread
        if serving_thread is threading.current_thread() or (self._answering and serving_thread is None):
            return    # the loop answering this request finishes the close
        if serving_thread is not None:
            serving_thread.join()
        self._finish()

    def _finish(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            self._socket.close(linger=0)
            if self._ipc_path is not None:
                try:
                    if os.stat(self._ipc_path).st_ino == self._ipc_inode:
                        os.unlink(self._ipc_path)
                except FileNotFoundError:
                    pass

    def __enter__(self) -> ControlServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
