"""A small client of the GCE metadata server, found as Google's libraries find it: ``GCE_METADATA_HOST``
(default ``metadata.google.internal``), header ``Metadata-Flavor: Google``."""

from __future__ import annotations

import os

import httpx

DEFAULT_HOST = "metadata.google.internal"


class MetadataError(Exception):
    """The metadata server could not be reached or answered an error other than 404."""


class MetadataClient:
    def __init__(self, host: str | None = None, timeout_s: float = 10.0) -> None:
        self.host = host or os.environ.get("GCE_METADATA_HOST") or DEFAULT_HOST
        self.base = f"http://{self.host}/computeMetadata/v1/"
        self._timeout_s = timeout_s
        self._http = httpx.Client(headers={"Metadata-Flavor": "Google"}, trust_env=False)

    def close(self) -> None:
        self._http.close()

    def get(
        self, path: str, *, wait_for_change: bool = False, last_etag: str | None = None, timeout_sec: int = 60
    ) -> tuple[str, str] | None:
        """(value, etag), or None when the key does not exist (404). Long-polls when asked."""
        params: dict[str, str] = {}
        timeout = self._timeout_s
        if wait_for_change:
            params = {"wait_for_change": "true", "timeout_sec": str(timeout_sec)}
            if last_etag:
                params["last_etag"] = last_etag
            timeout = timeout_sec + self._timeout_s
        try:
            r = self._http.get(self.base + path.lstrip("/"), params=params, timeout=timeout)
        except httpx.HTTPError as e:
            raise MetadataError(f"metadata server {self.host} unreachable for {path}: {e}") from e
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise MetadataError(f"metadata server {self.host} answered {r.status_code} for {path}")
        return r.text, r.headers.get("ETag", "")

    def attribute(self, key: str) -> str | None:
        got = self.get(f"instance/attributes/{key}")
        return got[0] if got else None
