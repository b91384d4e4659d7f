"""The media store: recording audio kept by recgate, one object per recording id.

Objects are written under a temporary name and made visible only once complete, with their
size and SHA-256 computed on the way in, so a half-written file is never taken for a
recording. Backends: a local directory (default) and S3-compatible object storage.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import mimetypes
import os
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

# botocore ships no type information: its exceptions are typed as Any here and nowhere else.
from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger("recgate.media")


@dataclass(frozen=True, slots=True)
class StoredMedia:
    path: str  # relative to the store's root
    size: int
    sha256: str


_EXTENSION = re.compile(r"^[a-z0-9]{1,8}(?:\.[a-z0-9]{1,8})?$")


def safe_extension(extension: str) -> str:
    """The file extension as stored: short, lower-case letters and digits, else ``bin``.

    Formats come from provider events; they must never name another file.
    """
    cleaned = extension.strip(".").lower()
    return cleaned if _EXTENSION.match(cleaned) else "bin"


class MediaStoreError(Exception):
    """The store could not write, read or delete a file."""


class MediaStore(ABC):
    """Where recgate keeps recording media. Keys are relative names like ``<uuid>.wav``."""

    @abstractmethod
    async def write(
        self, recording_id: uuid.UUID, extension: str, chunks: AsyncIterator[bytes]
    ) -> StoredMedia:
        """Store the stream as ``<recording id>.<extension>``; replace any earlier copy."""

    @abstractmethod
    def read(self, relative: str, chunk_size: int = 64 * 1024) -> AsyncIterator[bytes]:
        """Stream a stored object; :class:`MediaMissing` when it is not there."""

    @abstractmethod
    async def delete(self, relative: str) -> None:
        """Delete a stored object; one already gone is not an error."""

    @abstractmethod
    async def exists(self, relative: str) -> bool:
        """Whether the object is there."""

    @abstractmethod
    def describe(self) -> str:
        """A short, secret-free description for the readiness check."""

    async def deletion_warning(self) -> str | None:
        """Why a deleted object may still be retrievable from the store, if it may."""
        return None

    @abstractmethod
    async def put_small(self, relative: str, data: bytes) -> None:
        """Store a small object (such as an audit checkpoint) whole, replacing any earlier one."""

    async def get_small(self, relative: str) -> bytes | None:
        """A small object stored by :meth:`put_small`; None when there is none."""
        try:
            return b"".join([chunk async for chunk in self.read(relative)])
        except MediaMissing:
            return None


class MediaMissing(MediaStoreError):
    """The object is not in the store."""


def _relative_name(recording_id: uuid.UUID, extension: str) -> str:
    return f"{recording_id}.{safe_extension(extension)}"


class LocalMediaStore(MediaStore):
    """A directory on local disk (``RECGATE_MEDIA_DIR``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, relative: str) -> Path:
        path = (self.root / relative).resolve()
        if self.root.resolve() not in path.parents:
            raise MediaStoreError("media path escapes the store")
        return path

    async def write(
        self, recording_id: uuid.UUID, extension: str, chunks: AsyncIterator[bytes]
    ) -> StoredMedia:
        """Store the stream as ``<recording id>.<extension>``; replace any earlier copy."""
        relative = _relative_name(recording_id, extension)
        final = self._path(relative)
        partial = final.with_name(final.name + f".{uuid.uuid4().hex[:8]}.part")
        digest = hashlib.sha256()
        size = 0
        try:
            await asyncio.to_thread(final.parent.mkdir, parents=True, exist_ok=True)
            handle = await asyncio.to_thread(open, partial, "wb")
            try:
                async for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    await asyncio.to_thread(handle.write, chunk)
                await asyncio.to_thread(handle.flush)
                await asyncio.to_thread(os.fsync, handle.fileno())
            finally:
                await asyncio.to_thread(handle.close)
            await asyncio.to_thread(os.replace, partial, final)
        except OSError as exc:
            await asyncio.to_thread(partial.unlink, missing_ok=True)
            raise MediaStoreError(f"cannot write media: {exc.strerror}") from exc
        except BaseException:
            await asyncio.to_thread(partial.unlink, missing_ok=True)
            raise
        return StoredMedia(path=relative, size=size, sha256=digest.hexdigest())

    async def delete(self, relative: str) -> None:
        """Delete a stored file; a file already gone is not an error."""
        try:
            await asyncio.to_thread(self._path(relative).unlink, missing_ok=True)
        except OSError as exc:
            raise MediaStoreError(f"cannot delete media: {exc.strerror}") from exc

    async def exists(self, relative: str) -> bool:
        return await asyncio.to_thread(self._path(relative).is_file)

    async def read(self, relative: str, chunk_size: int = 64 * 1024) -> AsyncIterator[bytes]:
        path = self._path(relative)
        try:
            handle = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError as exc:
            raise MediaMissing("media not in the store") from exc
        except OSError as exc:
            raise MediaStoreError(f"cannot read media: {exc.strerror}") from exc
        try:
            while chunk := await asyncio.to_thread(handle.read, chunk_size):
                yield chunk
        finally:
            await asyncio.to_thread(handle.close)

    async def put_small(self, relative: str, data: bytes) -> None:
        final = self._path(relative)
        partial = final.with_name(final.name + f".{uuid.uuid4().hex[:8]}.part")

        def replace() -> None:
            final.parent.mkdir(parents=True, exist_ok=True)
            with open(partial, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, final)

        try:
            await asyncio.to_thread(replace)
        except OSError as exc:
            await asyncio.to_thread(partial.unlink, missing_ok=True)
            raise MediaStoreError(f"cannot write {relative}: {exc.strerror}") from exc

    def describe(self) -> str:
        return f"local directory {self.root}"


