"""What the rendered chart must say: replicas, probes, config, key handling, sidecar, etcd."""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import importlib
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("helm_python", reason="helm-python-sdk is not installed: pip install -e '.[helm]'")

from helmchart import (
    ADMIN_KEY,
    CHART,
    FULLNAME,
    NAMESPACE,
    PRODUCTION_VALUES,
    TENANT_KEY,
    TRIAL_VALUES,
    WORKER_KEY,
    Manifest,
    chart_defaults,
    container,
    find,
    flag,
    kinds,
    load_values,
    render,
    render_files,
    scenarios,
    walk,
)

from router.config import key_digest, load_config, parse_config

SECRETS_DIR = "/etc/lora-router/secrets"
ROUTER = f"{FULLNAME}-router"
ETCD = f"{FULLNAME}-etcd"
VLLM = f"{FULLNAME}-vllm"


def pod_spec(manifest: Manifest) -> dict[str, Any]:
    return manifest["spec"]["template"]["spec"]


def router_args(manifests: list[Manifest]) -> list[str]:
    return container(find(manifests, "Deployment", ROUTER), "router")["args"]


def rendered_config(manifests: list[Manifest]) -> dict[str, Any]:
    return yaml.safe_load(find(manifests, "ConfigMap", ROUTER)["data"]["config.yaml"])


def parse_cli(command: str, args: list[str]) -> argparse.Namespace:
    """Parse `args` with the real subcommand's parser, so the chart and the CLI cannot drift."""
    assert args[0] == command
    module = importlib.import_module(f"router.commands.{command}")
    parser = argparse.ArgumentParser(prog=f"lora-router {command}", exit_on_error=False)
    module.add_arguments(parser)
    return parser.parse_args(args[1:])


# --- router Deployment ------------------------------------------------------------------------

def test_router_replicas_default_and_hpa() -> None:
    assert find(render(None), "Deployment", ROUTER)["spec"]["replicas"] == 2
    assert find(render({"router": {"replicas": 4}}), "Deployment", ROUTER)["spec"]["replicas"] == 4
    production = render(load_values(PRODUCTION_VALUES))
    assert "replicas" not in find(production, "Deployment", ROUTER)["spec"], "the HPA owns replicas"
    hpa = find(production, "HorizontalPodAutoscaler", ROUTER)
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 10)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": ROUTER}
    assert "HorizontalPodAutoscaler" not in kinds(render(None))


