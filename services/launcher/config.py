"""The pipeline file: TOML (stdlib ``tomllib``) declaring rings and processes, checked completely
before anything is created, every mistake reported as ``FILE:LINE: problem``.

    [pipeline]
    name = "demo"                 # names the log directory; default: the file's stem
    ring_prefix = "demo."         # segment names are PREFIX + ring key (launch --ring-prefix overrides)

    [rings.ticks]
    type = "tick"                 # tick | level_update | orderbook_entry | asset
    capacity = 65536              # a power of two
    mode = "broadcast"            # broadcast | spsc
    policy = "lossless"           # lossless | lossy (broadcast only)

    [processes.capture]
    command = ["shmpipe", "capture", "--ticks", "{ring.ticks}", ...]   # or one shlex-split string
    writes = ["ticks"]            # rings it produces into; readers start after writers
    cpus = [0]                    # or "0-1"
    restart = "always"            # always | on-failure | never

``{ring.KEY}`` in a command or env value becomes that ring's segment name, ``{service}`` the
process's service name (prefix + process name: its control endpoint and stats name; the launcher
pings and stops it under that name), ``{service.NAME}`` another process's, ``{name}`` the bare
process name; so the same file runs twice side by side under two prefixes.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RING_TYPES = ("tick", "level_update", "orderbook_entry", "asset")
RING_MODES = ("broadcast", "spsc")
RING_POLICIES = ("lossless", "lossy")
RING_WAITS = ("spin", "yield", "block")
RESTART_POLICIES = ("always", "on-failure", "never")
_KEY = re.compile(r"[A-Za-z0-9_-]{1,48}")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
# What a mistyped placeholder looks like: a word, maybe dotted. JSON and shell braces ({"a": 1},
# {}, ${x}) never look like this, so they stay the program's business.
_PLACEHOLDER_LIKE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)?")
_PLACEHOLDER_HEADS = ("name", "service", "ring")


class PipelineError(ValueError):
    """A mistake in a pipeline file; ``str()`` is ``FILE:LINE: problem``."""

    def __init__(self, path: str, line: int | None, problem: str) -> None:
        self.path, self.line, self.problem = path, line, problem
        super().__init__(f"{path}:{line}: {problem}" if line else f"{path}: {problem}")


@dataclass(frozen=True)
class RingSpec:
    key: str
    segment: str  # the /dev/shm name: prefix + key
    type: str
    capacity: int
    mode: str = "broadcast"
    policy: str = "lossless"
    wait: str = "block"
    max_consumers: int = 32
    consumer_timeout_s: float = 5.0

    @property
    def dtype(self):
        from shmpipe import records

        return {
            "tick": records.TICK,
            "level_update": records.LEVEL_UPDATE,
            "orderbook_entry": records.ORDERBOOK_ENTRY,
            "asset": records.ASSET,
        }[self.type]


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    command: list[str]
    service: str = ""  # control service and stats name: the pipeline's prefix + name
    cpus: tuple[int, ...] | None = None
    rt_priority: int | None = None
    restart: str = "on-failure"
    max_restarts: int = 5
    restart_window_s: float = 60.0
    backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    env: dict[str, str] = field(default_factory=dict)
    writes: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    control: bool = False  # answers the control plane as service NAME (readiness = ping)
    ready_timeout_s: float = 10.0
    settle_s: float = 0.5  # without control: "up" once alive this long
    stop_grace_s: float = 3.0  # after "stop" (or SIGTERM), before the next, harder, step


@dataclass(frozen=True)
class Pipeline:
    path: str
    name: str
    ring_prefix: str
    rings: dict[str, RingSpec]
    processes: dict[str, ProcessSpec]  # in start order (dependency order)
    log_dir: str | None = None


# -- where a key is written ------------------------------------------------------------------------
class _Lines:
    """Finds the line of a table header or of a key inside a table, by scanning the text: tomllib
    keeps no positions. Good for the ordinary layout (one [table] per ring/process); anything
    fancier falls back to the table's header, then to no line at all."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    @staticmethod
    def _header_re(parts: tuple[str, ...]) -> re.Pattern:
        quoted = [rf"(?:{re.escape(p)}|\"{re.escape(p)}\"|'{re.escape(p)}')" for p in parts]
        return re.compile(r"^\s*\[\s*" + r"\s*\.\s*".join(quoted) + r"\s*\]")

    def table(self, *parts: str) -> int | None:
        pattern = self._header_re(parts)
        for i, line in enumerate(self.lines):
            if pattern.match(line):
                return i + 1
        # only sub-tables under it: [proceses.capture] declares the table proceses
        sub = re.compile(self._header_re(parts).pattern[: -len(r"\s*\]")] + r"\s*\.")
        for i, line in enumerate(self.lines):
            if sub.match(line):
                return i + 1
        # an inline or dotted definition: `capture = {...}` under [processes], or processes.capture.x =
        last = parts[-1]
        key = re.compile(rf"^\s*(?:[\w.\"'-]+\.)?[\"']?{re.escape(last)}[\"']?\s*[=.]")
        for i, line in enumerate(self.lines):
            if key.match(line):
                return i + 1
        return None

    def key(self, table: tuple[str, ...], key: str) -> int | None:
        if not table:  # a top-level key is usually a [table] of its own
            return self.table(key)
        start = self.table(*table)
        if start is None:
            return None
        pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
        for i in range(start if table else 0, len(self.lines)):
            line = self.lines[i]
            if table and i >= start and re.match(r"^\s*\[", line):
                break
            if pattern.match(line):
                return i + 1
        # inline table on the header line, or a dotted key
        if table:
            inline = re.compile(rf"[{{,]\s*[\"']?{re.escape(key)}[\"']?\s*=")
            line = self.lines[start - 1] if start else ""
            if inline.search(line):
                return start
        return start or None


