"""Cloud Storage adapter: the only module that imports ``google.cloud.storage``.

Every call carries a bounded retry (the client's own policy for transient failures: 429, 5xx,
connection errors, timeouts) and every failure leaves as a spotleash error:

- ``StorageTransient`` (a ``Transient``): still failing after ``retry_s`` — Cloud Storage unreachable,
  overloaded, or timing out;
- ``GenerationConflict`` (a ``Transient``): an ``if_generation_match`` precondition failed — someone
  else wrote the object first; read again and decide;
- ``ObjectNotFound`` / ``StorageBadInput`` (``BadInput``): no such object or bucket, no permission,
  a malformed request — retrying cannot help.

With ``STORAGE_EMULATOR_HOST`` set (``http://127.0.0.1:PORT``) the official client talks to the
emulator with anonymous credentials.

``signed_request`` is how a box without a Google identity (or with read-only access) moves one object:
a V4 signed URL for exactly that object and verb (with the emulator: its plain JSON-API URL, which
needs no signature). Signing uses the credentials' own key when they have one (a service account key
file), else IAM ``signBlob`` on behalf of the runtime service account (Cloud Functions: the launcher's
account holds ``roles/iam.serviceAccountTokenCreator`` on itself).
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

import google.auth.exceptions
import google.auth.transport.requests
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials, Credentials, Signing
from google.cloud import storage  # type: ignore[attr-defined]
from google.cloud.storage.retry import DEFAULT_RETRY

from spotleash.adapters.google_errors import TRANSIENT_ERRORS
from spotleash.errors import BadInput, SpotleashError, Transient

EMULATOR_VAR = "STORAGE_EMULATOR_HOST"
CHUNK_SIZE = 8 * 1024 * 1024  # resumable upload chunk (a multiple of 256 KiB): progress moves per chunk
REQUEST_TIMEOUT_S = 60.0

Progress = Callable[[int], None]  # called with the number of bytes just moved


class StorageError(SpotleashError):
    """Cloud Storage refused or failed a call."""


class StorageTransient(StorageError, Transient):
    """Cloud Storage did not answer well within the retry budget; trying later may work."""


class GenerationConflict(StorageError, Transient):
    """An ``if_generation_match`` precondition failed: the object changed under us."""


class StorageBadInput(StorageError, BadInput):
    """The request can never succeed as made (permission, bad name, missing bucket)."""


class ObjectNotFound(StorageBadInput):
    """No such object (or bucket)."""


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int
    generation: int
    md5: str | None = None  # base64, as Cloud Storage computes it (None: composite objects have none)
    updated: datetime | None = None  # when this generation was written (listings carry it)


@dataclass(frozen=True)
class SignedRequest:
    """One request that moves one object without credentials: send ``headers`` as given."""

    method: str
    url: str  # a bearer secret until it expires: never log it
    headers: dict[str, str] = field(default_factory=dict)


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """Turn the client's exceptions into spotleash's, naming the operation."""
    try:
        yield
    except StorageError:
        raise
    except gexc.PreconditionFailed as e:
        raise GenerationConflict(f"{what}: the object changed meanwhile (generation precondition failed)") from e
    except gexc.NotFound as e:
        raise ObjectNotFound(f"{what}: not found ({e.message})") from e
    except gexc.RetryError as e:
        cause = e.cause if e.cause is not None else e
        raise StorageTransient(f"{what}: Cloud Storage still failing after retries: {_short(cause)}") from e
    except TRANSIENT_ERRORS as e:
        raise StorageTransient(f"{what}: Cloud Storage unavailable: {_short(e)}") from e
    except (gexc.Forbidden, gexc.Unauthorized) as e:
        raise StorageBadInput(f"{what}: permission denied ({e.message}); check the credentials and bucket IAM") from e
    except gexc.GoogleAPICallError as e:
        raise StorageBadInput(f"{what}: refused by Cloud Storage ({e.code}: {e.message})") from e
    except google.auth.exceptions.DefaultCredentialsError as e:
        raise StorageBadInput(f"{what}: no Google credentials ({e}); run `gcloud auth application-default "
                              f"login` or set {EMULATOR_VAR} for the local stack") from e


def _short(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return f"{type(e).__name__}: {text[:300]}"


class _CountingReader:
    """A read-only file wrapper that reports each read's size (upload progress)."""

    def __init__(self, f: IO[bytes], on_read: Progress) -> None:
        self._f = f
        self._on_read = on_read

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        if data:
            self._on_read(len(data))
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