def test_router_probes_and_ports() -> None:
    manifests = render(None)
    router = container(find(manifests, "Deployment", ROUTER), "router")
    assert router["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert router["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert router["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    service = find(manifests, "Service", FULLNAME)
    assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]
    pod_labels = find(manifests, "Deployment", ROUTER)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    pdb = find(manifests, "PodDisruptionBudget", ROUTER)
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


@pytest.mark.parametrize("scenario", scenarios().keys())
def test_router_command_line_matches_the_serve_cli(scenario: str) -> None:
    manifests = render(scenarios()[scenario])
    args = parse_cli("serve", router_args(manifests))
    assert (args.config, args.host, args.port) == ("/etc/lora-router/config/config.yaml", "0.0.0.0", 8000)
    assert args.router_id == "$(POD_NAME)"
    assert args.etcd_prefix == "/lora-router"
    env = container(find(manifests, "Deployment", ROUTER), "router")["env"]
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in env


def test_router_security_context_and_writable_dirs() -> None:
    deployment = find(render(None), "Deployment", ROUTER)
    pod = pod_spec(deployment)
    router = container(deployment, "router")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert router["securityContext"] == {
        "runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    mounts = {m["mountPath"]: m["name"] for m in router["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in ["/tmp", flag(router["args"], "--state-dir")]:
        assert volumes[mounts[path]] == {"name": mounts[path], "emptyDir": {}}
    assert pod["automountServiceAccountToken"] is False


# --- config ------------------------------------------------------------------------------------

@pytest.mark.parametrize("scenario", scenarios().keys())
def test_config_and_keys_are_mounted_as_directories_so_updates_reach_the_router(scenario: str) -> None:
    """A subPath mount is a copy the kubelet never updates: a rotated Secret would need a restart."""
    manifests = render(scenarios()[scenario])
    for manifest in manifests:
        if manifest["kind"] in ("Deployment", "StatefulSet"):
            for c in manifest["spec"]["template"]["spec"]["containers"]:
                assert all("subPath" not in m for m in c.get("volumeMounts", [])), (manifest["kind"], c["name"])
    deployment = find(manifests, "Deployment", ROUTER)
    mounts = {m["mountPath"]: m["name"] for m in container(deployment, "router")["volumeMounts"]}
    config_path = Path(flag(router_args(manifests), "--config"))
    volume = {v["name"]: v for v in pod_spec(deployment)["volumes"]}[mounts[str(config_path.parent)]]
    assert volume["configMap"]["name"] == ROUTER
    assert config_path.name in find(manifests, "ConfigMap", ROUTER)["data"]
    for path in config_key_files(rendered_config(manifests)):
        assert str(Path(path).parent) in mounts, path

def test_default_config_is_the_values_config() -> None:
    manifests = render(None)
    assert rendered_config(manifests) == chart_defaults()["config"]
    parse_config(find(manifests, "ConfigMap", ROUTER)["data"]["config.yaml"].encode(), "chart")


def test_production_config_is_the_values_config_plus_key_files() -> None:
    values = load_values(PRODUCTION_VALUES)
    manifests = render(values)
    expected = copy.deepcopy(values["config"])
    expected["auth"] = {"admin_keys_file": f"{SECRETS_DIR}/admin-keys"}
    for tenant in ("acme", "globex"):
        expected["tenants"][tenant]["keys_file"] = f"{SECRETS_DIR}/tenant-{tenant}-keys"
    expected["worker_api_key_file"] = f"{SECRETS_DIR}/worker-api-key"
    assert rendered_config(manifests) == expected
    loaded = parse_config(find(manifests, "ConfigMap", ROUTER)["data"]["config.yaml"].encode(), "chart")
    assert [a.name for a in loaded.adapters] == ["support-bot", "medical-triage"]
    assert loaded.placement.adapters["support-bot"].min_replicas == 3


def test_config_checksum_rolls_the_pods() -> None:
    files = render_files(None)
    configmap_text = next(text for name, text in files.items() if name.endswith("/router-configmap.yaml"))
    annotations = find(render(None), "Deployment", ROUTER)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/config"] == hashlib.sha256(configmap_text.encode()).hexdigest()
    changed = render({"config": {"control": {"tick_s": 1.0}}})
    changed_annotations = find(changed, "Deployment", ROUTER)["spec"]["template"]["metadata"]["annotations"]
    assert changed_annotations["checksum/config"] != annotations["checksum/config"]


# --- keys: referenced, never inlined -------------------------------------------------------------

def mounted_key_files(deployment: Manifest, container_name: str) -> dict[str, tuple[str, str]]:
    """Mounted path -> (Secret name, key) for every secret-backed file the container sees."""
    pod = pod_spec(deployment)
    volumes = {v["name"]: v for v in pod["volumes"]}
    files: dict[str, tuple[str, str]] = {}
    for mount in container(deployment, container_name)["volumeMounts"]:
        volume = volumes[mount["name"]]
        sources = [s["secret"] for s in volume.get("projected", {}).get("sources", []) if "secret" in s]
        if "secret" in volume:
            sources.append({"name": volume["secret"]["secretName"], "items": volume["secret"]["items"]})
        for source in sources:
            for item in source["items"]:
                files[f"{mount['mountPath']}/{item['path']}"] = (source["name"], item["key"])
    return files


def config_key_files(config: dict[str, Any]) -> set[str]:
    paths = {config.get("auth", {}).get("admin_keys_file"), config.get("worker_api_key_file")}
    paths |= {t.get("keys_file") for t in config.get("tenants", {}).values()}
    return paths - {None}


def test_production_keys_come_from_the_existing_secrets() -> None:
    manifests = render(load_values(PRODUCTION_VALUES))
    assert "Secret" not in kinds(manifests), "existing Secrets only: the chart makes none"
    files = mounted_key_files(find(manifests, "Deployment", ROUTER), "router")
    assert files == {
        f"{SECRETS_DIR}/admin-keys": ("lora-router-admin", "keys"),
        f"{SECRETS_DIR}/tenant-acme-keys": ("lora-router-tenant-acme", "keys"),
        f"{SECRETS_DIR}/tenant-globex-keys": ("lora-router-tenant-globex", "keys"),
        f"{SECRETS_DIR}/worker-api-key": ("vllm-api-key", "api-key"),
    }
    assert config_key_files(rendered_config(manifests)) == set(files)
    vllm = container(find(manifests, "Deployment", VLLM), "vllm")
    assert {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "vllm-api-key", "key": "api-key"}}} \
        in vllm["env"]


