"""``spotleash dashboard``: serve the dashboard on 127.0.0.1 and print its URL (with the token) once."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from spotleash.clock import utcnow
from spotleash.dashboard.local import DashboardServer
from spotleash.dashboard.view import DashboardStore, RoutesSource, build_view, gather
from spotleash.decide.ledger import PriceLookup

if TYPE_CHECKING:
    from spotleash.config import Settings


def state_source(store: DashboardStore, monthly_budget_usd: float, *, price: PriceLookup | None = None,
                 routes: RoutesSource | None = None, placed: RoutesSource | None = None) -> Callable[[], dict[str, Any]]:
    """A callable giving the view as of now: one store read per call."""
    def state() -> dict[str, Any]:
        return build_view(gather(store, utcnow(), monthly_budget_usd=monthly_budget_usd, price=price, routes=routes,
                                 placed=placed))

    return state


def cloud_state(settings: Settings, store: DashboardStore) -> Callable[[], dict[str, Any]]:
    """The view as the deployment sees it (Firestore, Spot prices from the Billing Catalog for unpriced records),
    and, on the machine whose agent routes the traffic, that agent's routes and local copies (its router's
    admin port, ``SPOTLEASH_ROUTER_ADMIN_PORT``)."""
    from spotleash.pricing.book import PriceBook, PriceCache
    from spotleash.router.status import read_components, read_routes

    book = PriceBook.from_settings(settings, utcnow, store if isinstance(store, PriceCache) else None)
    port = settings.router_admin_port
    return state_source(store, settings.monthly_budget_usd, price=book.lookup,
                        routes=(lambda: read_routes(port)) if port else None,
                        placed=(lambda: read_components(port)) if port else None)


def dashboard_command(settings: Settings, port: int, *, print_url: Callable[[str], None] = print) -> int:
    from spotleash.adapters.firestore import FirestoreStore

    server = DashboardServer(cloud_state(settings, FirestoreStore.from_settings(settings)), port=port)
    print_url(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
    return 0