# -- the checker -----------------------------------------------------------------------------------
class _Checker:
    def __init__(self, path: str, text: str) -> None:
        self.path, self.lines = path, _Lines(text)

    def fail(self, line: int | None, problem: str) -> PipelineError:
        return PipelineError(self.path, line, problem)

    def unknown_keys(self, table: dict, known: set[str], where: tuple[str, ...], label: str) -> None:
        for key in table:
            if key not in known:
                raise self.fail(
                    self.lines.key(where, key),
                    f"unknown key {key!r} in {label} (known: {', '.join(sorted(known))})",
                )

    def get(
        self,
        table: dict,
        key: str,
        kinds: type | tuple,
        where: tuple[str, ...],
        label: str,
        default: Any = None,
        *,
        what: str | None = None,
    ) -> Any:
        if key not in table:
            return default
        value = table[key]
        # bool is an int in Python; a TOML true is never a number here
        if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
            ok = False
        else:
            ok = isinstance(value, kinds)
        if not ok:
            raise self.fail(
                self.lines.key(where, key),
                f"{label}.{key} must be {what or _kind_name(kinds)}, not {_toml_repr(value)}",
            )
        return value

    def choice(self, table: dict, key: str, choices: tuple[str, ...], where, label, default: str) -> str:
        value = self.get(table, key, str, where, label, default, what="one of " + ", ".join(choices))
        if value not in choices:
            raise self.fail(
                self.lines.key(where, key),
                f"{label}.{key} must be one of {', '.join(choices)}, not {value!r}",
            )
        return value

    def number(self, table, key, where, label, default, *, minimum=0.0, integer=False):
        kinds = int if integer else (int, float)
        value = self.get(
            table, key, kinds, where, label, default, what="an integer" if integer else "a number"
        )
        if value is not None and value < minimum:
            raise self.fail(self.lines.key(where, key), f"{label}.{key} must be >= {minimum:g}, not {value}")
        return value


def _kind_name(kinds) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list",
        dict: "a table",
    }
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _toml_repr(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_cpus(value: Any) -> tuple[int, ...]:
    """``[0, 2]``, ``"0-1"``, ``"0,2-3"`` -> sorted CPU numbers; ValueError naming what is wrong."""
    if isinstance(value, list):
        if not value or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in value):
            raise ValueError(f"a CPU list must be non-negative integers, not {_toml_repr(value)}")
        return tuple(sorted(set(value)))
    if isinstance(value, str):
        cpus: set[int] = set()
        for part in value.replace(" ", "").split(","):
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if not m or (m.group(2) and int(m.group(2)) < int(m.group(1))):
                raise ValueError(f'bad CPU list {value!r} (expected e.g. "0-1" or "0,2")')
            cpus.update(range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1))
        return tuple(sorted(cpus))
    raise ValueError(f'cpus must be a list of CPU numbers or a string like "0-1", not {_toml_repr(value)}')


_PIPELINE_KEYS = {"name", "ring_prefix", "log_dir"}
_RING_KEYS = {"type", "capacity", "mode", "policy", "wait", "max_consumers", "consumer_timeout_s"}
_PROCESS_KEYS = {
    "command",
    "cpus",
    "rt_priority",
    "restart",
    "max_restarts",
    "restart_window_s",
    "backoff_s",
    "max_backoff_s",
    "env",
    "writes",
    "reads",
    "after",
    "control",
    "ready_timeout_s",
    "settle_s",
    "stop_grace_s",
}


