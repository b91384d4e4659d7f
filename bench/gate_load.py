"""The gate under contact-centre load: webhook ingest, payment start/end, memory, two replicas.

    .venv/bin/python bench/gate_load.py [--backend sqlite|postgres|both] [--quick]

Everything runs as separate processes on loopback: ``recgate serve`` (one uvicorn worker,
background jobs on, access log off, as deployed), the baselines from ``bench/baselines.py``
(a bare FastAPI endpoint, a minimal forwarder, the floor, a PBX that answers at once) and
the load generator ``bench/loadgen.py``. Every figure is set against a baseline measured
in the same run:

- **Ingest**: signed generic webhooks (six per call: started, answered, recording started,
  stopped, completed, call ended; each call's events in order on one connection), 64
  keep-alive connections, closed loop. events/s of recgate over events/s of the bare
  endpoint validating the same bodies, in three rounds that alternate with the bare
  endpoint's, in turn first and second (bare, recgate; recgate, bare; bare, recgate) on each
  backend, each pooled over its rounds: the machine's speed moves by up to 2x within an
  hour, and a ratio of two figures taken minutes apart moved with it. Target >= 0.40.
- **Payment start/end**: 200 live calls, payments started at 20/s spread evenly, each ended
  2 s later. Latency is what the IVR sees minus the PBX's own median handling time; the
  same schedule goes to the minimal forwarder and the floor, in three rounds of 300
  payments, the order reversed each round (forwarder, floor, recgate; recgate, floor,
  forwarder; …), so that a hiccup or a drift of the machine falls on all alike. Target:
  recgate's start p99 within 2x the forwarder's p99 (each pooled over its rounds), and no
  failed start or end. A p99 of few starts is near their maximum: the ratio comes with a
  95% interval, resampling each round's starts (``ratio_interval``). The *floor* is the least a gate must do to send nothing twice across
  replicas (SPEC §3.1) and lose no payment it called safe: claim the segment in the
  database before the command, call the PBX, commit the confirmation before answering
  (``floor_app``, on the backend's own database). Its p99 over the forwarder's shows what
  those two writes alone cost on this machine.
- **Mixed**: the same payment schedule while webhooks pour in on half the ingest
  connections (closed loop), against the same replica: payment start p50 / p99 and the
  webhooks/s alongside. No target; it shows what ingest costs the IVR and the other way round.
- **Memory**: recgate's resident set before and after 2,000 more calls become active
  (started, answered, recording), per 1,000 calls.
- **Scale-out** (PostgreSQL): two replicas on one database. Ingest with the connections split
  between them, next to one replica; and payments where every start is sent to *both*
  replicas at the same instant (identical concurrent starts across replicas): both answers
  must be 200 with the same segment, and the PBX must get one pause per payment.

The report goes to bench/results/gate_load.md and the summary table into bench/README.md.
PostgreSQL comes from ``RECGATE_BENCH_POSTGRES_URL`` (default: the local ``test`` server).
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import json
import os
import pickle
import platform
import random
import re
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))

from support import autovacuum_stand_in, free_port  # noqa: E402
from support import postgres_database as scratch_database  # noqa: E402

from app.telephony.signing import signed_headers  # noqa: E402

RECGATE = str(Path(sys.executable).with_name("recgate"))
RESULTS = BENCH / "results" / "gate_load.md"
README = BENCH / "README.md"
POSTGRES = os.environ.get(
    "RECGATE_BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
T = TypeVar("T")
MARK_BEGIN, MARK_END = "<!-- gate-load:begin -->", "<!-- gate-load:end -->"
# Payments run in rounds, the forwarder's alternating with recgate's; ingest likewise, the
# bare endpoint's alternating with recgate's.
PAYMENT_ROUNDS = 3
# Start p99 ratios reported, each with its interval: recgate's ("payments") over the
# forwarder's (the target), the floor's over the forwarder's, recgate's over the floor's.
RATIOS = [("payments", "forwarder"), ("floor", "forwarder"), ("payments", "floor")]
INGEST_ROUNDS = 3
# Seconds of unmeasured ingest into a new database before its first measured round (prime).
PRIME_S = 4.0


@dataclass
class Config:
    duration: float = 10.0
    warmup: float = 3.0
    connections: int = 64
    calls: int = 200
    # Mixed and scale-out: one schedule of this many payments.
    payments: int = 300
    # Sent to each of recgate, the forwarder and the floor over PAYMENT_ROUNDS, for the start
    # p99 ratio: 300 starts put one p99 at about their third largest, which moved the ratio
    # by ±0.4 between runs of the same code (docs/benchmarks.md).
    paired: int = 900
    rate: float = 20.0
    hold: float = 2.0
    memory_calls: int = 2000


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and its children (recgate's ingest worker)."""
    total = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total += int(line.split()[1])
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            total += rss_kib(int(child))
    return total


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)  # bounded start-up poll: the servers print nothing at WARNING


