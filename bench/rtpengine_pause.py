"""Pause latency against the real rtpengine: the daemon's round trip next to recgate's.

    .venv/bin/python bench/rtpengine_pause.py [--iterations 500] [--database sqlite|postgres|both]

Starts rtpengine on 127.0.0.1 (as tests/e2e does) and ``recgate serve`` as a separate process
on a loopback port (one worker, access log off, background jobs on, as deployed). Every
iteration sets up two fresh calls through the ng protocol (untimed) and then times, on one:

- single ng commands from recgate's NgClient: ``pause recording`` (answered ``Unrecognized
  command`` by Debian's 10.5), ``stop recording``, ``start recording``;
- the controller's whole pause (``block DTMF`` + ``pause recording`` [+ ``stop recording``])
  and resume (``start recording`` + ``unblock DTMF``): what recgate sends per payment;

and on the other, the IVR's view: ``POST …/payment/start`` until ``safe_to_collect`` and
``POST …/payment/end``, over HTTP. recgate's own added latency is the HTTP figure minus the
controller figure, measured in the same run, interleaved, so both see the same machine.
Results go to bench/results/rtpengine_pause.md.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

# The daemon and SDP helpers are shared with the end-to-end test.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from support import free_port, postgres_database  # noqa: E402

from app.domain.states import PauseBehavior  # noqa: E402
from app.telephony.base import ControlTarget  # noqa: E402
from app.telephony.rtpengine import NgClient, RtpengineController, UnrecognizedCommand  # noqa: E402
from tests.e2e.rtpengine_support import Daemon, running_rtpengine, sdp  # noqa: E402

RECGATE = str(Path(sys.executable).with_name("recgate"))
RESULTS = ROOT / "bench" / "results" / "rtpengine_pause.md"
WARMUP = 20
SERIES = (
    "ng pause recording",
    "ng stop recording",
    "ng start recording",
    "controller pause",
    "controller resume",
    "http payment/start",
    "http payment/end",
)


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile of ``samples`` (seconds), in milliseconds."""
    ordered = sorted(samples)
    rank = min(len(ordered), max(1, math.ceil(len(ordered) * q / 100)))
    return ordered[rank - 1] * 1000


@contextmanager
def sqlite_database(directory: Path) -> Iterator[str]:
    """A fresh SQLite file in ``directory``."""
    yield f"sqlite+aiosqlite:///{directory}/recgate.db"


