"""deploy/ checked offline with the ecosystem's own validators and against the code it runs."""

from __future__ import annotations

import argparse
import contextlib
import http.server
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError
from kubernetes_validate.utils import ValidationError as K8sValidationError

from runbook.cli import COMMANDS, build_parser
from runbook.loader import load_runbook
from tests.servers import find_tool, free_port
from tests.stack import stack

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"
CRDS = Path(__file__).resolve().parent / "fixtures" / "crds"
VENV_BIN = Path(sys.executable).parent
# A Kubernetes release kubernetes-validate ships schemas for, still widely run.
K8S_VERSION = "1.31.0"
# kube-prometheus-stack's default ServiceMonitor/PrometheusRule selector is release=<Helm release>.
RELEASE = "kube-prometheus-stack"
NAMESPACE = "production"
COMPOSE_RUNBOOK = REPO / "examples" / "cinder-js.yml"
K8S_RUNBOOK = REPO / "examples" / "blog-engine.yml"
RUNBOOK_IN_CONTAINER = "/etc/runbook/runbook.yml"
PORTS = {"exporter": 9817, "responder": 9818}
UNIT_BIN = "/opt/runbook-autopilot/bin/runbook"
OPERATOR_KINDS = {"ServiceMonitor": "servicemonitors", "PrometheusRule": "prometheusrules"}


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document of a file."""
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def run_tool(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a validator and capture its output."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def cli_error(argv: list[str]) -> str | None:
    """Why the real `runbook` parser rejects argv, or None when it accepts it.

    Commands whose module is not built yet are not in the parser; they must still be in the
    command table, which the caller checks.
    """
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if argv[0] not in sub.choices:
        return None if argv[0] in COMMANDS else f"{argv[0]!r} is not a runbook command"
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parser.parse_args(argv)
    except SystemExit:
        return stderr.getvalue().strip().splitlines()[-1]
    return None


def runbook_env_names(path: Path) -> tuple[set[str], set[str]]:
    """Env var names a runbook reads: (those of its watch section, all of them)."""
    dumped = load_runbook(path).runbook.model_dump(mode="json")
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key.endswith("_env") and isinstance(value, str):
                    names.add(value)
                elif key == "exec" and isinstance(value, dict):
                    names.update(value.get("env", []))
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(dumped["watch"])
    watched = set(names)
    walk({k: v for k, v in dumped.items() if k != "watch"})
    return watched, names


def exec_argvs(path: Path) -> list[list[str]]:
    """The argv of every exec step (do and escalate) of a runbook."""
    found: list[list[str]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("exec"), dict):
                found.append(list(node["exec"]["argv"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(load_runbook(path).runbook.model_dump(mode="json")["respond"])
    return found


def project_version() -> str:
    """The version in pyproject.toml."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return str(data["project"]["version"])


# ------------------------------------------------------------------------ Dockerfile


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        result.append((word.upper(), rest.strip()))
    assert not pending, f"{path}: the last instruction ends with a line continuation"
    return result


