"""terraform/ checked offline: no provider can be downloaded here, so nothing runs init/plan.

- the .tf files are parsed with python-hcl2 and their structure is checked (push subscriptions,
  public exposure, IAM allow-lists, labels, secrets, budget, Firestore);
- terraform/topology.tf (locals only) is evaluated by `terraform console`, which needs no provider,
  to prove every topology-shaped for_each yields exactly shared/spotleash/topology.json;
- checkov and `terraform fmt -check` run when they can;
- the function archive is built twice and must come out byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import hcl2
import pytest
from tests.support.tools import project_uv

ROOT = Path(__file__).resolve().parents[2]
TF = ROOT / "terraform"
TOPOLOGY = json.loads((ROOT / "shared" / "spotleash" / "topology.json").read_text())
TERRAFORM = shutil.which("terraform")
CHECKOV_VERSION = "3.3.30"

# Every role any spotleash identity may hold. Anything else is a review.
ALLOWED_ROLES = {
    "roles/datastore.user",  # functions: Firestore documents
    "roles/logging.logWriter",  # the VM and the build identity
    "roles/pubsub.publisher",  # on one topic each (dead-letter / budget / demand for failover)
    "roles/pubsub.subscriber",  # the Pub/Sub service agent, on source subscriptions (dead-lettering)
    "roles/run.invoker",  # the push identity on private functions; allUsers on on_heartbeat only
    "roles/secretmanager.secretAccessor",  # on one secret at a time
    "roles/iam.serviceAccountUser",  # the launcher, on the VM service account only
    "roles/iam.serviceAccountTokenCreator",  # Pub/Sub agent on the push account; the launcher on itself (signed URLs)
    "roles/artifactregistry.writer",  # the build identity, on our repository only
    "roles/storage.objectViewer",  # the build identity on the source bucket; sl-vm and the launcher on packages
    "roles/storage.objectUser",  # publishers (var.package_publishers), on the package bucket only
}
ALLOWED_COMPUTE_PERMISSIONS = {
    "compute.instances.create", "compute.instances.delete", "compute.instances.get", "compute.instances.list",
    "compute.instances.setLabels", "compute.instances.setMetadata", "compute.instances.setScheduling",
    "compute.instances.setServiceAccount", "compute.zoneOperations.get", "compute.disks.create",
    "compute.subnetworks.use", "compute.subnetworks.useExternalIp",
}
# Resource types that take labels: each must carry local.labels.
LABELLED_TYPES = {
    "google_pubsub_topic", "google_pubsub_subscription", "google_cloudfunctions2_function",
    "google_storage_bucket", "google_secret_manager_secret", "google_artifact_registry_repository",
}
PUBLIC_MEMBERS = {"allUsers", "allAuthenticatedUsers"}


# ---------------------------------------------------------------- parsing

def _clean(v: Any) -> Any:
    """hcl2 keeps HCL quoting ('"name"', '"${x}"') and bookkeeping keys; drop both."""
    if isinstance(v, dict):
        return {_unquote(k): _clean(x) for k, x in v.items() if k not in ("__is_block__", "__comments__")}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    if isinstance(v, str):
        return _unquote(v)
    return v


def _unquote(s: str) -> str:
    return s[1:-1] if len(s) >= 2 and s[0] == '"' and s[-1] == '"' else s


def _load() -> dict[str, Any]:
    out: dict[str, Any] = {"resource": {}, "variable": {}, "output": {}, "locals": {}, "files": {}}
    for path in sorted(TF.glob("*.tf")):
        with path.open() as f:
            doc = _clean(hcl2.load(f))
        for block in doc.get("resource", []):
            for rtype, named in block.items():
                for name, body in named.items():
                    assert name not in out["resource"].setdefault(rtype, {}), f"duplicate {rtype}.{name}"
                    out["resource"][rtype][name] = body
        for kind in ("variable", "output"):
            for block in doc.get(kind, []):
                out[kind].update(block)
        for block in doc.get("locals", []):
            for k, v in block.items():
                out["locals"][k] = v
                out["files"][k] = path.name
        out.setdefault("provider", []).extend(doc.get("provider", []))
    return out


TFDOC = _load()


def resources(rtype: str) -> dict[str, Any]:
    return TFDOC["resource"].get(rtype, {})


def block(body: dict[str, Any], name: str) -> dict[str, Any]:
    value = body.get(name)
    assert isinstance(value, list) and len(value) == 1, f"expected exactly one {name} block, got {value!r}"
    inner: dict[str, Any] = value[0]
    return inner


def expr(body: dict[str, Any], key: str) -> str:
    """An attribute as its Terraform expression text, without the ${ } wrapper."""
    value = str(body[key])
    m = re.fullmatch(r"\$\{(.*)\}", value, re.S)
    return m.group(1) if m else value


# ---------------------------------------------------------------- terraform console on topology.tf

@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Evaluate expressions over terraform/topology.tf in a scratch module (no provider needed)."""
    if TERRAFORM is None:
        pytest.skip("no terraform binary on PATH: the for_each evaluation needs `terraform console`")
    scratch = tmp_path_factory.mktemp("tfconsole")
    (scratch / "terraform").mkdir()
    (scratch / "shared" / "spotleash").mkdir(parents=True)
    shutil.copy(TF / "topology.tf", scratch / "terraform" / "topology.tf")
    shutil.copy(ROOT / "shared" / "spotleash" / "topology.json", scratch / "shared" / "spotleash" / "topology.json")
    env = {**os.environ, "TF_CLI_CONFIG_FILE": os.devnull, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"}

    def evaluate(expression: str) -> Any:
        proc = subprocess.run([TERRAFORM, "console"], input=f"jsonencode({expression})\n", text=True,
                              capture_output=True, cwd=scratch / "terraform", env=env, timeout=60)
        assert proc.returncode == 0, f"terraform console failed on {expression!r}: {proc.stderr}"
        return json.loads(json.loads(proc.stdout.strip()))

    return evaluate


def keys_of(value: Any) -> set[str]:
    return set(value) if isinstance(value, (dict, list)) else {value}


# ---------------------------------------------------------------- the topology is one truth

TOPOLOGY_TYPES = {
    "google_pubsub_topic": "topics",
    "google_pubsub_subscription": "subscriptions",
    "google_cloudfunctions2_function": "functions",
    "google_cloud_scheduler_job": "schedules",
}


def test_topology_is_read_from_the_shared_file() -> None:
    assert TFDOC["files"]["topology"] == "topology.tf"
    assert expr(TFDOC["locals"], "topology") == 'jsondecode(file("${path.module}/../shared/spotleash/topology.json"))'
    assert (TF / ".." / "shared" / "spotleash" / "topology.json").resolve().is_file()
    # topology.tf holds only locals, so it can be evaluated without providers or variables.
    text = (TF / "topology.tf").read_text()
    assert re.findall(r"^(\w+)\b", text, re.M) == ["locals"]
    assert "var." not in text


@pytest.mark.parametrize("rtype", sorted(TOPOLOGY_TYPES))
def test_topology_shaped_resources_iterate_over_topology_locals(rtype: str) -> None:
    found = resources(rtype)
    assert found, f"no {rtype} at all"
    for name, body in found.items():
        assert "for_each" in body, f"{rtype}.{name} is a literal resource outside the topology"
        ref = re.fullmatch(r"local\.(\w+)", expr(body, "for_each"))
        assert ref, f"{rtype}.{name}: for_each must be a topology local, got {body['for_each']}"
        assert TFDOC["files"][ref.group(1)] == "topology.tf", f"{rtype}.{name} iterates over a non-topology local"


@pytest.mark.parametrize("rtype", sorted(TOPOLOGY_TYPES))
def test_for_each_yields_exactly_the_topology(rtype: str, console: Any) -> None:
    section = TOPOLOGY_TYPES[rtype]
    expected = set(TOPOLOGY[section])
    produced: list[str] = []
    for body in resources(rtype).values():
        produced += keys_of(console(expr(body, "for_each")))
    assert len(produced) == len(set(produced)), f"{rtype}: a topology entry is created twice: {sorted(produced)}"
    assert set(produced) == expected, f"{rtype}: missing {expected - set(produced)}, extra {set(produced) - expected}"


def test_every_function_is_built_from_its_entry_point_with_topology_limits() -> None:
    (fn,) = resources("google_cloudfunctions2_function").values()
    assert expr(block(fn, "build_config"), "entry_point") == "each.key"
    sc = block(fn, "service_config")
    assert expr(sc, "timeout_seconds") == "each.value.timeout_s"
    assert "each.value.memory_mb" in sc["available_memory"]
    main = (ROOT / "functions" / "main.py").read_text()
    for name in TOPOLOGY["functions"]:
        assert re.search(rf"^def {name}\(", main, re.M), f"{name} is in the topology but not in functions/main.py"


def test_heartbeat_url_names_the_deployed_function() -> None:
    (fn,) = resources("google_cloudfunctions2_function").values()
    name_expr = expr(fn, "name")
    assert name_expr == 'replace(each.key, "_", "-")'
    url = TFDOC["locals"]["heartbeat_url"]
    assert url.endswith('.cloudfunctions.net/${replace(local.heartbeat_function, "_", "-")}'), url


def test_topology_locals_evaluate_as_designed(console: Any) -> None:
    assert set(console("local.public_functions")) == {"on_heartbeat"}
    assert console("local.heartbeat_function") == "on_heartbeat"
    assert set(console("local.dashboard_functions")) == {"on_dashboard"}
    assert set(console("local.vm_creators")) == {"on_demand"}
    assert set(console("local.vm_functions")) == {"on_demand", "on_release", "on_reap", "on_heartbeat"}
    publishes = console("local.function_publishes")
    assert {(v["function"], v["topic"]) for v in publishes.values()} == {
        ("on_reap", "spotleash-demand"), ("on_heartbeat", "spotleash-demand")}
    assert console("local.budget_topic") == "spotleash-budget"
    from spotleash.topology import load_topology

    topo = load_topology()  # the agent's topics are those its events go to (spotleash.adapters.pubsub)
    assert set(console("local.agent_topics")) == {topo.topic_of(k) for k in ("demand", "lease", "release", "reap")}
    roles = console("local.function_compute_roles")
    assert {(v["function"], v["role"]) for v in roles.values()} == {
        (f, r) for f, spec in TOPOLOGY["functions"].items() for r in spec["roles"]
    }
    sa_ids = console("local.function_sa_ids")
    assert all(re.fullmatch(r"[a-z][a-z0-9-]{4,28}[a-z0-9]", v) for v in sa_ids.values()), sa_ids


# ---------------------------------------------------------------- Pub/Sub

def test_every_push_subscription_has_oidc_retry_and_dead_letter() -> None:
    subs = resources("google_pubsub_subscription")
    push = {n: b for n, b in subs.items() if "push_config" in b}
    assert set(push) == {"push"} and expr(push["push"], "for_each") == "local.push_subscriptions"
    body = push["push"]
    pc = block(body, "push_config")
    oidc = block(pc, "oidc_token")
    assert expr(oidc, "service_account_email") == "google_service_account.push.email"
    assert "google_cloudfunctions2_function.fn[each.value.function].service_config[0].uri" in oidc["audience"]
    assert pc["push_endpoint"].endswith("/projects/${var.project}/topics/${each.value.topic}")
    dlp = block(body, "dead_letter_policy")
    assert expr(dlp, "dead_letter_topic") == "google_pubsub_topic.topic[local.topology.dead_letter_topic].id"
    assert expr(dlp, "max_delivery_attempts") == "each.value.max_delivery_attempts"
    rp = block(body, "retry_policy")
    assert "each.value.min_backoff_s" in rp["minimum_backoff"] and "each.value.max_backoff_s" in rp["maximum_backoff"]
    # Every subscription in the topology that pushes to a function has the numbers the policy needs.
    for name, s in TOPOLOGY["subscriptions"].items():
        if s["function"] is not None:
            assert 5 <= s["max_delivery_attempts"] <= 100, name
            assert 10 <= s["ack_deadline_s"] <= 600, name
            assert 0 < s["min_backoff_s"] <= s["max_backoff_s"] <= 600, name
        else:
            assert s["topic"] == TOPOLOGY["dead_letter_topic"], f"{name}: only the dead-letter store may be pull"


def test_pubsub_triggered_functions_have_no_eventarc_trigger_and_are_internal() -> None:
    (fn,) = resources("google_cloudfunctions2_function").values()
    assert "event_trigger" not in fn, "an Eventarc trigger's subscription cannot take a dead-letter policy"
    ingress = expr(block(fn, "service_config"), "ingress_settings")
    assert ingress == "local.function_ingress[each.key]"
    assert TFDOC["files"]["function_ingress"] == "topology.tf"


def test_ingress_is_internal_except_for_the_http_functions(console: Any) -> None:
    ingress = console("local.function_ingress")
    assert set(ingress) == set(TOPOLOGY["functions"])
    for name, spec in TOPOLOGY["functions"].items():
        want = "ALLOW_ALL" if spec["trigger"] == "http" else "ALLOW_INTERNAL_ONLY"
        assert ingress[name] == want, name


def test_dead_lettering_iam_for_the_pubsub_service_agent() -> None:
    pub = resources("google_pubsub_topic_iam_member")["dead_letter_publisher"]
    assert pub["topic"].endswith("[local.topology.dead_letter_topic].id}") and pub["member"] == "${local.pubsub_service_agent}"
    sub = resources("google_pubsub_subscription_iam_member")["dead_letter_subscriber"]
    assert expr(sub, "for_each") == "local.push_subscriptions" and sub["role"] == "roles/pubsub.subscriber"
    assert "gcp-sa-pubsub.iam.gserviceaccount.com" in TFDOC["locals"]["pubsub_service_agent"]


# ---------------------------------------------------------------- exposure and least privilege

def _iam_members() -> list[tuple[str, str, dict[str, Any]]]:
    return [(rtype, name, body) for rtype, named in TFDOC["resource"].items() if re.search(r"_iam_(member|binding)$", rtype)
            for name, body in named.items()]


def test_no_function_is_public_except_on_heartbeat() -> None:
    public = [(t, n, b) for t, n, b in _iam_members() if b.get("member") in PUBLIC_MEMBERS
              or any(m in PUBLIC_MEMBERS for m in b.get("members", []))]
    assert [(t, n) for t, n, _ in public] == [("google_cloud_run_v2_service_iam_member", "public_invoker")]
    body = public[0][2]
    assert expr(body, "for_each") == "local.public_functions" and body["role"] == "roles/run.invoker"
    assert [n for n, f in TOPOLOGY["functions"].items() if f.get("public")] == ["on_heartbeat"]
    assert TOPOLOGY["functions"]["on_heartbeat"]["trigger"] == "http"
    assert not any(t.endswith("_iam_binding") or t.endswith("_iam_policy") for t in TFDOC["resource"]), \
        "authoritative IAM would wipe grants Google makes itself"


def test_the_agent_may_publish_on_its_four_topics_only_and_only_as_a_named_principal() -> None:
    pub = resources("google_pubsub_topic_iam_member")["agent_publisher"]
    assert pub["role"] == "roles/pubsub.publisher"
    assert expr(pub, "topic") == "google_pubsub_topic.topic[each.value.topic].id"
    assert expr(pub, "member") == "each.value.member" and pub["member"] not in PUBLIC_MEMBERS
    assert "setproduct(local.agent_topics, var.agent_principals)" in expr(pub, "for_each")
    topics = TFDOC["locals"]["agent_topics"]
    for fn in ("on_demand", "on_lease", "on_release", "on_reap"):  # reap: the router's check of a lost box
        assert f'"{fn}"' in topics, topics
    assert "on_budget" not in topics and "dead_letter" not in topics
    var = TFDOC["variable"]["agent_principals"]
    assert var["default"] == []
    pattern = re.search(r'regex\("([^"]+)"', var["validation"][0]["condition"])
    assert pattern
    rx = re.compile(pattern.group(1).replace("\\\\", "\\"))
    for bad in ("allUsers", "allAuthenticatedUsers", "user:allUsers", "domain:example.com", ""):
        assert not rx.search(bad), f"agent_principals would accept {bad!r}"
    assert rx.search("serviceAccount:agent@p.iam.gserviceaccount.com") and rx.search("user:ana@example.com")


def test_the_dashboard_is_never_public_and_only_named_viewers_may_invoke_it() -> None:
    spec = TOPOLOGY["functions"]["on_dashboard"]
    assert spec["trigger"] == "http" and spec.get("public") is False and spec["roles"] == []
    invokers = {n: b for n, b in resources("google_cloud_run_v2_service_iam_member").items()}
    assert set(invokers) == {"push_invoker", "public_invoker", "dashboard_viewer"}
    viewer = invokers["dashboard_viewer"]
    assert viewer["role"] == "roles/run.invoker"
    assert expr(viewer, "member") == "each.value.member" and viewer["member"] not in PUBLIC_MEMBERS
    for_each = expr(viewer, "for_each")
    assert "setproduct(local.dashboard_functions, var.dashboard_viewers)" in for_each, for_each
    assert "google_cloudfunctions2_function.fn[each.value.function]" in viewer["name"]
    # the public invoker covers on_heartbeat alone, the push identity the Pub/Sub functions alone
    assert expr(invokers["public_invoker"], "for_each") == "local.public_functions"
    assert expr(invokers["push_invoker"], "for_each") == "local.pubsub_functions"
    # the viewers variable refuses the public principals: its condition's regex, run here
    var = TFDOC["variable"]["dashboard_viewers"]
    assert var["default"] == []
    cond = var["validation"][0]["condition"]
    pattern = re.search(r'regex\("([^"]+)"', cond)
    assert pattern, cond
    rx = re.compile(pattern.group(1).replace("\\\\", "\\"))
    for bad in ("allUsers", "allAuthenticatedUsers", "user:allUsers", "domain:example.com", ""):
        assert not rx.search(bad), f"dashboard_viewers would accept {bad!r}"
    for good in ("user:ana@example.com", "group:ops@example.com", "serviceAccount:x@p.iam.gserviceaccount.com"):
        assert rx.search(good), good


def test_dashboard_locals_evaluate_to_the_dashboard_alone(console: Any) -> None:
    assert set(console("local.dashboard_functions")) == {"on_dashboard"}
    assert set(console("local.public_functions")) == {"on_heartbeat"}
    ingress = console("local.function_ingress")
    assert ingress["on_dashboard"] == "ALLOW_ALL" and ingress["on_heartbeat"] == "ALLOW_ALL"


def test_every_role_is_in_the_allow_list() -> None:
    for rtype, name, body in _iam_members():
        role = body["role"]
        if role.startswith(("${google_project_iam_custom_role.compute", "${google_project_iam_custom_role.snapshot_")):
            continue  # custom roles: their permissions are checked one by one below
        assert role in ALLOWED_ROLES, f"{rtype}.{name} grants {role}"
    project_roles = {b["role"] for b in resources("google_project_iam_member").values()}
    assert not {r for r in project_roles if r.startswith("roles/") and r not in
                {"roles/datastore.user", "roles/logging.logWriter"}}, project_roles


def test_compute_custom_roles_are_minimal_and_only_vm_functions_hold_them() -> None:
    perms = TFDOC["locals"]["compute_permissions"]
    assert set(perms) == {"launcher", "deleter", "lister"}
    for role, granted in perms.items():
        assert set(granted) <= ALLOWED_COMPUTE_PERMISSIONS, f"{role}: {set(granted) - ALLOWED_COMPUTE_PERMISSIONS}"
    assert "compute.instances.create" in perms["launcher"]
    assert not any("create" in p for p in perms["deleter"] + perms["lister"])
    assert not any("delete" in p for p in perms["lister"])
    creators = {f for f, s in TOPOLOGY["functions"].items() if "launcher" in s["roles"]}
    deleters = {f for f, s in TOPOLOGY["functions"].items() if {"launcher", "deleter"} & set(s["roles"])}
    assert creators == {"on_demand"} and deleters == {"on_demand", "on_release", "on_reap", "on_heartbeat"}
    binding = resources("google_project_iam_member")["function_compute"]
    assert expr(binding, "for_each") == "local.function_compute_roles"
    assert binding["role"] == "${google_project_iam_custom_role.compute[each.value.role].id}"


def test_actas_only_on_the_vm_account_and_only_for_the_launcher() -> None:
    grants = resources("google_service_account_iam_member")
    act = {n: b for n, b in grants.items() if b["role"] == "roles/iam.serviceAccountUser"}
    assert list(act) == ["launcher_acts_as_vm"]
    assert act["launcher_acts_as_vm"]["service_account_id"] == "${google_service_account.vm.name}"
    assert expr(act["launcher_acts_as_vm"], "for_each") == "local.vm_creators"


def test_vm_service_account_may_only_write_logs_and_read_packages() -> None:
    vm_grants = sorted((t, n, b["role"]) for t, n, b in _iam_members() if "google_service_account.vm.email" in b.get("member", ""))
    assert vm_grants == [("google_project_iam_member", "vm_logging", "roles/logging.logWriter"),
                         ("google_storage_bucket_iam_member", "vm_package_reader", "roles/storage.objectViewer")]


def test_one_service_account_per_function() -> None:
    sa = resources("google_service_account")
    assert expr(sa["function"], "for_each") == "local.function_sa_ids"
    (fn,) = resources("google_cloudfunctions2_function").values()
    assert expr(block(fn, "service_config"), "service_account_email") == "google_service_account.function[each.key].email"


# ---------------------------------------------------------------- secrets, budget, labels, variables

SECRETISH = re.compile(r"(key|secret|token|password|passwd|credential|signing)", re.I)


def test_no_secret_looking_variable_has_a_default_and_no_secret_value_is_managed() -> None:
    for name, body in TFDOC["variable"].items():
        if SECRETISH.search(name):
            assert "default" not in body, f"variable {name} looks secret and has a default"
    assert "google_secret_manager_secret_version" not in TFDOC["resource"], "secret values must stay out of state"
    for name, body in TFDOC["output"].items():
        assert body.get("sensitive") is not True, f"output {name} would need to be sensitive: drop it"
        assert "secret_data" not in json.dumps(body)


def test_secrets_reach_functions_only_through_secret_manager() -> None:
    (fn,) = resources("google_cloudfunctions2_function").values()
    sc = block(fn, "service_config")
    env = sc["environment_variables"]
    assert not any(SECRETISH.search(k) and k != "SPOTLEASH_VM_SERVICE_ACCOUNT" for k in env), env
    keys = {s["key"] for s in sc["secret_environment_variables"]} | {
        d["secret_environment_variables"]["content"][0]["key"] for d in sc.get("dynamic", [])}
    assert keys == {"SPOTLEASH_HEARTBEAT_SIGNING_KEY", "SPOTLEASH_VAST_API_KEY"}


def test_budget_thresholds_default_to_20_50_100_and_alerts_go_to_the_budget_topic() -> None:
    assert TFDOC["variable"]["budget_thresholds_usd"]["default"] == [20, 50, 100]
    budget = resources("google_billing_budget")["spotleash"]
    rule = block(budget, "all_updates_rule")
    assert rule["pubsub_topic"] == "${google_pubsub_topic.topic[local.budget_topic].id}"
    assert resources("google_pubsub_topic_iam_member")["budget_publisher"]["member"] == \
        "serviceAccount:billing-budget-alert@system.gserviceaccount.com"


def test_labels_on_every_resource_that_takes_them() -> None:
    for rtype in LABELLED_TYPES:
        for name, body in resources(rtype).items():
            assert body.get("labels") == "${local.labels}", f"{rtype}.{name} lacks labels"
    (provider,) = TFDOC["provider"]
    assert provider["google"]["default_labels"] == "${local.labels}"


def test_variables_are_validated() -> None:
    must = {"project", "region", "zones", "deployment_id", "machine_type", "max_runtime_s",
            "monthly_budget_usd", "budget_thresholds_usd", "billing_account"}
    for name in must:
        assert "validation" in TFDOC["variable"][name], f"variable {name} has no validation"
    cond = TFDOC["variable"]["deployment_id"]["validation"][0]["condition"]
    assert "^[a-z0-9][a-z0-9_-]{0,62}$" in cond  # the same rule as spotleash.config.LABEL_VALUE
    from spotleash.config import LABEL_VALUE
    assert LABEL_VALUE == "^[a-z0-9][a-z0-9_-]{0,62}$"


def test_outputs_the_agent_needs() -> None:
    assert {"project", "topics", "heartbeat_url", "agent_env", "deployment_id"} <= set(TFDOC["output"])


# ---------------------------------------------------------------- Firestore

def test_ttl_on_audit_and_events() -> None:
    ttl = resources("google_firestore_field")["ttl"]
    assert {"audit", "events"} <= set(TFDOC["locals"]["firestore_ttl_collections"])
    assert ttl["field"] == "expire_at" and "ttl_config" in ttl
    store = (ROOT / "shared" / "spotleash" / "adapters" / "firestore.py").read_text()
    assert store.count('"expire_at"') >= 3, "the store no longer writes expire_at: TTL would never fire"


def test_composite_indexes_name_fields_the_store_really_queries() -> None:
    store = (ROOT / "shared" / "spotleash" / "adapters" / "firestore.py").read_text()
    queried = set(re.findall(r'FieldFilter\("(\w+)"', store))
    ordered = set(re.findall(r'order_by\("(\w+)", direction=firestore\.Query\.DESCENDING', store))
    indexes = TFDOC["locals"]["firestore_indexes"]
    for name, spec in indexes.items():
        fields = {f for f in spec["fields"] if not f.endswith(":desc")}
        descending = {f.removesuffix(":desc") for f in spec["fields"] if f.endswith(":desc")}
        assert fields <= queried, f"index {name} covers fields no query uses: {fields - queried}"
        assert descending <= ordered, f"index {name} orders by fields no query orders by: {descending - ordered}"
    assert ["deployment_id", "instance_id", "at:desc"] in [s["fields"] for s in indexes.values()]
    assert ["deployment_id", "state", "deadline"] in [s["fields"] for s in indexes.values()]
    db = resources("google_firestore_database")["main"]
    assert db["type"] == "FIRESTORE_NATIVE"


# ---------------------------------------------------------------- tools

def test_terraform_fmt() -> None:
    if TERRAFORM is None:
        pytest.skip("no terraform binary on PATH (CI image or /usr/local/bin/terraform provides one)")
    proc = subprocess.run([TERRAFORM, "fmt", "-check", "-recursive", "-diff", str(TF)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "TF_CLI_CONFIG_FILE": os.devnull})
    assert proc.returncode == 0, f"terraform fmt would change:\n{proc.stdout}"


def test_every_checkov_skip_has_a_written_reason() -> None:
    lines = (TF / ".checkov.yaml").read_text().splitlines()
    skips = [i for i, ln in enumerate(lines) if re.fullmatch(r"\s+- CKV\w*_\d+", ln)]
    assert skips, "no skip-check entries parsed"
    for i in skips:
        assert re.match(r"\s+# reason: .{40,}", lines[i - 1]), f"{lines[i].strip()} has no reason above it"


def test_checkov_passes() -> None:
    cmd = [project_uv(), "tool", "run", "--from", f"checkov=={CHECKOV_VERSION}", "--with-requirements",
           str(TF / "requirements-checkov.txt"), "checkov", "--config-file", str(TF / ".checkov.yaml"),
           "-d", str(TF), "--output", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    if proc.returncode != 0 and not proc.stdout.strip().startswith(("{", "[")):
        pytest.fail(f"checkov did not run: {proc.stderr[-2000:]}")
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [(c["check_id"], c["resource"]) for r in reports for c in r.get("results", {}).get("failed_checks", [])]
    passed = sum(r.get("summary", {}).get("passed", 0) for r in reports)
    assert failed == [], f"checkov failed checks: {failed}"
    assert passed >= 20, f"checkov passed only {passed} checks: did it parse terraform/?"


# ---------------------------------------------------------------- the function archive

def _build(root: Path, out: Path) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_function_archive.py"), "--root", str(root),
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return hashlib.sha256(out.read_bytes()).hexdigest()


def test_function_archive_is_deterministic(tmp_path: Path) -> None:
    first = _build(ROOT, tmp_path / "a.zip")
    second = _build(ROOT, tmp_path / "b.zip")
    assert first == second
    # A fresh checkout (other mtimes, a stray cache) gives the same bytes.
    copy = tmp_path / "copy"
    for part in ("functions", "shared/spotleash"):
        shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "uv.lock"):
        shutil.copy(ROOT / name, copy / name)
    for p in copy.rglob("*"):
        os.utime(p, (1_000_000_000, 1_000_000_000))
    (copy / "shared" / "spotleash" / "__pycache__").mkdir(exist_ok=True)
    (copy / "shared" / "spotleash" / "__pycache__" / "x.pyc").write_bytes(b"stale")
    assert _build(copy, tmp_path / "c.zip") == first

    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        names = zf.namelist()
        assert names == sorted(names)
        assert {"main.py", "requirements.txt", "spotleash/__init__.py", "spotleash/topology.json"} <= set(names)
        assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        reqs = zf.read("requirements.txt").decode().splitlines()
        assert any(r.startswith("functions-framework==") for r in reqs)
        assert not any(r.startswith(("pytest", "mypy", "ruff", "spotleash")) for r in reqs), "dev deps leaked"


# ---------------------------------------------------------------- the package bucket (issue 12)

def test_package_bucket_is_private_versioned_and_expires_old_archives() -> None:
    b = resources("google_storage_bucket")["packages"]
    assert b["uniform_bucket_level_access"] is True
    assert b["public_access_prevention"] == "enforced"
    assert b["versioning"][0]["enabled"] is True
    rules = b["lifecycle_rule"]
    assert any(r["condition"][0].get("with_state") == "ARCHIVED" for r in rules), "old pointer versions must go"
    assert any(r["condition"][0].get("matches_prefix") == ["packages/"] for r in rules), "old archives must go"


def test_only_vm_launcher_and_publishers_reach_the_package_bucket() -> None:
    grants = {n: b for n, b in resources("google_storage_bucket_iam_member").items()
              if b["bucket"] == "${google_storage_bucket.packages.name}"}
    assert set(grants) == {"vm_package_reader", "launcher_package_reader", "package_publisher", "snapshot_objects",
                           "snapshot_sweep"}
    assert grants["vm_package_reader"]["role"] == "roles/storage.objectViewer"
    assert grants["vm_package_reader"]["member"] == "serviceAccount:${google_service_account.vm.email}"
    assert grants["launcher_package_reader"]["role"] == "roles/storage.objectViewer"
    assert expr(grants["launcher_package_reader"], "for_each") == "local.vm_creators"
    assert grants["package_publisher"]["role"] == "roles/storage.objectUser"
    # sl-vm reads the package bucket and no other: no project-wide storage role for anyone.
    for body in resources("google_project_iam_member").values():
        assert "storage" not in body["role"], body
    others = [n for n, b in resources("google_storage_bucket_iam_member").items()
              if b["member"] == "serviceAccount:${google_service_account.vm.email}" and n != "vm_package_reader"]
    assert others == []


def test_publishers_must_be_named_principals() -> None:
    var = TFDOC["variable"]["package_publishers"]
    assert var["default"] == []
    assert "allUsers" in var["validation"][0]["error_message"]


def test_functions_learn_the_package_bucket_and_channel() -> None:
    env = resources("google_cloudfunctions2_function")["fn"]["service_config"][0]["environment_variables"]
    assert env["SPOTLEASH_PACKAGE_BUCKET"] == "${google_storage_bucket.packages.name}"
    assert env["SPOTLEASH_PACKAGE_CHANNEL"] == "${var.package_channel}"


# ---------------------------------------------------------------- network: the router's TLS front only


def _component_ports() -> set[int]:
    """Every port a component of an example app or the defaults listens on (on the instance's loopback)."""
    from spotleash.packaging.appspec import parse_app, read_toml

    ports: set[int] = set()
    for toml in (ROOT / "examples").glob("*/spotleash.toml"):
        app = parse_app(read_toml(toml)["app"], toml)
        ports |= {c.port for c in app.components} | {c.route_port for c in app.components if c.route_port}
    return ports


def _opened_ports(rule: dict[str, Any]) -> set[str]:
    return {str(p) for allow in rule.get("allow", []) for p in allow.get("ports", [])} | (
        {"all"} if any(not a.get("ports") for a in rule.get("allow", [])) else set())


def test_no_firewall_opens_a_component_port_or_anything_but_the_front() -> None:
    from spotleash.wire.agent_config import FRONT_PORT

    rules = resources("google_compute_firewall")
    assert set(rules) == {"front"}, "the TLS front is the one way in from outside the VPC"
    component_ports = {str(p) for p in _component_ports()}
    assert component_ports, "the examples declare component ports"
    for name, rule in rules.items():
        opened = _opened_ports(rule)
        assert opened == {"${tostring(var.front_port)}"}, f"{name} opens {opened}"
        assert not opened & component_ports and "all" not in opened
        assert expr(rule, "source_ranges") == "var.router_source_ranges"
        assert rule.get("direction", "INGRESS") == "INGRESS" and rule["target_tags"] == ["${local.front_tag}"]
    front = rules["front"]
    assert expr(front, "count") == "length(var.router_source_ranges) > 0 ? 1 : 0", "nothing opened unless asked"
    assert TFDOC["variable"]["router_source_ranges"]["default"] == []
    assert TFDOC["variable"]["front_port"]["default"] == FRONT_PORT
    for rule in rules.values():
        assert "0.0.0.0/0" not in json.dumps(rule), "no literal world-open range"


def test_vms_carry_the_tag_the_front_rule_targets() -> None:
    from spotleash.wire.agent_config import FRONT_TAG

    assert TFDOC["locals"]["front_tag"] == FRONT_TAG
    gce = (ROOT / "shared" / "spotleash" / "providers" / "gce" / "provider.py").read_text()
    assert "tags=compute_v1.Tags(items=[FRONT_TAG])" in gce


# ---------------------------------------------------------------- snapshots (issue 14)

def test_snapshot_objects_only_under_their_prefix_and_only_for_on_heartbeat() -> None:
    role = resources("google_project_iam_custom_role")["snapshot_objects"]
    assert sorted(role["permissions"]) == ["storage.objects.create", "storage.objects.delete", "storage.objects.get"]
    grant = resources("google_storage_bucket_iam_member")["snapshot_objects"]
    assert grant["bucket"] == "${google_storage_bucket.packages.name}"
    assert grant["role"] == "${google_project_iam_custom_role.snapshot_objects.id}"
    assert expr(grant, "for_each") == "local.snapshot_signers"
    assert TFDOC["locals"]["snapshot_signers"] == "${toset([\"on_heartbeat\"])}"
    cond = block(grant, "condition")
    assert cond["expression"] == r'resource.name.startsWith(\"${local.snapshot_prefix}\")'
    prefix = TFDOC["locals"]["snapshot_prefix"]
    assert prefix == "projects/_/buckets/${google_storage_bucket.packages.name}/objects/snapshots/"
    from spotleash.wire.snapshot import SNAPSHOT_PREFIX

    assert prefix.endswith(f"/objects/{SNAPSHOT_PREFIX}/")  # the prefix the control plane writes under
    # Nobody else gets a storage permission through a custom role; no list (retention deletes recorded names).
    assert not any("list" in p for p in role["permissions"])


def test_the_reaper_may_only_delete_snapshot_objects() -> None:
    role = resources("google_project_iam_custom_role")["snapshot_sweep"]
    assert role["permissions"] == ["storage.objects.delete"]
    grant = resources("google_storage_bucket_iam_member")["snapshot_sweep"]
    assert grant["role"] == "${google_project_iam_custom_role.snapshot_sweep.id}"
    assert grant["member"] == 'serviceAccount:${google_service_account.function["on_reap"].email}'
    cond = block(grant, "condition")
    assert cond["expression"] == r'resource.name.startsWith(\"${local.snapshot_prefix}\")'


def test_the_snapshot_signer_may_sign_as_itself_only() -> None:
    grant = resources("google_service_account_iam_member")["snapshot_signer_signs_urls"]
    assert grant["role"] == "roles/iam.serviceAccountTokenCreator"
    assert grant["service_account_id"] == "${google_service_account.function[each.key].name}"
    assert grant["member"] == "serviceAccount:${google_service_account.function[each.key].email}"
    assert expr(grant, "for_each") == "local.snapshot_signers"


def test_deleted_snapshot_versions_expire() -> None:
    rules = resources("google_storage_bucket")["packages"]["lifecycle_rule"]
    snap = [r["condition"][0] for r in rules if r["condition"][0].get("matches_prefix") == ["snapshots/"]]
    assert snap == [{"matches_prefix": ["snapshots/"], "with_state": "ARCHIVED", "days_since_noncurrent_time": 1}]
