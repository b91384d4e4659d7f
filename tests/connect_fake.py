"""Amazon Connect's control API on loopback, for boto3 pointed at it with ``endpoint_url``.

moto (5.2) implements Connect instances but not ``SuspendContactRecording`` or
``ResumeContactRecording``, so this is a real HTTP server on 127.0.0.1 built from botocore's own
service model (``connect`` 2017-08-08): each request is routed by the operation's ``http``
method and ``requestUri``, must carry a SigV4 ``Authorization`` for service ``connect`` in the
expected region, and its parameters (JSON body plus URI labels) are checked with botocore's
``ParamValidator`` against the operation's input shape: required members, types, lengths and
enums. A request that does not validate is answered ``400 ValidationException`` *and* kept in
``invalid``, which the tests assert empty: a wrong request fails the test even if recgate
happened to survive the error.

Answers have the documented shapes: ``200`` with an empty body for suspend and resume,
``{"Contact": {...}}`` and ``{"Instance": {...}}`` for the describes (timestamps as epoch
seconds, as rest-json sends them), and errors as ``x-amzn-ErrorType`` plus a JSON body with
``__type`` and ``message``. What a test scripts in ``script`` is answered first: an error code
(with its documented HTTP status) or ``HANG`` (no answer until the fake stops).

Its notion of Connect: contacts are registered by the test (``add_contact``); a suspend or resume
names a registered contact and its ``InitialContactId``, else ``ResourceNotFoundException`` (the
fake's assumption: Connect's answer to a mismatched initial id is not documented).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import botocore.session  # type: ignore[import-untyped]
from botocore.validate import ParamValidator  # type: ignore[import-untyped]

OPERATIONS: Final = (
    "SuspendContactRecording",
    "ResumeContactRecording",
    "DescribeContact",
    "DescribeInstance",
)
# The documented HTTP status of each error (API reference, "Errors" and "Common errors").
STATUS: Final = {
    "InvalidRequestException": 400,
    "InvalidParameterException": 400,
    "ValidationException": 400,
    "AccessDeniedException": 403,
    "ResourceNotFoundException": 404,
    "ThrottlingException": 429,
    "InternalServiceException": 500,
    "ServiceUnavailableException": 503,
}
HANG: Final = "HANG"
_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, SignedHeaders=(?P<signed>[^,]+), Signature=[0-9a-f]{64}$"
)


@dataclass
class Received:
    """One request the fake took: its operation, its parameters, the key that signed it."""

    operation: str
    params: dict[str, Any]
    access_key: str
    content_type: str | None


@dataclass
class Contact:
    initial: str
    ended: bool = False
    previous: str | None = None


@dataclass
class FakeConnect:
    region: str
    instance_id: str
    instance_status: str = "ACTIVE"
    contacts: dict[str, Contact] = field(default_factory=dict)
    suspended: set[str] = field(default_factory=set)
    received: list[Received] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    script: dict[str, deque[str]] = field(default_factory=dict)
    url: str = ""

    def __post_init__(self) -> None:
        model = botocore.session.get_session().get_service_model("connect")
        self._routes: list[tuple[str, re.Pattern[str], Any]] = []
        for name in OPERATIONS:
            operation = model.operation_model(name)
            # "/contacts/{InstanceId}/{ContactId}" -> a pattern with one group per URI label.
            pattern = re.sub(
                r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(operation.http["requestUri"])
            )
            self._routes.append((operation.http["method"], re.compile(pattern + "$"), operation))
        self._lock = threading.Lock()
        self._release = threading.Event()

    # ---- what tests use -------------------------------------------------------------------

    def add_contact(self, contact: str, initial: str | None = None, *, ended: bool = False) -> None:
        """A contact Connect knows; ``initial`` is its conversation's first (itself if None)."""
        self.contacts[contact] = Contact(
            initial or contact, ended, None if initial is None else initial
        )

    def fail(self, operation: str, *answers: str) -> None:
        """Answer the next requests for ``operation`` with these (error codes or HANG)."""
        self.script.setdefault(operation, deque()).extend(answers)

    def requests(self, operation: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r.params for r in self.received if r.operation == operation]

    def operations(self) -> list[str]:
        with self._lock:
            return [r.operation for r in self.received]

    # ---- the server -----------------------------------------------------------------------

    def handle(
        self, method: str, path: str, headers: Any, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        for route_method, pattern, operation in self._routes:
            found = pattern.match(path)
            if route_method == method and found:
                break
        else:
            return self._error("UnknownOperationException", 404, f"{method} {path}")
        name = operation.name
        auth = _AUTH.match(headers.get("authorization", ""))
        if auth is None or auth["service"] != "connect" or auth["region"] != self.region:
            self._invalid(f"{name}: no SigV4 Authorization for connect in {self.region}")
            return self._error("InvalidSignatureException", 403, "bad signature")
        if "x-amz-date" not in auth["signed"].split(";"):
            self._invalid(f"{name}: x-amz-date is not signed")
        params: dict[str, Any] = {k: unquote(v) for k, v in found.groupdict().items()}
        content_type = headers.get("content-type")
        if body:
            try:
                decoded = json.loads(body)
            except ValueError:
                self._invalid(f"{name}: body is not JSON")
                return self._error("SerializationException", 400, "body is not JSON")
            if not isinstance(decoded, dict) or set(decoded) & set(params):
                self._invalid(f"{name}: body is not an object of body members")
                return self._error("SerializationException", 400, "bad body")
            params.update(decoded)
        report = ParamValidator().validate(params, operation.input_shape)
        if report.has_errors():
            self._invalid(f"{name}: {report.generate_report()}")
            return self._error("ValidationException", 400, "request does not validate")
        with self._lock:
            self.received.append(Received(name, params, auth["key"], content_type))
            scripted = self.script.get(name)
            answer = scripted.popleft() if scripted else None
        if answer == HANG:
            self._release.wait(30)
            return self._error("InternalServiceException", 500, "released")
        if answer is not None:
            return self._error(answer, STATUS.get(answer, 400), "scripted")
        answered: tuple[int, dict[str, str], bytes] = getattr(self, "_" + name)(params)
        return answered

    def _invalid(self, why: str) -> None:
        with self._lock:
            self.invalid.append(why)

    @staticmethod
    def _error(code: str, status: int, message: str) -> tuple[int, dict[str, str], bytes]:
        headers = {
            "x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/com.amazonaws.connect/",
            "content-type": "application/json",
        }
        return status, headers, json.dumps({"__type": code, "message": message}).encode()

    @staticmethod
    def _ok(body: dict[str, Any] | None = None) -> tuple[int, dict[str, str], bytes]:
        if body is None:  # "HTTP/1.1 200" with an empty body, as documented
            return 200, {}, b""
        return 200, {"content-type": "application/json"}, json.dumps(body).encode()

    def _recording(
        self, params: dict[str, Any], suspend: bool
    ) -> tuple[int, dict[str, str], bytes]:
        if params["InstanceId"] != self.instance_id:
            return self._error("ResourceNotFoundException", 404, "no such instance")
        contact = self.contacts.get(params["ContactId"])
        if contact is None or contact.ended or contact.initial != params["InitialContactId"]:
            return self._error("ResourceNotFoundException", 404, "no such contact")
        with self._lock:
            if suspend:
                self.suspended.add(params["ContactId"])
            else:
                self.suspended.discard(params["ContactId"])
        return self._ok()

    def _SuspendContactRecording(self, params: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        return self._recording(params, suspend=True)

    def _ResumeContactRecording(self, params: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        return self._recording(params, suspend=False)

    def _DescribeContact(self, params: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        contact = self.contacts.get(params["ContactId"])
        if params["InstanceId"] != self.instance_id or contact is None:
            return self._error("ResourceNotFoundException", 404, "no such contact")
        arn = f"arn:aws:connect:{self.region}:111122223333:instance/{self.instance_id}"
        body: dict[str, Any] = {
            "Arn": f"{arn}/contact/{params['ContactId']}",
            "Id": params["ContactId"],
            "InitialContactId": contact.initial,
            "Channel": "VOICE",
            "InitiationMethod": "INBOUND" if contact.previous is None else "TRANSFER",
            "InitiationTimestamp": time.time() - 60,
        }
        if contact.previous is not None:
            body["PreviousContactId"] = contact.previous
        if contact.ended:
            body["DisconnectTimestamp"] = time.time() - 1
        return self._ok({"Contact": body})

    def _DescribeInstance(self, params: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        if params["InstanceId"] != self.instance_id:
            return self._error("ResourceNotFoundException", 404, "no such instance")
        arn = f"arn:aws:connect:{self.region}:111122223333:instance/{self.instance_id}"
        return self._ok(
            {
                "Instance": {
                    "Id": self.instance_id,
                    "Arn": arn,
                    "IdentityManagementType": "CONNECT_MANAGED",
                    "InstanceAlias": "council-contact-centre",
                    "CreatedTime": 1767225600.0,
                    "InstanceStatus": self.instance_status,
                    "InboundCallsEnabled": True,
                    "OutboundCallsEnabled": True,
                }
            }
        )

    def stop(self) -> None:
        self._release.set()


def _handler(fake: FakeConnect) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, extra, payload = fake.handle(
                self.command, urlsplit(self.path).path, headers, body
            )
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("x-amzn-RequestId", "00000000-0000-4000-8000-000000000000")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def running(region: str, instance_id: str) -> Iterator[FakeConnect]:
    """A fake Connect listening on 127.0.0.1 (a free port) until the block ends."""
    fake = FakeConnect(region, instance_id)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="fake-connect", daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.stop()
        server.shutdown()
        server.server_close()
        thread.join(5)
