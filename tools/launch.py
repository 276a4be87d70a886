"""``shmpipe launch FILE.toml``: thin argument handling over ``shmpipe_services.launcher``."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "launch",
        help="run a pipeline file: create its rings, start its processes pinned, supervise, stop cleanly",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Checks FILE (a TOML pipeline: [rings.NAME] and [processes.NAME] tables; see\n"
        "examples/pipeline.toml), creates the rings, starts each process pinned to its cpus (SCHED_FIFO\n"
        "when rt_priority is set and permitted) in dependency order (writers of a ring before its readers,\n"
        "and `after`), restarts those that die (backoff doubling; after max_restarts within\n"
        "restart_window_s it gives up and stops the pipeline, exit 1), and on SIGINT/SIGTERM stops them in\n"
        "reverse order (control 'stop' or SIGTERM, a grace period, SIGTERM, SIGKILL), then unlinks the\n"
        "rings it created. One log per process in --log-dir. Answers `shmpipe ctl launcher status`.\n"
        "A mistake in FILE is one line: FILE:LINE: problem (exit 2).",
    )
    p.add_argument("file", metavar="FILE.toml")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check the file and print the plan; start nothing (exit 1 if a live process holds one of "
        "its service names)",
    )
    p.add_argument(
        "--log-dir",
        metavar="DIR",
        help="one log per process, DIR/NAME.log (default: [pipeline] log_dir, else ./logs/PIPELINE)",
    )
    p.add_argument(
        "--ring-prefix", metavar="P", help="segment names are P + ring name (default: [pipeline] ring_prefix)"
    )
    p.add_argument(
        "--control-name",
        default="launcher",
        help="the launcher's own control service name (default launcher)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on 127.0.0.1:PORT (0: any free port): the pipeline's rings, its "
        "services' stats and per-process series (up, restarts, last exit code, CPU, RSS)",
    )
    p.add_argument("--no-bus", action="store_true", help="run no signals bus for the pipeline")
    p.set_defaults(func=run)


def _fail(message: str, code: int) -> int:
    print(f"shmpipe launch: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    from shmpipe_services.launcher.config import PipelineError, load
    from shmpipe_services.launcher.supervisor import (
        Launcher,
        LaunchError,
        default_log_dir,
        install_stop_signals,
    )

    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        return _fail(f"--metrics-port must be 0-65535, not {args.metrics_port}", 2)
    try:
        pipeline = load(args.file, ring_prefix=args.ring_prefix)
    except PipelineError as exc:
        return _fail(str(exc), 2)
    launcher = Launcher(
        pipeline,
        log_dir=args.log_dir or default_log_dir(pipeline),
        control_name=args.control_name,
        bus=not args.no_bus,
        metrics_port=args.metrics_port,
    )
    if args.dry_run:
        print("\n".join(launcher.plan()))
        try:  # what would refuse the start at once: a live process holding a service name
            launcher.refuse_taken_names()
        except LaunchError as exc:
            return _fail(str(exc), 1)
        return 0
    install_stop_signals(launcher)
    try:
        launcher.start()
    except LaunchError as exc:
        return _fail(str(exc), 1)
    code = launcher.run()
    if launcher.gave_up:
        return _fail(f"gave up on {launcher.gave_up}; pipeline stopped", code)
    restarts = {n: s.restarts for n, s in launcher.processes.items() if s.restarts}
    if restarts:
        print(
            "shmpipe launch: restarts: " + ", ".join(f"{n} {k}" for n, k in restarts.items()), file=sys.stderr
        )
    return code
