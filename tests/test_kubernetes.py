"""deploy/kubernetes/: the manifests, rendered and checked offline.

The base and every overlay are rendered with `kubectl kustomize` (the overlays' secretGenerator
inputs made from the committed examples, in a copy of the tree), and every rendered object is
validated against the Kubernetes OpenAPI schemas of KUBERNETES_VERSION (kubernetes-validate,
strict: an unknown field is an error). Then the facts that matter and could regress: resources,
probes, non-root pods, no committed secret, references that resolve, the autoscaler, the
disruption budget and the network policies selecting the right pods, and command lines that
`promote` itself accepts. No cluster is involved: what admission, scheduling or a real rollout
would do is not exercised here.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import pytest
import yaml

from promotion.cli import cli
from promotion.policy.load import load_policy
from promotion.serve.app import LOG_CLOSE_TIMEOUT
from promotion.serve.shadow import SHADOW_STOP_TIMEOUT

REPO = Path(__file__).resolve().parent.parent
KUBE = REPO / "deploy" / "kubernetes"
# The schemas every object is checked against: the minor version of the kubectl the tests use.
KUBERNETES_VERSION = "1.32"
OVERLAYS = sorted(p.parent.name for p in (KUBE / "overlays").glob("*/kustomization.yaml"))
TARGETS = ["base", *(f"overlays/{name}" for name in OVERLAYS)]
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
TRACKING = "mlflow-server"
SERVE = "promote-serve"
Doc = dict[str, Any]


# -- rendering ------------------------------------------------------------------------------------


def kustomizations() -> Iterator[tuple[Path, Doc]]:
    for path in sorted(KUBE.rglob("kustomization.yaml")):
        yield path, yaml.safe_load(path.read_text(encoding="utf-8"))


def secret_sources(kustomization: Doc) -> list[str]:
    return [source for generator in kustomization.get("secretGenerator") or []
            for source in [*(generator.get("envs") or []), *(generator.get("files") or [])]]


@pytest.fixture(scope="module")
def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed: the manifests cannot be rendered here "
                    "(kubectl >= 1.27 bundles kustomize v5)")
    return path


@pytest.fixture(scope="module")
def rendered(kubectl: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Doc]]:
    """Every target's objects, rendered from a copy of the tree whose secretGenerator inputs are
    the committed examples (never whatever real .env files lie in the working tree)."""
    tree = tmp_path_factory.mktemp("kubernetes") / "kubernetes"
    shutil.copytree(KUBE, tree, ignore=shutil.ignore_patterns("*.env"))
    for path, kustomization in kustomizations():
        for source in secret_sources(kustomization):
            example = KUBE / "secrets" / f"{Path(source).name}.example"
            assert example.is_file(), f"{path}: no example {example.relative_to(REPO)}"
            shutil.copy(example, tree / path.parent.relative_to(KUBE) / source)
    out = {}
    for target in TARGETS:
        proc = subprocess.run([kubectl, "kustomize", str(tree / target)], capture_output=True,
                              text=True, timeout=120, check=False)
        assert proc.returncode == 0, f"kubectl kustomize {target}: {proc.stderr}"
        out[target] = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    return out


def objects(docs: list[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def named(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [doc for doc in objects(docs, kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def template(workload: Doc) -> Doc:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return dict(spec["template"])


def pods(docs: list[Doc]) -> list[tuple[Doc, Doc]]:
    """(workload, pod template) of every workload."""
    return [(doc, template(doc)) for doc in docs if doc["kind"] in WORKLOADS]


def containers(pod: Doc) -> list[Doc]:
    return [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]


def labels(pod: Doc) -> dict[str, str]:
    return dict(pod["metadata"].get("labels") or {})


def selects(selector: Doc, pod_labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels and matchExpressions) selects these labels."""
    if any(pod_labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], \
            expression.get("values") or []
        ok = {"In": key in pod_labels and pod_labels[key] in values,
              "NotIn": pod_labels.get(key) not in values,
              "Exists": key in pod_labels, "DoesNotExist": key not in pod_labels}[operator]
        if not ok:
            return False
    return True


def selected(docs: list[Doc], selector: Doc) -> set[str]:
    """Names of the workloads whose pods the selector selects."""
    return {w["metadata"]["name"] for w, pod in pods(docs) if selects(selector, labels(pod))}