def dockerignore_includes(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore lets `path` into the build context (last matching pattern wins)."""

    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        for part in re.split(r"(\*\*/?|\*|\?)", pattern.strip("/")):
            if part.startswith("**"):
                out += ".*" if part == "**" else "(?:.*/)?"
            elif part == "*":
                out += "[^/]*"
            elif part == "?":
                out += "[^/]"
            else:
                out += re.escape(part)
        return re.compile(out + r"\Z")

    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        compiled = regex(pattern.lstrip("!"))
        if any(compiled.match(p) for p in prefixes):
            included = negate
    return included


def dockerignore_patterns() -> list[str]:
    """The patterns of the repository's .dockerignore."""
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def test_dockerfile_stages_base_images_and_copies() -> None:
    instructions = dockerfile_instructions(DEPLOY / "Dockerfile")
    stages: list[str] = []
    patterns = dockerignore_patterns()
    for word, args in instructions:
        if word == "FROM":
            image, _, alias = args.partition(" AS ")
            name, _, tag = image.rpartition(":")
            assert name, f"FROM {image}: pin the base image by tag"
            assert "/" not in tag, f"FROM {image}: pin the base image by tag"
            assert tag != "latest", f"FROM {image}: 'latest' is not a pin"
            stages.append(alias.strip() or image)
        elif word == "COPY":
            argv = shlex.split(args)
            from_stage = next((a.split("=", 1)[1] for a in argv if a.startswith("--from=")), None)
            sources = [a for a in argv if not a.startswith("--")][:-1]
            assert sources, f"COPY {args}: no source"
            if from_stage is not None:
                assert from_stage in stages, f"COPY --from={from_stage}: no such earlier stage"
                continue
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
                assert dockerignore_includes(source, patterns), (
                    f"COPY {source}: excluded from the build context by .dockerignore"
                )
    assert len(stages) >= 2, "the Dockerfile is multi-stage"


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The instructions after the last FROM."""
    last = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last:]


def test_dockerfile_runs_runbook_as_a_non_root_user() -> None:
    final = final_stage(dockerfile_instructions(DEPLOY / "Dockerfile"))
    users = [args for word, args in final if word == "USER"]
    assert users, "the final stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), "the final stage runs as root"
    assert user.isdigit(), "a numeric USER lets Kubernetes' runAsNonRoot verify it"
    entrypoint = [json.loads(a) for w, a in final if w == "ENTRYPOINT"]
    cmd = [json.loads(a) for w, a in final if w == "CMD"]
    assert entrypoint[-1] == ["runbook"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "runbook" in scripts["project"]["scripts"]
    # Published ports reach the container's interface: listening on loopback would answer only
    # the healthcheck.
    assert cmd[-1] == ["run", "--runbook", RUNBOOK_IN_CONTAINER, "--exporter-listen",
                       "0.0.0.0:9817", "--responder-listen", "0.0.0.0:9818"]
    assert cli_error(cmd[-1]) is None


def healthcheck_argv() -> tuple[list[str], str]:
    """The HEALTHCHECK's exec-form command and the default URL it reads from ENV."""
    final = final_stage(dockerfile_instructions(DEPLOY / "Dockerfile"))
    checks = [args for word, args in final if word == "HEALTHCHECK"]
    assert checks, "the final stage has a HEALTHCHECK"
    command = checks[-1].split(" CMD ", 1)[1]
    argv = json.loads(command)  # exec form: no shell in the image's health check either
    env = " ".join(args for word, args in final if word == "ENV")
    match = re.search(r"RUNBOOK_HEALTH_URL=(\S+)", env)
    assert match, "ENV sets RUNBOOK_HEALTH_URL, the URL the health check reads"
    return argv, match.group(1)


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def health_server(status: int) -> Iterator[int]:
    """A local HTTP server answering /health with `status`; yields its port."""
    handler = type("Handler", (_Health,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_dockerfile_healthcheck_passes_on_200_and_fails_otherwise() -> None:
    argv, default_url = healthcheck_argv()
    assert argv[0] == "python"
    assert default_url.endswith(f":{PORTS['exporter']}/health")
    argv = [sys.executable, *argv[1:]]

    def check(url: str) -> int:
        env = {"RUNBOOK_HEALTH_URL": url}
        done = subprocess.run(argv, env=env, capture_output=True, timeout=20, check=False)
        return done.returncode

    with health_server(200) as port:
        assert check(f"http://127.0.0.1:{port}/health") == 0
    with health_server(503) as port:
        assert check(f"http://127.0.0.1:{port}/health") != 0
    assert check(f"http://127.0.0.1:{free_port()}/health") != 0


@pytest.mark.parametrize("name", ["exporter", "responder"])
def test_dockerfile_healthcheck_against_the_real_service(name: str, tmp_path: Path) -> None:
    """The image's health check command, run as is, against the real exporter and responder."""
    argv, _ = healthcheck_argv()
    port = free_port()
    args = [name, "--listen", f"127.0.0.1:{port}"]
    env = {}
    if name == "responder":
        args += ["--runbook", str(COMPOSE_RUNBOOK), "--data-dir", str(tmp_path)]
        env["RUNBOOK_WEBHOOK_TOKEN"] = "t" * 32
    url = f"http://127.0.0.1:{port}/health"
    with stack() as running:
        running.runbook(name, args, url, env=env)
        done = subprocess.run([sys.executable, *argv[1:]], env={"RUNBOOK_HEALTH_URL": url},
                              capture_output=True, timeout=20, check=False)
        assert done.returncode == 0, done.stderr


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = dockerignore_patterns()
    for path in (".venv/bin/python", ".git/HEAD", "tests/test_deploy.py", "deploy/.env",
                 "deploy/secrets/webhook_token", "runbook/__pycache__/cli.cpython-311.pyc"):
        assert not dockerignore_includes(path, patterns), f"{path} would enter the build context"
    for path in ("pyproject.toml", "runbook/cli.py", "exporter/app.py", "responder/__init__.py"):
        assert dockerignore_includes(path, patterns), f"{path} is needed by the build"


# ------------------------------------------------------------------------ docker compose


def compose() -> dict[str, Any]:
    """The compose file, parsed."""
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return data


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema with the compose specification's own schema (vendored, offline)."""
    return run_tool([str(VENV_BIN / "check-jsonschema"), "--builtin-schema",
                     "vendor.compose-spec", str(path)])


def test_compose_file_matches_the_compose_specification(tmp_path: Path) -> None:
    done = check_compose_schema(DEPLOY / "docker-compose.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    broken = compose()
    broken["services"]["exporter"]["restart_policy"] = "always"  # not a compose key
    (tmp_path / "compose.yml").write_text(yaml.safe_dump(broken))
    assert check_compose_schema(tmp_path / "compose.yml").returncode != 0


def volume_binds(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts (short syntax)."""
    binds: dict[str, Path] = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            binds[target] = (DEPLOY / source).resolve()
    return binds


def test_compose_services_images_ports_and_mounts() -> None:
    services = compose()["services"]
    assert set(services) >= {"exporter", "responder", "prometheus", "alertmanager", "grafana",
                             "redis", "postgres"}
    for name, service in services.items():
        image = service["image"]
        assert ":" in image, f"{name}: pin {image} by tag"
        assert not image.endswith(":latest"), f"{name}: 'latest' is not a pin"
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name}: publish {port} on loopback only"
        for target, source in volume_binds(service).items():
            assert source.exists(), f"{name}: bind mount {source} -> {target} does not exist"
    for name in ("redis", "postgres"):
        assert "ports" not in services[name], f"{name} stays inside the compose network"
    env_example = (DEPLOY / ".env.example").read_text(encoding="utf-8")
    for secret in compose()["secrets"].values():
        if "file" in secret:
            example = DEPLOY / (secret["file"] + ".example")
            assert example.exists(), f"{example} shows the shape of the secret file"
        else:
            assert re.search(rf"^{secret['environment']}=", env_example, re.M), (
                f"deploy/.env.example lists {secret['environment']}"
            )


# The services that share the `loop` network namespace and the port each listens on there.
LOOP_PORTS = {"exporter": PORTS["exporter"], "responder": PORTS["responder"], "prometheus": 9090,
              "alertmanager": 9093, "grafana": 3000}


def test_compose_loop_shares_one_network_namespace() -> None:
    """Like a pod: the rendered configs' 127.0.0.1 addresses reach the right service."""
    services = compose()["services"]
    published = {p.rsplit(":", 1)[1] for p in services["loop"]["ports"]}
    for name, port in LOOP_PORTS.items():
        assert services[name]["network_mode"] == "service:loop", name
        assert "ports" not in services[name], f"{name}: publish on the namespace's owner"
        assert str(port) in published, f"{name}'s port {port} is not published"


@pytest.mark.parametrize("name", ["exporter", "responder"])
def test_compose_runbook_services_are_wired_to_the_example(name: str) -> None:
    service = compose()["services"][name]
    assert volume_binds(service)[RUNBOOK_IN_CONTAINER] == COMPOSE_RUNBOOK
    command = service["command"]
    assert command[0] == name
    assert cli_error(command) is None, cli_error(command)
    listen = command[command.index("--listen") + 1]
    assert listen == f"0.0.0.0:{PORTS[name]}"
    assert service["environment"]["RUNBOOK_HEALTH_URL"] == f"http://127.0.0.1:{PORTS[name]}/health"
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]
    watched, every = runbook_env_names(COMPOSE_RUNBOOK)
    needed = watched if name == "exporter" else every
    missing = needed - set(service["environment"])
    assert not missing, f"{name} lacks env vars the runbook names: {sorted(missing)}"


def test_compose_webhook_token_is_shared_by_file_not_env() -> None:
    services = compose()["services"]
    responder = services["responder"]
    token_file = responder["command"][responder["command"].index("--token-file") + 1]
    assert token_file == "/run/secrets/webhook_token"
    assert "webhook_token" in responder["secrets"]
    assert "webhook_token" in services["alertmanager"]["secrets"]
    for service in services.values():
        env = service.get("environment", {})
        assert "RUNBOOK_WEBHOOK_TOKEN" not in env
        for key, value in env.items():
            if re.search(r"PASSWORD|TOKEN|KEY|SECRET", key):
                assert str(value).startswith("${"), f"{key} is written inline"


def test_compose_prometheus_alertmanager_and_grafana_mounts() -> None:
    services = compose()["services"]
    prometheus = volume_binds(services["prometheus"])
    assert prometheus["/etc/prometheus/prometheus.yml"] == DEPLOY / "prometheus.yml"
    assert REPO / "alert_rules" in prometheus.values()
    alertmanager = volume_binds(services["alertmanager"])
    assert alertmanager["/etc/alertmanager/alertmanager.yml"] == DEPLOY / "alertmanager.yml"
    grafana = volume_binds(services["grafana"])
    provisioning = grafana["/etc/grafana/provisioning"]
    assert provisioning == DEPLOY / "grafana" / "provisioning"
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == f"http://127.0.0.1:{LOOP_PORTS['prometheus']}"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "runbook.yml").read_text())[
        "providers"]
    assert provider["type"] == "file"
    assert grafana[provider["options"]["path"]] == REPO / "grafana"


def dashboard_datasource_uids(node: Any) -> set[str]:
    """Every datasource uid a Grafana dashboard JSON refers to."""
    found: set[str] = set()
    if isinstance(node, dict):
        ds = node.get("datasource")
        if isinstance(ds, dict) and isinstance(ds.get("uid"), str):
            found.add(ds["uid"])
        elif isinstance(ds, str):
            found.add(ds)
        for value in node.values():
            found |= dashboard_datasource_uids(value)
    elif isinstance(node, list):
        for item in node:
            found |= dashboard_datasource_uids(item)
    return found


def test_rendered_dashboards_use_the_provisioned_datasource() -> None:
    (provisioned,) = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    dashboards = sorted((REPO / "grafana").glob("*.json"))
    assert any(d.stem == "cinder-js" for d in dashboards), "grafana/cinder-js.json is rendered"
    for path in dashboards:
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        # A datasource variable picks the default datasource of its type: the provisioned one.
        variables = {v["name"] for v in dashboard.get("templating", {}).get("list", [])
                     if v.get("type") == "datasource" and v.get("query") == provisioned["type"]}
        for uid in dashboard_datasource_uids(dashboard):
            ok = uid == provisioned["uid"] or uid.strip("${}") in variables or uid.startswith("-- ")
            assert ok, f"{path.name}: datasource {uid!r} is not the provisioned one"
    assert provisioned["isDefault"] is True


# ------------------------------------------------------------------------ Prometheus, Alertmanager


def container_tree(service: str, root: Path) -> None:
    """Copy a compose service's bind mounts under `root` at their paths in the container."""
    for target, source in volume_binds(compose()["services"][service]).items():
        dest = root / target.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, dest)
        else:
            shutil.copyfile(source, dest)


def test_promtool_checks_the_provisioned_prometheus_config(tmp_path: Path) -> None:
    """promtool sees the files where the compose file puts them inside the container."""
    container_tree("prometheus", tmp_path)
    config_path = tmp_path / "etc" / "prometheus" / "prometheus.yml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    assert config["rule_files"], "prometheus.yml loads the rendered rules"
    for pattern in config["rule_files"]:
        # Absolute paths name the container's tree: re-root them under the copy.
        where = tmp_path / pattern.lstrip("/") if pattern.startswith("/") else (
            config_path.parent / pattern)
        assert list(where.parent.glob(where.name)), f"{pattern} matches no file in the container"
    config["rule_files"] = [str(tmp_path) + f if f.startswith("/") else f
                            for f in config["rule_files"]]
    config_path.write_text(yaml.safe_dump(config))
    done = run_tool([find_tool("promtool"), "check", "config", str(config_path)])
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "SUCCESS" in output
    assert output.count("rules found") == len(list((REPO / "alert_rules").glob("*.rules.yml")))


def test_prometheus_config_reaches_the_compose_services() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text(encoding="utf-8"))
    targets = {t for job in config["scrape_configs"] for sc in job.get("static_configs", [])
               for t in sc["targets"]}
    for name in ("exporter", "responder"):
        assert f"127.0.0.1:{LOOP_PORTS[name]}" in targets, f"Prometheus does not scrape {name}"
    alerting = {t for am in config["alerting"]["alertmanagers"]
                for sc in am.get("static_configs", []) for t in sc["targets"]}
    assert alerting == {f"127.0.0.1:{LOOP_PORTS['alertmanager']}"}


