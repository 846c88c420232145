"""The deployment files, checked without a Docker engine: hadolint on the Dockerfile, the compose files against the
Compose Specification's JSON schema (tests/data/compose-spec.json, a copy), and the image's install steps run by
the same script the Dockerfile runs."""

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent


class ComposeLoader(yaml.SafeLoader):
    """YAML as Compose reads it: `!reset` (drop what the file below set) keeps its value for the schema."""


ComposeLoader.add_constructor("!reset", lambda loader, node: loader.construct_sequence(node))  # type: ignore[arg-type]


def compose(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load((ROOT / name).read_text(), Loader=ComposeLoader)
    return loaded


def test_hadolint_passes_on_the_dockerfile() -> None:
    result = subprocess.run([BIN / "hadolint", ROOT / "Dockerfile"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.cpu.yml"])
def test_compose_files_follow_the_compose_specification(name: str) -> None:
    schema = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
    jsonschema.validate(compose(name), schema, cls=jsonschema.Draft7Validator)


def test_compose_serves_a_gpu_drains_and_scales() -> None:
    services = compose("docker-compose.yml")["services"]
    tokserve = services["tokserve"]
    devices = tokserve["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "hf-cache:/home/tokserve/.cache/huggingface" in tokserve["volumes"]
    # Stored responses: one SQLite file for the replicas of a host (the image makes the folder theirs).
    assert "responses:/home/tokserve/.local/share/tokserve" in tokserve["volumes"]
    assert tokserve["restart"] == "unless-stopped"
    assert tokserve["healthcheck"]["test"] == ["CMD", "python", "/src/deploy/healthcheck.py"]
    grace = int(re.fullmatch(r"(\d+)s", tokserve["stop_grace_period"]).group(1))  # type: ignore[union-attr]
    assert grace > float(tokserve["environment"]["TOKSERVE_DRAIN_TIMEOUT"])
    assert "TOKSERVE_MODEL" in tokserve["environment"]
    proxy = services["nginx"]
    assert proxy["profiles"] == ["scale"] and "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in proxy["volumes"]
    cpu = compose("docker-compose.cpu.yml")["services"]["tokserve"]
    assert cpu["build"]["args"]["VARIANT"] == "cpu" and cpu["deploy"]["resources"]["reservations"]["devices"] == []


def test_dockerfile_runs_the_install_script_as_root_and_serves_as_another_user() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    steps = [line.removeprefix("RUN ") for line in lines if line.startswith("RUN deploy/install.sh")]
    assert steps == [
        'deploy/install.sh torch "${VARIANT}"',
        'deploy/install.sh deps "${VARIANT}"',
        "deploy/install.sh app && deploy/install.sh check",
    ]
    # torch, then the dependencies, then the code, each after the files it reads: a code change leaves the first two
    # layers cached, and a new lock the first.
    layers = (
        "COPY requirements/torch.txt",
        "RUN deploy/install.sh torch",
        "COPY requirements requirements",
        "RUN deploy/install.sh deps",
        "COPY pyproject.toml",
        "COPY src",
    )
    order = [next(i for i, line in enumerate(lines) if line.startswith(prefix)) for prefix in layers]
    assert order == sorted(order)
    assert "USER 10001:10001" in lines and lines.index("USER 10001:10001") > order[-1]
    assert 'ENTRYPOINT ["tokserve", "serve"]' in lines
    assert any(line.startswith("HEALTHCHECK") and "/src/deploy/healthcheck.py" in line for line in lines)


def test_install_script_installs_a_working_tokserve(tmp_path: Path) -> None:
    """The image's steps into a fresh virtual environment: torch and the locked dependencies are found already
    installed (this environment's, layered underneath), so nothing is downloaded and the steps must install tokserve
    and find the model. (Under `make test-latest` the environment is newer than the locks: pip fetches their pins.)"""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    # A venv's own old setuptools would shadow the newer one underneath, which torch's metadata asks for.
    subprocess.run([venv / "bin" / "python", "-m", "pip", "uninstall", "-q", "-y", "setuptools"], check=True)
    layered = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (layered / "underneath.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "VIRTUAL_ENV": str(venv)}
    for step in (["torch", "cpu"], ["deps", "cpu"], ["app"], ["check"]):
        result = subprocess.run(["sh", "deploy/install.sh", *step], cwd=ROOT, env=env, capture_output=True, text=True)
        assert result.returncode == 0, f"{step}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
    assert "embedded model:" in result.stdout and result.stdout.strip().endswith(".gguf")
    installed = subprocess.run(
        [venv / "bin" / "python", "-c", "import tokserve.cli; print(tokserve.cli.__file__)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert installed.stdout.startswith(str(venv))  # its own copy, not this checkout's editable install
