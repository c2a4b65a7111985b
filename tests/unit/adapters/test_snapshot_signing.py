"""Storage.signed_request: V4 signed URLs for exactly one object and verb (a service account key made
here; signing is local, no network), create-only for writes; the emulator's plain URLs."""

from __future__ import annotations

import urllib.parse

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.oauth2 import service_account

from spotleash.adapters.storage import Storage, StorageBadInput

BUCKET = "my-packages"
NAME = "snapshots/lease-1/snap-1/part-00000.tar.zst"


@pytest.fixture()
def storage(monkeypatch: pytest.MonkeyPatch) -> Storage:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    creds = service_account.Credentials.from_service_account_info({  # type: ignore[no-untyped-call]
        "type": "service_account", "client_email": "sl-launcher@p.iam.gserviceaccount.com", "private_key": pem,
        "private_key_id": "k1", "token_uri": "https://oauth2.googleapis.com/token", "project_id": "p"})
    return Storage(BUCKET, project="p", credentials=creds)


def query(url: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


def test_a_put_url_names_one_object_expires_and_may_only_create(storage: Storage) -> None:
    r = storage.signed_request(NAME, "PUT", expires_s=600)
    parts = urllib.parse.urlsplit(r.url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "storage.googleapis.com", f"/{BUCKET}/{NAME}")
    q = query(r.url)
    assert q["X-Goog-Algorithm"] == "GOOG4-RSA-SHA256" and q["X-Goog-Expires"] == "600"
    assert q["X-Goog-Credential"].startswith("sl-launcher@p.iam.gserviceaccount.com/")
    assert set(q["X-Goog-SignedHeaders"].split(";")) == {"content-type", "host", "x-goog-if-generation-match"}
    assert len(q["X-Goog-Signature"]) == 512  # RSA-2048, hex
    assert r.method == "PUT"
    assert r.headers == {"Content-Type": "application/octet-stream", "x-goog-if-generation-match": "0"}


def test_a_get_url_signs_only_the_host(storage: Storage) -> None:
    r = storage.signed_request(NAME, "GET")
    assert r.method == "GET" and r.headers == {}
    assert query(r.url)["X-Goog-SignedHeaders"] == "host" and query(r.url)["X-Goog-Expires"] == "900"


def test_other_verbs_are_refused(storage: Storage) -> None:
    with pytest.raises(StorageBadInput, match="neither GET nor PUT"):
        storage.signed_request(NAME, "DELETE")


def test_with_the_emulator_the_urls_are_its_plain_json_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    s = Storage(BUCKET, emulator="http://127.0.0.1:4443")
    put = s.signed_request(NAME, "PUT")
    assert put.method == "POST" and put.url.startswith(f"http://127.0.0.1:4443/upload/storage/v1/b/{BUCKET}/o?")
    assert query(put.url) == {"uploadType": "media", "name": NAME, "ifGenerationMatch": "0"}
    get = s.signed_request(NAME, "GET")
    assert get.url == (f"http://127.0.0.1:4443/download/storage/v1/b/{BUCKET}/o/"
                       f"{urllib.parse.quote(NAME, safe='')}?alt=media")
