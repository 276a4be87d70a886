"""The launcher: creates a pipeline's rings, starts its processes pinned and in dependency order,
restarts the ones that die, and takes everything down in reverse order.

Readiness: a process with ``control = true`` is up once it answers ``ping`` on its control endpoint
(service name = process name); any other is up once it has stayed alive ``settle_s`` seconds. The
next process starts only when the one before it is up (or its ``ready_timeout_s`` passed, with a
warning), so consumers attach to rings whose producer is already writing.

Restarts: ``always`` restarts whatever the exit; ``on-failure`` only a non-zero exit or a death by
signal; ``never`` leaves it down. The k-th restart within ``restart_window_s`` waits
``backoff_s * 2**(k-1)`` (capped at ``max_backoff_s``); a process that would need more than
``max_restarts`` restarts within the window is given up on, and the launcher then stops the whole
pipeline and exits 1: a pipeline with a hole in it would only look healthy.

Stopping (SIGINT/SIGTERM, ``shmpipe ctl launcher stop``): in reverse start order, one process at a
time: ``stop`` through its control endpoint (when it has one; SIGTERM otherwise), ``stop_grace_s``
to exit, then SIGTERM to its process group, the same grace, then SIGKILL. Then the rings this
launcher created are unlinked (rings that already existed are only detached), and the control and
signals sockets removed. A second SIGINT skips the graces.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .config import Pipeline, ProcessSpec

HEARTBEAT_S = 1.0
POLL_S = 0.05
# When a child fails, this many of the last lines it wrote (its own run's only) are repeated on the
# launcher's stderr: the reason is usually there, and a reader should not have to find the log.
LOG_TAIL_LINES = 5
_LOG_TAIL_BYTES = 16384


class LaunchError(Exception):
    """A failure that stops the launch before or while it starts (one line)."""


@dataclass
class ProcessState:
    spec: ProcessSpec
    log_path: str
    proc: subprocess.Popen | None = None
    state: str = "pending"  # pending starting running backoff stopping stopped exited failed
    restarts: int = 0
    restart_times: collections.deque = field(default_factory=collections.deque)
    next_start: float = 0.0
    started_at: float = 0.0
    exit_code: int | None = None
    cpus: tuple[int, ...] | None = None
    rt_applied: bool = False
    rt_warned: bool = False
    ready_warned: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "service": self.spec.service,
            "pid": self.pid if self.alive() else None,
            "state": self.state,
            "restarts": self.restarts,
            "cpus": list(self.cpus) if self.cpus is not None else None,
            "rt_priority": self.spec.rt_priority,
            "rt_applied": self.rt_applied,
            "exit_code": self.exit_code,
            "log": self.log_path,
            "uptime_s": round(time.monotonic() - self.started_at, 3) if self.alive() else None,
        }


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def log_tail(path: str, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last ``lines`` non-empty lines of a child's log since its latest start marker."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _LOG_TAIL_BYTES))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    marker = text.rfind("\n==== ")
    if marker >= 0:
        text = text[marker + 1 :]
    out = [line.rstrip() for line in text.splitlines() if line.strip() and not line.startswith("==== ")]
    return out[-lines:]


def name_holder(service: str) -> tuple[int, str] | None:
    """(pid, what) of a live process that already holds this service name -- its control endpoint
    answers, or it publishes live stats under it -- or None. A child started under a taken name
    would only fail, be restarted and fail again."""
    try:
        from shmpipe import control

        answer = control.ping(service, timeout=0.3)
    except Exception:  # noqa: BLE001 - no pyzmq: the stats check below still runs
        answer = None
    if answer is not None:
        return int(answer.get("pid") or 0), "answers its control endpoint"
    try:
        from shmpipe import stats

        got = stats.read(service)
    except Exception:  # noqa: BLE001 - none, or not a segment we can read: nothing to refuse
        return None
    if got["live"]:
        return int(got["pid"]), f"publishes {stats.segment_path(service)}"
    return None


def resolve_command(command: list[str]) -> list[str]:
    """``shmpipe ...`` runs this interpreter's shmpipe (the launcher's own install), whatever PATH
    holds; anything else runs as given."""
    if command and command[0] == "shmpipe":
        return [sys.executable, "-m", "shmpipe_tools.cli", *command[1:]]
    return list(command)


class Launcher:
    def __init__(
        self,
        pipeline: Pipeline,
        *,
        log_dir: str,
        control_name: str | None = "launcher",
        bus: bool = True,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.log_dir = log_dir
        self.control_name = control_name
        self.want_bus = bus
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.say = say or (lambda line: print(f"shmpipe launch: {line}", file=sys.stderr, flush=True))
        self.processes = {
            name: ProcessState(spec, os.path.join(log_dir, f"{name}.log"))
            for name, spec in pipeline.processes.items()
        }
        self.rings: dict[str, Any] = {}
        self.created: list[str] = []
        self.stop_event = threading.Event()
        self.hurry = threading.Event()
        self.gave_up: str | None = None
        self.started_at = time.monotonic()
        self._control = None
        self._bus = None
        self._publisher = None
        self._metrics = None
        self._next_heartbeat = 0.0
        self._stopped = False

    # -- plan ----------------------------------------------------------------------------------------
    def plan(self) -> list[str]:
        p = self.pipeline
        lines = [f"pipeline {p.name!r} from {p.path}; logs in {self.log_dir}"]
        for ring in p.rings.values():
            extra = f", policy {ring.policy}" if ring.mode == "broadcast" else ""
            lines.append(
                f"ring {ring.key}: /dev/shm/shmpipe.{ring.segment}, {ring.type} x {ring.capacity:,}, "
                f"{ring.mode}{extra}, wait {ring.wait} (created unless it exists; unlinked at the end "
                "only if created)"
            )
        for i, spec in enumerate(p.processes.values(), 1):
            pin = f"cpus {','.join(map(str, spec.cpus))}" if spec.cpus else "not pinned"
            rt = f", SCHED_FIFO {spec.rt_priority}" if spec.rt_priority else ""
            ready = f"it answers ping as {spec.service}" if spec.control else f"alive for {spec.settle_s:g} s"
            rings = "".join(
                f", {k} {', '.join(v)}" for k, v in (("writes", spec.writes), ("reads", spec.reads)) if v
            )
            lines.append(f"{i}. {spec.name}: {' '.join(spec.command)}")
            lines.append(
                f"   {pin}{rt}; restart {spec.restart} (at most {spec.max_restarts} in "
                f"{spec.restart_window_s:g} s, backoff {spec.backoff_s:g} s doubling to "
                f"{spec.max_backoff_s:g} s); up when {ready}{rings}"
            )
        lines.append("stop: reverse order; control 'stop' (or SIGTERM), grace, SIGTERM, grace, SIGKILL")
        return lines

    # -- start ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Rings, control endpoint, bus, metrics, then every process in order. On a failure here
        everything made so far is undone before LaunchError is raised."""
        metrics = None
        if self.metrics_port is not None:
            try:
                from shmpipe.metrics import start_metrics_server
            except ImportError as exc:
                raise LaunchError(
                    f"--metrics-port needs shmpipe.metrics, which cannot be imported here ({exc}): "
                    "pip install 'shmpipe[services]'"
                ) from None
            metrics = start_metrics_server
        try:
            os.makedirs(self.log_dir, exist_ok=True)
        except OSError as exc:
            raise LaunchError(f"log directory {self.log_dir}: {exc.strerror}") from None
        self.refuse_taken_names()
        try:
            self._start_control()
            self._create_rings()
            self._start_bus()
            if metrics is not None:
                try:
                    # this pipeline's rings and services only: other jobs on the host stay out
                    self._metrics = metrics(
                        self.metrics_port,
                        self.metrics_host,
                        rings=[r.segment for r in self.pipeline.rings.values()],
                        services=[p.service for p in self.pipeline.processes.values()],
                    )
                except OSError as exc:  # MetricsServerError: one line naming the port
                    raise LaunchError(f"metrics: {exc}") from None
                from .process_metrics import ProcessCollector

                self._metrics.registry.register(ProcessCollector(lambda: list(self.processes.values())))
                self.say(f"metrics on http://{self.metrics_host}:{self._metrics.port}/metrics")
            for state in self.processes.values():
                if self.stop_event.is_set():
                    break
                self._spawn(state)
                self._wait_ready(state)
        except BaseException:
            self.stop()
            raise

    def refuse_taken_names(self) -> None:
        """Before anything is made: a service name a live process already holds (say, a child the
        previous launcher left running after a kill -9) is refused, naming the pid and the way to
        stop it."""
        for spec in self.pipeline.processes.values():
            held = name_holder(spec.service)
            if held is None:
                continue
            pid, what = held
            raise LaunchError(
                f"{spec.name}: the name {spec.service!r} is taken: a live process (pid {pid}) {what}; "
                f"stop it first (shmpipe ctl {spec.service} stop, or kill {pid})"
            )

    def _start_control(self) -> None:
        if self.control_name is None:
            return
        try:
            from shmpipe import control

            self._control = control.ControlServer(
                self.control_name,
                {
                    "status": lambda _a: self.status(),
                    "stats": lambda _a: self.ring_stats(),
                    "pause": lambda _a: self._forward("pause"),
                    "resume": lambda _a: self._forward("resume"),
                    "stop": self._control_stop,
                },
            )
        except ImportError:
            pass
        except Exception as exc:  # noqa: BLE001 - ControlError and friends: one line
            from shmpipe.control import ControlError, ServiceNameTakenError

            if isinstance(exc, ServiceNameTakenError):
                raise LaunchError(f"{exc} (another launcher? give this one --control-name)") from None
            if isinstance(exc, ControlError) and "pyzmq" in str(exc):
                self.say(
                    "no control plane: pyzmq is missing (pip install pyzmq); "
                    "processes are stopped with signals"
                )
                return
            raise LaunchError(str(exc)) from None
        self._control.start_thread()

    def _control_stop(self, _args: dict) -> dict:
        self.stop_event.set()
        return {"stopping": True}

    def _forward(self, command: str) -> dict:
        from shmpipe import control

        out = {}
        for state in self.processes.values():
            if not state.spec.control or not state.alive():
                continue
            try:
                out[state.name] = control.request(state.spec.service, command, timeout=2.0)
            except control.ControlError as exc:
                out[state.name] = {"error": str(exc)}
        return {"processes": out}

    def _create_rings(self) -> None:
        import shmpipe

        for ring in self.pipeline.rings.values():
            try:
                handle = shmpipe.Ring.create(
                    ring.segment,
                    ring.dtype,
                    ring.capacity,
                    wait=ring.wait,
                    broadcast=ring.mode == "broadcast",
                    policy=ring.policy,
                    max_consumers=ring.max_consumers,
                    consumer_timeout=ring.consumer_timeout_s,
                )
                self.created.append(ring.key)
            except shmpipe.RingExistsError:
                try:
                    handle = shmpipe.Ring.open(ring.segment, ring.dtype)
                except shmpipe.ShmpipeError as exc:
                    raise LaunchError(
                        f"ring {ring.key} ({ring.segment}) exists and cannot be used: {exc}"
                    ) from None
                self.say(f"ring {ring.key}: {ring.segment} exists; attached (it will be left in place)")
            except shmpipe.ShmpipeError as exc:
                raise LaunchError(f"ring {ring.key} ({ring.segment}): {exc}") from None
            self.rings[ring.key] = handle

    def _start_bus(self) -> None:
        if not self.want_bus or self._control is None:
            return  # no pyzmq, or asked for none
        try:
            from shmpipe import signals

            self._bus = signals.SignalBus()
            self._publisher = signals.SignalPublisher(source=self.control_name or "launcher")
        except Exception as exc:  # noqa: BLE001 - msgspec missing, a socket path refused
            self.say(f"no signals bus: {exc}")
            self._bus = None

    def _spawn(self, state: ProcessState) -> None:
        spec = state.spec
        env = dict(os.environ)
        env.update(spec.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env["SHMPIPE_SERVICE"] = spec.service
        try:
            log = open(state.log_path, "ab", buffering=0)
        except OSError as exc:
            raise LaunchError(f"{spec.name}: log {state.log_path}: {exc.strerror}") from None
        argv = resolve_command(spec.command)
        # Pinning by inheritance: this thread takes the process's CPUs for the instant of the fork,
        # so the child starts pinned (no window running elsewhere) and so does every thread it makes.
        saved = os.sched_getaffinity(0)
        try:
            log.write(
                f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} start {state.restarts and 'again ' or ''}"
                f"{' '.join(argv)}\n".encode()
            )
            if spec.cpus:
                os.sched_setaffinity(0, spec.cpus)
            try:
                state.proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                raise LaunchError(f"{spec.name}: cannot run {argv[0]!r}: {exc.strerror}") from None
        finally:
            if spec.cpus:
                os.sched_setaffinity(0, saved)
            log.close()
        try:
            state.cpus = tuple(sorted(os.sched_getaffinity(state.proc.pid)))
        except OSError:
            state.cpus = spec.cpus
        state.state, state.started_at, state.exit_code = "starting", time.monotonic(), None
        state.rt_applied = False
        if spec.rt_priority:
            try:
                os.sched_setscheduler(state.proc.pid, os.SCHED_FIFO, os.sched_param(spec.rt_priority))
                state.rt_applied = True
            except PermissionError:
                if not state.rt_warned:
                    state.rt_warned = True
                    self.say(
                        f"{spec.name}: SCHED_FIFO priority {spec.rt_priority} not permitted (needs "
                        "CAP_SYS_NICE or an RLIMIT_RTPRIO of that much); it runs at normal priority"
                    )
            except ProcessLookupError:
                pass
        self.say(
            f"{spec.name}: started pid {state.proc.pid}"
            + (f" on cpus {','.join(map(str, state.cpus))}" if spec.cpus else "")
            + (f", SCHED_FIFO {spec.rt_priority}" if state.rt_applied else "")
        )

    def _check_ready(self, state: ProcessState) -> bool:
        spec = state.spec
        if not state.alive():
            return False
        waited = time.monotonic() - state.started_at
        if spec.control and self._control is not None:
            from shmpipe import control

            if control.ping(spec.service, timeout=0.2) is not None:
                return True
        elif waited >= spec.settle_s:
            return True
        if waited >= spec.ready_timeout_s:
            if not state.ready_warned:
                state.ready_warned = True
                self.say(
                    f"{spec.name}: not answering its control endpoint after {spec.ready_timeout_s:g} s; "
                    "counted as up"
                )
            return True
        return False

    def _wait_ready(self, state: ProcessState) -> None:
        """Supervise everything started so far until this process is up (its restarts included:
        one that dies while starting is restarted by its policy, and its dependents wait), or has
        ended for good."""
        while not self.stop_event.is_set():
            self.supervise_once()
            if state.state in ("running", "exited", "failed") or self.gave_up:
                return
            self.stop_event.wait(POLL_S)

    # -- supervise -----------------------------------------------------------------------------------
    def supervise_once(self) -> None:
        now = time.monotonic()
        for state in self.processes.values():
            if (
                state.state in ("starting", "running")
                and state.proc is not None
                and state.proc.poll() is not None
            ):
                self._on_exit(state, now)
            elif state.state == "starting" and self._check_ready(state):
                state.state = "running"
            elif state.state == "backoff" and now >= state.next_start and not self.stop_event.is_set():
                state.restart_times.append(now)
                state.restarts += 1
                self._spawn(state)
        self._heartbeat(now)

    def _on_exit(self, state: ProcessState, now: float) -> None:
        spec, code = state.spec, state.proc.returncode
        state.exit_code = code
        if code != 0:
            tail = log_tail(state.log_path)
            if tail:
                self.say(f"{spec.name}: {_exit_text(code)}; the last lines of {state.log_path}:")
                for line in tail:
                    self.say(f"  {spec.name}| {line}")
        restart = spec.restart == "always" or (spec.restart == "on-failure" and code != 0)
        if not restart:
            state.state = "exited"
            self.say(f"{spec.name}: {_exit_text(code)}; restart = {spec.restart!r}, left down")
            return
        while state.restart_times and now - state.restart_times[0] > spec.restart_window_s:
            state.restart_times.popleft()
        if len(state.restart_times) >= spec.max_restarts:
            state.state = "failed"
            self.gave_up = spec.name
            self.say(
                f"{spec.name}: {_exit_text(code)}; {len(state.restart_times)} restarts within "
                f"{spec.restart_window_s:g} s, giving up: stopping the pipeline"
            )
            self.stop_event.set()
            return
        delay = min(spec.max_backoff_s, spec.backoff_s * 2 ** len(state.restart_times))
        state.state, state.next_start = "backoff", now + delay
        self.say(f"{spec.name}: {_exit_text(code)}; restarting in {delay:g} s")

    def finished(self) -> bool:
        """Every process ended and none will be restarted."""
        return all(s.state in ("exited", "failed") for s in self.processes.values())

    def _heartbeat(self, now: float) -> None:
        if self._publisher is None or now < self._next_heartbeat:
            return
        self._next_heartbeat = now + HEARTBEAT_S
        try:
            self._publisher.heartbeat(
                uptime_s=round(now - self.started_at, 3),
                pipeline=self.pipeline.name,
                processes={n: s.state for n, s in self.processes.items()},
            )
        except Exception:  # noqa: BLE001 - a heartbeat must never take the launcher down
            pass

    def run(self) -> int:
        """Supervise until stopped (signal, ``ctl launcher stop``, a process given up on, or every
        process ended); then stop everything. Exit code: 0, or 1 when a process was given up on or
        ended with a failure."""
        while not self.stop_event.is_set() and not self.finished():
            self.supervise_once()
            self.stop_event.wait(POLL_S)
        self.stop()
        failed = self.gave_up or any(
            s.exit_code not in (0, None) and s.state == "exited" for s in self.processes.values()
        )
        return 1 if failed else 0

    # -- facts ---------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline.name,
            "pid": os.getpid(),
            "file": self.pipeline.path,
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "stopping": self.stop_event.is_set(),
            "gave_up": self.gave_up,
            "log_dir": self.log_dir,
            "processes": {n: s.as_dict() for n, s in self.processes.items()},
            "rings": {
                k: {"segment": self.pipeline.rings[k].segment, "created": k in self.created}
                for k in self.rings
            },
        }

    def ring_stats(self) -> dict[str, Any]:
        out = {}
        for key, ring in list(self.rings.items()):
            try:
                st = ring.stats()
            except Exception as exc:  # noqa: BLE001 - closed under us during shutdown
                out[key] = {"error": str(exc)}
                continue
            consumers = st["consumers"] if st["broadcast"] else st["consumers"][:1]
            out[key] = {
                "segment": ring.name,
                "written": st["written"],
                "lost": st["lost"],
                "evictions": st["evictions"],
                "fill": st["fill"],
                "full_waits": st["full_waits"],
                "producer_alive": st["producer"]["alive"],
                "consumers": [
                    {
                        "pid": c["pid"],
                        "position": c["position"],
                        "lag": c["lag"],
                        "lost": c["lost"],
                        "alive": c["alive"],
                    }
                    for c in consumers
                ],
            }
        return {"rings": out}

    # -- stop ----------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Reverse order, control 'stop' then signals; unlink what we created. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.stop_event.set()
        for state in reversed(list(self.processes.values())):
            self._stop_one(state)
        for key, ring in self.rings.items():
            try:
                if key in self.created:
                    ring.unlink()
                ring.close()
            except Exception as exc:  # noqa: BLE001 - keep cleaning up the rest
                self.say(f"ring {key}: {exc}")
        self.rings.clear()
        if self._metrics is not None:
            self._metrics.close()
        if self._publisher is not None:
            self._publisher.close()
        if self._bus is not None:
            self._bus.close()
            for endpoint in (self._bus.input_endpoint, self._bus.output_endpoint):
                if endpoint.startswith("ipc://"):
                    try:
                        os.unlink(endpoint[len("ipc://") :])
                    except FileNotFoundError:
                        pass
        if self._control is not None:
            self._control.close()

    def _wait_exit(self, state: ProcessState, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while True:
            if state.proc.poll() is not None:
                return True
            if time.monotonic() >= deadline or self.hurry.is_set():
                return False
            time.sleep(0.02)

    def _signal(self, state: ProcessState, sig: int) -> None:
        try:
            os.killpg(state.proc.pid, sig)  # its own session: the whole group, helpers included
        except (ProcessLookupError, PermissionError):
            try:
                state.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def _stop_one(self, state: ProcessState) -> None:
        if state.proc is None or state.proc.poll() is not None:
            if state.state in ("backoff", "starting", "running", "pending"):
                state.state = "stopped"
            return
        spec = state.spec
        state.state = "stopping"
        asked = False
        if spec.control and self._control is not None:
            from shmpipe import control

            try:
                control.request(spec.service, "stop", timeout=1.0)
                asked = True
            except control.ControlError as exc:
                self.say(f"{spec.name}: control stop failed ({exc}); sending SIGTERM")
        if not asked:
            self._signal(state, signal.SIGTERM)
        if not self._wait_exit(state, spec.stop_grace_s):
            if asked:
                self.say(f"{spec.name}: still running {spec.stop_grace_s:g} s after 'stop'; sending SIGTERM")
                self._signal(state, signal.SIGTERM)
            if not asked or not self._wait_exit(state, spec.stop_grace_s):
                self.say(f"{spec.name}: still running after SIGTERM; sending SIGKILL")
                self._signal(state, signal.SIGKILL)
                state.proc.wait()
        state.exit_code = state.proc.returncode
        state.state = "stopped"
        self.say(f"{spec.name}: stopped ({_exit_text(state.exit_code)})")


def default_log_dir(pipeline: Pipeline) -> str:
    return pipeline.log_dir or os.path.join("logs", pipeline.name)


def install_stop_signals(launcher: Launcher) -> None:
    """SIGINT/SIGTERM: stop; a second one: stop now, without the grace periods."""

    def handler(_sig, _frame):
        if launcher.stop_event.is_set():
            launcher.hurry.set()
        launcher.stop_event.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