S3_MIN_PART_SIZE = 5 * 1024 * 1024  # S3's floor for every part but the last
# Multipart objects are put in place with one CopyObject, which S3 caps at 5 GiB.
S3_MAX_OBJECT_SIZE = 5 * 1024**3
_S3_MISSING_KEY = frozenset({"NoSuchKey", "404", "NotFound"})


class _S3Client(Protocol):
    """The calls S3MediaStore makes on a boto3 S3 client (boto3 itself is untyped)."""

    def put_object(self, **kwargs: Any) -> dict[str, Any]: ...
    def get_object(self, **kwargs: Any) -> dict[str, Any]: ...
    def head_object(self, **kwargs: Any) -> dict[str, Any]: ...
    def get_bucket_versioning(self, **kwargs: Any) -> dict[str, Any]: ...
    def get_bucket_lifecycle_configuration(self, **kwargs: Any) -> dict[str, Any]: ...
    def head_bucket(self, **kwargs: Any) -> dict[str, Any]: ...
    def delete_object(self, **kwargs: Any) -> dict[str, Any]: ...
    def copy_object(self, **kwargs: Any) -> dict[str, Any]: ...
    def create_multipart_upload(self, **kwargs: Any) -> dict[str, Any]: ...
    def upload_part(self, **kwargs: Any) -> dict[str, Any]: ...
    def complete_multipart_upload(self, **kwargs: Any) -> dict[str, Any]: ...
    def abort_multipart_upload(self, **kwargs: Any) -> dict[str, Any]: ...


class _S3Body(Protocol):
    def read(self, amt: int) -> bytes: ...
    def close(self) -> None: ...


def _s3_code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def _s3_error(action: str, exc: Exception) -> MediaStoreError:
    # botocore's messages name the operation, bucket or endpoint, never the credentials.
    return MediaStoreError(f"cannot {action} media: {exc}")