def test_inline_keys_live_only_in_the_chart_secret() -> None:
    manifests = render(TRIAL_VALUES)
    secret = find(manifests, "Secret", f"{FULLNAME}-keys")
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {"admin-keys": f"{ADMIN_KEY}\n", "tenant-acme-keys": f"{TENANT_KEY}\n",
                       "worker-api-key": f"{WORKER_KEY}\n"}
    secret_texts = set(secret["data"].values())
    for manifest in manifests:
        if manifest is secret:
            continue
        for node in walk(manifest):
            if isinstance(node, str):
                assert not any(key in node for key in (ADMIN_KEY, TENANT_KEY, WORKER_KEY)), manifest["kind"]
                assert node not in secret_texts, manifest["kind"]
    files = mounted_key_files(find(manifests, "Deployment", ROUTER), "router")
    assert set(files.values()) == {(secret["metadata"]["name"], key) for key in decoded}
    assert config_key_files(rendered_config(manifests)) == set(files)
    assert rendered_config(manifests)["tenants"]["acme"] == {
        "adapters": ["support-*"], "keys_file": f"{SECRETS_DIR}/tenant-acme-keys"}


def test_router_reads_the_mounted_key_files(tmp_path: Path) -> None:
    """Lay the chart's Secret out as the kubelet would and load the rendered config for real."""
    manifests = render(TRIAL_VALUES)
    secret = find(manifests, "Secret", f"{FULLNAME}-keys")
    files = mounted_key_files(find(manifests, "Deployment", ROUTER), "router")
    for path, (_name, key) in files.items():
        target = tmp_path / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(base64.b64decode(secret["data"][key]))
    text = find(manifests, "ConfigMap", ROUTER)["data"]["config.yaml"]
    config_file = tmp_path / "config.yaml"
    config_file.write_text(text.replace(SECRETS_DIR, str(tmp_path / SECRETS_DIR.lstrip("/"))))
    secrets = load_config(config_file).secrets
    assert secrets.admin_digests == {key_digest(ADMIN_KEY)}
    assert secrets.tenant_digests == {key_digest(TENANT_KEY): "acme"}
    assert secrets.worker_api_key == WORKER_KEY


def test_no_keys_no_secret_and_no_key_files() -> None:
    manifests = render(None)
    assert "Secret" not in kinds(manifests)
    assert mounted_key_files(find(manifests, "Deployment", ROUTER), "router") == {}
    assert config_key_files(rendered_config(manifests)) == set()


# --- workers and the registrar sidecar -----------------------------------------------------------

def test_registrar_sidecar_arguments() -> None:
    manifests = render(load_values(PRODUCTION_VALUES))
    workers = find(manifests, "Deployment", VLLM)
    registrar = container(workers, "registrar")
    args = registrar["args"]
    assert args[0] == "register"
    assert flag(args, "--etcd") == flag(router_args(manifests), "--etcd")
    assert flag(args, "--etcd-prefix") == flag(router_args(manifests), "--etcd-prefix")
    assert flag(args, "--worker-url") == "http://$(POD_IP):8000"
    assert flag(args, "--worker-id") == "$(POD_NAME)"
    assert (flag(args, "--slots"), flag(args, "--ttl"), flag(args, "--max-lora-rank")) == ("16", "10", "16")
    key_file = flag(args, "--api-key-file")
    assert mounted_key_files(workers, "registrar") == {key_file: ("vllm-api-key", "api-key")}
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in registrar["env"] if "valueFrom" in e}
    assert env == {"POD_NAME": "metadata.name", "POD_IP": "status.podIP"}
    assert registrar["image"] == "registry.example.com/ml/lora-router:0.1.0"
    assert registrar["securityContext"]["readOnlyRootFilesystem"] is True


