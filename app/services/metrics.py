"""Every metric recgate exports (SPEC §3.5, docs/operations.md), on the Prometheus client.

Each app has its own :class:`~prometheus_client.CollectorRegistry`, so several apps in one
process (the tests) never share or collide. Labels are low-cardinality only (provider, type,
action, outcome, kind, route template, check name); never a call id or a raw path.

The counters and histograms keep the call shape the services use (``inc(n, **labels)``,
``observe(seconds, **labels)``). The gauges that count rows are read from the database when
``/metrics`` is scraped (:meth:`Metrics.set_database_gauges`); the readiness gauges are set
whenever readiness is computed (:meth:`Metrics.set_readiness`).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import disable_created_metrics as _disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from app.domain.states import ExposureKind

# ``*_created`` series double the series count and no dashboard or rule uses them.
_disable_created_metrics()  # type: ignore[no-untyped-call]

# The outcomes a provider command is counted under (app/services/gating.py), pre-created so
# every series exists from the first scrape and increase() sees the first failure.
PAUSE_COMMAND_OUTCOMES = ("ok", "gone", "timeout", "unavailable", "rejected")
PAUSE_COMMAND_ACTIONS = ("pause", "resume")

# The payment start answers in tens of milliseconds; the pause deadline is seconds.
_FAST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_HTTP_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# Gauges read from the database on scrape: name → help.
DATABASE_GAUGES: Mapping[str, str] = {
    "recgate_active_calls": "Calls in progress.",
    "recgate_open_payment_segments": "Payment segments not yet closed.",
    "recgate_retention_overdue": "Recordings past their media deadline and not held.",
    "recgate_overlong_payment_segments": (
        "Payment segments not closed that opened more than RECGATE_MAX_PAUSE_S ago."
    ),
    "recgate_stuck_resume_segments": (
        "Payment segments whose end was asked more than 60 s ago and that are still not closed."
    ),
}


def version() -> str:
    """recgate's installed version ("unknown" when run from a tree that is not installed)."""
    try:
        return importlib.metadata.version("recgate")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class LabelledCounter:
    """A counter incremented as ``inc(amount, **labels)``."""

    def __init__(
        self, registry: CollectorRegistry, name: str, help_: str, labels: Sequence[str] = ()
    ) -> None:
        # prometheus_client adds the ``_total`` suffix itself.
        self.counter = Counter(
            name.removesuffix("_total"), help_, labelnames=tuple(labels), registry=registry
        )
        self.labels = tuple(labels)
        self._children: dict[tuple[str, ...], Counter] = {}

    def child(self, **labels: str) -> Counter:
        """The series for ``labels`` (created at 0 if new)."""
        key = tuple([labels[name] for name in self.labels])
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = self.counter.labels(*map(str, key))
        return found

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        if not self.labels:
            self.counter.inc(amount)
            return
        self.child(**labels).inc(amount)


class LabelledHistogram:
    """A histogram observed as ``observe(value, **labels)``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        name: str,
        help_: str,
        buckets: Sequence[float],
        labels: Sequence[str] = (),
    ) -> None:
        self.histogram = Histogram(
            name, help_, labelnames=tuple(labels), buckets=tuple(buckets), registry=registry
        )
        self.labels = tuple(labels)
        self._children: dict[tuple[str, ...], Histogram] = {}

    def child(self, **labels: str) -> Histogram:
        key = tuple([labels[name] for name in self.labels])
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = self.histogram.labels(*map(str, key))
        return found

    def observe(self, value: float, **labels: str) -> None:
        if not self.labels:
            self.histogram.observe(value)
            return
        self.child(**labels).observe(value)


class _DatabaseGauges(Collector):
    """The row counts of the last scrape; nothing when the database could not be read (a stale
    count would read as current)."""

    def __init__(self) -> None:
        self.values: dict[str, float] | None = None

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(name, help_) for name, help_ in DATABASE_GAUGES.items()]

    def collect(self) -> Iterator[Metric]:
        values = self.values
        if values is None:
            return
        for name, help_ in DATABASE_GAUGES.items():
            if name in values:
                yield GaugeMetricFamily(name, help_, value=values[name])


class Metrics:
    """Every metric recgate exports (SPEC §3.5), in one registry per app."""

    def __init__(self, providers: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.webhook_events = LabelledCounter(
            r,
            "recgate_webhook_events_total",
            "Webhook events received, by provider, type and outcome.",
            ("provider", "type", "outcome"),
        )
        self.pause_commands = LabelledCounter(
            r,
            "recgate_pause_commands_total",
            "Pause/resume commands sent to providers, by outcome.",
            ("provider", "action", "outcome"),
        )
        self.exposures = LabelledCounter(
            r, "recgate_exposures_total", "Exposures recorded, by kind.", ("kind",)
        )
        self.retention_deleted = LabelledCounter(
            r, "recgate_retention_deleted_total", "Recordings deleted by the retention sweep."
        )
        self.pause_confirm_seconds = LabelledHistogram(
            r,
            "recgate_pause_confirm_seconds",
            "Time from payment start to every recording confirmed paused.",
            _FAST_BUCKETS,
        )
        self.provider_command_seconds = LabelledHistogram(
            r,
            "recgate_provider_command_duration_seconds",
            "One pause/resume command's round trip to the provider, by provider and action.",
            _FAST_BUCKETS,
            ("provider", "action"),
        )
        self.http_request_seconds = LabelledHistogram(
            r,
            "recgate_http_request_duration_seconds",
            "HTTP requests, by method, route template ('unmatched' when no route) and status.",
            _HTTP_BUCKETS,
            ("method", "route", "status"),
        )
        self.ready = Gauge(
            "recgate_ready",
            "1 while /readyz answers pass or warn, 0 when it answers fail.",
            registry=r,
        )
        self.readiness_check_failed = Gauge(
            "recgate_readiness_check_failed",
            "1 while the named readiness check fails, else 0.",
            labelnames=("check",),
            registry=r,
        )
        self.build_info = Gauge(
            "recgate_build_info", "Always 1; the version is the label.", ("version",), registry=r
        )
        self.build_info.labels(version()).set(1)
        self._database = _DatabaseGauges()
        r.register(self._database)
        # Present from the first scrape, so rate() and increase() see the first event.
        for kind in ExposureKind:
            self.exposures.child(kind=kind.value)
        for provider in providers:
            for action in PAUSE_COMMAND_ACTIONS:
                self.provider_command_seconds.child(provider=provider, action=action)
                for outcome in PAUSE_COMMAND_OUTCOMES:
                    self.pause_commands.child(provider=provider, action=action, outcome=outcome)

    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        """One HTTP request (the request middleware calls this once per request, with the
        method already folded to a known one or "other")."""
        self.http_request_seconds.observe(seconds, method=method, route=route, status=str(status))

    def set_readiness(self, ready: bool, failed: Mapping[str, bool]) -> None:
        """The readiness gauges: ``failed`` maps each check's name to whether it fails."""
        self.ready.set(1 if ready else 0)
        for check, is_failed in failed.items():
            self.readiness_check_failed.labels(check).set(1 if is_failed else 0)

    def set_database_gauges(self, values: Mapping[str, float] | None) -> None:
        """The row counts read for this scrape; None drops them (the database is unreadable)."""
        self._database.values = None if values is None else dict(values)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition for a scraper's ``Accept`` header: (body, content type)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type