def test_compose_exporter_is_scraped_under_its_runbooks_job() -> None:
    """The rules select the exporter's series by job: the compose exporter's job must be the
    one its runbook's rules expect, and no other service's job may scrape it."""
    from runbook.render.expressions import exporter_job

    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text(encoding="utf-8"))
    runbook_file = next(Path(v.split(":", 1)[0]) for v in compose()["services"]["exporter"][
        "volumes"] if str(v).endswith(":/etc/runbook/runbook.yml:ro"))
    expected = exporter_job(load_runbook(DEPLOY / runbook_file).runbook)
    exporter = f"127.0.0.1:{LOOP_PORTS['exporter']}"
    scraping = [job["job_name"] for job in config["scrape_configs"]
                for sc in job.get("static_configs", []) if exporter in sc["targets"]]
    assert scraping == [expected]


def test_servicemonitor_sets_the_job_the_rules_select() -> None:
    from runbook.render.expressions import exporter_job

    (monitor, _) = yaml_docs(K8S / "servicemonitor.yaml")
    validate_manifest(monitor)
    (endpoint,) = monitor["spec"]["endpoints"]
    jobs = [r["replacement"] for r in endpoint.get("relabelings", [])
            if r.get("targetLabel") == "job" and r.get("action", "replace") == "replace"]
    assert jobs == [exporter_job(load_runbook(K8S_RUNBOOK).runbook)]
    rules = yaml.safe_load((K8S / "prometheusrule-blog-engine.yaml").read_text())
    exprs = [r["expr"] for g in rules["spec"]["groups"] for r in g["rules"]]
    assert any(f'job="{jobs[0]}"' in e for e in exprs)
    # The CRD schema does check the relabeling: a misspelt key is refused.
    endpoint["relabelings"][0]["target_label"] = endpoint["relabelings"][0].pop("targetLabel")
    with pytest.raises(jsonschema.ValidationError, match="target_label"):
        validate_manifest(monitor)


