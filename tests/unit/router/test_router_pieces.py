"""Pure pieces of the router: records → remote states, the channel's credential and identity, metrics."""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from multidict import CIMultiDict

from spotleash.router.channel import credential_hash, credential_matches, make_identity, new_credential
from spotleash.router.forward import is_idempotent
from spotleash.router.metrics import Metrics
from spotleash.router.records import normalize_fingerprint, remote_states
from spotleash.router.table import RemoteState

FP = "0f" * 32


def test_remote_states_from_records() -> None:
    records = [
        {"instance_id": "sl-1", "state": "READY", "preempted": False, "tls_fingerprint": FP.upper(),
         "component_states": {"thumbs": {"state": "healthy", "endpoint": "10.1.2.3:8443"},
                              "vectors": {"state": "starting", "endpoint": None}}},
        {"instance_id": "sl-2", "state": "TERMINATING", "preempted": True,
         "component_states": {"thumbs": {"state": "healthy", "endpoint": "bad endpoint!"}}},
        {"instance_id": "sl-3", "state": "REQUESTED"},  # no components yet
        {"state": "READY", "component_states": {}},  # no id: skipped
        {"instance_id": "sl-4", "component_states": {"x": "junk", 5: {}}},
    ]
    got = remote_states(records)
    assert got["thumbs"] == [
        RemoteState("sl-1", "READY", "healthy", "10.1.2.3:8443", FP, False),
        RemoteState("sl-2", "TERMINATING", "healthy", None, None, True),
    ]
    assert got["vectors"] == [RemoteState("sl-1", "READY", "starting", None, FP, False)]
    assert set(got) == {"thumbs", "vectors"}


def test_fingerprint_forms() -> None:
    colons = ":".join(["AB"] * 32)
    assert normalize_fingerprint(colons) == "ab" * 32
    assert normalize_fingerprint("ab" * 31) is None
    assert normalize_fingerprint(None) is None
    assert normalize_fingerprint("zz" * 32) is None


def test_credential_hash_and_constant_time_match() -> None:
    cred = new_credential()
    assert len(cred) >= 40
    h = credential_hash(cred)
    assert h == hashlib.sha256(cred.encode()).hexdigest()
    assert credential_matches(cred, h)
    assert credential_matches(cred, h.upper())
    assert not credential_matches(cred + "x", h)
    assert not credential_matches(None, h)
    assert not credential_matches("", credential_hash(""))  # an empty header is never a credential
    assert new_credential() != cred


def test_identity_fingerprint_is_the_certificate_sha256_and_repr_hides_the_key() -> None:
    ident = make_identity("sl-abc")
    cert = x509.load_pem_x509_certificate(ident.cert_pem)
    assert ident.fingerprint == hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert cert.subject.rfc4514_string() == "CN=sl-abc"
    assert b"PRIVATE KEY" in ident.key_pem
    assert "PRIVATE" not in repr(ident)
    assert make_identity("sl-abc").fingerprint != ident.fingerprint


def test_idempotency() -> None:
    for m in ("GET", "HEAD", "PUT", "DELETE", "OPTIONS", "get"):
        assert is_idempotent(m, CIMultiDict())
    assert not is_idempotent("POST", CIMultiDict())
    assert not is_idempotent("PATCH", CIMultiDict())
    assert is_idempotent("POST", CIMultiDict({"idempotency-key": "k1"}))


def test_metrics_text_and_totals() -> None:
    m = Metrics()
    m.current("thumbs", "local")
    m.changed("thumbs", "remote")
    m.served("thumbs", "remote", 200, 0.0007)
    m.served("thumbs", "remote", 503, 0.02)
    m.served("thumbs", "local", 200, 0.003)
    m.error("thumbs", "remote", "connect")
    m.retry("thumbs", "remote", "local")
    m.fail("thumbs")
    m.panic("thumbs")
    body, content_type = m.render()  # prometheus_client writes the labels in name order
    text = body.decode()
    assert content_type.startswith("text/plain")
    for line in ('spotleash_router_requests_total{code="2xx",component="thumbs",target="remote"} 1.0',
                 'spotleash_router_requests_total{code="5xx",component="thumbs",target="remote"} 1.0',
                 'spotleash_router_errors_total{component="thumbs",kind="connect",target="remote"} 1.0',
                 'spotleash_router_retries_total{component="thumbs",source="remote",target="local"} 1.0',
                 'spotleash_router_failed_total{component="thumbs"} 1.0',
                 'spotleash_router_panic_total{component="thumbs"} 1.0',
                 'spotleash_router_target_changes_total{component="thumbs"} 1.0',
                 'spotleash_router_target{component="thumbs",target="remote"} 1.0',
                 'spotleash_router_target{component="thumbs",target="local"} 0.0',
                 'spotleash_router_response_start_seconds_bucket{component="thumbs",le="0.001",target="remote"} 1.0',
                 'spotleash_router_response_start_seconds_bucket{component="thumbs",le="+Inf",target="remote"} 2.0',
                 'spotleash_router_response_start_seconds_count{component="thumbs",target="local"} 1.0',
                 "# TYPE spotleash_router_response_start_seconds histogram"):
        assert line + "\n" in text, line
    assert m.value("retries_total", component="thumbs", source="remote", target="local") == 1
    assert m.value("held_total", component="thumbs") == 0
    assert m.totals() == {"total": 4, "remote": 2, "retried": 1, "failed": 1}
    assert m.served_by("thumbs") == {"remote": 2, "local": 1}
    assert Metrics().totals() == {"total": 0, "remote": 0, "retried": 0, "failed": 0}  # a registry each
