"""Log lines never hold card data (SPEC §3.6), and the JSON format is valid JSON."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from app.logging import JsonFormatter, ScrubbingFilter

VISA = "4111111111111111"
AMEX = "378282246310005"


@dataclass
class Captured:
    logger: logging.Logger
    stream: io.StringIO

    @property
    def text(self) -> str:
        return self.stream.getvalue()


def _capture(formatter: logging.Formatter) -> Iterator[Captured]:
    logger = logging.getLogger(f"recgate.test.{uuid.uuid4().hex}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # keep pytest's own capture out of it; only our handler sees records
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ScrubbingFilter())
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    try:
        yield Captured(logger, stream)
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def plain() -> Iterator[Captured]:
    yield from _capture(logging.Formatter("%(levelname)s %(name)s: %(message)s"))


@pytest.fixture
def as_json() -> Iterator[Captured]:
    yield from _capture(JsonFormatter())


def json_lines(text: str) -> list[dict[str, object]]:
    lines = [line for line in text.splitlines() if line]
    try:
        return [json.loads(line) for line in lines]
    except json.JSONDecodeError as exc:  # pragma: no cover - the failure message is the point
        pytest.fail(f"JsonFormatter wrote a line that is not JSON ({exc}): {text!r}")


# ---- card data in messages ------------------------------------------------------------------


def test_card_number_and_security_code_in_args_are_not_logged(plain: Captured) -> None:
    plain.logger.warning("caller said %s, then %s", f"card {VISA}", "cvv 123")
    assert VISA not in plain.text, f"card number reached the log: {plain.text!r}"
    assert "cvv 123" not in plain.text, f"security code reached the log: {plain.text!r}"
    assert "[REDACTED]" in plain.text and "caller said" in plain.text, (
        f"message mangled: {plain.text!r}"
    )


def test_card_number_in_the_format_string_itself_is_not_logged(plain: Captured) -> None:
    plain.logger.info("raw body: card 4111-1111-1111-1111 cvc: 4567")
    assert "4111" not in plain.text and "4567" not in plain.text, (
        f"card data logged: {plain.text!r}"
    )


def test_card_data_in_mapping_and_non_string_args_is_not_logged(plain: Captured) -> None:
    plain.logger.info(
        "payload %(body)s amount %(amount)d",
        {"body": {"pan": int(AMEX), "cvv": "cvv 999"}, "amount": 12},
    )
    plain.logger.info("number %d", int(VISA))
    assert AMEX not in plain.text and VISA not in plain.text, f"card number logged: {plain.text!r}"
    # The logger's own (random) name is left out: it may hold "999" by chance.
    logged = plain.text.replace(plain.logger.name, "")
    assert "999" not in logged, f"security code logged: {plain.text!r}"
    assert "amount 12" in plain.text, "ordinary values must still be logged"


def test_ordinary_message_is_logged_unchanged(plain: Captured) -> None:
    plain.logger.info("call %s from %s lasted %d s", "c-123", "+441632960001", 312)
    assert (
        plain.text.strip()
        == "INFO " + plain.logger.name + ": call c-123 from +441632960001 lasted 312 s"
    )


def test_args_are_dropped_after_scrubbing() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "card %s", (VISA,), None)
    assert ScrubbingFilter().filter(record) is True, "the filter scrubs; it never drops a line"
    assert record.args is None, "unscrubbed args left on the record for the next handler"
    assert VISA not in record.getMessage()


# ---- exceptions -----------------------------------------------------------------------------


def test_card_data_in_exception_text_is_not_logged(plain: Captured) -> None:
    try:
        raise ValueError(f"could not parse card {VISA} with cvv 123")
    except ValueError:
        plain.logger.exception("ingest failed")
    assert "ValueError" in plain.text and "Traceback" in plain.text, (
        f"traceback missing: {plain.text!r}"
    )
    assert VISA not in plain.text, f"card number in the traceback reached the log: {plain.text!r}"
    assert "cvv 123" not in plain.text, (
        f"security code in the traceback reached the log: {plain.text!r}"
    )


def test_exception_already_formatted_by_another_handler_is_still_scrubbed(plain: Captured) -> None:
    try:
        raise RuntimeError(f"pan={VISA}")
    except RuntimeError as exc:
        record = plain.logger.makeRecord(
            plain.logger.name,
            logging.ERROR,
            __file__,
            1,
            "boom",
            (),
            (type(exc), exc, exc.__traceback__),
        )
    record.exc_text = logging.Formatter().formatException(record.exc_info)  # type: ignore[arg-type]
    plain.logger.handle(record)
    assert VISA not in plain.text, (
        f"cached, unscrubbed exception text reached the log: {plain.text!r}"
    )


def test_exception_passed_with_exc_info_is_scrubbed(plain: Captured) -> None:
    error = KeyError(f"cvc: 4567 and {AMEX}")
    plain.logger.error("background task failed", exc_info=error)
    assert "4567" not in plain.text and AMEX not in plain.text, (
        f"exception card data logged: {plain.text!r}"
    )


def test_badly_formatted_log_call_does_not_raise_and_is_still_scrubbed(plain: Captured) -> None:
    # The standard library never raises at a broken log call's site; the filter must not either.
    plain.logger.info("two placeholders %s %s", f"card {VISA}")
    assert "two placeholders" in plain.text, (
        f"the broken line should still be logged: {plain.text!r}"
    )
    assert VISA not in plain.text, f"card data logged by the fallback path: {plain.text!r}"


# ---- JSON format ----------------------------------------------------------------------------


def test_json_formatter_writes_one_valid_json_object_per_line(as_json: Captured) -> None:
    as_json.logger.info('quote " backslash \\ newline\nand unicode £ é %s', "c-1")
    as_json.logger.warning("second")
    entries = json_lines(as_json.text)
    assert len(entries) == 2, f"expected one JSON line per record, got {as_json.text!r}"
    first = entries[0]
    assert first["message"] == 'quote " backslash \\ newline\nand unicode £ é c-1'
    assert first["level"] == "info" and first["logger"] == as_json.logger.name
    assert str(first["time"]).endswith("+00:00"), f"time must be UTC ISO 8601: {first['time']}"
    assert entries[1]["level"] == "warning"


def test_json_formatter_scrubbed_message_and_error(as_json: Captured) -> None:
    try:
        raise ValueError(f"bad card {VISA}")
    except ValueError:
        as_json.logger.exception("failed for %s", "cvv 123")
    (entry,) = json_lines(as_json.text)
    assert VISA not in as_json.text and "cvv 123" not in as_json.text, (
        f"card data logged: {as_json.text!r}"
    )
    assert "ValueError" in str(entry.get("error", "")), (
        f"exception missing from JSON entry: {entry}"
    )


def test_json_formatter_alone_keeps_the_exception() -> None:
    # Without the filter (e.g. another handler reuses the formatter) the traceback must not vanish.
    try:
        raise ValueError("boom")
    except ValueError as exc:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "failed", None, (type(exc), exc, exc.__traceback__)
        )
    entry = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in str(entry.get("error", "")), f"exception dropped: {entry}"


@pytest.mark.parametrize(
    "secret",
    [
        "Bearer rg_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
        "rg_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "Basic QUMxMjM0NTY3ODk6c2VjcmV0dG9rZW4=",
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    ],
)
def test_credentials_never_reach_a_log_line(secret: str) -> None:
    from app.logging import scrub_log_text

    line = scrub_log_text(f"request failed with header {secret} attached")
    assert "[SECRET]" in line, f"{secret!r} was not recognised"
    for part in secret.split()[-1:]:
        assert part not in line, f"credential {part!r} leaked into {line!r}"