@contextmanager
def process(
    command: list[str], env: dict[str, str], workdir: Path, name: str, ready: str | None
) -> Iterator[subprocess.Popen[bytes]]:
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
    try:
        if ready is not None:
            wait_http(ready, proc, log)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def uvicorn_app(target: str, port: int, workdir: Path, name: str, extra_env: dict[str, str]):  # type: ignore[no-untyped-def]
    env = {**os.environ, **extra_env}
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        target,
        "--app-dir",
        str(BENCH),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    return process(command, env, workdir, name, f"http://127.0.0.1:{port}/docs")


@dataclass
class Recgate:
    base: str
    port: int
    pid: int
    ivr: str
    ops: str


class Site:
    """One database with its migrations and tokens, and the replicas serving it."""

    def __init__(self, workdir: Path, url: str, secret: str, pbx_port: int) -> None:
        self.workdir = workdir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RECGATE_")}
        self.env.update(
            RECGATE_ENV="production",
            RECGATE_DATABASE_URL=url,
            RECGATE_MEDIA_DIR=str(workdir / "media"),
            RECGATE_GENERIC_WEBHOOK_SECRET=secret,
            RECGATE_GENERIC_CONTROL_URL=f"http://127.0.0.1:{pbx_port}",
            RECGATE_SIM_ENABLED="false",
            RECGATE_AUDIT_KEY=secret,
            RECGATE_HOST="127.0.0.1",
            RECGATE_LOG_LEVEL="WARNING",
            RECGATE_ALEMBIC_DIR=str(ROOT / "alembic"),
        )
        self.cli("migrate")
        self.ivr = self.token("bench-ivr", "ivr")
        self.ops = self.token("bench-ops", "ops")
        # PostgreSQL: the tables analysed before each measured round when the server's
        # autovacuum is off, as it would have analysed them (support.autovacuum_stand_in).
        self._settle = autovacuum_stand_in(url)
        self.settled = 0

    def settle(self) -> None:
        if self._settle():
            self.settled += 1

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [RECGATE, *args],
            env=self.env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"recgate {' '.join(args)} failed:\n{done.stderr[-2000:]}")
        return done.stdout

    def token(self, name: str, role: str) -> str:
        return self.cli("tokens", "create", "--name", name, "--role", role).strip().splitlines()[-1]

    @contextmanager
    def replica(self, name: str, **extra_env: str) -> Iterator[Recgate]:
        port = free_port()
        env = {**self.env, "RECGATE_PORT": str(port), **extra_env}
        base = f"http://127.0.0.1:{port}"
        with process([RECGATE, "serve"], env, self.workdir, name, f"{base}/livez") as proc:
            yield Recgate(base, port, proc.pid, self.ivr, self.ops)


# ---- requests ----------------------------------------------------------------------------------


