"""Errors a user can cause are one sentence naming the fix, never "unexpected error"."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import google.api_core.exceptions as gexc
import google.auth.exceptions as gauth
import pytest

from spotleash.cli.user_errors import explain
from spotleash.packaging import extras

ROOT = Path(__file__).resolve().parents[3]


def _without(monkeypatch: pytest.MonkeyPatch, *gone: str) -> None:
    real = importlib.metadata.distribution

    def distribution(name: str) -> importlib.metadata.Distribution:
        if name in gone:
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)


def test_the_local_stack_without_its_extra_names_the_extra_and_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    _without(monkeypatch, "paramiko", "croniter")
    with pytest.raises(extras.MissingExtra) as e:
        extras.require("local", "the local stack")
    assert str(e.value) == ("the local stack needs spotleash's `local` extra (missing: croniter, paramiko): "
                            "run `pip install 'spotleash[local]'`")


def test_the_extras_are_read_from_the_distributions_own_metadata() -> None:
    assert {"paramiko", "croniter", "google-cloud-scheduler", "typer"} <= extras.distributions_of("local")
    assert extras.missing("local") == []  # the dev environment has every extra
    assert extras.extra_for_module("paramiko") == "ssh"  # the smallest extra that brings it
    assert extras.extra_for_module("google.cloud.scheduler") == "local"
    assert extras.extra_for_module("numpy") is None


@pytest.mark.parametrize(("error", "says"), [
    (ModuleNotFoundError("No module named 'paramiko'", name="paramiko"), "run `pip install 'spotleash[ssh]'`"),
    (gauth.DefaultCredentialsError("Your default credentials were not found"),
     "run `gcloud auth application-default login` for Google Cloud, or `spotleash local up` for the local stack"),
    (gauth.RefreshError("invalid_grant"), "run `gcloud auth application-default login` again"),
    (gexc.PermissionDenied("caller lacks pubsub.topics.publish"), "check SPOTLEASH_PROJECT"),
    (gexc.NotFound("Topic not found"), "`terraform -chdir=terraform apply`"),
    (gexc.ServiceUnavailable("connection refused"), "check the network"),
])
def test_library_errors_a_user_causes_become_one_sentence_with_the_fix(error: Exception, says: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    wrapped = RuntimeError("wrapper")
    wrapped.__cause__ = error
    for e in (error, wrapped):  # found in the cause chain too
        text = explain(e)
        assert text is not None and says in text and "\n" not in text


def test_a_stack_whose_emulators_are_gone_says_to_restart_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:1")
    assert "`spotleash local down && spotleash local up`" in (explain(gexc.ServiceUnavailable("refused")) or "")


def test_a_bug_is_not_explained_away() -> None:
    assert explain(KeyError("x")) is None


def test_status_without_credentials_or_stack_names_both_fixes(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "NO_GCE_CHECK": "true",
           "SPOTLEASH_STATE_DIR": str(tmp_path / "state"), "PYTHONPATH": str(ROOT / "shared")}
    done = subprocess.run([sys.executable, "-m", "spotleash.cli", "status"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stderr
    assert "unexpected" not in done.stderr
    assert ("error: no Google credentials were found and no local stack is up: run `gcloud auth "
            "application-default login` for Google Cloud, or `spotleash local up` for the local stack") in done.stderr
