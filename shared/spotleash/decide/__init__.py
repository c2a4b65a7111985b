"""Pure decisions: no I/O. Each module is named like the service that acts on it
(``decide/reap.py`` <-> ``services/reap.py``)."""
