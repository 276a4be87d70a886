"""The launcher's --metrics-port (issue 25): only this pipeline's stats publishers (another job's on
the same host stay out), per-process series (up, restarts, last exit code, CPU, RSS), and a
publisher's gauge fields typed as gauges."""

from __future__ import annotations

import socket
import sys
import textwrap
import urllib.request

import zmq  # noqa: F401 - a declared dependency: missing, the tests fail rather than skip
import prometheus_client  # noqa: F401
from launch_helpers import LauncherProcess, runtime_dir, wait_for  # noqa: F401
from prometheus_client.parser import text_string_to_metric_families

from shmpipe import stats

_PUBLISHER = """
import signal, sys
from shmpipe import stats
pub = stats.publish(sys.argv[1], ["messages", "latency_p99_us"])
pub.update({"messages": 42, "latency_p99_us": 250})
signal.signal(signal.SIGTERM, lambda *_: (pub.close(), sys.exit(0)))
while True:
    signal.pause()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _families(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return {f.name: f for f in text_string_to_metric_families(response.read().decode())}


def _value(families, name, **labels):
    family = families.get(name.removesuffix("_total"))
    for sample in family.samples if family else ():
        if sample.name == name and labels.items() <= sample.labels.items():
            return sample.value
    return None


def test_metrics_are_the_pipeline_s_own_with_per_process_series(tmp_path, ring_name, runtime_dir):
    script = tmp_path / "publisher.py"
    script.write_text(_PUBLISHER)
    toml = tmp_path / "pipeline.toml"
    toml.write_text(textwrap.dedent(f"""\
        [pipeline]
        ring_prefix = "{ring_name}."

        [processes.pub]
        command = ["{sys.executable}", "{script}", "{{service}}"]
        settle_s = 0.2

        [processes.broken]
        command = ["sh", "-c", "exit 3"]
        restart = "never"
        settle_s = 0.1
        """))
    port = _free_port()
    other_job = f"{ring_name}-otherjob.to-redis"
    with stats.publish(other_job, ["records"]):
        launcher = LauncherProcess(toml, tmp_path / "logs", "--metrics-port", str(port))
        try:
            url = f"http://127.0.0.1:{port}/metrics"

            def settled():
                got = _families(url)
                done = _value(got, "shmpipe_process_last_exit_code", process="broken") is not None
                published = _value(got, "shmpipe_service_up", service=f"{ring_name}.pub") == 1
                return got if done and published else None

            families = wait_for(settled, 30, "the broken process's exit and pub's stats in a scrape")
            assert _value(families, "shmpipe_process_up", process="pub", service=f"{ring_name}.pub") == 1
            assert _value(families, "shmpipe_process_up", process="broken") == 0
            assert _value(families, "shmpipe_process_last_exit_code", process="broken") == 3
            assert _value(families, "shmpipe_process_restarts_total", process="pub") == 0
            assert _value(families, "shmpipe_process_cpu_seconds_total", process="pub") > 0
            assert _value(families, "shmpipe_process_resident_memory_bytes", process="pub") > 1_000_000
            services = {s.labels["service"] for s in families["shmpipe_service_up"].samples}
            assert services == {f"{ring_name}.pub"}, services  # not the other job's publisher
            assert families["shmpipe_service_latency_p99_us"].type == "gauge"
            assert families["shmpipe_service_messages"].type == "unknown"
            assert _value(families, "shmpipe_service_messages", service=f"{ring_name}.pub") == 42
        finally:
            launcher.proc.terminate()
            launcher.finish(timeout=30)
            launcher.kill_everything()
    stats.unlink(f"{ring_name}.pub")


def test_services_scope_the_publishers(ring_name):
    from shmpipe.metrics import start_metrics_server

    mine, under, other = f"{ring_name}.a", f"{ring_name}.a.to-redis", f"{ring_name}.ab"
    with stats.publish(mine, ["x"]), stats.publish(under, ["x"]), stats.publish(other, ["x"]), \
            start_metrics_server(0, rings=[], services=[mine]) as server:
        families = _families(server.url)
        assert {s.labels["service"] for s in families["shmpipe_service_up"].samples} == {mine, under}
