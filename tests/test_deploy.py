"""deploy/: the Kubernetes manifests parse, hang together (selectors, ports, names, secrets), and the gateway's
ConfigMap is a configuration aligngate itself accepts; kubeconform validates them when it is installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def _docs() -> list[dict]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                doc["__file__"] = path.name
                docs.append(doc)
    return docs


DOCS = _docs()


def one(kind: str, name: str) -> dict:
    found = [d for d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def workloads() -> list[dict]:
    return [d for d in DOCS if d["kind"] in ("Deployment", "StatefulSet")]


def test_every_manifest_parses_and_is_named():
    assert {p.name for p in DEPLOY.glob("*.yaml")} >= {"gateway.yaml", "redis.yaml", "vllm.yaml", "kustomization.yaml"}
    for d in DOCS:
        assert d.get("apiVersion") and d.get("kind"), d["__file__"]
        if d["kind"] != "Kustomization":
            assert d["metadata"].get("name"), d["__file__"]


def test_kustomization_lists_every_file():
    k = one_kustomization()
    assert sorted(k["resources"]) == sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")


def one_kustomization() -> dict:
    return [d for d in DOCS if d["kind"] == "Kustomization"][0]


def test_services_select_their_pods_and_ports():
    for svc in (d for d in DOCS if d["kind"] == "Service"):
        sel = svc["spec"]["selector"]
        matched = [w for w in workloads() if sel.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matched) == 1, f"Service {svc['metadata']['name']} selects {len(matched)} workloads"
        w = matched[0]
        assert sel.items() <= w["spec"]["selector"]["matchLabels"].items() or \
            w["spec"]["selector"]["matchLabels"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
        names = {p["name"] for c in w["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in names, (svc["metadata"]["name"], port)
    for w in workloads():
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert w["spec"]["selector"]["matchLabels"].items() <= labels.items(), w["metadata"]["name"]
        if w["kind"] == "StatefulSet":
            one("Service", w["spec"]["serviceName"])


def _gateway_env() -> dict:
    c = one("Deployment", "aligngate")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e for e in c["env"]}


def test_gateway_replicas_share_one_redis():
    dep = one("Deployment", "aligngate")
    assert dep["spec"]["replicas"] >= 2
    env = _gateway_env()
    url = urlsplit(env["ALIGNGATE_REDIS_URL"]["value"])
    svc = one("Service", url.hostname)
    assert url.port in [p["port"] for p in svc["spec"]["ports"]]
    assert svc["metadata"]["labels"]["app.kubernetes.io/component"] == "redis"


def test_gateway_secrets_exist():
    env = _gateway_env()
    secret = one("Secret", "aligngate-keys")
    for var in ("ALIGNGATE_ADMIN_KEY", "ALIGNGATE_API_KEYS"):
        ref = env[var]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "aligngate-keys" and ref["key"] in secret["stringData"]


def test_gateway_pod_probes_and_security():
    spec = one("Deployment", "aligngate")["spec"]["template"]["spec"]
    c = spec["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001  # the image's USER
    assert "command" not in c and "args" not in c, "the image's entrypoint is the documented command"
    assert c["ports"][0]["containerPort"] == int(_gateway_env()["ALIGNGATE_PORT"]["value"]) == 8000


def _gateway_config(tmp_path) -> Path:
    cm = one("ConfigMap", "aligngate-config")
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"])
    mounts = one("Deployment", "aligngate")["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert _gateway_env()["ALIGNGATE_CONFIG"]["value"].startswith(
        next(m["mountPath"] for m in mounts if m["name"] == "config") + "/")
    return path


def test_configmap_is_a_valid_aligngate_config(tmp_path, monkeypatch):
    for var in [v for v in __import__("os").environ if v.startswith("ALIGNGATE_")]:
        monkeypatch.delenv(var)
    from serve.config import Settings

    s = Settings(config=_gateway_config(tmp_path))
    assert [v.name for v in s.versions] == ["stable", "canary"]
    assert all(v.url for v in s.versions), "in the scale-out layout every version is a remote vLLM server"


def test_configured_backends_are_vllm_pods(tmp_path, monkeypatch):
    """Every backend URL in the config is `<statefulset>-<ordinal>.<headless service>:<port>` of a vLLM pod that
    exists at the StatefulSet's replica count, serving the model name the config asks for."""
    for var in [v for v in __import__("os").environ if v.startswith("ALIGNGATE_")]:
        monkeypatch.delenv(var)
    from serve.config import Settings

    s = Settings(config=_gateway_config(tmp_path))
    for v in s.versions:
        urls = v.backend_urls() if hasattr(v, "backend_urls") else [v.url]
        for u in urls:
            host = urlsplit(u)
            pod, _, service = host.hostname.partition(".")
            sts_name, _, ordinal = pod.rpartition("-")
            sts = one("StatefulSet", sts_name)
            assert sts["spec"]["serviceName"] == service
            assert one("Service", service)["spec"]["clusterIP"] == "None", "per-pod DNS needs a headless Service"
            assert int(ordinal) < sts["spec"]["replicas"], u
            args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
            assert args[args.index("--served-model-name") + 1] == v.remote_model
            assert args[args.index("--port") + 1] == str(host.port)


def test_vllm_backends_document_tensor_parallelism():
    for sts in (d for d in DOCS if d["kind"] == "StatefulSet" and d["metadata"]["name"].startswith("vllm-")):
        c = sts["spec"]["template"]["spec"]["containers"][0]
        tp = int(c["args"][c["args"].index("--tensor-parallel-size") + 1])
        assert int(c["resources"]["limits"]["nvidia.com/gpu"]) == tp
    text = (DEPLOY / "README.md").read_text() + (DEPLOY / "vllm.yaml").read_text()
    assert "tensor-parallel-size" in text and "ray" in text.lower()


def test_readme_explains_the_layout_and_the_session_caveat():
    text = (DEPLOY / "README.md").read_text()
    for needle in ("Redis", "replicas", "setsid", "autogroup", "x-session-id", "ALIGNGATE_ALLOW_OPEN"):
        assert needle in text, needle


def test_kubeconform():
    exe = shutil.which("kubeconform")
    if exe is None:
        pytest.skip("kubeconform not installed (optional: https://github.com/yannh/kubeconform)")
    files = [str(p) for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml"]
    r = subprocess.run([exe, "-strict", "-summary", "-ignore-missing-schemas", *files], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
