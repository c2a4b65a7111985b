"""Billing Catalog fake — transport: the ``google.cloud.billing.v1.CloudCatalog`` gRPC service.

Implemented: ListServices, ListSkus. Every other method of the service (and any other service)
answers UNIMPLEMENTED. A small control service (``spotleash.local.BillingControl``, JSON over gRPC
bytes) offers Health, Reset, SetPrice, AddFault/Faults/ClearFaults (local_emulator.faults rules on
the RPC name, as every fake), Configure (a smaller page cap, to make paging visible) and Calls.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent import futures
from typing import Any, TypeVar

import grpc
from google.cloud import billing_v1

from local_emulator.billing.errors import CatalogFault
from local_emulator.billing.models import Catalog
from spotleash.log import get_logger

log = get_logger("spotleash.local.billing")

SERVICE = "google.cloud.billing.v1.CloudCatalog"
CONTROL_SERVICE = "spotleash.local.BillingControl"

Req = TypeVar("Req")
Resp = TypeVar("Resp")


def _unary(fn: Callable[[Req], Resp], deserializer: Callable[[bytes], Req],
           serializer: Callable[[Resp], bytes]) -> grpc.RpcMethodHandler:
    def handler(request: Req, context: grpc.ServicerContext) -> Resp:
        try:
            return fn(request)
        except CatalogFault as e:
            context.abort(e.code, e.message)
            raise  # abort raises; this keeps type checkers content

    return grpc.unary_unary_rpc_method_handler(handler, request_deserializer=deserializer,
                                               response_serializer=serializer)


def _loads(b: bytes) -> Any:
    return json.loads(b or b"{}")


def _dumps(o: Any) -> bytes:
    return json.dumps(o).encode()


class BillingServer:
    """The fake, in-process: ``with BillingServer() as s: client = catalog_client(s.address)``."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, catalog: Catalog | None = None) -> None:
        self.catalog = catalog or Catalog()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="billing-fake"))
        self._server.add_generic_rpc_handlers((self._handlers(), self._control_handlers()))
        self.host = host
        self.port = self._server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"cannot bind the billing fake to {host}:{port}")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _handlers(self) -> grpc.GenericRpcHandler:
        c, v1 = self.catalog, billing_v1
        return grpc.method_handlers_generic_handler(SERVICE, {
            "ListServices": _unary(c.list_services, v1.ListServicesRequest.deserialize,
                                   v1.ListServicesResponse.serialize),
            "ListSkus": _unary(c.list_skus, v1.ListSkusRequest.deserialize, v1.ListSkusResponse.serialize),
        })

    def _control_handlers(self) -> grpc.GenericRpcHandler:
        c = self.catalog

        def reset(_r: dict[str, Any]) -> dict[str, Any]:
            c.reset()
            return {"ok": True}

        def configure(r: dict[str, Any]) -> dict[str, Any]:
            c.max_page_size = int(r.get("max_page_size") or c.max_page_size)
            return {"ok": True, "max_page_size": c.max_page_size}

        def calls(_r: dict[str, Any]) -> list[dict[str, Any]]:
            with c.lock:
                return list(c.calls)

        return grpc.method_handlers_generic_handler(CONTROL_SERVICE, {
            "Health": _unary(lambda _r: {"ok": True, "skus": len(c.skus)}, _loads, _dumps),
            "Reset": _unary(reset, _loads, _dumps),
            "SetPrice": _unary(lambda r: c.set_price(str(r["description"]), float(r["usd"])), _loads, _dumps),
            "AddFault": _unary(lambda r: c.fault_control("POST", r), _loads, _dumps),
            "Faults": _unary(lambda r: c.fault_control("GET", r), _loads, _dumps),
            "ClearFaults": _unary(lambda r: c.fault_control("DELETE", r), _loads, _dumps),
            "Configure": _unary(configure, _loads, _dumps),
            "Calls": _unary(calls, _loads, _dumps),
        })

    def start(self) -> BillingServer:
        self._server.start()
        log.info("billing catalog fake listening", address=self.address, skus=len(self.catalog.skus))
        return self

    def stop(self, grace: float = 1.0) -> None:
        self._server.stop(grace).wait(timeout=grace + 5)

    def __enter__(self) -> BillingServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def control_call(address: str, method: str, body: dict[str, Any] | None = None, timeout: float = 5.0) -> Any:
    """Call the fake's control service (Health, Reset, SetPrice, AddFault, Faults, ClearFaults,
    Configure, Calls) from any process."""
    with grpc.insecure_channel(address) as ch:
        call = ch.unary_unary(f"/{CONTROL_SERVICE}/{method}", request_serializer=_dumps, response_deserializer=_loads)
        return call(body or {}, timeout=timeout)
