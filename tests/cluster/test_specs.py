"""Cluster spec files: loading, errors, the SLURM job script, the Kubernetes manifests."""

import importlib
import os

import pytest
import yaml

from shardeval.pipeline.core.clusters import ClusterSpec, cluster_class, load_spec, make_cluster
from shardeval.pipeline.errors import ClusterError

CLUSTER = os.path.join(os.path.dirname(__file__), "..", "..", "cluster")


@pytest.mark.parametrize("name", ["local.yaml", "cuda.yaml", "slurm.yaml", "slurm-cpu.yaml"])
def test_shipped_specs_load(name):
    spec = load_spec(os.path.join(CLUSTER, name))
    assert spec.backend == name.split(".")[0].split("-")[0]
    assert isinstance(spec.options, dict)


@pytest.mark.parametrize(
    ("text", "msg"),
    [
        ("backend: local\nworkers: 3\n", "unknown key"),
        ("backend: spark\n", "not one of"),
        ("backend: local\nscale: 0\n", "positive integer"),
        ("backend: local\noptions: [1, 2]\n", "must be a mapping"),
        ("- backend\n", "must be a mapping"),
        ("backend: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_specs(tmp_path, text, msg):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(ClusterError, match=msg):
        load_spec(path)


def test_missing_spec_and_bad_option(tmp_path):
    with pytest.raises(ClusterError, match="cannot be read"):
        load_spec(tmp_path / "none.yaml")
    with pytest.raises(ClusterError, match="LocalCluster and its workers take no option"):
        make_cluster(ClusterSpec("local", {"no_such_option": 1}, None, "x.yaml"))


def test_missing_extra_names_it(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def refuse(name, *args, **kwargs):
        if name.startswith("dask_cuda"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse)
    with pytest.raises(ClusterError, match=r"pip install 'shardeval\[cuda\]'"):
        cluster_class("cuda")


def test_slurm_spec_renders_a_gpu_job_script():
    importlib.import_module("dask_jobqueue")
    spec = load_spec(os.path.join(CLUSTER, "slurm.yaml"))
    options = {
        **spec.options,
        "scheduler_options": {"host": "127.0.0.1", "dashboard_address": ":0"},
    }
    cls = cluster_class("slurm")
    with cls(**options) as cluster:
        script = cluster.job_script()
    assert script.startswith("#!/usr/bin/env bash")
    assert "#SBATCH -p gpu" in script
    assert "#SBATCH --gres=gpu:1" in script
    assert "#SBATCH -t 02:00:00" in script
    assert "--resources GPU=1" in script
    assert "export TRITON_CACHE_DIR=" in script
    assert "distributed.cli.dask_worker" in script or "dask worker" in script
    assert spec.scale == 4


def _crd_schema(kind):
    dk = importlib.import_module("dask_kubernetes")
    base = os.path.join(
        os.path.dirname(dk.__file__),
        "operator",
        "deployment",
        "helm",
        "dask-kubernetes-operator",
        "crds",
    )
    with open(os.path.join(base, f"{kind.lower()}.yaml")) as fh:
        crd = yaml.safe_load(fh)
    (version,) = [v for v in crd["spec"]["versions"] if v.get("served", True)]
    return crd["spec"]["group"], version["name"], version["schema"]["openAPIV3Schema"]


def _unknown_fields(doc, schema, path="$"):
    """Keys of ``doc`` that the schema does not name (where it names its properties)."""
    out = []
    if isinstance(doc, dict) and "properties" in schema:
        for key, value in doc.items():
            sub = schema["properties"].get(key)
            if sub is None and not schema.get("x-kubernetes-preserve-unknown-fields"):
                out.append(f"{path}.{key}")
            elif sub is not None:
                out.extend(_unknown_fields(value, sub, f"{path}.{key}"))
    elif isinstance(doc, list) and "items" in schema:
        for i, item in enumerate(doc):
            out.extend(_unknown_fields(item, schema["items"], f"{path}[{i}]"))
    return out


@pytest.mark.parametrize("name", ["daskcluster.yaml", "daskjob.yaml"])
def test_kubernetes_manifests_match_the_operator_crds(name):
    jsonschema = importlib.import_module("jsonschema")
    with open(os.path.join(CLUSTER, "kubernetes", name)) as fh:
        doc = yaml.safe_load(fh)
    group, version, schema = _crd_schema(doc["kind"])
    assert doc["apiVersion"] == f"{group}/{version}"
    jsonschema.validate(doc, schema)
    assert _unknown_fields(doc["spec"], schema["properties"]["spec"], "$.spec") == []


def test_field_check_catches_a_misspelt_field():
    _, _, schema = _crd_schema("DaskCluster")
    doc = {"worker": {"replicas": 2, "spce": {}}}
    assert _unknown_fields(doc, schema["properties"]["spec"], "$.spec") == ["$.spec.worker.spce"]


def test_schedule_examples_call_shardeval_run():
    base = os.path.join(CLUSTER, "schedule")
    for name in ("crontab", "scrontab"):
        with open(os.path.join(base, name)) as fh:
            lines = [ln for ln in fh if ln.strip() and not ln.startswith("#")]
        assert lines, name
        for line in lines:
            fields = line.split(None, 5)
            assert len(fields) == 6
            assert all(f.replace("*", "0").isdigit() for f in fields[:5])
            assert "shardeval run " in fields[5]
    with open(os.path.join(base, "cronjob.yaml")) as fh:
        job = yaml.safe_load(fh)
    assert job["apiVersion"] == "batch/v1"
    assert job["kind"] == "CronJob"
    container = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["shardeval", "run"]


def test_ieee_preload_sets_the_flags_on_each_worker():
    import subprocess
    import sys

    from distributed import Client, LocalCluster

    from shardeval.kernels._dispatch import tf32_convolutions

    fresh = "from shardeval.kernels._dispatch import tf32_convolutions as t; print(t())"
    default = subprocess.run([sys.executable, "-c", fresh], capture_output=True, text=True)
    assert default.stdout.strip() == "True"  # PyTorch's default, which the preload changes
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=True,
            preload=["shardeval.pipeline.core.ieee_fp32"],
            dashboard_address=":0",
        ) as cluster,
        Client(cluster) as client,
    ):
        assert list(client.run(tf32_convolutions).values()) == [False]


@pytest.mark.parametrize(
    "name", ["cuda.yaml", "slurm.yaml", "kubernetes/daskcluster.yaml", "kubernetes/daskjob.yaml"]
)
def test_gpu_specs_start_workers_with_ieee_products(name):
    with open(os.path.join(CLUSTER, name)) as fh:
        text = fh.read()
    assert "shardeval.pipeline.core.ieee_fp32" in text
    if name == "cuda.yaml":
        assert load_spec(os.path.join(CLUSTER, name)).options["preload"] == [
            "shardeval.pipeline.core.ieee_fp32"
        ]


def _shipped_specs():
    """Every spec in cluster/ that this package reads (YAML with a 'backend' key)."""
    found = []
    for root, _, names in os.walk(CLUSTER):
        for name in sorted(names):
            if name.endswith((".yaml", ".yml")):
                with open(os.path.join(root, name)) as fh:
                    doc = yaml.safe_load(fh)
                if isinstance(doc, dict) and "backend" in doc:
                    found.append(os.path.relpath(os.path.join(root, name), CLUSTER))
    return found


def _host(address):
    """The host of a "host:port" or "proto://host:port" address ("" when there is none)."""
    address = str(address).split("://")[-1]
    return address.rsplit(":", 1)[0] if ":" in address else address


def test_specs_that_start_a_local_scheduler_bind_it_to_loopback():
    # local.yaml served the dashboard on every interface (dashboard_address ":8787"): anyone
    # on the network could see the cluster (and the stores' paths), and run code on it
    # through the dashboard's Jupyter proxy where one is installed.
    from shardeval.pipeline.core.clusters import LOCAL_BACKENDS, cluster_options

    local = [
        name
        for name in _shipped_specs()
        if load_spec(os.path.join(CLUSTER, name)).backend in LOCAL_BACKENDS
    ]
    assert sorted(local) == ["cuda.yaml", "local.yaml"]
    for name in local:
        spec = load_spec(os.path.join(CLUSTER, name))
        written = spec.options.get("dashboard_address")
        assert written is None or _host(written) == "127.0.0.1", (name, written)
        options = cluster_options(spec)
        assert _host(options["dashboard_address"]) == "127.0.0.1", name
        assert options.get("host", "127.0.0.1") == "127.0.0.1", name


def test_local_defaults_bind_to_loopback_and_the_users_choice_is_kept():
    from shardeval.pipeline.core.clusters import cluster_options

    bare = cluster_options(ClusterSpec("cuda", {"n_workers": 1}, None, "x.yaml"))
    assert _host(bare["dashboard_address"]) == "127.0.0.1"
    assert "host" not in bare  # LocalCluster's own default: 127.0.0.1
    mine = {"dashboard_address": "0.0.0.0:8787", "host": "10.1.2.3"}
    assert cluster_options(ClusterSpec("local", mine, None, "x.yaml")) == mine
    slurm = {"queue": "gpu"}
    assert cluster_options(ClusterSpec("slurm", slurm, None, "x.yaml")) == slurm


def test_the_shipped_local_spec_serves_its_dashboard_on_loopback_only():
    spec = load_spec(os.path.join(CLUSTER, "local.yaml"))
    spec = ClusterSpec(spec.backend, {**spec.options, "n_workers": 0}, None, spec.path)
    cluster = make_cluster(spec)
    try:
        sockets = cluster.scheduler.http_server._sockets.values()
        hosts = {s.getsockname()[0] for s in sockets}
        assert hosts == {"127.0.0.1"}
        assert _host(cluster.scheduler_address) == "127.0.0.1"
    finally:
        cluster.close()


def _cli(argv, capfd):
    from shardeval.workflows.cli import main

    code = main(argv)
    return code, capfd.readouterr().err


@pytest.mark.parametrize("processes", [True, False])
def test_an_unknown_worker_option_is_one_line_before_anything_starts(
    tmp_path, capfd, feature_pair, processes
):
    # LocalCluster handed it to its workers, which failed to start: 27 lines of Dask's log
    # and two tracebacks came before the one-line error.
    real, _, gen, _ = feature_pair
    spec = tmp_path / "local.yaml"
    spec.write_text(
        "backend: local\noptions:\n  n_workers: 1\n  threads_per_worker: 1\n"
        f"  processes: {str(processes).lower()}\n  memory_limt: 2GiB\n"
    )
    capfd.readouterr()
    code, err = _cli(["fid", real, gen, "--cluster", str(spec), "-q"], capfd)
    assert code == 2
    assert err.count("\n") == 1, err
    assert err.startswith("shardeval: error: cluster spec"), err
    assert "'memory_limt'" in err
    assert "memory_limit" in err  # the option it resembles


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("join_timeout: 1e3\n", 1000.0),
        ("join_timeout: 2.5E+2\n", 250.0),
        ("join_timeout: 90\n", 90.0),
    ],
)
def test_numbers_in_exponent_notation_are_numbers(tmp_path, text, seconds):
    # PyYAML reads YAML 1.1, where 1e3 (no dot) is a string: 'join_timeout' was refused.
    path = tmp_path / "spec.yaml"
    path.write_text("backend: local\n" + text)
    assert load_spec(path).join_timeout == seconds


def test_a_whole_number_in_exponent_notation_is_a_scale(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("backend: local\nscale: 1e1\n")
    assert load_spec(path).scale == 10
    path.write_text("backend: local\nscale: 2.5\n")
    with pytest.raises(ClusterError, match="positive integer"):
        load_spec(path)
