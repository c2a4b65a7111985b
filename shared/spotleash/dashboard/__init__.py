"""The dashboard: a read-only web page over the store and the cost ledger.

- ``view``: what the page shows, as one JSON document built by a pure function (``build_view``) from
  what ``gather`` read out of the store;
- ``web``: the page's routes (``/``, ``assets/...``, ``api/state``), framework-neutral, with the
  security headers; served by the ``on_dashboard`` Cloud Function (behind Cloud Run's invoker check)
  and by ``local``;
- ``local``: ``spotleash dashboard``, a loopback-only server that wants a random token in the path;
- ``static/``: the page, its stylesheet and its script; nothing is loaded from anywhere else.
"""
