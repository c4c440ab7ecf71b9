"""The production shape on Kubernetes, checked where no cluster exists.

deploy/k8s (the churn service: a kustomize base and a staging and a production overlay),
deploy/helm/dagster (values for Dagster's official chart) and deploy/argocd (the Applications that
sync both) are validated offline: every manifest against the Kubernetes schemas that
kubernetes-validate ships (strict, so an unknown field is an error), the overlays as kustomize
renders them (`kubectl kustomize`, kustomize v5 inside kubectl), and what the pieces must agree on
(ports, paths, names, tags, the instance's concurrency) read from the files themselves. Nothing
here is applied to a cluster or synced by ArgoCD.
"""

import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from churn_assets.settings import PROJECT_ROOT, SERVICE_PORT

DEPLOY = PROJECT_ROOT / "deploy"
BASE = DEPLOY / "k8s" / "base"
OVERLAYS = DEPLOY / "k8s" / "overlays"
HELM = DEPLOY / "helm" / "dagster"
ARGOCD = DEPLOY / "argocd"

KUBERNETES_VERSION = "1.33.0"
"""The oldest Kubernetes the manifests are written for: a field that only newer versions know fails here."""

REPO_PLACEHOLDER = "https://github.com/OWNER/churnops.git"
SERVICE_IMAGE = "ghcr.io/OWNER/churnops/churn-service"
CODE_LOCATION_IMAGE = "ghcr.io/OWNER/churnops/code-location"
CODE_LOCATION_PORT = 4000

ENVIRONMENTS = {
    # environment: (namespace, image tag, starting replicas, HPA min, HPA max)
    "staging": ("churnops-staging", "staging", 1, 1, 3),
    "production": ("churnops-production", "production", 3, 3, 10),
}
CLUSTER_SCOPED = {"Namespace"}


def load_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(documents: list[dict]) -> dict[str, dict]:
    """One resource of each kind: the churn service has one of each."""
    kinds = [doc["kind"] for doc in documents]
    assert len(kinds) == len(set(kinds)), f"more than one resource of a kind: {sorted(kinds)}"
    return {doc["kind"]: doc for doc in documents}


def strings(node) -> list[str]:
    """Every string value in a parsed document (comments are not values)."""
    if isinstance(node, dict):
        return [text for value in node.values() for text in strings(value)]
    if isinstance(node, list):
        return [text for value in node for text in strings(value)]
    return [node] if isinstance(node, str) else []


def kustomization(folder: Path) -> dict:
    return yaml.safe_load((folder / "kustomization.yaml").read_text())


def base_documents() -> list[dict]:
    return [doc for name in kustomization(BASE)["resources"] for doc in load_documents(BASE / name)]


def strict_errors(documents: list[dict]) -> list[str]:
    errors = []
    for doc in documents:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {error.message}")
    return errors


def container(deployment: dict) -> dict:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def helm_merge(values: dict, override: dict) -> dict:
    """Helm's merge of values files: maps merge key by key, anything else (lists too) is replaced."""
    merged = dict(values)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = helm_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def helm_values(environment: str) -> dict:
    shared = yaml.safe_load((HELM / "values.yaml").read_text())
    return helm_merge(shared, yaml.safe_load((HELM / f"values-{environment}.yaml").read_text()))


def code_location(values: dict) -> dict:
    (only,) = values["dagster-user-deployments"]["deployments"]
    return only


def applications() -> dict[str, dict]:
    names = kustomization(ARGOCD)["resources"]
    return {doc["metadata"]["name"]: doc for name in names for doc in load_documents(ARGOCD / name)}


