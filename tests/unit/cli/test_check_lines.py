"""``spotleash check``'s lines that need no running part: what a missing setting, an exceeded budget or
missing credentials say, and that one ✗ fails the whole check."""

from __future__ import annotations

from pathlib import Path

import pytest

from spotleash.cli import check_probes as check
from spotleash.config import load_settings


@pytest.fixture(autouse=True)
def _no_stack_no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST", "STORAGE_EMULATOR_HOST",
                "GOOGLE_APPLICATION_CREDENTIALS", "SPOTLEASH_VAST_API_KEY", "SPOTLEASH_HEARTBEAT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    monkeypatch.chdir(tmp_path)


def test_no_credentials_and_no_stack_names_both_fixes_and_skips_what_needs_them() -> None:
    lines = check.run_checks(load_settings(package_bucket="b"))
    by = {line.part: line for line in lines}
    creds = by["credentials and project"]
    assert creds.ok is False and "gcloud auth application-default login" in creds.fix and "spotleash local up" in creds.fix
    assert by["functions (a dry-run demand)"].ok is None and "fix 'credentials and project' first" in \
        by["functions (a dry-run demand)"].detail
    assert not check.passed(lines)


def test_a_vast_key_is_only_required_when_a_component_needs_a_gpu() -> None:
    assert check.vast_key(load_settings(), local=False).ok is True
    line = check.vast_key(load_settings(components=["vision"], gpu_components=["vision"]), local=False)
    assert line.ok is False and "SPOTLEASH_VAST_API_KEY" in line.fix


def test_no_heartbeat_url_fails_with_where_to_find_it() -> None:
    line = check.heartbeat_url(load_settings(), local=False)
    assert line.ok is False and "Terraform's output heartbeat_url" in line.fix


@pytest.mark.parametrize(("doc", "ok"), [(None, True), ({"exceeded": False, "cost": 10, "budget": 50}, True),
                                         ({"exceeded": True, "cost": 60, "budget": 50}, False)])
def test_the_budget_line_follows_the_last_billing_alert(doc: dict[str, object] | None, ok: bool) -> None:
    line = check.budget(load_settings(), doc)
    assert line.ok is ok and "$50/month guard" in line.detail
    assert ok or "raise the budget" in line.fix


def test_google_only_lines_are_not_checked_on_the_local_stack() -> None:
    s = load_settings()
    for probe in (check.apis, check.vm_read_access, check.spot_quota):
        line = probe(s, True)
        assert (line.ok, line.detail) == (None, "not checked on the local stack")
    assert check.passed([check.Line("x", None, "not checked"), check.Line("y", True, "ok")])
