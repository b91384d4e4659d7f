"""A small Prometheus registry: counters and histograms kept in-process, rendered as text.

Labels are low-cardinality only (provider, type, action, outcome); never call ids.
"""

from __future__ import annotations

import math
from collections import defaultdict

Labels = tuple[tuple[str, str], ...]


def _fmt_labels(labels: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
    items = labels + extra
    if not items:
        return ""
    escaped = (
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in items
    )
    return "{" + ",".join(escaped) + "}"


class Counter:
    def __init__(self, name: str, help_: str) -> None:
        self.name, self.help = name, help_
        self.values: dict[Labels, float] = defaultdict(float)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self.values[tuple(sorted(labels.items()))] += amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        lines += [f"{self.name}{_fmt_labels(k)} {v:g}" for k, v in sorted(self.values.items())]
        if not self.values:
            lines.append(f"{self.name} 0")  # present from the first scrape, so rate() works
        return lines


class Histogram:
    def __init__(self, name: str, help_: str, buckets: tuple[float, ...]) -> None:
        self.name, self.help, self.buckets = name, help_, buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.sum += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.counts[-1] += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for bound, count in zip((*self.buckets, math.inf), self.counts, strict=True):
            le = "+Inf" if bound == math.inf else f"{bound:g}"
            lines.append(f'{self.name}_bucket{{le="{le}"}} {count}')
        lines += [f"{self.name}_sum {self.sum:g}", f"{self.name}_count {self.counts[-1]}"]
        return lines


class Metrics:
    """Every metric recgate exports (SPEC §3.5). Gauges are read from the database on scrape."""

    def __init__(self) -> None:
        self.webhook_events = Counter(
            "recgate_webhook_events_total",
            "Webhook events received, by provider, type and outcome.",
        )
        self.pause_commands = Counter(
            "recgate_pause_commands_total", "Pause/resume commands sent to providers, by outcome."
        )
        self.pause_confirm_seconds = Histogram(
            "recgate_pause_confirm_seconds",
            "Time from payment start to every recording confirmed paused.",
            (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0),
        )
        self.exposures = Counter("recgate_exposures_total", "Exposures recorded, by kind.")
        self.retention_deleted = Counter(
            "recgate_retention_deleted_total", "Recordings deleted by the retention sweep."
        )

    def render(self, gauges: dict[str, tuple[str, float]]) -> str:
        lines: list[str] = []
        for metric in (
            self.webhook_events,
            self.pause_commands,
            self.exposures,
            self.retention_deleted,
        ):
            lines += metric.render()
        lines += self.pause_confirm_seconds.render()
        for name, (help_, value) in gauges.items():
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} gauge", f"{name} {value:g}"]
        return "\n".join(lines) + "\n"