def kustomize(folder: Path) -> list[dict]:
    """A kustomization as `kubectl kustomize` renders it, which is what `kubectl apply -k` and ArgoCD apply."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with kustomize built in) is not on the PATH: the kustomizations cannot be rendered")
    out = subprocess.run([kubectl, "kustomize", str(folder)], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module", params=sorted(ENVIRONMENTS))
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, kustomize(OVERLAYS / request.param)


# --- Kubernetes schemas -------------------------------------------------------------------------


def test_every_base_manifest_is_valid_kubernetes_under_strict_validation():
    documents = base_documents()
    assert {doc["kind"] for doc in documents} == {
        "ConfigMap",
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
    assert strict_errors(documents) == []


def test_every_rendered_overlay_is_valid_kubernetes_under_strict_validation(rendered):
    """The patches are partial resources (no selector, no image), so they are validated as applied."""
    _, documents = rendered
    assert len(documents) == 7
    assert strict_errors(documents) == []


def test_strict_validation_refuses_a_misspelt_field():
    deployment = by_kind(base_documents())["Deployment"]
    container(deployment)["readinesProbe"] = container(deployment).pop("readinessProbe")
    (error,) = strict_errors([deployment])
    assert "readinesProbe" in error


def test_every_file_of_the_kustomizations_is_listed_and_every_listed_file_exists():
    for folder in [BASE, *(OVERLAYS / env for env in ENVIRONMENTS)]:
        spec = kustomization(folder)
        listed = {name for name in spec["resources"] if not name.startswith("..")}
        listed |= {patch["path"] for patch in spec.get("patches", [])}
        on_disk = {path.name for path in folder.glob("*.yaml")} - {"kustomization.yaml"}
        assert listed == on_disk, folder


def test_each_overlay_patch_names_a_resource_of_the_base():
    in_base = {(doc["apiVersion"], doc["kind"], doc["metadata"]["name"]) for doc in base_documents()}
    for env in ENVIRONMENTS:
        for patch in kustomization(OVERLAYS / env)["patches"]:
            (doc,) = load_documents(OVERLAYS / env / patch["path"])
            assert (doc["apiVersion"], doc["kind"], doc["metadata"]["name"]) in in_base, patch["path"]


# --- The churn service ---------------------------------------------------------------------------


def test_the_service_is_probed_on_livez_and_readyz_at_its_own_port():
    deployment = by_kind(base_documents())["Deployment"]
    (port,) = container(deployment)["ports"]
    assert port == {"name": "http", "containerPort": SERVICE_PORT, "protocol": "TCP"}
    assert container(deployment)["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert container(deployment)["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


def test_the_service_binds_every_interface_on_the_port_its_settings_name():
    """Its own default host is 127.0.0.1, which neither a probe nor the Service could reach."""
    config = by_kind(base_documents())["ConfigMap"]["data"]
    assert config["BENTOML_HOST"] == "0.0.0.0"
    assert config["BENTOML_PORT"] == config["CHURNOPS_SERVICE_PORT"] == str(SERVICE_PORT)


def test_the_service_runs_as_a_non_root_user_on_a_read_only_root_with_no_capabilities():
    pod = by_kind(base_documents())["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for each in pod["initContainers"] + pod["containers"]:
        assert each["securityContext"] == {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }, each["name"]


def image_user_and_port(dockerfile: str) -> tuple[int, int]:
    text = (DEPLOY / "docker" / dockerfile).read_text()
    user = re.findall(r"^USER (\d+)", text, re.MULTILINE)[-1]
    port = re.findall(r"^EXPOSE (\d+)", text, re.MULTILINE)[-1]
    return int(user), int(port)


def test_the_pods_run_as_the_user_and_on_the_port_that_each_image_declares():
    deployment = by_kind(base_documents())["Deployment"]
    assert image_user_and_port("Dockerfile.api") == (
        deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"],
        container(deployment)["ports"][0]["containerPort"],
    )
    for env in ENVIRONMENTS:
        values = helm_values(env)
        run_pod = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["podSpecConfig"]
        location = code_location(values)
        assert image_user_and_port("Dockerfile.ml") == (location["podSecurityContext"]["runAsUser"], location["port"])
        assert run_pod["securityContext"]["runAsUser"] == location["podSecurityContext"]["runAsUser"]


def test_every_container_has_cpu_and_memory_requests_and_limits(rendered):
    _, documents = rendered
    pod = by_kind(documents)["Deployment"]["spec"]["template"]["spec"]
    for each in pod["initContainers"] + pod["containers"]:
        assert set(each["resources"]) == {"requests", "limits"}, each["name"]
        assert set(each["resources"]["requests"]) == set(each["resources"]["limits"]) == {"cpu", "memory"}


def test_the_store_volume_is_mounted_at_bentoml_home_and_the_feature_snapshot_read_only():
    documents = by_kind(base_documents())
    config = documents["ConfigMap"]["data"]
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    (store,) = [volume for volume in pod["volumes"] if "persistentVolumeClaim" in volume]
    assert store["persistentVolumeClaim"]["claimName"] == documents["PersistentVolumeClaim"]["metadata"]["name"]
    mounts = {mount["mountPath"]: mount for mount in container(documents["Deployment"])["volumeMounts"]}
    assert mounts[config["BENTOML_HOME"]]["name"] == store["name"]
    assert mounts[config["BENTOML_HOME"]].get("readOnly", False) is False
    snapshot = mounts[f"{config['CHURNOPS_DATA_DIR']}/online"]
    assert (snapshot["name"], snapshot["readOnly"]) == (store["name"], True)
    assert documents["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_each_replica_keeps_its_own_prometheus_folder_and_a_writable_tmp():
    """BentoML empties $BENTOML_HOME/prometheus_multiproc_dir at start; shared, replicas would clear each other's."""
    documents = by_kind(base_documents())
    home = documents["ConfigMap"]["data"]["BENTOML_HOME"]
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    empty_dirs = {volume["name"] for volume in pod["volumes"] if "emptyDir" in volume}
    mounts = {mount["mountPath"]: mount["name"] for mount in container(documents["Deployment"])["volumeMounts"]}
    assert mounts[f"{home}/prometheus_multiproc_dir"] in empty_dirs
    assert mounts["/tmp"] in empty_dirs


