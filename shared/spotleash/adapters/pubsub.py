"""The agent's one adapter to Pub/Sub: publish demand, lease and release events to their topics.

A thin layer over ``google.cloud.pubsub_v1.PublisherClient`` (imported lazily, so ``import
spotleash.agent`` stays cheap). The client honours ``PUBSUB_EMULATOR_HOST`` by itself. Failures
and timeouts become :class:`spotleash.errors.Transient`.
"""

from __future__ import annotations

import concurrent.futures
from typing import TYPE_CHECKING, Any, Protocol

from spotleash.errors import Transient
from spotleash.log import get_logger
from spotleash.topology import load_topology
from spotleash.wire.events import Event

if TYPE_CHECKING:
    from spotleash.config import Settings

log = get_logger(__name__)


class PublishFuture(Protocol):
    def result(self, timeout: float | None = None) -> Any: ...

    def add_done_callback(self, fn: Any) -> None: ...


class EventPublisher(Protocol):
    """What the runner and the shutdown path need; tests pass a fake."""

    def publish(self, event: Event) -> PublishFuture: ...

    def publish_and_wait(self, event: Event, timeout_s: float) -> str: ...


class Publisher:
    """Publishes spotleash events to the topic of their kind in ``settings.project``."""

    def __init__(self, settings: Settings, client: Any = None) -> None:
        self._project = settings.project
        self._client = client
        self._topology = load_topology()

    @property
    def client(self) -> Any:
        if self._client is None:
            from google.cloud import pubsub_v1  # type: ignore[attr-defined]

            self._client = pubsub_v1.PublisherClient()
        return self._client

    def topic_path(self, kind: str) -> str:
        return f"projects/{self._project}/topics/{self._topology.topic_of(kind)}"

    def publish(self, event: Event) -> PublishFuture:
        """Start publishing ``event``; the future yields the message id."""
        topic = self.topic_path(event.KIND)
        attrs = {"kind": event.KIND, "event_id": event.event_id}
        lease_id = getattr(event, "lease_id", None)
        if lease_id:
            attrs["lease_id"] = str(lease_id)
        future: PublishFuture = self.client.publish(topic, event.to_bytes(), **attrs)
        return future

    def publish_and_wait(self, event: Event, timeout_s: float) -> str:
        """Publish and wait for the server's message id; Transient on timeout or failure."""
        try:
            message_id = self.publish(event).result(timeout=timeout_s)
        except (concurrent.futures.TimeoutError, TimeoutError) as e:
            raise Transient(f"publishing {event.KIND} event {event.event_id} not confirmed within {timeout_s:.1f}s") from e
        except Transient:
            raise
        except Exception as e:  # noqa: BLE001 - the SDK raises many google.api_core types; all mean "not published"
            raise Transient(f"publishing {event.KIND} event {event.event_id} failed: {type(e).__name__}: {e}") from e
        return str(message_id)
