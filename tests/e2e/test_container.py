"""The container image, built and run as a site runs it: podman builds the image from the
Dockerfile, a one-shot container migrates a SQLite database on a bind mount, and the service,
started on the host's network with production settings, answers /livez and /readyz.

No container registry is reachable here, so the base image is built from Debian packages by
scripts/build-base-image.sh (once; it is kept). RECGATE_TEST_BASE_IMAGE=python:3.11-slim builds
from the public image instead, where a registry can be reached. podman runs with
deploy/podman/containers.conf unless CONTAINERS_CONF names another.

Skips when podman is not installed, unless RECGATE_TEST_REQUIRE_CONTAINER is set (CI).
The first run takes about 100 s on 2 cores (base image, then the image's dependencies); later
runs reuse the base and podman's layer cache.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = REPO / "deploy" / "podman" / "containers.conf"
BUILD_BASE = REPO / "scripts" / "build-base-image.sh"
LOCAL_BASE = "localhost/recgate-base:bookworm"
IMAGE = "localhost/recgate:e2e"
APP_UID = 10001  # the image's `recgate` user (Dockerfile), who must own the data volume
INSTALL_HINT = "apt-get install -y podman runc mmdebstrap"

BASE_TIMEOUT_S = 300.0
BUILD_TIMEOUT_S = 600.0
MIGRATE_TIMEOUT_S = 120.0
START_TIMEOUT_S = 60.0
COMMAND_TIMEOUT_S = 60.0


def _require_or_skip(reason: str) -> None:
    if os.environ.get("RECGATE_TEST_REQUIRE_CONTAINER", "") not in ("", "0"):
        pytest.fail(f"{reason} ({INSTALL_HINT}); RECGATE_TEST_REQUIRE_CONTAINER is set")
    pytest.skip(f"{reason} ({INSTALL_HINT})")


def _podman_env() -> dict[str, str]:
    return {
        **os.environ,
        "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(CONTAINERS_CONF)),
    }


def _run(
    args: list[str], timeout: float, what: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a command with a deadline; on failure, say what failed and show the end of its output."""
    try:
        result = subprocess.run(
            args,
            env=_podman_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{what} took more than {timeout:.0f} s: {' '.join(args)}\n{_tail(exc.output)}")
    if check and result.returncode != 0:
        pytest.fail(
            f"{what} failed (exit {result.returncode}): {' '.join(args)}\n"
            f"{_tail(result.stdout)}\n{_tail(result.stderr)}"
        )
    return result


def _tail(text: str | bytes | None, lines: int = 40) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def _image_id(image: str) -> str | None:
    result = _run(
        ["podman", "image", "inspect", "--format", "{{.Id}}", image],
        COMMAND_TIMEOUT_S,
        "podman image inspect",
        check=False,
    )
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def _host_pip_index() -> str | None:
    """The index the host's pip installs from, when it is not PyPI: the build uses the same."""
    url = os.environ.get("PIP_INDEX_URL")
    if not url:
        found = subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", "global.index-url"],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
        url = found.stdout.strip() if found.returncode == 0 else ""
    return url or None


def _host_ca_bundle() -> Path | None:
    """The CA bundle the host's pip trusts (here, a proxy that re-signs TLS is among them)."""
    for candidate in (
        os.environ.get("PIP_CERT"),
        os.environ.get("SSL_CERT_FILE"),
        "/etc/ssl/certs/ca-certificates.crt",
    ):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _build_args(workdir: Path) -> list[str]:
    """Base image, index and CA bundle for `podman build`: mounted or passed, never kept."""
    base = os.environ.get("RECGATE_TEST_BASE_IMAGE", LOCAL_BASE)
    args = ["--build-arg", f"BASE_IMAGE={base}"]
    bundle = _host_ca_bundle()
    if bundle is not None:
        # Over the image's own bundle, read-only, for the build's RUN steps only.
        image_bundle = "/etc/ssl/certs/ca-certificates.crt"
        args += ["-v", f"{bundle}:{image_bundle}:ro", "--build-arg", f"PIP_CERT={image_bundle}"]
    index = _host_pip_index()
    if index is not None:
        if urlsplit(index).password is None:
            args += ["--build-arg", f"PIP_INDEX_URL={index}"]
        else:
            # Build arguments are recorded in the image history; credentials are mounted.
            pip_conf = workdir / "pip.conf"
            pip_conf.write_text(f"[global]\nindex-url = {index}\n")
            pip_conf.chmod(0o600)
            args += ["-v", f"{pip_conf}:/etc/pip.conf:ro"]
    return args


def _b64_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _own_for_app(directory: Path) -> None:
    """Hand the data directory to the image's user, as a site's volume would be."""
    if os.geteuid() == 0:
        os.chown(directory, APP_UID, APP_UID)
    else:  # rootless podman: the image's uid 10001 is a sub-uid of the caller
        _run(
            ["podman", "unshare", "chown", f"{APP_UID}:{APP_UID}", str(directory)],
            COMMAND_TIMEOUT_S,
            "podman unshare chown",
        )


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """recgate's image, built from the Dockerfile on the local (or given) base."""
    if shutil.which("podman") is None:
        _require_or_skip("podman is not installed")
    if "RECGATE_TEST_BASE_IMAGE" not in os.environ:
        if _image_id(LOCAL_BASE) is None and shutil.which("mmdebstrap") is None:
            _require_or_skip(f"mmdebstrap is not installed and there is no {LOCAL_BASE}")
        _run([str(BUILD_BASE)], BASE_TIMEOUT_S, "building the base image")
    previous = _image_id(IMAGE)
    workdir = tmp_path_factory.mktemp("build")
    _run(
        [
            "podman",
            "build",
            "--format",
            "docker",  # keeps HEALTHCHECK, which the OCI format drops
            "--network",
            "host",
            *_build_args(workdir),
            "--tag",
            IMAGE,
            str(REPO),
        ],
        BUILD_TIMEOUT_S,
        "podman build",
    )
    current = _image_id(IMAGE)
    if previous is not None and previous != current:
        # The image this build replaced: untagged now, and ~400 MB per code change otherwise.
        _run(["podman", "rmi", previous], COMMAND_TIMEOUT_S, "podman rmi", check=False)
    return IMAGE


@pytest.fixture
def container_name() -> Iterator[str]:
    """A name for this test's containers; whatever runs under it is removed, pass or fail."""
    name = f"recgate-e2e-{secrets.token_hex(4)}"
    try:
        yield name
    finally:
        _run(
            ["podman", "rm", "--force", "--time", "5", name],
            COMMAND_TIMEOUT_S,
            "removing the container",
            check=False,
        )


def test_image_migrates_then_serves_livez_and_readyz(
    image: str, container_name: str, tmp_path: Path
) -> None:
    data = tmp_path / "var"
    data.mkdir()
    _own_for_app(data)
    port = _free_loopback_port()
    # Production settings, as the image defaults to, with real (generated) secrets. In a file,
    # not on the command line, where any process could read them.
    env_file = tmp_path / "recgate.env"
    env_file.write_text(
        "\n".join(
            [
                "RECGATE_ENV=production",
                "RECGATE_HOST=127.0.0.1",
                f"RECGATE_PORT={port}",
                f"RECGATE_PUBLIC_BASE_URL=http://127.0.0.1:{port}",
                f"RECGATE_GENERIC_WEBHOOK_SECRET={_b64_secret()}",
                f"RECGATE_AUDIT_KEY={_b64_secret()}",
            ]
        )
        + "\n"
    )
    env_file.chmod(0o600)
    # podman runs healthchecks from systemd timers; there is no systemd here, and the test
    # probes /livez itself.
    common = [
        "--network",
        "host",
        "--no-healthcheck",
        "--env-file",
        str(env_file),
        "--volume",
        f"{data}:/app/var",
    ]

    migrated = _run(
        ["podman", "run", "--rm", "--name", container_name, *common, image, "recgate", "migrate"],
        MIGRATE_TIMEOUT_S,
        "recgate migrate in the container",
    )
    assert "latest schema" in migrated.stdout, migrated.stdout + migrated.stderr
    database = data / "recgate.db"
    assert database.is_file(), "migrate must leave the SQLite database on the mounted volume"
    assert database.stat().st_uid == APP_UID or os.geteuid() != 0, (
        "the database must belong to the image's unprivileged user"
    )

    _run(
        ["podman", "run", "--detach", "--name", container_name, *common, image],
        COMMAND_TIMEOUT_S,
        "starting the service container",
    )
    base_url = f"http://127.0.0.1:{port}"
    livez = _wait_for_livez(base_url, container_name)
    assert livez.json() == {"status": "pass"}

    readyz = httpx.get(f"{base_url}/readyz", timeout=10.0, trust_env=False)
    assert readyz.headers["content-type"].startswith("application/health+json"), readyz.text
    assert readyz.status_code == 200 and readyz.json()["status"] in ("pass", "warn"), (
        f"/readyz in the container: {readyz.status_code} {readyz.text}"
    )


def _wait_for_livez(base_url: str, container_name: str) -> httpx.Response:
    """/livez once it answers 200; fails early, with the container's log, if the service
    exits, and after START_TIMEOUT_S if it never answers."""
    deadline = time.monotonic() + START_TIMEOUT_S
    last_error = "no answer"
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            try:
                response = client.get(f"{base_url}/livez")
            except httpx.TransportError as exc:
                last_error = repr(exc)
            else:
                if response.status_code == 200:
                    return response
                last_error = f"{response.status_code} {response.text[:200]}"
            state = _run(
                ["podman", "inspect", "--format", "{{.State.Status}}", container_name],
                COMMAND_TIMEOUT_S,
                "podman inspect",
                check=False,
            ).stdout.strip()
            if state not in ("created", "running"):
                pytest.fail(f"the service container is {state!r}:\n{_logs(container_name)}")
            time.sleep(0.25)
    pytest.fail(
        f"/livez did not answer 200 within {START_TIMEOUT_S:.0f} s ({last_error}):\n"
        f"{_logs(container_name)}"
    )


def _logs(container_name: str) -> str:
    result = _run(
        ["podman", "logs", "--tail", "40", container_name],
        COMMAND_TIMEOUT_S,
        "podman logs",
        check=False,
    )
    return result.stdout + result.stderr
