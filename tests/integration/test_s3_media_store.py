"""One media store contract, honoured on local disk and on S3.

The S3 backend runs against moto's server on loopback (a real HTTP S3 API, with IAM
enforcement switched on where a test needs a refusal). The contract tests are written once
and run on both backends; the S3-only tests below them cover what only S3 has: multipart
uploads, object metadata, buckets and credentials.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import httpx
import pytest
from moto.server import ThreadedMotoServer
from pydantic import ValidationError

from app.config import Settings
from app.domain.roles import Role
from app.storage.media import (
    S3_MIN_PART_SIZE,
    LocalMediaStore,
    MediaMissing,
    MediaStore,
    MediaStoreError,
    S3MediaStore,
    build_media_store,
)

MIB = 1024 * 1024
PART = S3_MIN_PART_SIZE  # the stores under test cut parts at S3's minimum
REGION = "eu-west-2"
PREFIX = "recordings/"
DUMMY_SECRET = "dummy-secret-access-key-not-real"
FINISHED_NAME = re.compile(r"^[0-9a-f-]{36}\.[a-z0-9]+$")


# --- streams --------------------------------------------------------------------------------


def payload(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


async def stream(data: bytes, chunk: int = 100_003) -> AsyncIterator[bytes]:
    # An odd chunk size, so parts never line up with chunks by accident.
    for start in range(0, len(data), chunk):
        yield data[start : start + chunk]


async def read_all(store: MediaStore, relative: str) -> bytes:
    return b"".join([chunk async for chunk in store.read(relative)])


class ProviderHungUp(Exception):
    pass


# --- moto on loopback -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    # Port 0: the OS picks a free port at bind time, so there is no race for one.
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials, and nothing else of the machine's AWS setup (files, profile, IMDS)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", DUMMY_SECRET)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


class Moto:
    """Direct access to the moto server, as an administrator, to look behind the store."""

    def __init__(self, url: str) -> None:
        self.url = url
        session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key=DUMMY_SECRET, region_name=REGION
        )
        self.s3 = session.client("s3", endpoint_url=url)
        self.iam = session.client("iam", endpoint_url=url)

    async def call(self, method: Callable[..., Any], **kwargs: Any) -> Any:
        return await asyncio.to_thread(method, **kwargs)

    async def create_bucket(self) -> str:
        name = f"media-{uuid.uuid4().hex[:12]}"
        await self.call(
            self.s3.create_bucket,
            Bucket=name,
            CreateBucketConfiguration={"LocationConstraint": REGION},
        )
        return name

    async def keys(self, bucket: str) -> list[str]:
        listing = await self.call(self.s3.list_objects_v2, Bucket=bucket)
        return [item["Key"] for item in listing.get("Contents", [])]

    async def open_uploads(self, bucket: str) -> list[str]:
        listing = await self.call(self.s3.list_multipart_uploads, Bucket=bucket)
        return [item["Key"] for item in listing.get("Uploads", [])]

    async def user_keys(self, policy: dict[str, Any]) -> tuple[str, str]:
        """Access keys for a new IAM user with exactly this inline policy."""
        name = f"recgate-{uuid.uuid4().hex[:8]}"
        await self.call(self.iam.create_user, UserName=name)
        await self.call(
            self.iam.put_user_policy,
            UserName=name,
            PolicyName="media",
            PolicyDocument=json.dumps(policy),
        )
        key = (await self.call(self.iam.create_access_key, UserName=name))["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    @asynccontextmanager
    async def iam_enforced(self) -> AsyncIterator[None]:
        """Every request checked against IAM from here on (moto allows all by default)."""
        async with httpx.AsyncClient(base_url=self.url) as client:
            (await client.post("/moto-api/reset-auth", content=b"0")).raise_for_status()
            try:
                yield
            finally:
                (await client.post("/moto-api/reset-auth", content=b"inf")).raise_for_status()

    def reset(self) -> None:
        httpx.post(f"{self.url}/moto-api/reset").raise_for_status()


@pytest.fixture(scope="module")
def moto_admin(moto_url: str) -> Moto:
    return Moto(moto_url)


@pytest.fixture
def moto(moto_admin: Moto, aws_env: None) -> Iterator[Moto]:
    yield moto_admin
    moto_admin.reset()  # buckets, objects, IAM users: each test starts from nothing


def s3_store(moto: Moto, bucket: str) -> S3MediaStore:
    return S3MediaStore(bucket, PREFIX, region=REGION, endpoint_url=moto.url, part_size=PART)


def store_with_keys(
    monkeypatch: pytest.MonkeyPatch, moto: Moto, bucket: str, keys: tuple[str, str]
) -> S3MediaStore:
    """A store whose client picks up these access keys from the environment, as in production."""
    with monkeypatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", keys[0])
        env.setenv("AWS_SECRET_ACCESS_KEY", keys[1])
        return s3_store(moto, bucket)  # boto3 resolves credentials when the client is made


READ_ONLY_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": "*"}
    ],
}
# Enough to see that the bucket is there, not to touch what is in it. (AWS authorises
# HeadBucket by s3:ListBucket; moto asks for an action of that name.)
LIST_ONLY_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:HeadBucket"], "Resource": "*"}
    ],
}


# --- one contract, two backends -------------------------------------------------------------


@dataclass
class Backend:
    name: str
    store: MediaStore
    # Whatever a write left besides finished media: partial files, open uploads, staging objects.
    debris: Callable[[], Awaitable[list[str]]]
    # Within it, a store over the same storage whose writes and deletes are refused.
    refused: Callable[[str], AbstractAsyncContextManager[MediaStore]]
    # Whether a refusal leaves the refused object readable (false only for the root fallback).
    refusal_keeps_object: bool = True


def local_backend(root: Path) -> Backend:
    store = LocalMediaStore(root)

    def list_debris() -> list[str]:
        return sorted(
            str(path.relative_to(root))
            for path in root.rglob("*")
            if path.is_file() and not FINISHED_NAME.match(path.name)
        )

    async def debris() -> list[str]:
        return await asyncio.to_thread(list_debris)

    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o500)
    probe = root / "probe"
    try:
        probe.touch()
    except PermissionError:
        chmod_binds = True
    else:
        chmod_binds = False  # root (CAP_DAC_OVERRIDE) writes through a read-only directory
        probe.unlink()
    root.chmod(0o700)

    def occupy(target: Path) -> None:
        # As root: a non-empty directory where the object goes, which no write can replace
        # and no delete can unlink.
        target.unlink(missing_ok=True)
        target.mkdir()
        (target / "occupied").write_bytes(b"")

    @asynccontextmanager
    async def refused(relative: str) -> AsyncIterator[MediaStore]:
        if chmod_binds:
            await asyncio.to_thread(root.chmod, 0o500)
            try:
                yield store
            finally:
                await asyncio.to_thread(root.chmod, 0o700)
            return
        await asyncio.to_thread(occupy, root / relative)
        try:
            yield store
        finally:
            await asyncio.to_thread(shutil.rmtree, root / relative)

    return Backend("local", store, debris, refused, refusal_keeps_object=chmod_binds)


async def s3_backend(moto: Moto, monkeypatch: pytest.MonkeyPatch) -> Backend:
    bucket = await moto.create_bucket()
    store = s3_store(moto, bucket)

    async def debris() -> list[str]:
        staged = [key for key in await moto.keys(bucket) if "/.partial/" in key]
        uploads = [f"upload:{key}" for key in await moto.open_uploads(bucket)]
        return sorted(staged + uploads)

    @asynccontextmanager
    async def refused(relative: str) -> AsyncIterator[MediaStore]:
        keys = await moto.user_keys(READ_ONLY_POLICY)
        read_only = store_with_keys(monkeypatch, moto, bucket, keys)
        async with moto.iam_enforced():
            yield read_only

    return Backend("s3", store, debris, refused)


@pytest.fixture(params=["local", "s3"])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Backend:
    if request.param == "local":
        return local_backend(tmp_path / "media")
    moto: Moto = request.getfixturevalue("moto")
    return await s3_backend(moto, monkeypatch)


@pytest.mark.parametrize(
    "size",
    [0, 1, 300_000, PART, 2 * PART, 2 * PART + 1 * MIB + 7],
    ids=["empty", "one-byte", "small", "one-part", "two-parts", "three-parts"],
)
async def test_write_then_read_round_trips_bytes_size_and_sha256(
    backend: Backend, size: int
) -> None:
    data = payload(size)
    recording_id = uuid.uuid4()

    stored = await backend.store.write(recording_id, ".WAV", stream(data))

    assert stored.path == f"{recording_id}.wav"
    assert stored.size == size
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert await backend.store.exists(stored.path)
    assert await read_all(backend.store, stored.path) == data
    assert await backend.debris() == [], "a finished write left partial state behind"


async def test_read_streams_in_chunks_of_the_size_asked(backend: Backend) -> None:
    data = payload(200_000)
    stored = await backend.store.write(uuid.uuid4(), "wav", stream(data))

    chunks = [chunk async for chunk in backend.store.read(stored.path, chunk_size=64 * 1024)]

    assert b"".join(chunks) == data
    assert len(chunks) > 1
    assert max(len(chunk) for chunk in chunks) <= 64 * 1024


async def test_a_second_write_replaces_the_first(backend: Backend) -> None:
    recording_id = uuid.uuid4()
    await backend.store.write(recording_id, "wav", stream(payload(PART + 10, seed=1)))
    second = payload(1000, seed=2)

    stored = await backend.store.write(recording_id, "wav", stream(second))

    assert await read_all(backend.store, stored.path) == second
    assert stored.sha256 == hashlib.sha256(second).hexdigest()


@pytest.mark.parametrize("fail_after", [1000, PART + 1 * MIB], ids=["in-one-put", "multipart"])
async def test_a_stream_failing_midway_leaves_nothing_and_keeps_the_earlier_copy(
    backend: Backend, fail_after: int
) -> None:
    recording_id = uuid.uuid4()
    earlier = payload(5000, seed=3)
    stored = await backend.store.write(recording_id, "wav", stream(earlier))
    in_flight: list[list[str]] = []

    async def failing() -> AsyncIterator[bytes]:
        async for chunk in stream(payload(fail_after)):
            yield chunk
        in_flight.append(await backend.debris())
        raise ProviderHungUp("provider hung up")

    with pytest.raises(ProviderHungUp):
        await backend.store.write(recording_id, "wav", failing())

    if fail_after > PART:
        assert in_flight[0] != [], "the failing write never had a part in flight"
    assert await backend.debris() == [], "a failed write left partial state behind"
    assert await read_all(backend.store, stored.path) == earlier


async def test_a_stream_failing_midway_leaves_no_object(backend: Backend) -> None:
    async def failing() -> AsyncIterator[bytes]:
        async for chunk in stream(payload(PART + 1 * MIB)):
            yield chunk
        raise ProviderHungUp("provider hung up")

    recording_id = uuid.uuid4()
    with pytest.raises(ProviderHungUp):
        await backend.store.write(recording_id, "wav", failing())

    assert not await backend.store.exists(f"{recording_id}.wav")
    assert await backend.debris() == []


async def test_a_cancelled_write_leaves_nothing(backend: Backend) -> None:
    parked = asyncio.Event()

    async def stalls_after_a_part() -> AsyncIterator[bytes]:
        async for chunk in stream(payload(PART + 1 * MIB)):
            yield chunk
        parked.set()
        await asyncio.Event().wait()  # the provider stops sending
        yield b""  # pragma: no cover

    recording_id = uuid.uuid4()
    write = asyncio.create_task(backend.store.write(recording_id, "wav", stalls_after_a_part()))
    await parked.wait()
    assert await backend.debris() != [], "nothing was in flight when the write was cancelled"

    write.cancel()
    with pytest.raises(asyncio.CancelledError):
        await write

    assert await backend.debris() == []
    assert not await backend.store.exists(f"{recording_id}.wav")


async def test_delete_is_idempotent(backend: Backend) -> None:
    stored = await backend.store.write(uuid.uuid4(), "wav", stream(b"audio"))

    await backend.store.delete(stored.path)
    await backend.store.delete(stored.path)

    assert not await backend.store.exists(stored.path)
    with pytest.raises(MediaMissing):
        await read_all(backend.store, stored.path)


async def test_a_missing_object_is_missing(backend: Backend) -> None:
    relative = f"{uuid.uuid4()}.wav"

    assert not await backend.store.exists(relative)
    with pytest.raises(MediaMissing):
        await read_all(backend.store, relative)
    await backend.store.delete(relative)  # never there: still not an error


async def test_a_small_object_is_replaced_whole(backend: Backend) -> None:
    assert await backend.store.get_small("audit/checkpoint.json") is None
    await backend.store.put_small("audit/checkpoint.json", b'{"count":1}')
    await backend.store.put_small("audit/checkpoint.json", b'{"count":2}')
    assert await backend.store.get_small("audit/checkpoint.json") == b'{"count":2}'


@pytest.mark.parametrize("relative", ["../escape.wav", "/abs.wav", "a/../../b.wav"])
async def test_paths_outside_the_store_are_refused(backend: Backend, relative: str) -> None:
    with pytest.raises(MediaStoreError, match="escapes"):
        await backend.store.exists(relative)
    with pytest.raises(MediaStoreError, match="escapes"):
        await backend.store.delete(relative)


async def test_refused_writes_and_deletes_raise_media_store_error(backend: Backend) -> None:
    recording_id = uuid.uuid4()
    first = payload(3000, seed=4)
    stored = await backend.store.write(recording_id, "wav", stream(first))

    async with backend.refused(stored.path) as refused:
        with pytest.raises(MediaStoreError) as write_error:
            await refused.write(recording_id, "wav", stream(payload(PART + 10, seed=5)))
        with pytest.raises(MediaStoreError) as delete_error:
            await refused.delete(stored.path)

    # A refusal is never mistaken for "already gone" (retention would tombstone it).
    assert not isinstance(write_error.value, MediaMissing)
    assert not isinstance(delete_error.value, MediaMissing)
    assert await backend.debris() == []
    if backend.refusal_keeps_object:
        assert await read_all(backend.store, stored.path) == first


# --- S3 only --------------------------------------------------------------------------------


@pytest.fixture
async def bucket(moto: Moto) -> str:
    return await moto.create_bucket()


async def test_s3_objects_carry_their_sha256_under_the_prefix(moto: Moto, bucket: str) -> None:
    store = s3_store(moto, bucket)
    small, large = payload(4000, seed=6), payload(2 * PART + 123, seed=7)

    stored_small = await store.write(uuid.uuid4(), "wav", stream(small))
    stored_large = await store.write(uuid.uuid4(), "mp3", stream(large))

    assert sorted(await moto.keys(bucket)) == sorted(
        [PREFIX + stored_small.path, PREFIX + stored_large.path]
    )
    for stored, data in ((stored_small, small), (stored_large, large)):
        head = await moto.call(moto.s3.head_object, Bucket=bucket, Key=PREFIX + stored.path)
        assert head["Metadata"] == {"sha256": hashlib.sha256(data).hexdigest()}
        assert head["ContentLength"] == len(data)
    head = await moto.call(moto.s3.head_object, Bucket=bucket, Key=PREFIX + stored_large.path)
    assert head["ContentType"] == "audio/mpeg"


async def test_s3_large_media_goes_up_in_parts_of_at_least_five_mib(
    moto: Moto, bucket: str
) -> None:
    store = s3_store(moto, bucket)
    staged: list[dict[str, Any]] = []
    data = payload(2 * PART + 1 * MIB + 7)

    async def watching() -> AsyncIterator[bytes]:
        async for chunk in stream(data):
            yield chunk
        # Everything but the tail has been sent: look at the upload while it is open.
        [upload] = (await moto.call(moto.s3.list_multipart_uploads, Bucket=bucket))["Uploads"]
        parts = await moto.call(
            moto.s3.list_parts, Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
        )
        staged.append({"key": upload["Key"], "sizes": [p["Size"] for p in parts["Parts"]]})

    stored = await store.write(uuid.uuid4(), "wav", watching())

    assert staged[0]["key"].startswith(PREFIX + ".partial/")
    assert staged[0]["sizes"] and all(size >= PART for size in staged[0]["sizes"])
    assert await read_all(store, stored.path) == data
    assert await moto.keys(bucket) == [PREFIX + stored.path]


async def test_s3_missing_bucket_is_a_store_error_not_missing_media(
    moto: Moto, aws_env: None
) -> None:
    store = s3_store(moto, "no-such-bucket-here")
    relative = f"{uuid.uuid4()}.wav"

    with pytest.raises(MediaStoreError) as write_error:
        await store.write(uuid.uuid4(), "wav", stream(b"audio"))
    with pytest.raises(MediaStoreError) as read_error:
        await read_all(store, relative)
    with pytest.raises(MediaStoreError) as exists_error:
        await store.exists(relative)
    with pytest.raises(MediaStoreError) as delete_error:
        await store.delete(relative)

    for error in (write_error, read_error, exists_error, delete_error):
        assert not isinstance(error.value, MediaMissing), error.value
        assert "NoSuchBucket" in str(error.value) or "404" in str(error.value), error.value


async def test_s3_access_denied_is_a_store_error_not_missing_media(
    moto: Moto, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = s3_store(moto, bucket)
    stored = await store.write(uuid.uuid4(), "wav", stream(b"audio"))
    outsider = store_with_keys(monkeypatch, moto, bucket, await moto.user_keys(LIST_ONLY_POLICY))

    async with moto.iam_enforced():
        with pytest.raises(MediaStoreError) as read_error:
            await read_all(outsider, stored.path)
        with pytest.raises(MediaStoreError) as exists_error:
            await outsider.exists(stored.path)
        with pytest.raises(MediaStoreError) as delete_error:
            await outsider.delete(stored.path)

    for error in (read_error, exists_error, delete_error):
        assert not isinstance(error.value, MediaMissing), error.value
        assert "AccessDenied" in str(error.value) or "403" in str(error.value), error.value
    assert await read_all(store, stored.path) == b"audio"


async def test_s3_describe_names_bucket_prefix_and_host_but_no_credentials(
    moto: Moto, bucket: str
) -> None:
    description = s3_store(moto, bucket).describe()

    assert bucket in description
    assert PREFIX in description
    assert moto.url.removeprefix("http://") in description
    assert DUMMY_SECRET not in description
    assert os.environ["AWS_ACCESS_KEY_ID"] not in description


async def test_s3_a_refused_final_copy_leaves_no_staging_object(
    moto: Moto, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = s3_store(moto, bucket)
    recording_id = uuid.uuid4()
    earlier = payload(2000, seed=8)
    await store.write(recording_id, "wav", stream(earlier))
    final = f"arn:aws:s3:::{bucket}/{PREFIX}{recording_id}.wav"
    # Parts may go to the staging key; only the finished object may not be put in place.
    keys = await moto.user_keys(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": ["s3:*"], "Resource": "*"},
                {"Effect": "Deny", "Action": ["s3:PutObject"], "Resource": final},
            ],
        }
    )
    restricted = store_with_keys(monkeypatch, moto, bucket, keys)

    async with moto.iam_enforced():
        with pytest.raises(MediaStoreError, match="AccessDenied"):
            await restricted.write(recording_id, "wav", stream(payload(PART + 10)))

    assert await moto.keys(bucket) == [f"{PREFIX}{recording_id}.wav"], "staging object left"
    assert await moto.open_uploads(bucket) == []
    assert await read_all(store, f"{recording_id}.wav") == earlier


# --- settings -------------------------------------------------------------------------------


def make_settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_settings_default_to_the_local_store(tmp_path: Path) -> None:
    store = build_media_store(make_settings(media_dir=tmp_path))

    assert isinstance(store, LocalMediaStore)
    assert store.root == tmp_path


def test_settings_refuse_s3_without_a_bucket() -> None:
    with pytest.raises(ValidationError, match="RECGATE_S3_BUCKET"):
        make_settings(media_store="s3")


def test_settings_build_the_s3_store(aws_env: None) -> None:
    settings = make_settings(
        media_store="s3",
        s3_bucket="recgate-media",
        s3_endpoint_url="http://127.0.0.1:9000",
    )

    store = build_media_store(settings)

    assert isinstance(store, S3MediaStore)
    assert (store.bucket, store.prefix, store.region) == ("recgate-media", "recordings/", REGION)
    assert store.endpoint_url == "http://127.0.0.1:9000"


# --- versioned buckets (issue 11) -----------------------------------------------------------
# On a versioned bucket a delete leaves the audio behind as a noncurrent version: "deleted and
# no longer retrievable" then needs a lifecycle rule that expires those versions.


async def versioned_bucket(moto: Moto, rules: list[dict[str, Any]] | None = None) -> str:
    bucket = await moto.create_bucket()
    await moto.call(
        moto.s3.put_bucket_versioning,
        Bucket=bucket,
        VersioningConfiguration={"Status": "Enabled"},
    )
    if rules is not None:
        await moto.call(
            moto.s3.put_bucket_lifecycle_configuration,
            Bucket=bucket,
            LifecycleConfiguration={"Rules": rules},
        )
    return bucket


def noncurrent_expiry(prefix: str) -> dict[str, Any]:
    return {
        "ID": "expire-deleted-audio",
        "Filter": {"Prefix": prefix},
        "Status": "Enabled",
        "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
    }


async def test_an_unversioned_bucket_needs_no_warning(moto: Moto) -> None:
    assert await s3_store(moto, await moto.create_bucket()).deletion_warning() is None


async def test_versioning_without_noncurrent_expiry_is_a_warning(moto: Moto) -> None:
    bare = await versioned_bucket(moto)
    warning = await s3_store(moto, bare).deletion_warning()
    assert warning is not None and "noncurrent" in warning
    # A rule that expires only current objects, or noncurrent ones elsewhere, is no cure.
    elsewhere = await versioned_bucket(
        moto,
        [
            {"ID": "a", "Filter": {"Prefix": ""}, "Status": "Enabled", "Expiration": {"Days": 1}},
            noncurrent_expiry("exports/"),
        ],
    )
    assert await s3_store(moto, elsewhere).deletion_warning() is not None


@pytest.mark.parametrize("prefix", ["", PREFIX])
async def test_a_noncurrent_version_expiry_rule_covering_the_prefix_passes(
    moto: Moto, prefix: str
) -> None:
    bucket = await versioned_bucket(moto, [noncurrent_expiry(prefix)])
    assert await s3_store(moto, bucket).deletion_warning() is None


@pytest.mark.parametrize("with_rule", [False, True])
async def test_readyz_warns_operators_about_a_versioned_bucket(
    moto: Moto, make_harness: Callable[..., Any], with_rule: bool
) -> None:
    bucket = await versioned_bucket(moto, [noncurrent_expiry(PREFIX)] if with_rule else None)
    async with make_harness(
        media_store="s3",
        s3_bucket=bucket,
        s3_endpoint_url=moto.url,
        s3_region=REGION,
        # No PBX to probe: the overall status is the bucket's alone.
        generic_control_url=None,
    ) as h:
        detailed = (await h.client.get("/readyz", headers=h.auth(Role.OPS))).json()
        public = (await h.client.get("/readyz")).json()
    [check] = detailed["checks"]["storage:media"]
    if with_rule:
        assert check["status"] == "pass"
    else:
        assert check["status"] == "warn" and "noncurrent versions" in check["output"]
        assert detailed["status"] == "warn"
    assert public["checks"]["storage:media"] == [{"status": check["status"]}], (
        "the public view names the check and its status, nothing about the bucket"
    )