def test_settings_come_from_the_configmap_and_the_postgres_urls_only_by_secret_reference():
    documents = by_kind(base_documents())
    service = container(documents["Deployment"])
    assert service["envFrom"] == [{"configMapRef": {"name": documents["ConfigMap"]["metadata"]["name"]}}]
    assert documents["ConfigMap"]["data"]["CHURNOPS_PROFILE"] == "production"
    references = {env["name"]: env["valueFrom"]["secretKeyRef"] for env in service["env"]}
    assert references == {
        "CHURNOPS_DAGSTER_POSTGRES_URL": {"name": "churnops-postgres", "key": "CHURNOPS_DAGSTER_POSTGRES_URL"},
        "CHURNOPS_MLFLOW_TRACKING_URI": {"name": "churnops-postgres", "key": "CHURNOPS_MLFLOW_TRACKING_URI"},
    }
    assert not [doc for doc in base_documents() if doc["kind"] == "Secret"]
    values = [value for path in DEPLOY.rglob("*.yaml") for doc in load_documents(path) for value in strings(doc)]
    assert not [value for value in values if re.search(r"postgres(ql)?://", value)]


def test_the_service_and_the_hpa_point_at_the_deployment(rendered):
    _, documents = rendered
    documents = by_kind(documents)
    deployment = documents["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert documents["Service"]["spec"]["selector"].items() <= pod_labels.items()
    assert documents["Service"]["spec"]["ports"][0]["targetPort"] == container(deployment)["ports"][0]["name"]
    assert documents["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    (metric,) = documents["HorizontalPodAutoscaler"]["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    assert documents["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_each_overlay_gives_its_namespace_image_tag_replicas_and_scaling_bounds(rendered):
    env, documents = rendered
    namespace, tag, replicas, minimum, maximum = ENVIRONMENTS[env]
    assert {doc["metadata"].get("namespace") for doc in documents if doc["kind"] not in CLUSTER_SCOPED} == {namespace}
    assert by_kind(documents)["Namespace"]["metadata"]["name"] == namespace
    deployment = by_kind(documents)["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert {each["image"] for each in pod["initContainers"] + pod["containers"]} == {f"{SERVICE_IMAGE}:{tag}"}
    assert deployment["spec"]["replicas"] == replicas
    hpa = by_kind(documents)["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (minimum, maximum)


def test_production_runs_larger_pods_and_a_larger_store_than_staging():
    def resources(env: str) -> dict:
        return container(load_documents(OVERLAYS / env / "deployment-patch.yaml")[0])["resources"]

    staging, production = resources("staging"), resources("production")
    assert (staging["requests"]["cpu"], production["requests"]["cpu"]) == ("250m", "1")
    assert (staging["limits"]["memory"], production["limits"]["memory"]) == ("1Gi", "2Gi")
    (pvc,) = load_documents(OVERLAYS / "production" / "pvc-patch.yaml")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "50Gi"


# --- Dagster's Helm values -----------------------------------------------------------------------


@pytest.mark.parametrize("env", sorted(ENVIRONMENTS))
def test_the_dagster_values_run_the_code_location_image_as_a_user_code_deployment_on_port_4000(env):
    values = helm_values(env)
    assert values["dagster-user-deployments"]["enabled"] is True
    location = code_location(values)
    assert location["image"] == {"repository": CODE_LOCATION_IMAGE, "tag": ENVIRONMENTS[env][1], "pullPolicy": "Always"}
    assert location["port"] == CODE_LOCATION_PORT
    assert location["dagsterApiGrpcArgs"] == ["-m", "churn_assets.definitions"]


def test_values_yaml_alone_deploys_no_code_location():
    """Helm replaces lists whole: without an environment's file, not even the chart's example is deployed."""
    values = yaml.safe_load((HELM / "values.yaml").read_text())
    assert values["dagster-user-deployments"]["deployments"] == []


def test_the_code_location_entry_is_the_same_in_both_environments_but_for_its_tag():
    staging, production = (code_location(helm_values(env)) for env in ("staging", "production"))
    assert {**staging, "image": None} == {**production, "image": None}
    assert staging["image"]["tag"] != production["image"]["tag"]


@pytest.mark.parametrize("env", sorted(ENVIRONMENTS))
def test_runs_are_kubernetes_jobs_with_the_service_settings_and_the_shared_store(env):
    values = helm_values(env)
    documents = by_kind(base_documents())
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    location = code_location(values)
    for each in (launcher, location):
        assert each["envConfigMaps"] == [{"name": documents["ConfigMap"]["metadata"]["name"]}]
        assert each["envSecrets"] == [{"name": "churnops-postgres"}]
        (volume,) = each["volumes"]
        assert volume["persistentVolumeClaim"]["claimName"] == documents["PersistentVolumeClaim"]["metadata"]["name"]
        assert each["volumeMounts"] == [
            {"name": volume["name"], "mountPath": documents["ConfigMap"]["data"]["CHURNOPS_DATA_DIR"]}
        ]
    assert location["includeConfigInLaunchedRuns"] == {"enabled": False}


def test_the_instance_is_on_external_postgres_with_the_daemon_and_the_queue():
    values = helm_values("production")
    assert values["postgresql"]["enabled"] is False
    assert values["generatePostgresqlPasswordSecret"] is False
    assert values["postgresql"]["postgresqlHost"].endswith(".svc.cluster.local")
    assert values["dagsterDaemon"]["enabled"] is True
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert (coordinator["enabled"], coordinator["type"]) == (True, "QueuedRunCoordinator")


def test_the_instance_has_the_concurrency_of_the_repository_dagster_yaml():
    local = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())
    values = yaml.safe_load((HELM / "values.yaml").read_text())
    assert values["concurrency"] == {
        "enabled": True,
        "pools": {"defaultLimit": local["concurrency"]["pools"]["default_limit"]},
        "runs": {"maxConcurrentRuns": local["concurrency"]["runs"]["max_concurrent_runs"]},
    }
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert queued == {"dequeueIntervalSeconds": local["run_coordinator"]["config"]["dequeue_interval_seconds"]}


@pytest.mark.parametrize("env", sorted(ENVIRONMENTS))
def test_the_kubernetes_parts_of_the_dagster_values_are_valid_kubernetes(env):
    """The chart copies these fields into the pods it renders: a pod built from them must validate."""
    values = helm_values(env)
    location = code_location(values)
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    pods = [
        (location["podSecurityContext"], location, location["resources"]),
        (launcher["runK8sConfig"]["podSpecConfig"]["securityContext"], launcher, launcher["resources"]),
    ]
    for pod_security, parts, resources in pods:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "from-values"},
            "spec": {
                "securityContext": pod_security,
                "volumes": parts["volumes"],
                "containers": [
                    {
                        "name": "dagster",
                        "image": f"{CODE_LOCATION_IMAGE}:{env}",
                        "securityContext": parts["securityContext"],
                        "resources": resources,
                        "volumeMounts": parts["volumeMounts"],
                        "envFrom": [{"configMapRef": ref} for ref in parts["envConfigMaps"]]
                        + [{"secretRef": ref} for ref in parts["envSecrets"]],
                    }
                ],
            },
        }
        assert strict_errors([pod]) == []
        assert pod_security["runAsNonRoot"] is True
        assert parts["securityContext"]["allowPrivilegeEscalation"] is False


# --- ArgoCD --------------------------------------------------------------------------------------


def test_staging_syncs_itself_with_prune_and_self_heal_and_production_waits_for_a_person():
    apps = applications()
    assert set(apps) == {"churn-service-staging", "churn-service-production", "dagster-staging", "dagster-production"}
    for name, app in apps.items():
        assert (app["apiVersion"], app["kind"]) == ("argoproj.io/v1alpha1", "Application")
        if name.endswith("-staging"):
            assert app["spec"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}, name
        else:
            assert "automated" not in app["spec"]["syncPolicy"], name


def test_the_argocd_kustomization_installs_the_four_applications_into_argocds_namespace():
    rendered = kustomize(ARGOCD)
    assert sorted(app["metadata"]["name"] for app in rendered) == sorted(applications())
    assert {app["metadata"]["namespace"] for app in rendered} == {"argocd"}


def test_each_service_application_syncs_its_overlay_into_the_overlays_namespace():
    apps = applications()
    for env, (namespace, *_) in ENVIRONMENTS.items():
        app = apps[f"churn-service-{env}"]["spec"]
        assert app["source"]["repoURL"] == REPO_PLACEHOLDER
        assert app["source"]["path"] == f"deploy/k8s/overlays/{env}"
        assert (PROJECT_ROOT / app["source"]["path"] / "kustomization.yaml").is_file()
        assert app["destination"]["namespace"] == kustomization(OVERLAYS / env)["namespace"] == namespace
        assert app["ignoreDifferences"] == [
            {"group": "apps", "kind": "Deployment", "name": "churn-service", "jsonPointers": ["/spec/replicas"]}
        ]


def test_each_dagster_application_installs_the_pinned_chart_with_this_repositorys_values_files():
    pinned = re.search(r'"dagster==([0-9.]+)"', (PROJECT_ROOT / "pyproject.toml").read_text()).group(1)
    assert f"chart version {pinned}" in (HELM / "values.yaml").read_text()
    apps = applications()
    for env, (namespace, *_) in ENVIRONMENTS.items():
        app = apps[f"dagster-{env}"]["spec"]
        chart, values = app["sources"]
        assert (chart["repoURL"], chart["chart"], chart["targetRevision"]) == (
            "https://dagster-io.github.io/helm",
            "dagster",
            pinned,
        )
        assert (values["repoURL"], values["ref"]) == (REPO_PLACEHOLDER, "values")
        files = chart["helm"]["valueFiles"]
        assert files == ["$values/deploy/helm/dagster/values.yaml", f"$values/deploy/helm/dagster/values-{env}.yaml"]
        assert all((PROJECT_ROOT / file.removeprefix("$values/")).is_file() for file in files)
        assert app["destination"]["namespace"] == namespace
