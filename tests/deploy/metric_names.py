"""Metric names: those a PromQL expression reads, and the series a /metrics page exports."""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

# Removed before looking for names, in this order: string literals (label values, which may
# contain anything), Grafana variables ($__rate_interval, ${DS_PROMETHEUS}), label matchers,
# range and subquery durations, and the label lists of by/without/on/ignoring/group_*.
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_VARIABLES = re.compile(r"\$\{[^}]*\}|\$\w+")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
# An identifier not glued to a number (5m, 1e3, 0.99) or another word.
_IDENTIFIER = re.compile(r"(?<![\w.])[A-Za-z_:][\w:]*(?![\w(])(?!\s*\()")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "offset", "bool", "inf", "nan", "start", "end", "atan2"}
)

# The series each metric type puts in Prometheus, by suffix on the family's name.
_SERIES_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}
_BASE_SUFFIXES = ("_bucket", "_sum", "_count", "_created")


def names_in_expression(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not its functions, labels or keywords)."""
    text = _STRINGS.sub(" ", expr)
    text = _VARIABLES.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _LABEL_LISTS.sub(" ", text)
    return {name for name in _IDENTIFIER.findall(text) if name.lower() not in _KEYWORDS}


def exported_series_names(exposition: str) -> set[str]:
    """Every series name a Prometheus scrape of this text can store, including the series of
    families declared with no sample yet (a labelled counter before its first increment)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in _SERIES_SUFFIXES.get(family.type, ("",)))
    return names


def base_name(series: str) -> str:
    """A histogram's or summary's series name without its suffix: ``x_bucket`` -> ``x``."""
    for suffix in _BASE_SUFFIXES:
        if series.endswith(suffix):
            return series.removesuffix(suffix)
    return series
