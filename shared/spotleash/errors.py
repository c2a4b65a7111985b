"""One exception tree. Bad input is never retried; transient failures are retried with backoff.

Adapters translate SDK errors into these with ``raise ... from e`` so that the core and the
entry points decide on retry / ack / dead-letter from the type alone.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """The one table of exit codes, for every command: the CLI, the agent, the demo, the smoke run."""

    OK = 0
    FAILED = 1  # the operation failed
    USAGE = 2  # wrong usage or configuration (the message says what to fix)
    LEFT_RUNNING = 3  # instances were left running
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


class SpotleashError(Exception):
    """Root of every error spotleash raises on purpose."""


class BadInput(SpotleashError):
    """The input can never succeed: acknowledge it, record the reason, do not retry."""


class ConfigError(BadInput):
    """Wrong or missing configuration; the message says what to fix."""


class Transient(SpotleashError):
    """Worth retrying: rate limits, timeouts, 5xx, contention."""


class LeaseUnknown(Transient):
    """A demand names a lease the control plane has not seen: it waits (a redelivery) for the lease's
    first renewal, and is refused as ``lease_unknown`` at its last allowed delivery."""

    def __init__(self, lease_id: str) -> None:
        super().__init__(f"lease {lease_id} is not known yet; the demand waits for its first renewal")
        self.lease_id = lease_id


class ProviderError(SpotleashError):
    """A cloud provider refused or failed a call."""


class ProviderTransient(ProviderError, Transient):
    """The provider failed in a way that may pass (429, 503, timeout, connection reset)."""


class ProviderPermanent(ProviderError, BadInput):
    """The provider rejected the request itself (400, 403, invalid spec)."""


class CapacityExhausted(ProviderError):
    """No capacity where we asked (zone pool exhausted, offer gone); try elsewhere."""


class NotFound(ProviderError):
    """The provider has no such instance."""


class InvalidTransition(SpotleashError):
    """A state change the instance state machine does not allow."""