def load(
    path: str | os.PathLike,
    *,
    ring_prefix: str | None = None,
    available_cpus: set[int] | None = None,
    check_programs: bool = True,
) -> Pipeline:
    """Read and check a pipeline file. Raises PipelineError (``FILE:LINE: problem``)."""
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PipelineError(path, None, "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(path, None, f"cannot read it: {getattr(exc, 'strerror', None) or exc}") from None
    return loads(
        text, path, ring_prefix=ring_prefix, available_cpus=available_cpus, check_programs=check_programs
    )


def loads(
    text: str,
    path: str = "<pipeline>",
    *,
    ring_prefix: str | None = None,
    available_cpus: set[int] | None = None,
    check_programs: bool = True,
) -> Pipeline:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # the message ends "(at line L, column C)"; lineno exists from Python 3.14, parse it before
        message = str(exc)
        m = re.search(r"\(at line (\d+), column \d+\)$", message)
        line = getattr(exc, "lineno", None) or (int(m.group(1)) if m else None)
        problem = re.sub(r"\s*\(at line \d+, column \d+\)$", "", getattr(exc, "msg", None) or message)
        raise PipelineError(path, line, f"not valid TOML: {problem}") from None
    check = _Checker(path, text)
    lines = check.lines
    check.unknown_keys(doc, {"pipeline", "rings", "processes"}, (), "the file")

    head = check.get(doc, "pipeline", dict, (), "the file", {})
    check.unknown_keys(head, _PIPELINE_KEYS, ("pipeline",), "[pipeline]")
    name = check.get(head, "name", str, ("pipeline",), "pipeline", Path(path).stem or "pipeline")
    prefix = check.get(head, "ring_prefix", str, ("pipeline",), "pipeline", "")
    log_dir = check.get(head, "log_dir", str, ("pipeline",), "pipeline", None)
    if ring_prefix is not None:
        prefix = ring_prefix

    rings_doc = check.get(doc, "rings", dict, (), "the file", {})
    rings: dict[str, RingSpec] = {}
    for key, table in rings_doc.items():
        where, label = ("rings", key), f"rings.{key}"
        if not _KEY.fullmatch(key):
            raise check.fail(lines.table(*where), f"ring name {key!r} must be 1-48 of A-Z a-z 0-9 _ -")
        if not isinstance(table, dict):
            raise check.fail(lines.table(*where), f"{label} must be a table")
        check.unknown_keys(table, _RING_KEYS, where, f"[{label}]")
        if "type" not in table:
            raise check.fail(lines.table(*where), f"[{label}] needs type = one of {', '.join(RING_TYPES)}")
        if "capacity" not in table:
            raise check.fail(lines.table(*where), f"[{label}] needs capacity = a power of two")
        rtype = check.choice(table, "type", RING_TYPES, where, label, "tick")
        capacity = check.number(table, "capacity", where, label, None, minimum=2, integer=True)
        if capacity & (capacity - 1):
            raise check.fail(
                lines.key(where, "capacity"), f"{label}.capacity must be a power of two, not {capacity}"
            )
        mode = check.choice(table, "mode", RING_MODES, where, label, "broadcast")
        policy = check.choice(table, "policy", RING_POLICIES, where, label, "lossless")
        if mode == "spsc" and policy != "lossless":
            raise check.fail(
                lines.key(where, "policy"), f'{label}: policy = "lossy" needs mode = "broadcast"'
            )
        wait = check.choice(table, "wait", RING_WAITS, where, label, "block")
        max_consumers = check.number(table, "max_consumers", where, label, 32, minimum=1, integer=True)
        timeout = check.number(table, "consumer_timeout_s", where, label, 5.0, minimum=0.001)
        segment = prefix + key
        try:
            from shmpipe import segments

            segments.validate_name(segment, "ring")
        except Exception as exc:  # noqa: BLE001 - the library's own message names the rule
            raise check.fail(lines.table(*where), f"ring segment name {segment!r}: {exc}") from None
        rings[key] = RingSpec(
            key, segment, rtype, capacity, mode, policy, wait, max_consumers, float(timeout)
        )

    procs_doc = check.get(doc, "processes", dict, (), "the file", {})
    if not procs_doc:
        raise check.fail(None, "no [processes.NAME] table: a pipeline needs at least one process")
    cpus_here = available_cpus if available_cpus is not None else set(os.sched_getaffinity(0))
    processes: dict[str, ProcessSpec] = {}
    writer_of: dict[str, str] = {}  # ring key -> the process that writes it
    for pname, table in procs_doc.items():
        where, label = ("processes", pname), f"processes.{pname}"
        header = lines.table(*where)
        if not _KEY.fullmatch(pname):
            raise check.fail(header, f"process name {pname!r} must be 1-48 of A-Z a-z 0-9 _ -")
        if not isinstance(table, dict):
            raise check.fail(header, f"{label} must be a table")
        check.unknown_keys(table, _PROCESS_KEYS, where, f"[{label}]")
        if "command" not in table:
            raise check.fail(header, f'[{label}] needs command = ["program", "arg", ...]')
        command = check.get(table, "command", (list, str), where, label, what="a list of strings or a string")
        if isinstance(command, str):
            try:
                command = shlex.split(command)
            except ValueError as exc:
                raise check.fail(lines.key(where, "command"), f"{label}.command: {exc}") from None
        if not command or not all(isinstance(a, str) for a in command):
            raise check.fail(
                lines.key(where, "command"), f"{label}.command must be a non-empty list of strings"
            )
        if check_programs and command[0] != "shmpipe" and shutil.which(command[0]) is None:
            raise check.fail(
                lines.key(where, "command"),
                f"{label}.command: program {command[0]!r} not found (not an executable path, not on PATH)",
            )
        env = check.get(table, "env", dict, where, label, {})
        for k, v in env.items():
            if not isinstance(v, str):
                raise check.fail(
                    lines.key(where, "env"), f"{label}.env.{k} must be a string, not {_toml_repr(v)}"
                )

        def substitute(value: str, key: str, pname=pname, where=where, label=label) -> str:
            def one(m: re.Match) -> str:
                ref = m.group(1)
                if ref == "name":
                    return pname
                if ref == "service":
                    return prefix + pname
                if ref.startswith("service."):
                    if ref[8:] not in procs_doc:
                        raise check.fail(
                            lines.key(where, key),
                            f"{label}.{key} names {{{ref}}}, but no [processes.{ref[8:]}] is declared",
                        )
                    return prefix + ref[8:]
                if ref.startswith("ring."):
                    ring = rings.get(ref[5:])
                    if ring is None:
                        raise check.fail(
                            lines.key(where, key),
                            f"{label}.{key} names {{{ref}}}, but no [rings.{ref[5:]}] is declared",
                        )
                    return ring.segment
                typo = _placeholder_typo(ref)
                if typo:
                    raise check.fail(lines.key(where, key), f"{label}.{key}: {typo}")
                return m.group(0)  # other braces are the program's business

            return _PLACEHOLDER.sub(one, value)

        command = [substitute(a, "command") for a in command]
        env = {k: substitute(v, "env") for k, v in env.items()}

        cpus = None
        if "cpus" in table:
            try:
                cpus = parse_cpus(table["cpus"])
            except ValueError as exc:
                raise check.fail(
                    lines.key(where, "cpus"),
                    f"{label}.{exc}" if str(exc).startswith("cpus") else f"{label}.cpus: {exc}",
                ) from None
            missing = [c for c in cpus if c not in cpus_here]
            if missing:
                raise check.fail(
                    lines.key(where, "cpus"),
                    f"{label}.cpus names CPU {missing[0]}, which this process may not use "
                    f"(available: {_cpu_text(cpus_here)})",
                )
        rt = check.get(table, "rt_priority", int, where, label, None)
        if rt is not None and not 1 <= rt <= 99:
            raise check.fail(lines.key(where, "rt_priority"), f"{label}.rt_priority must be 1-99, not {rt}")
        ring_lists = {}
        for key in ("writes", "reads"):
            names = check.get(table, key, list, where, label, [], what="a list of ring names")
            for ring in names:
                if not isinstance(ring, str):
                    raise check.fail(
                        lines.key(where, key), f"{label}.{key} must list ring names, not {_toml_repr(ring)}"
                    )
                if ring not in rings:
                    raise check.fail(
                        lines.key(where, key),
                        f"{label}.{key} names ring {ring!r}, which no [rings.{ring}] declares",
                    )
                if key == "writes" and ring in writer_of and writer_of[ring] != pname:
                    # the ring's producer role is one process's: the second would fail to attach
                    raise check.fail(
                        lines.key(where, key),
                        f"{label}.writes: ring {ring!r} already has a writer "
                        f"(processes.{writer_of[ring]}); a ring has one producer",
                    )
                if key == "writes":
                    writer_of[ring] = pname
            ring_lists[key] = tuple(names)
        after = check.get(table, "after", list, where, label, [], what="a list of process names")
        service = prefix + pname
        if len(service) > 64:
            raise check.fail(
                header, f"service name {service!r} (ring_prefix + process name) is longer than 64"
            )
        processes[pname] = ProcessSpec(
            name=pname,
            service=service,
            command=list(command),
            cpus=cpus,
            rt_priority=rt,
            restart=check.choice(table, "restart", RESTART_POLICIES, where, label, "on-failure"),
            max_restarts=check.number(table, "max_restarts", where, label, 5, integer=True),
            restart_window_s=float(
                check.number(table, "restart_window_s", where, label, 60.0, minimum=0.001)
            ),
            backoff_s=float(check.number(table, "backoff_s", where, label, 0.5)),
            max_backoff_s=float(check.number(table, "max_backoff_s", where, label, 10.0)),
            env=env,
            writes=ring_lists["writes"],
            reads=ring_lists["reads"],
            after=tuple(after),
            control=check.get(table, "control", bool, where, label, False),
            ready_timeout_s=float(check.number(table, "ready_timeout_s", where, label, 10.0, minimum=0.001)),
            settle_s=float(check.number(table, "settle_s", where, label, 0.5)),
            stop_grace_s=float(check.number(table, "stop_grace_s", where, label, 3.0)),
        )
    for proc in processes.values():
        for dep in proc.after:
            if not isinstance(dep, str) or dep not in processes:
                raise check.fail(
                    lines.key(("processes", proc.name), "after"),
                    f"processes.{proc.name}.after names {_toml_repr(dep)}, which is not a process here",
                )
            if dep == proc.name:
                raise check.fail(
                    lines.key(("processes", proc.name), "after"), f"processes.{proc.name}.after names itself"
                )
    order = _start_order(processes, check)
    return Pipeline(path, name, prefix, rings, {n: processes[n] for n in order}, log_dir)


def _placeholder_typo(ref: str) -> str | None:
    """Why ``{ref}`` looks like a mistyped placeholder (``{servic}``, ``{rings.x}``, ``{ring}``),
    or None when it looks like the program's own braces. Left alone, a typo reaches the child as
    text and the child fails at run time, restart after restart."""
    if ref == "ring":
        return "{ring} needs a ring name: {ring.KEY}"
    if not _PLACEHOLDER_LIKE.fullmatch(ref):
        return None
    head, dot, tail = ref.partition(".")
    close = difflib.get_close_matches(head, _PLACEHOLDER_HEADS, n=1, cutoff=0.75)
    if not close:
        return None
    if close[0] == "ring" or (dot and close[0] == "service"):
        meant = f"{close[0]}.{tail or 'KEY'}"
    else:
        meant = close[0]
    return f"{{{ref}}} is not a placeholder; did you mean {{{meant}}}?"


def _cpu_text(cpus) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def dependencies(processes: dict[str, ProcessSpec]) -> dict[str, set[str]]:
    """Who must be up before each process: its ``after`` list, and every writer of a ring it reads."""
    writers: dict[str, set[str]] = {}
    for p in processes.values():
        for ring in p.writes:
            writers.setdefault(ring, set()).add(p.name)
    return {
        p.name: set(p.after) | {w for ring in p.reads for w in writers.get(ring, ()) if w != p.name}
        for p in processes.values()
    }


def _start_order(processes: dict[str, ProcessSpec], check: _Checker) -> list[str]:
    """Kahn's algorithm, ties broken by the order in the file, so the file's order is kept wherever
    the dependencies allow it."""
    deps = dependencies(processes)
    order: list[str] = []
    done: set[str] = set()
    pending = list(processes)
    while pending:
        ready = [n for n in pending if deps[n] <= done]
        if not ready:
            cycle = _find_cycle(pending, deps)
            raise check.fail(
                check.lines.table("processes", cycle[0]),
                "dependency cycle: "
                + " -> ".join(cycle + [cycle[0]])
                + " (each waits for the one after it: through `after` or a ring it reads)",
            )
        order.append(ready[0])
        done.add(ready[0])
        pending.remove(ready[0])
    return order


def _find_cycle(pending: list[str], deps: dict[str, set[str]]) -> list[str]:
    node, path = pending[0], []
    while node not in path:
        path.append(node)
        node = min(d for d in deps[node] if d in pending)
    cycle = path[path.index(node) :]
    return cycle
