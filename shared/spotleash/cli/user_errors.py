"""Errors a user causes that arrive as a library's exception, not ours: one sentence each, with its fix.

The CLI asks ``explain`` before it calls anything "unexpected": no Google credentials, credentials
refused, a local stack whose env file is there but whose emulators are gone, a resource missing in the
project, a package of an extra not installed. ``None`` means it is none of these (a bug: the CLI says so).
"""

from __future__ import annotations

import os

from spotleash.packaging import extras

ADC_OR_STACK = ("run `gcloud auth application-default login` for Google Cloud, or `spotleash local up` for the "
                "local stack")


def _chain(e: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and cur not in out and len(out) < 10:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def explain(e: BaseException, project: str | None = None) -> str | None:
    """One sentence naming the fix for ``e`` (or anything in its cause chain), or None."""
    import google.api_core.exceptions as gexc
    import google.auth.exceptions as gauth

    local = bool(os.environ.get("PUBSUB_EMULATOR_HOST"))
    in_project = f" in project {project}" if project else ""
    for err in _chain(e):
        if isinstance(err, ModuleNotFoundError) and err.name:
            extra = extras.extra_for_module(err.name)
            if extra:
                return (f"this command needs spotleash's `{extra}` extra (the module {err.name} is missing): "
                        f"run `{extras.install_hint(extra)}`")
        if isinstance(err, gauth.DefaultCredentialsError):
            return f"no Google credentials were found and no local stack is up: {ADC_OR_STACK}"
        if isinstance(err, gauth.RefreshError):
            return ("Google refused your credentials (expired or revoked): run `gcloud auth application-default "
                    "login` again")
        if isinstance(err, gexc.ServiceUnavailable | gexc.DeadlineExceeded | gexc.RetryError):
            if local:
                return ("the local stack does not answer (its env file is there, its emulators are not): run "
                        "`spotleash local down && spotleash local up`")
            return f"Google Cloud did not answer ({_first_line(err)}): check the network, then try again"
        if isinstance(err, gexc.PermissionDenied | gexc.Forbidden | gexc.Unauthenticated):
            return (f"Google Cloud refused the call{in_project} ({_first_line(err)}): check SPOTLEASH_PROJECT and "
                    "that your account holds the roles Terraform grants")
        if isinstance(err, gexc.NotFound):
            return (f"{_first_line(err)}{in_project}: deploy the control plane (`terraform -chdir=terraform "
                    "apply`) or start the local stack (`spotleash local up`)")
    return None