def http_post(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "host: 127.0.0.1",
        f"content-length: {len(body)}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Events:
    """Signed generic-contract webhooks for whole calls."""

    def __init__(self, secret: str) -> None:
        self.key = base64.b64decode(secret.removeprefix("whsec_"))
        # Letters either side: eight random hex digits that happen to be all digits, next to
        # a call's number, can read as a card number, and recgate rightly refuses that id.
        self.prefix = f"b{uuid.uuid4().hex[:8]}x"

    def one(self, type_: str, call_id: str, at: datetime, recording: str | None) -> bytes:
        event: dict[str, Any] = {
            "type": type_,
            "occurred_at": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "call": {
                "id": call_id,
                "from": "+441632960001",
                "to": "+441632960999",
                "direction": "inbound",
                "service_area": "council_tax",
                "agent_id": "agent-7",
            },
        }
        if recording is not None:
            event["recording"] = {"id": recording, "format": "wav", "duration_s": 61.5}
        body = json.dumps(event, separators=(",", ":")).encode()
        headers = signed_headers(self.key, body, datetime.now(UTC))
        headers["content-type"] = "application/json"
        return http_post("/v1/webhooks/generic", body, headers)

    def whole_calls(self, count: int, tag: str) -> list[list[bytes]]:
        now = datetime.now(UTC)
        groups = []
        for n in range(count):
            call, rec = f"{tag}-{self.prefix}-{n}", f"rec-{n}"
            at = now + timedelta(milliseconds=n)
            groups.append(
                [
                    self.one("call.started", call, at, None),
                    self.one("call.answered", call, at + timedelta(seconds=1), None),
                    self.one("recording.started", call, at + timedelta(seconds=1), rec),
                    self.one("recording.stopped", call, at + timedelta(seconds=62), rec),
                    self.one("recording.completed", call, at + timedelta(seconds=63), rec),
                    self.one("call.ended", call, at + timedelta(seconds=62), None),
                ]
            )
        return groups

    def live_calls(self, names: list[str]) -> list[list[bytes]]:
        now = datetime.now(UTC)
        return [
            [
                self.one("call.started", call, now, None),
                self.one("call.answered", call, now, None),
                self.one("recording.started", call, now, f"rec-{call}"),
            ]
            for call in names
        ]


def loadgen(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    path = workdir / f"spec-{uuid.uuid4().hex[:6]}.pickle"
    with path.open("wb") as handle:
        pickle.dump(spec, handle)
    done = subprocess.run(
        [sys.executable, str(BENCH / "loadgen.py"), str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    path.unlink()
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def closed(
    groups: list[list[bytes]], ports: list[int], cfg: Config, workdir: Path, *, timed: bool = True
) -> dict[str, Any]:
    return loadgen(
        {
            "mode": "closed",
            "groups": groups,
            "targets": [("127.0.0.1", p) for p in ports],
            "connections": cfg.connections,
            "warmup": cfg.warmup if timed else 0.0,
            "duration": cfg.duration if timed else 3600.0,
        },
        workdir,
    )


def ingest_groups(events: Events, cfg: Config, expected_rate: float, tag: str) -> list[list[bytes]]:
    # Enough whole calls to keep every connection busy for warm-up and measurement.
    total = expected_rate * (cfg.warmup + cfg.duration) * 1.3
    return events.whole_calls(max(cfg.connections * 2, int(total / 6) + 1), tag)


def payment_schedule(
    cfg: Config, calls: list[str], targets: list[str], token: str | None, both: bool
) -> list[tuple[float, str, bytes, str]]:
    """Starts at ``rate``/s spread evenly, each ended ``hold`` seconds later.

    With ``both``, each start goes to every target at the same instant (tags start-0,
    start-1 …), and ends go round-robin.
    """
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    schedule = []
    for k in range(cfg.payments):
        offset = k / cfg.rate
        call = calls[k % len(calls)]
        start = http_post(f"/v1/calls/generic/{call}/payment/start", b"{}", headers)
        end = http_post(f"/v1/calls/generic/{call}/payment/end", b"{}", headers)
        if both:
            for i, target in enumerate(targets):
                schedule.append((offset, target, start, f"start-{i}"))
        else:
            schedule.append((offset, targets[k % len(targets)], start, "start"))
        schedule.append((offset + cfg.hold, targets[k % len(targets)], end, "end"))
    schedule.sort(key=lambda item: item[0])
    return schedule


def pbx_stats(port: int) -> dict[str, float]:
    stats: dict[str, float] = httpx.post(f"http://127.0.0.1:{port}/stats", timeout=5).json()
    return stats


def summarise(results: list[dict[str, Any]], *, start: bool) -> dict[str, Any]:
    """Percentiles of the latency each request added: what the IVR waited minus the PBX's
    median handling time in that request's round (``pbx_ms``)."""
    from loadgen import percentiles  # type: ignore[import-not-found]

    failed = [
        r
        for r in results
        if r["status"] != 200 or (start and '"safe_to_collect":true' not in r["body"])
    ]
    added = added_s(results)
    reasons: dict[str, int] = {}
    for r in failed:
        key = f"{r['status']} {_problem_type(r['body'])}"
        reasons[key] = reasons.get(key, 0) + 1
    return {**percentiles(added), "failed": len(failed), "reasons": reasons}


def added_s(results: list[dict[str, Any]]) -> list[float]:
    """What each request added, in seconds: its latency minus the PBX's median handling time
    in its round."""
    return [max(0.0, r["latency"] - r["pbx_ms"] / 1000) for r in results]


def _p99(samples: list[float]) -> float:
    """Nearest rank, as ``loadgen.percentiles``."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, -(-len(ordered) * 99 // 100) - 1))]


def ratio_interval(
    over: list[list[float]], under: list[list[float]], *, draws: int = 2000, seed: int = 8
) -> tuple[float, float]:
    """A 95% interval for p99(over) ÷ p99(under), each pooled over its rounds (a list of
    samples per round): a percentile bootstrap in which each draw resamples every round's
    samples, as many as it had, so that each round keeps its weight in the pool."""
    rng = random.Random(seed)
    ratios = sorted(
        _p99([x for r in over for x in rng.choices(r, k=len(r))])
        / _p99([x for r in under for x in rng.choices(r, k=len(r))])
        for _ in range(draws)
    )
    return ratios[int(0.025 * draws)], ratios[int(0.975 * draws) - 1]


def _problem_type(body: str) -> str:
    match = re.search(r'"type":"([^"]+)"', body)
    return match.group(1).rsplit("/", 1)[-1] if match else body[:40]


def open_loop(schedule: list[Any], targets: dict[str, int], workdir: Path) -> dict[str, Any]:
    return loadgen(
        {
            "mode": "open",
            "schedule": schedule,
            "targets": {name: ("127.0.0.1", port) for name, port in targets.items()},
            "preconnect": 8,
        },
        workdir,
    )


# ---- scenarios -------------------------------------------------------------------------------


def measure_ingest(
    events: Events, ports: list[int], cfg: Config, workdir: Path, tag: str, guess: float
) -> dict[str, Any]:
    attempt = 0
    while True:
        groups = ingest_groups(events, cfg, guess, f"{tag}{attempt or ''}")
        result = closed(groups, ports, cfg, workdir)
        if not result["exhausted"]:
            break
        # The calls ran out before the time did: that rate was capped, not measured.
        attempt, guess = attempt + 1, guess * 2
    ok = sum(n for code, n in result["statuses"].items() if code.startswith("2"))
    return {
        "rate": ok / cfg.duration,
        "statuses": result["statuses"],
        "latency_ms": result["latency_ms"],
        "exhausted": result["exhausted"],
    }


def prime(
    events: Events, site: Site, ports: list[int], cfg: Config, workdir: Path, guess: float
) -> float:
    """Ingest into a new site's database for a while, unmeasured, then settle it
    (``Site.settle``: ``VACUUM ANALYZE`` when the server's autovacuum is off, which
    otherwise analyses the tables itself): measured rounds then find the database as a
    contact centre's is, holding calls. Analysed empty, PostgreSQL's plans for the hot
    statements were made for empty tables, and the first round measured those: its server
    CPU per event about 60% above the later rounds' (docs/benchmarks.md). The replica gets
    this much more warm-up than the bare endpoint, whose process serves the whole run and
    has no database; the first round's warm-up is the same for both. The events/s it
    reached, for the record."""
    site.settle()
    primed = measure_ingest(
        events, ports, replace(cfg, duration=PRIME_S, warmup=0.0), workdir, "prime", guess
    )
    site.settle()
    return float(primed["rate"])


def in_turn(sides: list[T], round_no: int) -> list[T]:
    """The order to measure ``sides`` in, round ``round_no``: as given, then reversed, and so
    on, so that a steady drift of the machine favours none of them."""
    return sides[::-1] if round_no % 2 else sides


def paired_ingest(
    events: Events,
    site: Site,
    ports: list[int],
    bare_port: int,
    cfg: Config,
    workdir: Path,
    tag: str,
    guess: float,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Ingest in ``INGEST_ROUNDS`` rounds, each measured on the bare endpoint and on recgate
    (``ports``), the bare endpoint first in even rounds and second in odd ones, the measured
    time split between the rounds: a slow or fast spell of the machine falls on both alike.
    recgate's figures and the bare endpoint's, each pooled over its rounds (events/s over all
    the rounds' time), with the rounds' own."""
    # The first round warms a fresh replica up; the later ones only refill the connections.
    first = replace(cfg, duration=cfg.duration / INGEST_ROUNDS)
    later = replace(first, warmup=min(cfg.warmup, 1.0))
    ours, theirs = [], []
    for n in range(INGEST_ROUNDS):
        rounds = later if n else first
        sides = [(theirs, [bare_port], f"bare-{tag}{n}"), (ours, ports, f"{tag}{n}")]
        for runs, targets, name in in_turn(sides, n):
            if runs is ours:
                site.settle()
            runs.append(measure_ingest(events, targets, rounds, workdir, name, guess))
            guess = max(guess, runs[-1]["rate"])

    def pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
        return {"rate": sum(r["rate"] for r in runs) / len(runs), "rounds": runs}

    return pooled(ours), pooled(theirs)


def payment_round(
    schedule: list[Any], targets: dict[str, int], pbx_port: int, workdir: Path
) -> dict[str, Any]:
    """One open-loop run of ``schedule``: each result tagged with the PBX's median handling
    time in this run."""
    pbx_stats(pbx_port)  # reset
    run = open_loop(schedule, targets, workdir)
    pbx = pbx_stats(pbx_port)
    for results in run["results"].values():
        for r in results:
            r["pbx_ms"] = pbx["p50_ms"]
    run["pbx"] = pbx
    return run


def measure_payments(
    schedule: list[Any], targets: dict[str, int], pbx_port: int, workdir: Path
) -> dict[str, Any]:
    run = payment_round(schedule, targets, pbx_port, workdir)
    return payment_summary([run])


def measure_mixed(
    events: Events, replica: Recgate, cfg: Config, pbx_port: int, workdir: Path, tag: str
) -> dict[str, Any]:
    """Payments (a schedule of their own calls) while webhooks arrive on half the ingest
    connections for as long as the payments last."""
    calls = live_call_names(f"mix-{tag}", cfg.calls)
    closed(events.live_calls(calls), [replica.port], cfg, workdir, timed=False)
    schedule = payment_schedule(cfg, calls, ["recgate"], replica.ivr, False)
    mixed = replace(
        cfg,
        connections=cfg.connections // 2,
        warmup=0.5,
        duration=cfg.payments / cfg.rate + cfg.hold,
    )
    groups = ingest_groups(events, mixed, 4000, f"mixed-{tag}")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        ingest = pool.submit(closed, groups, [replica.port], mixed, workdir)
        payments = pool.submit(
            measure_payments, schedule, {"recgate": replica.port}, pbx_port, workdir
        )
        ingested, paid = ingest.result(), payments.result()
    ok = sum(n for code, n in ingested["statuses"].items() if code.startswith("2"))
    return {"ingest_rate": ok / mixed.duration, "connections": mixed.connections, **paid}


def payment_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Figures over the results of one or more rounds, pooled."""
    merged: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        for tag, results in run["results"].items():
            merged.setdefault(tag, []).extend(results)
    out: dict[str, Any] = {
        "pbx": {
            "n": sum(run["pbx"]["n"] for run in runs),
            "p50_ms": [run["pbx"]["p50_ms"] for run in runs],
        },
        "send_lag_ms": [run["send_lag_ms"] for run in runs],
    }
    run = {"results": merged}
    for tag, results in run["results"].items():
        out[tag] = summarise(results, start=tag.startswith("start"))
    if "start-0" in run["results"]:
        # Results come in the order they were answered; pair them by when they were sent
        # (each payment's two starts go at the same offset).
        first, second = (
            sorted(run["results"][t], key=lambda r: r["at"]) for t in ("start-0", "start-1")
        )
        pairs = zip(first, second, strict=True)
        out["same_segment"] = sum(1 for a, b in pairs if _segment(a) and _segment(a) == _segment(b))
    return out


def _segment(result: dict[str, Any]) -> str | None:
    match = re.search(r'"segment_id":"([^"]+)"', result["body"])
    return match.group(1) if match else None


def live_call_names(tag: str, count: int) -> list[str]:
    return [f"{tag}-{uuid.uuid4().hex[:6]}-{n}" for n in range(count)]


def paired_payments(
    cfg: Config,
    site: Site,
    calls: list[str],
    replica: Recgate,
    baselines: dict[str, int],
    pbx_port: int,
    workdir: Path,
) -> dict[str, dict[str, Any]]:
    """The payment schedule in ``PAYMENT_ROUNDS`` rounds, each sent to every baseline (name:
    port) and to recgate, in reverse order every other round: a hiccup of the machine (which
    moves a p99 of a few hundred samples a lot) or a drift falls on all alike. The figures
    of each, pooled over its rounds, by name; recgate's as ``payments``."""
    per_round = replace(cfg, payments=max(1, cfg.paired // PAYMENT_ROUNDS))
    # Unmeasured: each one's first payments open its connections to the PBX and the database.
    warm = replace(cfg, payments=10, hold=0.2)
    targets = [(name, port, None) for name, port in baselines.items()]
    targets.append(("payments", replica.port, replica.ivr))
    for name, port, token in targets:
        warmed = open_loop(payment_schedule(warm, calls, ["a"], token, False), {"a": port}, workdir)
        bad = [r for done in warmed["results"].values() for r in done if r["status"] != 200]
        if bad:
            print(f"warning: {len(bad)} of {name}'s warm-up payments failed", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in targets}
    for n in range(PAYMENT_ROUNDS):
        site.settle()
        for name, port, token in in_turn(targets, n):
            schedule = payment_schedule(per_round, calls, ["a"], token, both=False)
            runs[name].append(payment_round(schedule, {"a": port}, pbx_port, workdir))
    out = {name: payment_summary(done) for name, done in runs.items()}
    for name, done in runs.items():
        # Round by round too: the first round holds most calls' first payment (the warm-up
        # had ten), which recgate reads the call for; the later ones find its rows kept.
        out[name]["start_p99_rounds"] = [payment_summary([run])["start"]["p99"] for run in done]
    starts = {
        name: [added_s(run["results"]["start"]) for run in done] for name, done in runs.items()
    }
    out["intervals"] = {
        f"{over}/{under}": ratio_interval(starts[over], starts[under])
        for over, under in RATIOS
        if over in starts and under in starts
    }
    return out


def run_backend(
    backend: str,
    cfg: Config,
    workdir: Path,
    secret: str,
    pbx_port: int,
    forwarder_port: int,
    bare_port: int,
    guess: float,
) -> dict[str, Any]:
    events = Events(secret)
    out: dict[str, Any] = {}
    with ExitStack() as stack:
        if backend == "sqlite":
            url = f"sqlite+aiosqlite:///{workdir}/{backend}.db"
        else:
            url = stack.enter_context(scratch_database(POSTGRES))
        site = Site(workdir, url, secret, pbx_port)
        replica = stack.enter_context(site.replica(f"recgate-{backend}"))
        floor_port = free_port()
        floor_db = f"sqlite:///{workdir}/floor.db" if backend == "sqlite" else url
        stack.enter_context(
            uvicorn_app(
                "baselines:floor_app",
                floor_port,
                workdir,
                f"floor-{backend}",
                {"BENCH_PBX_URL": f"http://127.0.0.1:{pbx_port}", "BENCH_FLOOR_DB": floor_db},
            )
        )
        print(f"[{backend}] priming the database …", flush=True)
        out["primed_rate"] = prime(events, site, [replica.port], cfg, workdir, guess)
        print(f"[{backend}] ingest …", flush=True)
        out["ingest"], out["bare"] = paired_ingest(
            events, site, [replica.port], bare_port, cfg, workdir, backend, guess
        )
        print(
            f"[{backend}] ingest {out['ingest']['rate']:.0f} events/s, bare endpoint "
            f"{out['bare']['rate']:.0f} in the rounds alternating with recgate's",
            flush=True,
        )
        if backend == "sqlite":
            # What the request log costs: the same ingest with one JSON line per request
            # (INFO) written to a file, next to the run above (WARNING: no request lines).
            with site.replica(
                "recgate-logging", RECGATE_LOG_LEVEL="INFO", RECGATE_LOG_FORMAT="json"
            ) as logging_on:
                out["ingest_logged"] = measure_ingest(
                    events, [logging_on.port], cfg, workdir, "logged", guess
                )
            print(f"[sqlite] ingest with request logs {out['ingest_logged']['rate']:.0f}/s")

        print(f"[{backend}] memory …", flush=True)
        before = rss_kib(replica.pid)
        active = events.live_calls(live_call_names(f"mem-{backend}", cfg.memory_calls))
        closed(active, [replica.port], cfg, workdir, timed=False)
        after = rss_kib(replica.pid)
        status = httpx.get(
            f"{replica.base}/v1/status",
            headers={"authorization": f"Bearer {replica.ops}"},
            timeout=10,
        ).json()
        out["memory"] = {
            "rss_before_mib": before / 1024,
            "rss_after_mib": after / 1024,
            "per_1000_mib": (after - before) / 1024 / (cfg.memory_calls / 1000),
            "active_calls": status.get("active_calls"),
        }

        print(f"[{backend}] payments …", flush=True)
        calls = live_call_names(f"pay-{backend}", cfg.calls)
        closed(events.live_calls(calls), [replica.port], cfg, workdir, timed=False)
        baselines = {"forwarder": forwarder_port, "floor": floor_port}
        out.update(paired_payments(cfg, site, calls, replica, baselines, pbx_port, workdir))
        print(
            f"[{backend}] start p99 {out['payments']['start'].get('p99')} ms, "
            f"failed {out['payments']['start']['failed']}+{out['payments']['end']['failed']}",
            flush=True,
        )
        print(f"[{backend}] payments with webhooks …", flush=True)
        site.settle()
        out["mixed"] = measure_mixed(events, replica, cfg, pbx_port, workdir, backend)
        print(
            f"[{backend}] with webhooks: start p99 {out['mixed']['start'].get('p99')} ms, "
            f"{out['mixed']['ingest_rate']:.0f} events/s",
            flush=True,
        )
        out["settled"] = site.settled
    return out


def run_scaleout(
    cfg: Config, workdir: Path, secret: str, pbx_port: int, guess: float
) -> dict[str, Any]:
    events = Events(secret)
    out: dict[str, Any] = {}
    with ExitStack() as stack:
        url = stack.enter_context(scratch_database(POSTGRES))
        site = Site(workdir, url, secret, pbx_port)
        a = stack.enter_context(site.replica("replica-a"))
        b = stack.enter_context(site.replica("replica-b"))
        print("[scale-out] priming the database …", flush=True)
        out["primed_rate"] = prime(events, site, [a.port, b.port], cfg, workdir, guess)
        print("[scale-out] ingest on two replicas …", flush=True)
        out["ingest"] = measure_ingest(events, [a.port, b.port], cfg, workdir, "two", guess)
        print("[scale-out] identical starts on both replicas …", flush=True)
        calls = live_call_names("scale", cfg.calls)
        closed(events.live_calls(calls), [a.port, b.port], cfg, workdir, timed=False)
        schedule = payment_schedule(cfg, calls, ["a", "b"], a.ivr, both=True)
        site.settle()
        out["payments"] = measure_payments(schedule, {"a": a.port, "b": b.port}, pbx_port, workdir)
    return out


# ---- report ----------------------------------------------------------------------------------


def _ms(summary: dict[str, Any], key: str) -> str:
    value = summary.get(key)
    return "—" if value is None else f"{value:.1f}"


def _ratio(result: dict[str, Any], over: str, under: str) -> str:
    ratio = f"{result[over]['start']['p99'] / result[under]['start']['p99']:.2f}"
    interval = result.get("intervals", {}).get(f"{over}/{under}")
    return ratio if interval is None else f"{ratio} ({interval[0]:.2f}–{interval[1]:.2f})"


def _start_rounds(row: Any, per: list[dict[str, Any]]) -> None:
    """recgate's and the forwarder's start p99 in each payment round."""

    def ms(value: float | None) -> str:
        return "—" if value is None else f"{value:.1f}"

    row(
        "start p99 by round, recgate / forwarder ms (the first: most calls' first payment)",
        [
            ", ".join(
                f"{ms(a)} / {ms(b)}"
                for a, b in zip(
                    r["payments"]["start_p99_rounds"],
                    r["forwarder"]["start_p99_rounds"],
                    strict=True,
                )
            )
            for r in per
        ],
        "",
    )


def report(results: dict[str, Any], cfg: Config, label: str, command: str) -> tuple[str, str]:
    rows = [
        "| measure | " + " | ".join(results["backends"]) + " | target |",
        "|---|" + "---:|" * len(results["backends"]) + "---|",
    ]

    def row(name: str, cells: list[str], target: str) -> None:
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {target} |")

    per = [results[b] for b in results["backends"]]
    row("ingest, events/s", [f"{r['ingest']['rate']:.0f}" for r in per], "")
    row(
        "ingest ÷ bare FastAPI endpoint",
        [f"{r['ingest']['rate'] / r['bare']['rate']:.2f}" for r in per],
        "≥ 0.40",
    )
    row(
        "the same, round by round",
        [
            ", ".join(
                f"{a['rate'] / b['rate']:.2f}"
                for a, b in zip(r["ingest"]["rounds"], r["bare"]["rounds"], strict=True)
            )
            for r in per
        ],
        "",
    )
    row(
        "payment start, added p50 / p99 ms",
        [
            f"{_ms(r['payments']['start'], 'p50')} / {_ms(r['payments']['start'], 'p99')}"
            for r in per
        ],
        "",
    )
    # Start p99 of one over another's, with its 95% interval (ratio_interval).
    names = {
        ("payments", "forwarder"): ("payment start p99 ÷ forwarder p99 (95% interval)", "≤ 2"),
        ("floor", "forwarder"): (
            "floor (claim, PBX call, committed answer): start p99 ÷ forwarder p99",
            "",
        ),
        ("payments", "floor"): ("payment start p99 ÷ floor p99", ""),
    }
    for over, under in RATIOS:
        name, target = names[(over, under)]
        row(name, [_ratio(r, over, under) for r in per], target)
        if (over, under) == RATIOS[0]:
            _start_rounds(row, per)
    row(
        "payment end, added p50 / p99 ms",
        [f"{_ms(r['payments']['end'], 'p50')} / {_ms(r['payments']['end'], 'p99')}" for r in per],
        "",
    )
    row(
        "failed starts + ends",
        [f"{r['payments']['start']['failed']} + {r['payments']['end']['failed']}" for r in per],
        "0",
    )
    mixed = [r.get("mixed") for r in per]
    if all(mixed):
        connections = next(m["connections"] for m in mixed if m is not None)
        row(
            f"with webhooks on {connections} connections: start p50 / p99 ms, events/s",
            [
                f"{_ms(m['start'], 'p50')} / {_ms(m['start'], 'p99')}, {m['ingest_rate']:.0f}"
                for m in mixed
                if m is not None
            ],
            "",
        )
        row(
            "failed starts + ends with webhooks",
            [f"{m['start']['failed']} + {m['end']['failed']}" for m in mixed if m is not None],
            "0",
        )
    row(
        "memory per 1,000 active calls, MiB",
        [f"{r['memory']['per_1000_mib']:.1f}" for r in per],
        "",
    )
    logged = [r.get("ingest_logged") for r in per]
    if any(logged):
        row(
            "ingest with a JSON log line per request ÷ without",
            [
                f"{x['rate'] / r['ingest']['rate']:.2f}" if x else "—"
                for x, r in zip(logged, per, strict=True)
            ],
            "",
        )
    table = "\n".join(rows)

    def starts(name: str, rounds: str) -> str:
        """A baseline's start p50 / p99 and failures, per backend."""
        return "; ".join(
            f"{b}{rounds} {_ms(results[b][name]['start'], 'p50')} / "
            f"{_ms(results[b][name]['start'], 'p99')} ms "
            f"({results[b][name]['start']['failed']} failed)"
            for b in results["backends"]
        )

    forwarded, floor = starts("forwarder", " rounds"), starts("floor", "")
    bare = "; ".join(f"{b} rounds {results[b]['bare']['rate']:.0f}" for b in results["backends"])
    lines = [
        f"Baselines in the same run, in the rounds alternating with recgate's: bare FastAPI "
        f"endpoint events/s: {bare}; minimal forwarder payment start p50 / p99: {forwarded}; "
        f"the floor (`floor_app` in bench/baselines.py) start p50 / p99: {floor}.",
    ]
    settled = [b for b in results["backends"] if results[b].get("settled")]
    if settled:
        lines.append(
            f"{', '.join(settled)}: the server's autovacuum is off, so the benchmark ran "
            f"`VACUUM ANALYZE` before each measured round of recgate's, as autovacuum would "
            f"have analysed the growing tables (bench/support.py, docs/benchmarks.md)."
        )
    scale = results.get("scaleout")
    if scale:
        one = results["postgres"]["ingest"]["rate"]
        s0, s1 = scale["payments"]["start-0"], scale["payments"]["start-1"]
        lines.append(
            f"Scale-out, two replicas on PostgreSQL: ingest {scale['ingest']['rate']:.0f} events/s "
            f"({scale['ingest']['rate'] / one:.2f}× one replica, on the same 2 cores); every "
            f"start sent to both replicas at once: p99 {_ms(s0, 'p99')} / {_ms(s1, 'p99')} ms, "
            f"failed {s0['failed']} + {s1['failed']} (ends {scale['payments']['end']['failed']}), "
            f"same segment on both {scale['payments'].get('same_segment')} of {cfg.payments}, "
            f"PBX commands {scale['payments']['pbx']['n']} for {cfg.payments} payments."
        )
    summary = f"{label}\n\n{table}\n\n" + "\n\n".join(lines)
    detail = (
        f"# Gate under load\n\n- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n"
        f"- Command: `{command}`\n- {label}\n- Machine: {platform.processor() or platform.machine()}, "
        f"nproc {os.cpu_count()}, {platform.platform()}, Python {platform.python_version()}\n"
        f"- Ingest: each new database primed first ({PRIME_S:g} s of webhooks, unmeasured, "
        f"then settled); {cfg.connections} connections, {INGEST_ROUNDS} rounds alternating with the "
        f"bare endpoint's, each {cfg.duration / INGEST_ROUNDS:.3g} s measured after a warm-up "
        f"({cfg.warmup:g} s in the first round, {min(cfg.warmup, 1.0):g} s after); the "
        f"request-log row and the two replicas' ingest are single {cfg.duration:g} s runs after "
        f"those rounds, set against their pooled figure. Payments: {cfg.calls} live calls, "
        f"{cfg.paired} payments to each of recgate, the forwarder and the floor in "
        f"{PAYMENT_ROUNDS} rounds ({cfg.payments} with webhooks and on two replicas), at "
        f"{cfg.rate:g}/s, each ended {cfg.hold:g} s after its start.\n\n"
        f"{summary}\n\n## Raw figures\n\n```json\n{json.dumps(results, indent=1)}\n```\n"
    )
    return summary, detail


def write_readme(summary: str) -> None:
    text = README.read_text()
    block = f"{MARK_BEGIN}\n{summary}\n{MARK_END}"
    if MARK_BEGIN in text:
        text = re.sub(
            re.escape(MARK_BEGIN) + r".*?" + re.escape(MARK_END), lambda _: block, text, flags=re.S
        )
    else:
        text = text.rstrip() + "\n\n## Gate under load (latest run)\n\n" + block + "\n"
    README.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--quick", action="store_true", help="short runs, to try the benchmark")
    parser.add_argument("--no-scaleout", action="store_true")
    parser.add_argument("--label", default=None, help="what was measured (default: git commit)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-readme", action="store_true", help="leave bench/README.md as it is")
    args = parser.parse_args()
    cfg = Config()
    if args.quick:
        cfg = Config(duration=4, warmup=1, payments=100, paired=150, memory_calls=500)
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    label = args.label or f"recgate at {commit}"
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    results: dict[str, Any] = {"backends": backends}
    with tempfile.TemporaryDirectory(prefix="recgate-gate-load-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        pbx_port = free_port()
        stack.enter_context(
            process(
                [sys.executable, str(BENCH / "baselines.py"), "pbx", str(pbx_port)],
                dict(os.environ),
                workdir,
                "pbx",
                f"http://127.0.0.1:{pbx_port}/stats",
            )
        )
        # The baselines serve the whole run: their rounds alternate with recgate's.
        bare_port = free_port()
        stack.enter_context(uvicorn_app("baselines:bare_app", bare_port, workdir, "bare", {}))
        forwarder_port = free_port()
        env = {"BENCH_PBX_URL": f"http://127.0.0.1:{pbx_port}"}
        stack.enter_context(
            uvicorn_app("baselines:forwarder_app", forwarder_port, workdir, "forwarder", env)
        )
        # Calls prepared for this rate at first; each run of the bare endpoint raises it.
        guess = 4000.0
        for backend in backends:
            results[backend] = run_backend(
                backend, cfg, workdir, secret, pbx_port, forwarder_port, bare_port, guess
            )
            guess = max(guess, results[backend]["bare"]["rate"])
        if "postgres" in backends and not args.no_scaleout:
            results["scaleout"] = run_scaleout(cfg, workdir, secret, pbx_port, guess)
    command = "python bench/gate_load.py " + " ".join(sys.argv[1:])
    summary, detail = report(results, cfg, label, command.strip())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(detail)
    if not args.no_readme:
        write_readme(summary)
    print(summary)


if __name__ == "__main__":
    main()
