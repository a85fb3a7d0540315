"""examples/kubernetes/: the manifests render, are valid Kubernetes objects (checked against the API's own
schemas, strictly: an unknown field is an error), and run commands that automl-tl accepts."""

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from automl_tl.cli import build_parser

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "kubernetes"
#: the Kubernetes release whose schemas the manifests are checked against
KUBERNETES_VERSION = "1.30.0"
VALUES = {
    "DB_PASSWORD": "secret",
    "IMAGE": "registry.example/automl-tl:latest",
    "STUDY": "pets",
    "DATA_FILE": "train.csv",
    "LABEL": "species",
    "TIMEOUT": "3600",
    "WORKERS": "4",
    "CPUS": "2",
    "MEMORY": "8Gi",
    "DATA_SIZE": "10Gi",
    "RUNS_SIZE": "20Gi",
}


def render(name: str, values: dict[str, str] = VALUES) -> list[dict]:
    """The manifest's documents with its ``${NAME}`` placeholders filled in (as ``envsubst`` does); a
    placeholder without a value raises KeyError."""
    # only ${NAME}: Kubernetes' own $(VAR) references to a container's env stay as they are
    text = re.sub(r"\$\{([A-Z_]+)\}", lambda match: values[match[1]], (EXAMPLE / name).read_text())
    return [document for document in yaml.safe_load_all(text) if document]


def manifests() -> list[str]:
    return sorted(path.name for path in EXAMPLE.glob("*.yaml"))


def automl_tl_arguments(job: dict) -> list[str]:
    """The command line of the Job's container, with Kubernetes' ``$(VAR)`` references to its env filled in."""
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["automl-tl"]
    storage = "postgresql://automl:secret@automl-tl-db:5432/automl"
    return [argument.replace("$(AUTOML_TL_STORAGE)", storage) for argument in container["args"]]


def test_the_example_has_the_database_the_volumes_the_search_and_the_workers():
    assert manifests() == ["postgres.yaml", "search.yaml", "volumes.yaml", "workers.yaml"]


@pytest.mark.parametrize("name", manifests())
def test_every_manifest_is_a_valid_kubernetes_object(name):
    documents = render(name)
    assert documents
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_refuses_what_kubernetes_would():
    (job,) = render("workers.yaml")
    job["spec"]["parallelism"] = "four"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
    (job,) = render("workers.yaml")
    job["spec"]["template"]["spec"]["containers"][0]["threads"] = 2  # not a container field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)


def test_the_workers_job_runs_n_automl_tl_workers_on_the_searchs_study():
    (workers,) = render("workers.yaml")
    (search,) = render("search.yaml")
    assert workers["kind"] == "Job" and workers["spec"]["parallelism"] == 4
    assert "completions" not in workers["spec"]  # a work queue: done when the workers exit 0
    parser = build_parser()
    worker_args = parser.parse_args(automl_tl_arguments(workers))
    search_args = parser.parse_args(automl_tl_arguments(search))
    assert worker_args.command == "worker" and search_args.command == "search"
    assert worker_args.storage == search_args.storage and worker_args.storage.startswith("postgresql://")
    assert worker_args.study == search_args.study_name == "pets"
    assert worker_args.output == search_args.output == "/runs/pets"  # one run directory: one best model
    assert search_args.timeout == 3600 and search_args.label == "species"


def test_every_pod_reads_the_data_at_the_path_the_study_stores_and_shares_the_cache():
    """A worker rebuilds the data from the path the search stored with the study: it must be the same in
    every pod, and so must the feature cache, or each pod computes every backbone's features again."""
    (search,) = render("search.yaml")
    (workers,) = render("workers.yaml")
    data_path = automl_tl_arguments(search)[automl_tl_arguments(search).index("--data") + 1]
    for job in (search, workers):
        pod = job["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
        claims = {volume["name"]: volume["persistentVolumeClaim"]["claimName"] for volume in pod["volumes"]}
        assert claims[mounts["/data"]] == "automl-tl-data" and data_path.startswith("/data/")
        assert claims[mounts["/runs"]] == "automl-tl-runs"
        env = {variable["name"]: variable for variable in container["env"]}
        assert env["AUTOML_TL_FEATURE_CACHE"]["value"] == "/runs/feature-cache"
        assert env["AUTOML_TL_STORAGE"]["valueFrom"]["secretKeyRef"] == {
            "name": "automl-tl-db",
            "key": "AUTOML_TL_STORAGE",
        }
    claim_names = {document["metadata"]["name"] for document in render("volumes.yaml")}
    assert claim_names == {"automl-tl-data", "automl-tl-runs"}


def test_the_database_url_points_at_the_database_service():
    secret, service, server = render("postgres.yaml")
    url = secret["stringData"]["AUTOML_TL_STORAGE"]
    assert url == "postgresql://automl:secret@automl-tl-db:5432/automl"
    assert service["metadata"]["name"] == "automl-tl-db" and service["spec"]["ports"][0]["port"] == 5432
    assert service["spec"]["selector"] == server["spec"]["template"]["metadata"]["labels"]


def test_a_placeholder_left_without_a_value_is_an_error():
    values = {name: value for name, value in VALUES.items() if name != "WORKERS"}
    with pytest.raises(KeyError, match="WORKERS"):
        render("workers.yaml", values)