@contextmanager
def recgate_server(workdir: Path, database_url: str, ng: str) -> Iterator[tuple[str, str]]:
    """``recgate serve`` on a loopback port; yields (base URL, IVR token). Stopped by PID."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECGATE_")}
    env.update(
        RECGATE_ENV="development",
        RECGATE_DATABASE_URL=database_url,
        RECGATE_MEDIA_DIR=str(workdir / "media"),
        RECGATE_RTPENGINE_NG=ng,
        RECGATE_SIM_ENABLED="false",
        RECGATE_HOST="127.0.0.1",
        RECGATE_PORT=str(port),
        RECGATE_LOG_LEVEL="WARNING",
        RECGATE_ALEMBIC_DIR=str(ROOT / "alembic"),
    )

    def cli(*args: str) -> str:
        done = subprocess.run(
            [RECGATE, *args], env=env, cwd=workdir, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"recgate {' '.join(args)} failed:\n{done.stderr[-2000:]}")
        return done.stdout

    cli("migrate")
    token = cli("tokens", "create", "--name", "bench-ivr", "--role", "ivr").strip().splitlines()[-1]
    log_path = workdir / "recgate.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [RECGATE, "serve"], env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/livez", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"recgate did not start:\n{log_path.read_text()[-2000:]}")
            # Bounded startup poll: at WARNING level uvicorn prints nothing to wait for.
            time.sleep(0.05)
        yield base, token
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


async def _setup_call(ng: NgClient, call_id: str) -> None:
    # Endpoints that never send: the command path is what is measured. rtpengine opens the
    # recording at the offer ("record call"), as a SIP proxy asks it to.
    await ng.command(
        "offer", {"call-id": call_id, "from-tag": "a", "sdp": sdp(9, 1), "record call": "yes"}, 2
    )
    await ng.command(
        "answer", {"call-id": call_id, "from-tag": "a", "to-tag": "b", "sdp": sdp(11, 2)}, 2
    )


async def _timed(samples: list[float], pending: Awaitable[Any]) -> Any:
    began = time.perf_counter()
    try:
        return await pending
    except UnrecognizedCommand:
        return None  # answered all the same (10.5 and "pause recording"): a full round trip
    finally:
        samples.append(time.perf_counter() - began)


async def measure(
    daemon: Daemon, base: str, token: str, iterations: int
) -> tuple[dict[str, list[float]], bool | None]:
    """Interleaved samples (seconds) of every series, and whether ``pause recording`` works."""
    ng = NgClient(daemon.ng)
    controller = RtpengineController(ng, block_dtmf=True, timeout_s=2.0)
    series: dict[str, list[float]] = {name: [] for name in SERIES}
    async with httpx.AsyncClient(
        base_url=base, headers={"authorization": f"Bearer {token}"}, timeout=10.0
    ) as http:
        for i in range(WARMUP + iterations):
            s = series if i >= WARMUP else {name: [] for name in SERIES}
            raw, gated = f"bench-ng-{uuid.uuid4().hex}", f"bench-http-{uuid.uuid4().hex}"
            await _setup_call(ng, raw)
            await _setup_call(ng, gated)

            target = ControlTarget(raw)
            await _timed(s["controller pause"], controller.pause(target, PauseBehavior.SILENCE))
            await _timed(s["controller resume"], controller.resume(target))
            one = {"call-id": raw}
            await _timed(s["ng pause recording"], ng.command("pause recording", one, 2))
            await _timed(s["ng stop recording"], ng.command("stop recording", one, 2))
            await _timed(s["ng start recording"], ng.command("start recording", one, 2))

            path = f"/v1/calls/rtpengine/{gated}/payment"
            start = await _timed(s["http payment/start"], http.post(f"{path}/start", json={}))
            if start.status_code != 200 or start.json().get("safe_to_collect") is not True:
                raise RuntimeError(f"payment start: {start.status_code} {start.text}")
            end = await _timed(s["http payment/end"], http.post(f"{path}/end", json={}))
            if end.status_code != 200:
                raise RuntimeError(f"payment end: {end.status_code} {end.text}")

            for call_id in (raw, gated):
                await ng.command("delete", {"call-id": call_id, "delete delay": 0}, 2)
    await ng.aclose()
    return series, controller.pause_supported


def _machine() -> list[str]:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return [
        f"- CPU: {cpu}, {os.cpu_count()} logical CPUs; load average before the run {load[0]:.2f}",
        f"- OS: {platform.platform()}",
        f"- Python {platform.python_version()}, recgate in one `recgate serve` process "
        "(uvicorn, one worker, access log off, background jobs on), IVR client httpx with "
        "keep-alive; everything on 127.0.0.1",
    ]


def report(
    runs: list[tuple[str, dict[str, list[float]]]],
    version: str,
    pause_supported: bool | None,
    iterations: int,
) -> str:
    """The markdown report."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = ".venv/bin/python bench/" + " ".join(
        shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]]
    )
    lines = [
        "# rtpengine pause: the daemon's round trip and recgate's added latency",
        "",
        f"- Date: {now}",
        f"- Command: `{command}`",
        f"- rtpengine {version} (Debian package), `--table=-1 --recording-method=pcap`, "
        "userspace only, on 127.0.0.1",
        f"- `pause recording` supported: {'yes' if pause_supported else 'no'}"
        + ("" if pause_supported else " (answered `Unrecognized command`: stop/start fallback)"),
        *_machine(),
        f"- {iterations} measured iterations after {WARMUP} warm-up ones; each on fresh calls; "
        "ng, controller and HTTP measurements interleaved in one run.",
        "",
    ]
    for database, series in runs:
        lines += [
            f"## {database}",
            "",
            "| what | p50 ms | p99 ms | max ms |",
            "|---|---:|---:|---:|",
        ]
        for name in SERIES:
            samples = series[name]
            lines.append(
                f"| {name} | {percentile(samples, 50):.3f} | {percentile(samples, 99):.3f} "
                f"| {max(samples) * 1000:.3f} |"
            )
        for http_name, ctl_name in (
            ("http payment/start", "controller pause"),
            ("http payment/end", "controller resume"),
        ):
            h50, c50 = percentile(series[http_name], 50), percentile(series[ctl_name], 50)
            h99, c99 = percentile(series[http_name], 99), percentile(series[ctl_name], 99)
            lines.append(
                f"| **recgate added** ({http_name} − {ctl_name}) | {h50 - c50:.3f} "
                f"| {h99 - c99:.3f} | |"
            )
        ratio = percentile(series["http payment/start"], 50) / percentile(
            series["controller pause"], 50
        )
        lines += [
            "",
            f"At the median a payment start costs {ratio:.1f}× the rtpengine commands it "
            "sends; the rest is recgate (HTTP, auth, database transactions around the command).",
            "",
        ]
    lines += [
        "## Reading it",
        "",
        "- *ng …*: one command from recgate's `NgClient` to the daemon and back (UDP, "
        "bencode, cookie matching). `pause recording` on 10.5 is answered with an error, "
        "still a full round trip.",
        "- *controller pause*: `block DTMF`, `pause recording`, and on 10.5 `stop recording` "
        "— three sequential round trips; *controller resume*: `start recording`, "
        "`unblock DTMF`.",
        "- *http payment/start*: the IVR's POST until the 200 with `safe_to_collect: true`, "
        "which includes the controller pause; *recgate added* subtracts the controller's "
        "median (and p99) from the HTTP one. The p99 difference compares tails of two "
        "distributions, not one request's parts.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--database", choices=("sqlite", "postgres", "both"), default="sqlite")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "RECGATE_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
        ),
        help="a PostgreSQL server to create a scratch database on",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    iterations = max(1, min(args.iterations, 10_000))  # bounded

    runs: list[tuple[str, dict[str, list[float]]]] = []
    pause_supported: bool | None = None
    with tempfile.TemporaryDirectory(prefix="recgate-bench-") as tmp:
        workdir = Path(tmp)
        with running_rtpengine(workdir / "rtpengine") as daemon:
            version = daemon.version()
            for database in ("sqlite", "postgres"):
                if args.database not in (database, "both"):
                    continue
                server_dir = workdir / database
                server_dir.mkdir()
                databases = (
                    sqlite_database(server_dir)
                    if database == "sqlite"
                    else postgres_database(args.postgres_url)
                )
                with databases as url, recgate_server(server_dir, url, daemon.ng) as (base, token):
                    print(f"measuring {iterations} iterations on {database} …", file=sys.stderr)
                    series, pause_supported = asyncio.run(measure(daemon, base, token, iterations))
                runs.append((database, series))
    text = report(runs, version, pause_supported, iterations)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
