"""The Billing Catalog fake's errors: each one is a gRPC status the client raises as its own exception."""

from __future__ import annotations

import grpc


class CatalogFault(Exception):
    """Answer the call with ``code`` and ``message`` (as the real API would, e.g. NOT_FOUND, INVALID_ARGUMENT)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


def invalid(message: str) -> CatalogFault:
    return CatalogFault(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> CatalogFault:
    return CatalogFault(grpc.StatusCode.NOT_FOUND, message)


def unimplemented(message: str) -> CatalogFault:
    return CatalogFault(grpc.StatusCode.UNIMPLEMENTED, message)
