"""The secure channel between the router and an instance: TLS pinned by fingerprint, plus a credential.

- The instance's front makes a fresh self-signed certificate at start (``make_identity``) and reports
  its SHA-256 fingerprint over the heartbeat, which its per-instance token authenticates. The router
  connects only to a peer presenting exactly that certificate (``aiohttp.Fingerprint``: checked after
  the handshake, before a byte of the request is sent), so a wrong or substituted host never sees a
  request or the credential.
- Every request carries the lease's credential in ``X-Spotleash-Credential``. The local agent makes
  the credential (``new_credential``) and keeps it; the control plane and the instance only ever see its
  SHA-256 (``credential_hash``), which the front compares in constant time (``credential_matches``).
  The front strips the header before the component sees the request.
- The component itself listens on loopback only; the front is the instance's one open port. When the
  front cannot reach the component it answers 502 with ``FRONT_FAILURE_HEADER``, which the router
  reads as "failed before a response started".
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

CREDENTIAL_HEADER = "X-Spotleash-Credential"
COMPONENT_HEADER = "X-Spotleash-Component"
# Set by the front on its own 502 when the component failed before its response started: nothing was
# answered, so the router treats it like a refused connection (and may retry the request locally).
FRONT_FAILURE_HEADER = "X-Spotleash-Front-Failure"
# A request carrying it (and the credential) asks the front for the named component's log, not the component:
# query ``offset`` (bytes, a follower's last end) or ``tail`` (bytes); the answer's ``LOG_END_HEADER`` is where
# the next read starts, ``LOG_ROTATED_HEADER`` says the file was rotated since that offset.
LOG_HEADER = "X-Spotleash-Log"
LOG_END_HEADER = "X-Spotleash-Log-End"
LOG_ROTATED_HEADER = "X-Spotleash-Log-Rotated"
INSTANCE_HEADER = "X-Spotleash-Instance"  # the router's answer for a remote log names the instance it came from
_CREDENTIAL_BYTES = 32


@dataclass(frozen=True)
class TlsIdentity:
    cert_pem: bytes
    key_pem: bytes
    fingerprint: str  # sha256 of the DER certificate, 64 lowercase hex digits

    def __repr__(self) -> str:  # the key never reaches a log
        return f"TlsIdentity(fingerprint={self.fingerprint})"


def make_identity(common_name: str, days: int = 7) -> TlsIdentity:
    """A fresh EC P-256 key and a self-signed certificate (pinned by fingerprint, so no CA is involved)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64] or "spotleash")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("spotleash"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    return TlsIdentity(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
        fingerprint=hashlib.sha256(der).hexdigest(),
    )


def new_credential() -> str:
    """A per-lease credential (256 random bits, URL-safe text)."""
    return secrets.token_urlsafe(_CREDENTIAL_BYTES)


def credential_hash(credential: str) -> str:
    """What the control plane and the instance keep: the credential's sha256, hex."""
    return hashlib.sha256(credential.encode()).hexdigest()


def credential_matches(presented: str | None, expected_hash: str) -> bool:
    """Constant-time check of a presented credential against the stored hash (an empty one never matches)."""
    same = hmac.compare_digest(credential_hash(presented or ""), expected_hash.lower())
    return same and bool(presented)