def test_registrar_slots_default_to_max_loras_and_key_is_optional() -> None:
    manifests = render({"workers": {"vllm": {"enabled": True, "maxLoras": 6}}})
    args = container(find(manifests, "Deployment", VLLM), "registrar")["args"]
    assert flag(args, "--slots") == "6"
    assert "--api-key-file" not in args
    assert "VLLM_API_KEY" not in [e["name"] for e in container(find(manifests, "Deployment", VLLM), "vllm")["env"]]


def test_registrar_arguments_parse_with_the_register_cli() -> None:
    pytest.importorskip("router.commands.register", reason="the register command is not written yet")
    manifests = render(load_values(PRODUCTION_VALUES))
    args = parse_cli("register", container(find(manifests, "Deployment", VLLM), "registrar")["args"])
    assert args.worker_url == "http://$(POD_IP):8000"
    assert (args.slots, args.max_lora_rank, args.ttl) == (16, 16, 10)
    assert args.api_key_file == "/etc/lora-router/secrets/worker-api-key"


def test_vllm_worker_enables_runtime_lora_loading() -> None:
    manifests = render(load_values(PRODUCTION_VALUES))
    workers = find(manifests, "Deployment", VLLM)
    assert workers["spec"]["replicas"] == 4
    vllm = container(workers, "vllm")
    args = vllm["args"]
    assert "--enable-lora" in args
    assert (flag(args, "--max-loras"), flag(args, "--max-lora-rank")) == ("16", "16")
    assert flag(args, "--model") == "meta-llama/Llama-3.1-8B-Instruct"
    assert args[-4:] == ["--max-model-len", "8192", "--gpu-memory-utilization", "0.9"]
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in vllm["env"]
    assert vllm["image"].startswith("vllm/vllm-openai:v")
    assert "--api-key" not in args, "the key goes through VLLM_API_KEY, never argv"
    adapters = next(m for m in vllm["volumeMounts"] if m["name"] == "adapters")
    assert adapters == {"name": "adapters", "mountPath": "/adapters", "readOnly": True}


def test_no_workers_by_default() -> None:
    assert VLLM not in [m["metadata"]["name"] for m in render(None)]


# --- etcd --------------------------------------------------------------------------------------

def member_url(index: int, port: int) -> str:
    return f"http://{ETCD}-{index}.{ETCD}-headless.{NAMESPACE}.svc.cluster.local:{port}"


@pytest.mark.parametrize("members", [3, 5])
def test_etcd_members_and_initial_cluster(members: int) -> None:
    manifests = render({"etcd": {"replicas": members}})
    statefulset = find(manifests, "StatefulSet", ETCD)
    assert statefulset["spec"]["replicas"] == members
    assert statefulset["spec"]["serviceName"] == f"{ETCD}-headless"
    args = container(statefulset, "etcd")["args"]
    initial = next(a for a in args if a.startswith("--initial-cluster="))
    assert initial == "--initial-cluster=" + ",".join(f"{ETCD}-{i}={member_url(i, 2380)}" for i in range(members))
    assert "--name=$(POD_NAME)" in args and "--initial-cluster-state=new" in args
    assert flag(router_args(manifests), "--etcd") == ",".join(member_url(i, 2379) for i in range(members))
    assert find(manifests, "PodDisruptionBudget", ETCD)["spec"]["minAvailable"] == members // 2 + 1
    headless = find(manifests, "Service", f"{ETCD}-headless")
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True