class _StagedUpload:
    """One multipart upload to a staging key, copied into place once complete.

    The sha256 is only known at the end, and S3 takes metadata when an upload starts, so
    the parts go to a staging key and one server-side copy puts the finished object, with
    its metadata, at the real key. Until then the real key holds whatever it held before.
    """

    def __init__(self, client: _S3Client, bucket: str, staging_key: str, content_type: str):
        self._client = client
        self._bucket = bucket
        self._staging_key = staging_key
        self._content_type = content_type
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._completed = False
        self._inflight: asyncio.Future[Any] | None = None

    async def _call(self, method: Callable[..., dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        # Shielded so that a cancelled write can wait for the call still running in its thread
        # before aborting: a part landing after the abort would be stored (and billed) unseen.
        self._inflight = asyncio.ensure_future(asyncio.to_thread(method, **kwargs))
        result: dict[str, Any] = await asyncio.shield(self._inflight)
        return result

    async def start(self) -> None:
        response = await self._call(
            self._client.create_multipart_upload,
            Bucket=self._bucket,
            Key=self._staging_key,
            ContentType=self._content_type,
        )
        self._upload_id = str(response["UploadId"])

    async def add_part(self, data: bytes) -> None:
        number = len(self._parts) + 1
        response = await self._call(
            self._client.upload_part,
            Bucket=self._bucket,
            Key=self._staging_key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=data,
        )
        self._parts.append({"PartNumber": number, "ETag": response["ETag"]})

    async def finish(self, key: str, metadata: dict[str, str]) -> None:
        await self._call(
            self._client.complete_multipart_upload,
            Bucket=self._bucket,
            Key=self._staging_key,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": self._parts},
        )
        self._completed = True
        await self._call(
            self._client.copy_object,
            Bucket=self._bucket,
            Key=key,
            CopySource={"Bucket": self._bucket, "Key": self._staging_key},
            MetadataDirective="REPLACE",
            Metadata=metadata,
            ContentType=self._content_type,
        )
        try:
            await self._call(self._client.delete_object, Bucket=self._bucket, Key=self._staging_key)
        except (ClientError, BotoCoreError) as exc:
            # The media is in place; a stray staging object is only garbage.
            log.warning("S3 staging object left behind after a media write: %s", exc)

    async def discard(self) -> None:
        """Leave nothing of this upload behind; never raises (the write's error wins)."""
        if self._inflight is not None and not self._inflight.done():
            await asyncio.wait([self._inflight])
        try:
            if self._completed:
                await asyncio.to_thread(
                    self._client.delete_object, Bucket=self._bucket, Key=self._staging_key
                )
            elif self._upload_id is not None:
                await asyncio.to_thread(
                    self._client.abort_multipart_upload,
                    Bucket=self._bucket,
                    Key=self._staging_key,
                    UploadId=self._upload_id,
                )
        except (ClientError, BotoCoreError) as exc:
            log.warning("S3 upload of a failed media write not cleaned up: %s", exc)


class S3MediaStore(MediaStore):
    """An S3 bucket, or an S3-compatible store (``RECGATE_S3_*``).

    Objects live at ``<prefix><recording id>.<ext>``; multipart uploads in progress are staged
    under ``<prefix>.partial/``. Credentials come from the standard AWS chain (environment,
    shared config, instance or task role), never from recgate's settings.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "recordings/",
        *,
        region: str = "eu-west-2",
        endpoint_url: str | None = None,
        part_size: int = 8 * 1024 * 1024,
    ) -> None:
        if part_size < S3_MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {S3_MIN_PART_SIZE} bytes")
        # Imported here so a deployment on local disk does not pay for loading boto3.
        import boto3  # type: ignore[import-untyped]
        from botocore.config import Config  # type: ignore[import-untyped]

        self.bucket = bucket
        self.prefix = prefix
        self.region = region
        self.endpoint_url = endpoint_url
        self.part_size = part_size
        config = Config(
            connect_timeout=5,
            read_timeout=60,
            retries={"mode": "standard", "max_attempts": 5},
            # S3-compatible stores (MinIO and the like) are addressed by path, not by host name.
            s3={"addressing_style": "path"} if endpoint_url else None,
        )
        # A session of its own: boto3's default session is shared and not thread-safe, while
        # a client is, so this one client serves every worker thread.
        self._client: _S3Client = boto3.session.Session().client(
            "s3", region_name=region, endpoint_url=endpoint_url, config=config
        )
        self._bucket_confirmed = False

    def _key(self, relative: str) -> str:
        segments = relative.split("/")
        if relative.startswith("/") or "\\" in relative or {"", ".", ".."} & set(segments):
            raise MediaStoreError("media path escapes the store")
        return self.prefix + relative

    async def write(
        self, recording_id: uuid.UUID, extension: str, chunks: AsyncIterator[bytes]
    ) -> StoredMedia:
        """Store the stream as ``<prefix><recording id>.<extension>``; replace any earlier copy.

        Small media goes up in one PutObject; anything of a part or more goes up in parts to a
        staging key. A failed write aborts or removes its upload, leaving any earlier copy.
        """
        relative = _relative_name(recording_id, extension)
        key = self._key(relative)
        content_type = mimetypes.guess_type(relative)[0] or "application/octet-stream"
        digest = hashlib.sha256()
        size = 0
        pending: list[bytes] = []
        pending_size = 0
        upload: _StagedUpload | None = None
        try:
            async for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                if size > S3_MAX_OBJECT_SIZE:
                    raise MediaStoreError("cannot write media: larger than 5 GiB")
                pending.append(chunk)
                pending_size += len(chunk)
                if pending_size >= self.part_size:
                    if upload is None:
                        staging = f"{self.prefix}.partial/{relative}.{uuid.uuid4().hex[:8]}"
                        upload = _StagedUpload(self._client, self.bucket, staging, content_type)
                        await upload.start()
                    await upload.add_part(b"".join(pending))
                    pending, pending_size = [], 0
            metadata = {"sha256": digest.hexdigest()}
            if upload is None:
                await asyncio.to_thread(
                    self._client.put_object,
                    Bucket=self.bucket,
                    Key=key,
                    Body=b"".join(pending),
                    ContentType=content_type,
                    Metadata=metadata,
                )
            else:
                if pending:
                    await upload.add_part(b"".join(pending))
                await upload.finish(key, metadata)
        except (ClientError, BotoCoreError) as exc:
            if upload is not None:
                await upload.discard()
            raise _s3_error("write", exc) from exc
        except BaseException:
            if upload is not None:
                await upload.discard()
            raise
        return StoredMedia(path=relative, size=size, sha256=digest.hexdigest())

    async def read(self, relative: str, chunk_size: int = 64 * 1024) -> AsyncIterator[bytes]:
        key = self._key(relative)
        try:
            response = await asyncio.to_thread(self._client.get_object, Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            if _s3_code(exc) == "NoSuchKey":
                raise MediaMissing("media not in the store") from exc
            raise _s3_error("read", exc) from exc
        body: _S3Body = response["Body"]
        try:
            while chunk := await asyncio.to_thread(body.read, chunk_size):
                yield chunk
        except (ClientError, BotoCoreError) as exc:
            raise _s3_error("read", exc) from exc
        finally:
            await asyncio.to_thread(body.close)

    async def delete(self, relative: str) -> None:
        """Delete a stored object; one already gone is not an error (S3 says so itself)."""
        key = self._key(relative)
        try:
            await asyncio.to_thread(self._client.delete_object, Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            if _s3_code(exc) == "NoSuchKey":  # some S3-compatible stores answer so
                return
            raise _s3_error("delete", exc) from exc

    async def exists(self, relative: str) -> bool:
        key = self._key(relative)
        try:
            await asyncio.to_thread(self._client.head_object, Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            if _s3_code(exc) not in _S3_MISSING_KEY:
                raise _s3_error("look up", exc) from exc
            # A HEAD answer has no body: a missing bucket reads as a plain 404 too.
            await self._confirm_bucket()
            return False
        return True

    async def put_small(self, relative: str, data: bytes) -> None:
        key = self._key(relative)
        try:
            await asyncio.to_thread(
                self._client.put_object,
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType="application/json",
            )
        except (ClientError, BotoCoreError) as exc:
            raise _s3_error("write", exc) from exc

    async def _confirm_bucket(self) -> None:
        if self._bucket_confirmed:
            return
        try:
            await asyncio.to_thread(self._client.head_bucket, Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise _s3_error("reach the bucket of", exc) from exc
        self._bucket_confirmed = True

    async def deletion_warning(self) -> str | None:
        """On a versioned bucket a delete only hides the object behind a delete marker; the
        audio stays retrievable unless a lifecycle rule expires noncurrent versions."""
        try:
            versioning = await asyncio.to_thread(
                self._client.get_bucket_versioning, Bucket=self.bucket
            )
        except (ClientError, BotoCoreError) as exc:
            return f"cannot read the bucket's versioning ({_s3_code(exc)})"
        if versioning.get("Status") not in ("Enabled", "Suspended"):
            return None
        try:
            lifecycle = await asyncio.to_thread(
                self._client.get_bucket_lifecycle_configuration, Bucket=self.bucket
            )
        except (ClientError, BotoCoreError) as exc:
            if _s3_code(exc) != "NoSuchLifecycleConfiguration":
                return f"cannot read the bucket's lifecycle rules ({_s3_code(exc)})"
            lifecycle = {}
        if any(self._expires_noncurrent(rule) for rule in lifecycle.get("Rules", [])):
            return None
        return (
            "bucket versioning is on without a lifecycle rule expiring noncurrent versions: "
            "deleted recordings stay retrievable as old versions"
        )

    def _expires_noncurrent(self, rule: dict[str, Any]) -> bool:
        """An enabled rule expiring noncurrent versions of every object under the prefix."""
        if rule.get("Status") != "Enabled" or "NoncurrentVersionExpiration" not in rule:
            return False
        scope = rule.get("Filter", {})
        if "Tag" in scope or "Tags" in scope.get("And", {}):
            return False  # only tagged objects: recgate does not tag its media
        prefix = scope.get("Prefix", scope.get("And", {}).get("Prefix", rule.get("Prefix", "")))
        return self.prefix.startswith(str(prefix))

    def describe(self) -> str:
        where = f"AWS S3 in {self.region}"
        if self.endpoint_url:
            parts = urlsplit(self.endpoint_url)  # host and port only: no userinfo, no query
            host = parts.hostname or "?"
            where = f"{host}:{parts.port}" if parts.port else host
        return f"s3 bucket {self.bucket}, prefix {self.prefix!r}, at {where}"


def build_media_store(settings: Settings) -> MediaStore:
    """The media store the settings ask for."""
    if settings.media_store == "s3":
        if not settings.s3_bucket:
            raise MediaStoreError("RECGATE_MEDIA_STORE=s3 needs RECGATE_S3_BUCKET")
        return S3MediaStore(
            settings.s3_bucket,
            settings.s3_prefix,
            region=settings.s3_region,
            endpoint_url=settings.s3_endpoint_url or None,
        )
    return LocalMediaStore(settings.media_dir)
