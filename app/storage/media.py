"""The media store: recording audio kept by recgate, one object per recording id.

Objects are written under a temporary name and made visible only once complete, with their
size and SHA-256 computed on the way in, so a half-written file is never taken for a
recording. Backends: a local directory (default) and S3-compatible object storage.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class StoredMedia:
    path: str  # relative to the store's root
    size: int
    sha256: str


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


class MediaMissing(MediaStoreError):
    """The object is not in the store."""


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
        relative = f"{recording_id}.{extension.strip('.').lower() or 'bin'}"
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

    def describe(self) -> str:
        return f"local directory {self.root}"


def build_media_store(media_dir: Path) -> MediaStore:
    """The media store the settings ask for."""
    return LocalMediaStore(media_dir)