def env(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env") or []}


def config_data(docs: list[Doc], container: Doc) -> dict[str, str]:
    """The ConfigMap data a container gets through envFrom."""
    data: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            data.update(named(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    return data


def parse_promote(args: list[str]) -> tuple[str, click.Context]:
    """The subcommand and its parsed parameters, exactly as `promote ARGS` would parse them
    (options, types and ranges; the command itself is not run)."""
    parent = click.Context(cli, info_name="promote")
    command = cli.get_command(parent, args[0])
    assert command is not None, f"`promote {args[0]}` is not a command"
    return args[0], command.make_context(args[0], list(args[1:]), parent=parent)


def dockerfile_uid(path: Path) -> int:
    found = re.findall(r"--uid (\d+)", path.read_text(encoding="utf-8"))
    assert len(found) == 1, f"{path}: expected one useradd --uid"
    return int(found[0])


def quantity(value: str | int | float) -> float:
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
             "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


# -- schemas and rendering ------------------------------------------------------------------------


def test_every_target_renders_and_every_object_is_valid_kubernetes(rendered):
    problems = []
    for target, docs in rendered.items():
        assert docs, f"{target} renders nothing"
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError,
                    kubernetes_validate.InvalidSchemaError) as exc:
                where = "/".join(str(p) for p in getattr(getattr(exc, "caught", None), "path",
                                                         []))
                problems.append(f"{target}: {doc['kind']} {doc['metadata']['name']}: "
                                f"{where}: {getattr(exc, 'message', exc)}")
    assert not problems, "\n".join(problems)


def test_every_overlay_runs_in_its_own_restricted_namespace(rendered):
    seen = set()
    for overlay in OVERLAYS:
        docs = rendered[f"overlays/{overlay}"]
        namespace = objects(docs, "Namespace")
        assert len(namespace) == 1, overlay
        name = namespace[0]["metadata"]["name"]
        assert namespace[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == \
            "restricted"
        others = {doc["metadata"].get("namespace") for doc in docs if doc["kind"] != "Namespace"}
        assert others == {name}, f"{overlay}: objects outside namespace {name}: {others}"
        seen.add(name)
    assert len(seen) == len(OVERLAYS), "two overlays share a namespace"


# -- pods ------------------------------------------------------------------------------------------


def test_every_container_has_resource_requests_within_limits(rendered):
    for target, docs in rendered.items():
        for workload, pod in pods(docs):
            for container in containers(pod):
                where = f"{target}: {workload['metadata']['name']}/{container['name']}"
                resources = container.get("resources") or {}
                for resource in ("cpu", "memory"):
                    request = (resources.get("requests") or {}).get(resource)
                    limit = (resources.get("limits") or {}).get(resource)
                    assert request is not None and limit is not None, \
                        f"{where}: no {resource} request or limit"
                    assert quantity(request) <= quantity(limit), \
                        f"{where}: {resource} request {request} above its limit {limit}"


def test_every_pod_runs_as_the_images_non_root_user(rendered):
    uids = {"promote/mlflow-server": dockerfile_uid(REPO / "deploy" / "Dockerfile"),
            "promote/promote": dockerfile_uid(KUBE / "serve.Dockerfile")}
    for target, docs in rendered.items():
        for workload, pod in pods(docs):
            spec = pod["spec"]
            where = f"{target}: {workload['metadata']['name']}"
            assert spec.get("automountServiceAccountToken") is False, where
            # Service links would put MLFLOW_SERVER_PORT=tcp://... into the tracking server.
            assert spec.get("enableServiceLinks") is False, where
            for container in containers(pod):
                context = {**(spec.get("securityContext") or {}),
                           **(container.get("securityContext") or {})}
                assert context.get("runAsNonRoot") is True, f"{where}: runAsNonRoot"
                image = container["image"].rsplit(":", 1)[0].rsplit("/", 2)[-2:]
                assert context.get("runAsUser") == uids["/".join(image)], \
                    f"{where}: runAsUser is not the user of the image's Dockerfile"
                assert context.get("allowPrivilegeEscalation") is False, where
                assert context.get("readOnlyRootFilesystem") is True, where
                assert context.get("capabilities", {}).get("drop") == ["ALL"], where
                assert context.get("seccompProfile", {}).get("type") == "RuntimeDefault", where


def test_long_running_pods_are_ready_when_health_says_so(rendered):
    for target, docs in rendered.items():
        deployments = objects(docs, "Deployment")
        assert {d["metadata"]["name"] for d in deployments} == {TRACKING, SERVE}, target
        for deployment in deployments:
            for container in template(deployment)["spec"]["containers"]:
                ports = {p["name"]: p["containerPort"] for p in container["ports"]}
                probe = container["readinessProbe"]["httpGet"]
                assert probe["path"] == "/health", f"{target}: {container['name']}"
                assert probe["port"] in ports, f"{target}: probe port is not a container port"
                assert "livenessProbe" in container, f"{target}: {container['name']}"


def test_a_serve_replica_is_never_killed_for_loading_or_a_registry_outage(rendered):
    """/health is 503 until a version is loaded (and a replica waits for a loadable version,
    however long): liveness and start-up must ask something that does not depend on it."""
    for target, docs in rendered.items():
        container = template(named(docs, "Deployment", SERVE))["spec"]["containers"][0]
        for probe in ("livenessProbe", "startupProbe"):
            path = container[probe]["httpGet"]["path"]
            assert path not in {"/health", "/ping"}, f"{target}: {probe} on {path}"
            assert path == "/metrics", f"{target}: {probe} on {path}"


def test_serve_stops_cleanly_within_its_grace_period(rendered):
    """SIGTERM: uvicorn's graceful shutdown, then the shadow worker and the log's last writes,
    after the preStop pause. The kubelet must not SIGKILL before that."""
    server = (REPO / "promotion" / "serve" / "server.py").read_text(encoding="utf-8")
    graceful = re.findall(r"timeout_graceful_shutdown=(\d+)", server)
    assert len(graceful) == 1, "promote serve's graceful shutdown timeout moved: update this"
    for target, docs in rendered.items():
        pod = template(named(docs, "Deployment", SERVE))["spec"]
        pause = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
        worst = pause + int(graceful[0]) + SHADOW_STOP_TIMEOUT + LOG_CLOSE_TIMEOUT
        assert pod["terminationGracePeriodSeconds"] > worst, target


def test_the_serve_command_line_is_one_promote_accepts(rendered):
    for target, docs in rendered.items():
        pod = template(named(docs, "Deployment", SERVE))
        container = pod["spec"]["containers"][0]
        assert container["command"] == ["promote"], target
        name, ctx = parse_promote(container["args"])
        assert name == "serve", target
        assert ctx.params["host"] == "0.0.0.0", f"{target}: unreachable from outside the pod"
        ports = {p["containerPort"] for p in container["ports"]}
        assert ports == {ctx.params["port"]}, f"{target}: --port is not the container port"
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        cache = str(ctx.params["cache_dir"])
        assert cache in mounts, f"{target}: --cache-dir {cache} is not a mounted volume"
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert {"emptyDir", "persistentVolumeClaim"} & set(volumes[mounts[cache]]), target
        # With replicas, a webhook reaches one of them: the others must keep polling often.
        assert ctx.params["poll_interval"] is not None, f"{target}: --poll-interval unset"


# -- secrets and configuration ---------------------------------------------------------------------


def test_no_secret_value_is_committed():
    for path in KUBE.rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            assert not (doc and doc.get("kind") == "Secret"), f"{path}: a Secret with its data"
    sources = []
    for path, kustomization in kustomizations():
        for generator in kustomization.get("secretGenerator") or []:
            assert "literals" not in generator, f"{path}: secret literals in a committed file"
        sources += [path.parent / source for source in secret_sources(kustomization)]
    assert sources, "no secretGenerator reads a file"
    patterns = [line for line in (KUBE / ".gitignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for source in sources:
        assert any(fnmatch.fnmatch(source.name, p) for p in patterns), \
            f"{source.relative_to(REPO)} is not matched by deploy/kubernetes/.gitignore"
        if shutil.which("git") and (REPO / ".git").exists():  # and nothing overrides it
            proc = subprocess.run(["git", "check-ignore", "-q", str(source)], cwd=REPO,
                                  check=False)
            assert proc.returncode == 0, f"{source.relative_to(REPO)} is not git-ignored"
    for example in (KUBE / "secrets").glob("*.env.example"):
        for line in example.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.startswith("#"):
                key, _, value = line.partition("=")
                assert value == "" or "PASSWORD@" in value, \
                    f"{example.name}: {key} has a value; examples hold placeholders only"


def test_every_secret_and_config_reference_resolves(rendered):
    for overlay in OVERLAYS:
        docs = rendered[f"overlays/{overlay}"]
        data = {(doc["kind"], doc["metadata"]["name"]): doc.get("data") or {}
                for doc in docs if doc["kind"] in {"Secret", "ConfigMap"}}
        for workload, pod in pods(docs):
            where = f"{overlay}: {workload['metadata']['name']}"
            for container in containers(pod):
                for variable in env(container).values():
                    for kind, ref in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                        key_ref = (variable.get("valueFrom") or {}).get(ref)
                        if key_ref and not key_ref.get("optional"):
                            assert key_ref["key"] in data.get((kind, key_ref["name"]), {}), \
                                f"{where}: {variable['name']} from a missing {kind} key"
                for source in container.get("envFrom") or []:
                    ref = source.get("configMapRef") or source.get("secretRef")
                    kind = "ConfigMap" if "configMapRef" in source else "Secret"
                    assert (kind, ref["name"]) in data, f"{where}: no {kind} {ref['name']}"
            for volume in pod["spec"].get("volumes") or []:
                if "configMap" in volume:
                    assert ("ConfigMap", volume["configMap"]["name"]) in data, where


def compose_service(name: str) -> dict:
    """A service of the compose stack as compose sees it: deploy/services.yaml's definition with
    what deploy/compose.yaml adds to it (`extends`)."""
    def load(file: str) -> dict:
        text = (REPO / "deploy" / file).read_text(encoding="utf-8")
        return yaml.safe_load(text)["services"][name]

    base, top = load("services.yaml"), load("compose.yaml")
    merged = {**base, **{k: v for k, v in top.items() if k != "extends"}}
    merged["environment"] = {**base.get("environment", {}), **top.get("environment", {})}
    return merged


def test_the_tracking_server_is_configured_like_the_compose_service(rendered):
    service = compose_service("mlflow")
    server_reads = set(service["environment"])
    for target, docs in rendered.items():
        container = template(named(docs, "Deployment", TRACKING))["spec"]["containers"][0]
        assert container["command"] == service["command"] == ["mlflow-server"], target
        settings = config_data(docs, container)
        variables = env(container)
        unknown = (set(settings) | set(variables)) - server_reads
        assert not unknown, f"{target}: variables the server does not read: {unknown}"
        # Secrets come from the one Secret, so every replica has the same: never a value here.
        for name in ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_AUTH_DATABASE_URI",
                     "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY",
                     "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY", "AWS_ACCESS_KEY_ID",
                     "AWS_SECRET_ACCESS_KEY"):
            assert name not in settings, f"{target}: {name} in a ConfigMap"
            assert "secretKeyRef" in variables[name].get("valueFrom", {}), f"{target}: {name}"
        assert settings["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://"), target
        assert settings["MLFLOW_AUTH"] == "basic", target
        port = next(p for p in container["ports"] if p["name"] == "http")["containerPort"]
        assert settings["MLFLOW_PORT"] == str(port), target


def test_clients_reach_the_tracking_server_by_a_name_it_accepts(rendered):
    """MLflow refuses (403) a Host header it was not told about, and a Service name is not
    among its defaults."""
    for target, docs in rendered.items():
        tracking = template(named(docs, "Deployment", TRACKING))["spec"]["containers"][0]
        allowed = config_data(docs, tracking)["MLFLOW_ALLOWED_HOSTS"].split(",")
        service = named(docs, "Service", TRACKING)
        service_port = service["spec"]["ports"][0]
        for workload, pod in pods(docs):
            for container in pod["spec"]["containers"]:
                uri = config_data(docs, container).get("MLFLOW_TRACKING_URI")
                if workload["metadata"]["name"] == TRACKING or uri is None:
                    continue
                match = re.fullmatch(r"http://([^/:]+):(\d+)", uri)
                assert match, f"{target}: {uri}"
                assert match[0].removeprefix("http://") in allowed, f"{target}: {uri}"
                assert match[1].split(".")[0] == service["metadata"]["name"], target
                assert int(match[2]) == service_port["port"], target
        assert service_port["targetPort"] in {p["name"] for p in tracking["ports"]}, target


def test_every_image_is_the_one_built_for_this_version(rendered):
    pinned = re.search(r"^mlflow==(\S+)$", (REPO / "constraints.txt").read_text(), re.M)
    assert pinned, "constraints.txt pins no mlflow"
    # The one place the version is written (pyproject.toml reads it from there).
    package = re.search(r'^__version__ = "([^"]+)"', (REPO / "promotion" / "__init__.py")
                        .read_text(), re.M)
    assert package, "promotion/__init__.py has no __version__"
    for target, docs in rendered.items():
        for workload, pod in pods(docs):
            for container in containers(pod):
                name, _, tag = container["image"].rpartition(":")
                where = f"{target}: {workload['metadata']['name']}: {container['image']}"
                if workload["metadata"]["name"] == TRACKING:
                    assert name.endswith("promote/mlflow-server"), where
                    assert tag == pinned[1], f"{where}: not the mlflow pin of constraints.txt"
                else:
                    assert name.endswith("promote/promote"), where
                    assert tag == package[1], f"{where}: not the package version"


# -- scaling, disruptions, network -----------------------------------------------------------------


def test_the_autoscaler_and_the_disruption_budgets_cover_their_pods(rendered):
    for target, docs in rendered.items():
        serve = named(docs, "Deployment", SERVE)
        assert "replicas" not in serve["spec"], f"{target}: the autoscaler owns the count"
        (hpa,) = objects(docs, "HorizontalPodAutoscaler")
        assert hpa["apiVersion"] == "autoscaling/v2", target
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                                 "name": serve["metadata"]["name"]}, target
        assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"], target
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"], target
        budgets = {pdb["metadata"]["name"]: selected(docs, pdb["spec"]["selector"])
                   for pdb in objects(docs, "PodDisruptionBudget")}
        assert budgets == {SERVE: {SERVE}, TRACKING: {TRACKING}}, target


def test_production_runs_more_replicas_than_staging(rendered):
    if not {"staging", "production"} <= set(OVERLAYS):
        pytest.skip("needs both the staging and production overlays")

    def counts(overlay: str) -> tuple[int, int, int]:
        docs = rendered[f"overlays/{overlay}"]
        hpa = objects(docs, "HorizontalPodAutoscaler")[0]["spec"]
        return (named(docs, "Deployment", TRACKING)["spec"]["replicas"], hpa["minReplicas"],
                hpa["maxReplicas"])

    assert all(s < p for s, p in zip(counts("staging"), counts("production"), strict=True))


def ingress_peers(docs: list[Doc], workload: str, port: int) -> list[Doc]:
    """Every peer some NetworkPolicy lets reach the workload's pods on this TCP port."""
    pod = template(named(docs, "Deployment", workload))
    peers: list[Doc] = []
    for policy in objects(docs, "NetworkPolicy"):
        if not selects(policy["spec"]["podSelector"], labels(pod)):
            continue
        for rule in policy["spec"].get("ingress") or []:
            if rule.get("ports") and {"port": port, "protocol": "TCP"} not in rule["ports"]:
                continue
            peers += rule.get("from") or [{"any": True}]
    return peers


def egress_allows(docs: list[Doc], workload: str, port: int, protocol: str = "TCP") -> list[Doc]:
    """The destinations the workload's egress policies allow on this port ({} for any)."""
    pod = template(named(docs, "Deployment", workload))
    restricted = False
    found: list[Doc] = []
    for policy in objects(docs, "NetworkPolicy"):
        if not selects(policy["spec"]["podSelector"], labels(pod)) \
                or "Egress" not in policy["spec"]["policyTypes"]:
            continue
        restricted = True
        for rule in policy["spec"].get("egress") or []:
            if {"port": port, "protocol": protocol} in (rule.get("ports") or []):
                found += rule.get("to") or [{}]
    assert restricted, f"no NetworkPolicy restricts the egress of {workload}"
    return found


def test_network_policies_let_only_the_right_pods_talk(rendered):
    for target, docs in rendered.items():
        policies = objects(docs, "NetworkPolicy")
        deny = [p for p in policies if p["spec"]["podSelector"] == {}]
        assert deny and deny[0]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}, target
        for policy in policies:
            if policy["spec"]["podSelector"]:
                assert selected(docs, policy["spec"]["podSelector"]), \
                    f"{target}: NetworkPolicy {policy['metadata']['name']} selects no pods"
        cronjobs = {c["metadata"]["name"] for c in objects(docs, "CronJob")}
        tracking_port = template(named(docs, "Deployment", TRACKING))["spec"]["containers"][0][
            "ports"][0]["containerPort"]
        serve_port = template(named(docs, "Deployment", SERVE))["spec"]["containers"][0][
            "ports"][0]["containerPort"]

        peers = ingress_peers(docs, TRACKING, tracking_port)
        assert all(set(peer) <= {"podSelector", "namespaceSelector"} for peer in peers), \
            f"{target}: the tracking server is open beyond pods and namespaces: {peers}"
        in_namespace = set().union(*(selected(docs, p["podSelector"]) for p in peers
                                     if set(p) == {"podSelector"}))
        assert in_namespace == {SERVE, *cronjobs}, target
        assert {"namespaceSelector": {"matchLabels": {"promote.io/mlflow-access": "true"}}} \
            in peers, f"{target}: no namespace label opens the tracking server to CI runners"
        assert ingress_peers(docs, TRACKING, 9999) == [], target

        # Webhooks: the tracking server may call the serve pods, and they accept it.
        assert any(selected(docs, p.get("podSelector", {})) == {SERVE}
                   for p in egress_allows(docs, TRACKING, serve_port)), target
        assert any(set(p) == {"podSelector"} and selected(docs, p["podSelector"]) == {TRACKING}
                   for p in ingress_peers(docs, SERVE, serve_port)), target
        for port, protocol in ((5432, "TCP"), (443, "TCP"), (53, "UDP")):
            assert egress_allows(docs, TRACKING, port, protocol), f"{target}: egress {port}"
        assert not egress_allows(docs, TRACKING, 22), target


# -- the monitoring CronJobs -----------------------------------------------------------------------


def test_the_policies_configmap_is_the_repositorys_policies():
    copies = {p.name: p.read_bytes() for p in (KUBE / "base" / "policies").glob("*.yaml")}
    originals = {p.name: p.read_bytes() for p in (REPO / "policies").glob("*.yaml")}
    assert copies == originals, ("deploy/kubernetes/base/policies/ differs from policies/: "
                                 "cp policies/*.yaml deploy/kubernetes/base/policies/")
    base = yaml.safe_load((KUBE / "base" / "kustomization.yaml").read_text(encoding="utf-8"))
    (generator,) = [g for g in base["configMapGenerator"] if g["name"] == "promote-policies"]
    assert sorted(generator["files"]) == sorted(f"policies/{name}" for name in originals)


def cronjob_policies(docs: list[Doc], tmp_path: Path) -> Iterator[tuple[Doc, str, Any]]:
    """(CronJob, subcommand, loaded policy) of every CronJob, its command line parsed by
    promote's own click command and its policy read from the ConfigMap it mounts."""
    for cronjob in objects(docs, "CronJob"):
        name = cronjob["metadata"]["name"]
        pod = template(cronjob)
        assert cronjob["spec"]["concurrencyPolicy"] == "Forbid", name
        assert pod["spec"]["restartPolicy"] == "Never", name
        (container,) = pod["spec"]["containers"]
        assert container["command"] == ["promote"], name
        sub, ctx = parse_promote(container["args"])
        assert sub in {"watch", "rollout"}, name
        assert "--once" in container["args"] and ctx.params["every"] is None, name
        path = Path(ctx.params["policy_path"])
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        configmap = named(docs, "ConfigMap",
                          volumes[mounts[str(path.parent)]]["configMap"]["name"])
        local = tmp_path / name / path.name
        local.parent.mkdir(parents=True)
        local.write_text(configmap["data"][path.name], encoding="utf-8")
        yield cronjob, sub, load_policy(str(local))


def test_each_policy_has_its_watch_and_rollout_cronjobs(rendered, tmp_path: Path):
    policies = [load_policy(str(p)) for p in sorted((REPO / "policies").glob("*.yaml"))]
    for target, docs in rendered.items():
        running: dict[str, list[str]] = {"watch": [], "rollout": []}
        for cronjob, sub, policy in cronjob_policies(docs, tmp_path / target):
            name = cronjob["metadata"]["name"]
            assert name == f"promote-{sub}-{policy.model}", name
            block = policy.watch if sub == "watch" else policy.rollout
            # `promote rollout` refuses a policy without a rollout: block: such a CronJob must
            # be suspended, and one whose policy has the block must run.
            assert cronjob["spec"].get("suspend", False) is (block is None), \
                f"{target}: {name}: suspend does not match the policy's {sub}: block"
            if block is not None:
                running[sub].append(policy.model)
        for sub in running:
            expected = sorted(p.model for p in policies
                              if (p.watch if sub == "watch" else p.rollout) is not None)
            assert sorted(running[sub]) == expected, f"{target}: {sub} CronJobs"