def test_etcd_storage_and_anti_affinity() -> None:
    statefulset = find(render(load_values(PRODUCTION_VALUES)), "StatefulSet", ETCD)
    [claim] = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    mounts = container(statefulset, "etcd")["volumeMounts"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/var/lib/etcd"} in mounts
    [term] = pod_spec(statefulset)["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"].items() <= statefulset["spec"]["template"]["metadata"]["labels"].items()
    soft = pod_spec(find(render({"etcd": {"antiAffinity": "soft"}}), "StatefulSet", ETCD))["affinity"]
    assert list(soft["podAntiAffinity"]) == ["preferredDuringSchedulingIgnoredDuringExecution"]


def test_external_etcd_renders_no_etcd_objects() -> None:
    manifests = render(TRIAL_VALUES)
    assert "StatefulSet" not in kinds(manifests)
    assert not [m for m in manifests if m["metadata"]["name"].startswith(ETCD)]
    endpoints = ",".join(TRIAL_VALUES["etcd"]["external"]["endpoints"])
    assert flag(router_args(manifests), "--etcd") == endpoints
    assert flag(container(find(manifests, "Deployment", VLLM), "registrar")["args"], "--etcd") == endpoints


SECURED_ETCD = {"endpoints": ["https://etcd-a.example:2379", "https://etcd-b.example:2379"],
                "tls": {"existingSecret": "etcd-client-tls"},
                "auth": {"user": "lora-router", "existingSecret": "etcd-lora-router", "passwordKey": "pw"}}


def test_routers_and_registrars_reach_a_tls_and_password_etcd() -> None:
    """Each credential flag names a file mounted from the operator's Secrets, parsed by the real CLIs."""
    values = copy.deepcopy(TRIAL_VALUES)
    values["etcd"] = {"external": SECURED_ETCD}
    manifests = render(values)
    assert "StatefulSet" not in kinds(manifests)
    for deployment, name, command in ((ROUTER, "router", "serve"), (VLLM, "registrar", "register")):
        manifest = find(manifests, "Deployment", deployment)
        args = parse_cli(command, container(manifest, name)["args"])
        assert args.etcd == ",".join(SECURED_ETCD["endpoints"])
        assert args.etcd_user == "lora-router"
        files = mounted_key_files(manifest, name)
        assert {args.etcd_ca: files[args.etcd_ca], args.etcd_cert: files[args.etcd_cert],
                args.etcd_key: files[args.etcd_key], args.etcd_password_file: files[args.etcd_password_file]} == {
            "/etc/lora-router/etcd/ca.crt": ("etcd-client-tls", "ca.crt"),
            "/etc/lora-router/etcd/tls.crt": ("etcd-client-tls", "tls.crt"),
            "/etc/lora-router/etcd/tls.key": ("etcd-client-tls", "tls.key"),
            "/etc/lora-router/etcd/password": ("etcd-lora-router", "pw")}, (deployment, name)
    unsecured = render(TRIAL_VALUES)
    assert "--etcd-ca" not in router_args(unsecured) and "--etcd-user" not in router_args(unsecured)


def test_an_etcd_user_without_its_password_secret_is_refused() -> None:
    values = {"etcd": {"external": {"endpoints": ["https://etcd:2379"], "auth": {"user": "lora-router"}}}}
    with pytest.raises(Exception, match=r"auth\.existingSecret"):
        render(values)


def test_single_member_etcd_has_no_pdb() -> None:
    manifests = render({"etcd": {"replicas": 1}})
    assert find(manifests, "StatefulSet", ETCD)["spec"]["replicas"] == 1
    assert ETCD not in [m["metadata"]["name"] for m in manifests if m["kind"] == "PodDisruptionBudget"]


# --- network policy ------------------------------------------------------------------------------

def test_network_policy_lets_only_labelled_clients_reach_etcd() -> None:
    manifests = render(load_values(PRODUCTION_VALUES))
    policy = find(manifests, "NetworkPolicy", ETCD)
    client_selector = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    for name in (ROUTER, VLLM):
        labels = find(manifests, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert client_selector.items() <= labels.items(), name
    router_policy = find(manifests, "NetworkPolicy", ROUTER)
    assert router_policy["spec"]["ingress"][0]["from"] == load_values(PRODUCTION_VALUES)["networkPolicy"][
        "routerIngressFrom"]
    assert "NetworkPolicy" not in kinds(render(None))


def test_readme_sidecar_example_matches_the_chart() -> None:
    """The README's hand-written sidecar uses the flags, env and paths the chart's own sidecar uses."""
    readme = (CHART / "README.md").read_text()
    section = readme.split("## Adding the registrar to an existing vLLM Deployment", 1)[1]
    block = textwrap.dedent(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    example = yaml.safe_load(block)
    readme_registrar = next(c for c in example["containers"] if c["name"] == "registrar")
    manifests = render(load_values(PRODUCTION_VALUES))
    chart_registrar = container(find(manifests, "Deployment", VLLM), "registrar")

    def flags(args: list[str]) -> set[str]:
        return {a for a in args if a.startswith("--")}

    fetching = {"--cache-dir", "--cache-bytes", "--max-adapter-bytes", "--fetch-concurrency", "--metrics-port",
                "--allow-source", "--s3-region", "--s3-endpoint-url"}  # optional: the README's fetch section
    required = flags(chart_registrar["args"]) - {"--weight", "--health-failures", "--health-interval",
                                                  "--log-level", *fetching}
    assert required <= flags(readme_registrar["args"])
    for name in ("--worker-url", "--worker-id", "--api-key-file", "--etcd-prefix"):
        assert flag(readme_registrar["args"], name) == flag(chart_registrar["args"], name), name
    assert readme_registrar["env"] == [e for e in chart_registrar["env"] if "valueFrom" in e]
    assert readme_registrar["securityContext"].items() <= chart_registrar["securityContext"].items()
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "vllm"},
           "spec": {"containers": example["containers"], "volumes": example["volumes"]}}
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(pod, "1.28.0", strict=True)


def test_registrar_fetches_into_a_cache_volume_vllm_reads_with_credentials_from_a_secret() -> None:
    manifests = render(load_values(PRODUCTION_VALUES))
    workers = find(manifests, "Deployment", VLLM)
    registrar, vllm = container(workers, "registrar"), container(workers, "vllm")
    args = parse_cli("register", registrar["args"])
    assert (args.cache_dir, args.cache_bytes, args.max_adapter_bytes) == ("/adapter-cache", 100 << 30, 4 << 30)
    assert (args.allow_source, args.s3_region, args.metrics_port) == (["s3://ml-adapters/prod/"], "eu-west-1", 9464)
    mounts = {c["name"]: {m["name"]: m for m in c["volumeMounts"]} for c in (registrar, vllm)}
    assert mounts["registrar"]["adapter-cache"]["mountPath"] == "/adapter-cache"
    assert not mounts["registrar"]["adapter-cache"].get("readOnly")
    assert mounts["vllm"]["adapter-cache"] == {"name": "adapter-cache", "mountPath": "/adapter-cache",
                                               "readOnly": True}
    volumes = {v["name"]: v for v in pod_spec(workers)["volumes"]}
    assert volumes["adapter-cache"]["persistentVolumeClaim"] == {"claimName": "lora-adapter-cache"}
    assert registrar["envFrom"] == [{"secretRef": {"name": "adapter-store-credentials"}}]
    assert not any("AWS" in e["name"] for e in registrar["env"])
    assert registrar["resources"]["limits"]["memory"] == "1Gi"
    assert rendered_config(manifests)["security"]["allowed_source_prefixes"] == ["s3://ml-adapters/prod/"]


def test_fetch_off_by_default_and_an_empty_dir_cache_when_on_without_a_volume() -> None:
    off = render({"workers": {"vllm": {"enabled": True}}})
    assert "--cache-dir" not in container(find(off, "Deployment", VLLM), "registrar")["args"]
    on = render({"workers": {"vllm": {"enabled": True}, "registrar": {"fetch": {"enabled": True}}}})
    volumes = {v["name"]: v for v in pod_spec(find(on, "Deployment", VLLM))["volumes"]}
    assert volumes["adapter-cache"]["emptyDir"] == {"sizeLimit": "20Gi"}
    assert "envFrom" not in container(find(on, "Deployment", VLLM), "registrar")