class Storage:
    """One bucket, through the official client."""

    def __init__(self, bucket: str, *, project: str | None = None, retry_s: float = 60.0,
                 emulator: str | None = None, credentials: Credentials | None = None) -> None:
        """``emulator``: an emulator's URL (default: ``STORAGE_EMULATOR_HOST``; unset: the real service).
        ``credentials``: default: the environment's (Application Default Credentials)."""
        if not bucket:
            raise StorageBadInput("no bucket named: set SPOTLEASH_PACKAGE_BUCKET (the local stack sets it)")
        emulator = emulator or os.environ.get(EMULATOR_VAR) or None
        if emulator and not emulator.startswith(("http://", "https://")):
            raise StorageBadInput(f"{EMULATOR_VAR}={emulator!r} must carry its scheme, e.g. http://127.0.0.1:4443")
        with _translated("connect to Cloud Storage"):
            if emulator:
                self.client = storage.Client(project=project or "local", credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                                             client_options={"api_endpoint": emulator})
            else:
                self.client = storage.Client(project=project, credentials=credentials)
        self.emulator = emulator
        self.bucket_name = bucket
        self.bucket = self.client.bucket(bucket)
        self.retry = DEFAULT_RETRY.with_timeout(retry_s)

    def uri(self, name: str) -> str:
        return f"gs://{self.bucket_name}/{name}"

    # ------------------------------------------------------------------ reads
    def bucket_exists(self) -> bool:
        with _translated(f"look up {self.uri('')}"):
            return bool(self.bucket.exists(retry=None, timeout=REQUEST_TIMEOUT_S))

    def stat(self, name: str) -> ObjectInfo | None:
        """Size and generation of an object, or None when it does not exist."""
        with _translated(f"stat {self.uri(name)}"):
            blob = self.bucket.get_blob(name, retry=self.retry, timeout=REQUEST_TIMEOUT_S)
        if blob is None:
            return None
        return ObjectInfo(name, int(blob.size or 0), int(blob.generation or 0), blob.md5_hash)

    def list_names(self, prefix: str) -> list[str]:
        """The names of every object under ``prefix``, sorted."""
        with _translated(f"list {self.uri(prefix)}"):
            return sorted(b.name for b in self.client.list_blobs(self.bucket, prefix=prefix, retry=self.retry,
                                                                 timeout=REQUEST_TIMEOUT_S))

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        """Every object under ``prefix`` with its size, generation and write time, sorted by name."""
        with _translated(f"list {self.uri(prefix)}"):
            found = [ObjectInfo(b.name, int(b.size or 0), int(b.generation or 0), b.md5_hash, b.updated)
                     for b in self.client.list_blobs(self.bucket, prefix=prefix, retry=self.retry,
                                                     timeout=REQUEST_TIMEOUT_S)]
        return sorted(found, key=lambda o: o.name)

    def generation(self, name: str) -> int:
        """The object's live generation; 0 when it does not exist (what ``if_generation_match=0`` means)."""
        info = self.stat(name)
        return info.generation if info else 0

    def read_bytes(self, name: str) -> tuple[bytes, int]:
        """An object's bytes and the generation they came from."""
        with _translated(f"read {self.uri(name)}"):
            blob = self.bucket.get_blob(name, retry=self.retry, timeout=REQUEST_TIMEOUT_S)
            if blob is None:
                raise ObjectNotFound(f"read {self.uri(name)}: not found")
            data = blob.download_as_bytes(if_generation_match=blob.generation, retry=self.retry,
                                          timeout=REQUEST_TIMEOUT_S)
        return data, int(blob.generation or 0)

    # ------------------------------------------------------------------ writes (always conditional)
    def upload_file(self, name: str, path: Path, *, if_generation_match: int,
                    on_progress: Progress | None = None, content_type: str = "application/gzip") -> ObjectInfo:
        """Upload ``path`` only if the object's generation is still ``if_generation_match`` (0: absent)."""
        blob = self.bucket.blob(name, chunk_size=CHUNK_SIZE)
        size = path.stat().st_size
        with _translated(f"upload {path.name} to {self.uri(name)}"), path.open("rb") as f:
            src: Any = _CountingReader(f, on_progress) if on_progress else f
            blob.upload_from_file(src, size=size, content_type=content_type, if_generation_match=if_generation_match,
                                  retry=self.retry, timeout=REQUEST_TIMEOUT_S)
        return ObjectInfo(name, size, int(blob.generation or 0), blob.md5_hash)  # from the upload's answer

    def write_bytes(self, name: str, data: bytes, *, if_generation_match: int,
                    content_type: str = "text/plain") -> int:
        """Write a small object only if its generation is still ``if_generation_match``; the new generation."""
        blob = self.bucket.blob(name)
        with _translated(f"write {self.uri(name)}"):
            blob.upload_from_string(data, content_type=content_type, if_generation_match=if_generation_match,
                                    retry=self.retry, timeout=REQUEST_TIMEOUT_S)
        return int(blob.generation or 0)

    def delete(self, name: str, *, if_generation_match: int | None = None) -> None:
        with _translated(f"delete {self.uri(name)}"):
            self.bucket.blob(name).delete(if_generation_match=if_generation_match, retry=self.retry,
                                          timeout=REQUEST_TIMEOUT_S)

    def delete_if_present(self, name: str) -> bool:
        """Delete ``name``; False when it was already gone (a retried cleanup is not an error)."""
        try:
            self.delete(name)
        except ObjectNotFound:
            return False
        return True

    # ------------------------------------------------------------------ requests for someone else
    def signed_request(self, name: str, method: str, *, expires_s: float = 900.0) -> SignedRequest:
        """A request that reads (``GET``) or creates (``PUT``) exactly ``name`` and nothing else.

        A write may only create: it is signed with ``x-goog-if-generation-match: 0``, so it can never
        overwrite an object (with the emulator: ``ifGenerationMatch=0`` in the plain upload URL).
        """
        if method not in ("GET", "PUT"):
            raise StorageBadInput(f"signed_request: method {method!r} is neither GET nor PUT")
        if self.emulator:
            return self._emulator_request(name, method)
        headers = {"Content-Type": "application/octet-stream", "x-goog-if-generation-match": "0"} \
            if method == "PUT" else {}
        with _translated(f"sign a {method} URL for {self.uri(name)}"):
            url = self.bucket.blob(name).generate_signed_url(
                version="v4", expiration=timedelta(seconds=expires_s), method=method,
                content_type=headers.get("Content-Type"),
                headers={k: v for k, v in headers.items() if k != "Content-Type"} or None,
                **self._signer())
        return SignedRequest(method, url, headers)

    def _emulator_request(self, name: str, method: str) -> SignedRequest:
        base = str(self.emulator).rstrip("/")
        b, o = urllib.parse.quote(self.bucket_name, safe=""), urllib.parse.quote(name, safe="")
        if method == "GET":
            return SignedRequest("GET", f"{base}/download/storage/v1/b/{b}/o/{o}?alt=media")
        return SignedRequest("POST", f"{base}/upload/storage/v1/b/{b}/o?uploadType=media&name={o}&ifGenerationMatch=0",
                             {"Content-Type": "application/octet-stream"})

    def _signer(self) -> dict[str, Any]:
        """Extra arguments for ``generate_signed_url``: none with a key, else signBlob through IAM."""
        creds = self.client._credentials
        if isinstance(creds, Signing):
            return {}
        if not creds.valid:
            creds.refresh(google.auth.transport.requests.Request())
        email = getattr(creds, "service_account_email", None)
        if not email:
            raise StorageBadInput("cannot sign URLs: the credentials are neither a service account key nor a "
                                  "service account's token (run the control plane as a service account)")
        return {"service_account_email": email, "access_token": creds.token}

    def ensure_bucket(self, location: str = "US-CENTRAL1") -> None:
        """Create the bucket if it does not exist (the local stack's ``up``; Terraform does it for real)."""
        with _translated(f"create bucket gs://{self.bucket_name}"):
            if self.client.lookup_bucket(self.bucket_name, retry=self.retry, timeout=REQUEST_TIMEOUT_S) is None:
                with contextlib.suppress(gexc.Conflict):  # created meanwhile by someone else: fine
                    self.client.create_bucket(self.bucket_name, location=location, retry=self.retry,
                                              timeout=REQUEST_TIMEOUT_S)