def test_amtool_checks_the_provisioned_alertmanager_config() -> None:
    done = run_tool([find_tool("amtool"), "check-config", str(DEPLOY / "alertmanager.yml")])
    assert done.returncode == 0, done.stdout + done.stderr
    text = (DEPLOY / "alertmanager.yml").read_text(encoding="utf-8")
    config = yaml.safe_load(text)
    webhooks = [w for r in config["receivers"] for w in r.get("webhook_configs", [])]
    assert webhooks, "alertmanager.yml sends to the responder"
    for hook in webhooks:
        assert hook["url"].startswith(f"http://127.0.0.1:{LOOP_PORTS['responder']}/")
        assert hook["http_config"]["authorization"]["credentials_file"] == (
            "/run/secrets/webhook_token"
        )
    # Every secret file the config reads is a compose secret of the Alertmanager service.
    attached = set(compose()["services"]["alertmanager"]["secrets"])
    for name in re.findall(r"_file: /run/secrets/(\S+)", text):
        assert name in attached, f"alertmanager.yml reads /run/secrets/{name}: not attached"
        assert name in compose()["secrets"]


# ------------------------------------------------------------------------ Kubernetes


def k8s_files() -> list[Path]:
    """The manifests (the kustomization is kustomize's, not the API server's)."""
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def structural(node: Any) -> Any:
    """An openAPIV3Schema as JSON Schema that rejects unknown fields, as kubectl's strict
    field validation does, with Go's mid-pattern `(?i)` moved to the front for Python's re."""
    if isinstance(node, list):
        return [structural(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: structural(value) for key, value in node.items()}
    if isinstance(out.get("pattern"), str) and "(?i)" in out["pattern"]:
        out["pattern"] = "(?i)" + out["pattern"].replace("(?i)", "")
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def crd_schema(kind: str, api_version: str) -> dict[str, Any]:
    """openAPIV3Schema of an operator kind at a version, from the operator's own CRD."""
    group, version = api_version.split("/")
    crd = yaml.safe_load((CRDS / f"{group}_{OPERATOR_KINDS[kind]}.yaml").read_text())
    assert crd["spec"]["names"]["kind"] == kind
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            schema: dict[str, Any] = structural(entry["schema"]["openAPIV3Schema"])
            return schema
    raise AssertionError(f"the {kind} CRD has no version {version}")


def validate_manifest(doc: dict[str, Any]) -> None:
    """Validate one object: core kinds with kubernetes-validate, operator kinds with their CRD."""
    if doc["kind"] in OPERATOR_KINDS:
        schema = crd_schema(doc["kind"], doc["apiVersion"])
        # OpenAPI v3.0 schemas are closest to draft 4; the CRD is trusted, not checked itself.
        error = jsonschema.exceptions.best_match(
            jsonschema.Draft4Validator(schema).iter_errors(doc))
        if error is not None:
            raise error
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_every_kubernetes_manifest_validates() -> None:
    kinds: set[str] = set()
    for path in k8s_files():
        for doc in yaml_docs(path):
            try:
                validate_manifest(doc)
            except SchemaNotFoundError as exc:
                pytest.fail(f"{path.name}: {doc['kind']} has no schema here: {exc}")
            except (K8sValidationError, jsonschema.ValidationError) as exc:
                pytest.fail(f"{path.name}: {doc['kind']}/{doc['metadata']['name']}: {exc}")
            kinds.add(doc["kind"])
    assert kinds >= {"Deployment", "Service", "ServiceMonitor", "PrometheusRule", "ConfigMap",
                     "ServiceAccount", "Role", "RoleBinding"}


def test_kubernetes_validation_can_fail() -> None:
    (deployment,) = [d for d in yaml_docs(K8S / "exporter.yaml") if d["kind"] == "Deployment"]
    deployment["spec"]["replica"] = 2
    with pytest.raises(K8sValidationError):
        validate_manifest(deployment)
    (monitor, _) = yaml_docs(K8S / "servicemonitor.yaml")
    typo = json.loads(json.dumps(monitor))
    typo["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError, match="intervall"):
        validate_manifest(typo)
    monitor["spec"]["endpoints"] = "metrics"
    with pytest.raises(jsonschema.ValidationError):
        validate_manifest(monitor)


def test_operator_objects_carry_the_release_label() -> None:
    found = 0
    for path in k8s_files():
        for doc in yaml_docs(path):
            if doc["kind"] in OPERATOR_KINDS:
                found += 1
                labels = doc["metadata"].get("labels", {})
                assert labels.get("release") == RELEASE, (
                    f"{path.name}: {doc['kind']} without release: {RELEASE} is ignored by "
                    "kube-prometheus-stack"
                )
    assert found >= 3


def test_kustomization_lists_the_manifests_in_one_namespace() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == NAMESPACE
    listed = set(kustomization["resources"])
    for name in listed:
        assert (K8S / name).exists(), f"kustomization lists {name}, which does not exist"
    runbook_service = load_runbook(K8S_RUNBOOK).service
    assert f"prometheusrule-{runbook_service}.yaml" in listed
    for path in k8s_files():
        if not path.name.startswith("prometheusrule-"):
            assert path.name in listed, f"{path.name} is not in the kustomization"
        if path.name in listed:
            for doc in yaml_docs(path):
                # Rendered PrometheusRules leave the namespace to kustomize.
                assert doc["metadata"].get("namespace", NAMESPACE) == NAMESPACE, path.name
    (image,) = kustomization["images"]
    assert image["newTag"] == project_version()


def k8s_objects(kind: str) -> list[dict[str, Any]]:
    """Every object of a kind among the manifests."""
    return [d for p in k8s_files() for d in yaml_docs(p) if d["kind"] == kind]


def containers() -> dict[str, dict[str, Any]]:
    """The containers of the Deployments by Deployment name."""
    out = {}
    for deployment in k8s_objects("Deployment"):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        out[deployment["metadata"]["name"]] = container
    return out


def test_configmap_carries_the_example_runbook() -> None:
    (configmap,) = [c for c in k8s_objects("ConfigMap") if c["metadata"]["name"] == "runbook"]
    assert configmap["data"]["runbook.yml"] == K8S_RUNBOOK.read_text(encoding="utf-8"), (
        "deploy/kubernetes/configmap-runbook.yaml drifted from examples/blog-engine.yml"
    )


@pytest.mark.parametrize("name", ["exporter", "responder"])
def test_deployment_args_env_and_secrets(name: str) -> None:
    container = containers()[f"runbook-{name}"]
    env = {e["name"]: e for e in container.get("env", [])}
    args = [re.sub(r"\$\((\w+)\)", "placeholder", a) for a in container["args"]]
    assert args[0] == name
    assert cli_error(args) is None, cli_error(args)
    for ref in re.findall(r"\$\((\w+)\)", " ".join(container["args"])):
        assert ref in env, f"args use $({ref}), which the container's env does not define"
    assert args[args.index("--listen") + 1] == f"0.0.0.0:{PORTS[name]}"
    assert args[args.index("--runbook") + 1] == RUNBOOK_IN_CONTAINER
    assert container["image"].split(":")[1] == project_version()
    watched, every = runbook_env_names(K8S_RUNBOOK)
    needed = watched if name == "exporter" else every | {"RUNBOOK_WEBHOOK_TOKEN"}
    assert needed <= set(env), f"missing env: {sorted(needed - set(env))}"
    for item in env.values():
        assert "value" not in item, f"{item['name']}: secrets come by secretKeyRef, not value"
        assert item["valueFrom"]["secretKeyRef"]["name"] == "runbook-secrets"
    assert not k8s_objects("Secret"), "no Secret with values is committed"


def test_pods_run_as_the_image_user_without_privileges() -> None:
    final = final_stage(dockerfile_instructions(DEPLOY / "Dockerfile"))
    uid = int([a for w, a in final if w == "USER"][-1].split(":")[0])
    for deployment in k8s_objects("Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == uid
        (container,) = pod["containers"]
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]


def test_services_and_monitors_select_what_exists() -> None:
    deployments = {d["metadata"]["name"]: d for d in k8s_objects("Deployment")}
    services = {s["metadata"]["name"]: s for s in k8s_objects("Service")}
    for service in services.values():
        (deployment,) = [d for d in deployments.values() if service["spec"]["selector"].items()
                         <= d["spec"]["template"]["metadata"]["labels"].items()]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        port_names = {p["name"] for p in container["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["port"] in port_names
    for monitor in k8s_objects("ServiceMonitor"):
        wanted = monitor["spec"]["selector"]["matchLabels"].items()
        selected = [s for s in services.values() if wanted <= s["metadata"]["labels"].items()]
        assert selected, f"ServiceMonitor {monitor['metadata']['name']} selects no Service"
        for endpoint in monitor["spec"]["endpoints"]:
            for service in selected:
                assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


# What each kubectl command the runbooks use needs: (apiGroup, resource) -> verbs.
KUBECTL_NEEDS: dict[tuple[str, ...], dict[tuple[str, str], set[str]]] = {
    ("scale",): {("apps", "deployments"): {"get"},
                 ("apps", "deployments/scale"): {"get", "patch", "update"}},
    ("rollout", "restart"): {("apps", "deployments"): {"get", "patch"}},
    ("rollout", "status"): {("apps", "deployments"): {"get", "list", "watch"}},
    ("set", "env"): {("apps", "deployments"): {"get", "patch"}},
}


def kubectl_needs(argv: list[str]) -> dict[tuple[str, str], set[str]]:
    """The permissions one kubectl argv needs, from the table above."""
    words = [a for a in argv[1:] if not a.startswith("-")]
    for command, needs in KUBECTL_NEEDS.items():
        if tuple(words[: len(command)]) == command:
            target = words[len(command)] if len(words) > len(command) else ""
            assert target.startswith("deployment/"), f"{argv}: only Deployments are granted"
            return needs
    raise AssertionError(f"{argv}: add what `kubectl {' '.join(words[:2])}` needs to the table")


def test_role_grants_what_the_kubectl_actions_need() -> None:
    (role,) = k8s_objects("Role")
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    argvs = [a for a in exec_argvs(K8S_RUNBOOK) if a[0] == "kubectl"]
    assert argvs, "the Kubernetes example runbook has kubectl actions"
    needed: dict[tuple[str, str], set[str]] = {}
    for argv in argvs:
        if "-n" in argv:
            assert argv[argv.index("-n") + 1] == role["metadata"]["namespace"]
        for key, verbs in kubectl_needs(argv).items():
            needed.setdefault(key, set()).update(verbs)
    # Exactly what the actions need: nothing missing, nothing more.
    assert granted == needed
    (binding,) = k8s_objects("RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    (subject,) = binding["subjects"]
    (responder,) = [d for d in k8s_objects("Deployment")
                    if d["metadata"]["name"] == "runbook-responder"]
    assert subject["name"] == responder["spec"]["template"]["spec"]["serviceAccountName"]
    with pytest.raises(AssertionError):
        kubectl_needs(["kubectl", "delete", "pod/x"])


# ------------------------------------------------------------------------ systemd


def unit_settings(path: Path) -> dict[str, list[str]]:
    """Key -> values of a unit file's [Service] section (keys may repeat)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def verify_units(paths: list[Path], tmp_path: Path) -> str:
    """systemd-analyze verify's complaints about the units (empty when clean).

    verify needs the ExecStart binary to exist and exits 0 on unknown keys, so the copies run
    this venv's `runbook` and any output at all counts as a complaint.
    """
    copies = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        copy = tmp_path / path.name
        copy.write_text(text.replace(UNIT_BIN, str(VENV_BIN / "runbook")))
        copies.append(str(copy))
    done = run_tool([find_tool("systemd-analyze"), "verify", *copies])
    return (done.stdout + done.stderr).strip() or ("" if done.returncode == 0 else "failed")


def test_systemd_units_verify(tmp_path: Path) -> None:
    units = sorted(SYSTEMD.glob("*.service"))
    assert [u.name for u in units] == ["runbook-exporter.service", "runbook-responder.service"]
    assert verify_units(units, tmp_path) == ""
    source, broken = tmp_path / "source", tmp_path / "broken"
    source.mkdir()
    broken.mkdir()
    bad = source / "runbook-exporter.service"
    bad.write_text(units[0].read_text().replace("ProtectSystem=", "ProtectSystm="))
    assert "ProtectSystm" in verify_units([bad], broken)


def test_systemd_units_exposure_is_low(tmp_path: Path) -> None:
    copies = []
    for unit in sorted(SYSTEMD.glob("*.service")):
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace(UNIT_BIN, str(VENV_BIN / "runbook")))
        copies.append(str(copy))
    # Exposure is 0 (locked down) to 10 (unrestricted); threshold is in tenths.
    done = run_tool([find_tool("systemd-analyze"), "security", "--offline=yes",
                     "--threshold=20", *copies])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr


@pytest.mark.parametrize("name", ["exporter", "responder"])
def test_systemd_unit_settings(name: str) -> None:
    settings = unit_settings(SYSTEMD / f"runbook-{name}.service")
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict",
                       "DynamicUser": "yes"}.items():
        assert settings.get(key) == [value], f"{name}: {key}={value}"
    assert settings["EnvironmentFile"][0].startswith("/etc/runbook/")
    argv = shlex.split(settings["ExecStart"][0])
    state = settings["StateDirectory"][0]
    args = [a.replace("%S", "/var/lib").replace("%d", "/run/credentials/x") for a in argv[1:]]
    assert args[0] == name
    assert cli_error(args) is None, cli_error(args)
    assert args[args.index("--listen") + 1] == f"127.0.0.1:{PORTS[name]}"
    if name == "responder":
        assert argv[argv.index("--data-dir") + 1] == f"%S/{state}"
        assert argv[argv.index("--token-file") + 1] == "%d/webhook-token"
        assert settings["LoadCredential"] == ["webhook-token:/etc/runbook/webhook-token"]
    for values in settings.values():
        for value in values:
            assert not re.search(r"(TOKEN|KEY|PASSWORD)=\S", value), "secrets go in the env file"
