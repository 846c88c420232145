"""The lock files in requirements/ (written by `make lock`): they meet what pyproject.toml asks, the image installs
the versions CI tested, and torch with its CUDA companions is left to torch's own pin."""

import importlib.metadata
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCKS = ["dev.txt", "image-cpu.txt", "image-cuda.txt", "pip.txt", "model.txt"]
CUDA_COMPANIONS = ("nvidia-", "cuda-", "triton")


def pins(lock: str) -> dict[str, Version]:
    """A lock's exact versions that apply to this interpreter and platform (a universal lock holds others too)."""
    found: dict[str, Version] = {}
    for line in (ROOT / "requirements" / lock).read_text().splitlines():
        if not line or line[0] in " #":  # hashes, `# via` annotations, the header
            continue
        requirement = Requirement(line.removesuffix("\\").strip())
        if requirement.marker is None or requirement.marker.evaluate():
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", line
            found[requirement.name] = Version(specifier.version)
    return found


def unmet(requirements: list[str], lock: str) -> list[str]:
    """The requirements (torch aside: it has its own pin) that the lock's versions do not satisfy here."""
    locked = pins(lock)
    missing = []
    for text in requirements:
        requirement = Requirement(text)
        if requirement.name == "torch" or not (requirement.marker is None or requirement.marker.evaluate()):
            continue
        version = locked.get(requirement.name)
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            missing.append(f"{text} (locked: {version})")
    return missing


@pytest.mark.parametrize(
    ("lock", "needs"),
    [
        ("dev.txt", ["dependencies", "dev"]),
        ("image-cpu.txt", ["dependencies", "build-system"]),
        ("image-cuda.txt", ["dependencies", "build-system", "quant"]),
    ],
)
def test_each_lock_meets_what_pyproject_asks(lock: str, needs: list[str]) -> None:
    """A dependency added to pyproject.toml without `make lock` would be missing from a fresh machine."""
    project, extras = PROJECT["project"], PROJECT["project"]["optional-dependencies"]
    sources = {"dependencies": project["dependencies"], "build-system": PROJECT["build-system"]["requires"], **extras}
    requirements = [text for need in needs for text in sources[need]]
    assert unmet(requirements, lock) == []


@pytest.mark.parametrize("lock", ["image-cpu.txt", "image-cuda.txt"])
def test_the_image_installs_the_versions_ci_tested(lock: str) -> None:
    tested = pins("dev.txt")
    image = pins(lock)
    assert {
        name: (version, tested[name]) for name, version in image.items() if tested.get(name, version) != version
    } == {}
    assert set(image) - set(tested) == ({"bitsandbytes"} if lock == "image-cuda.txt" else set())


def test_torch_and_its_cuda_companions_stay_out_of_the_locks() -> None:
    for lock in LOCKS:
        names = [name for name in pins(lock) if name == "torch" or name.startswith(CUDA_COMPANIONS)]
        assert names == [], lock
    # The locks are resolved with torch's requirements as pyproject.toml states them: those of the torch installed
    # from its pin, or a requirement of a new torch would go unlocked.
    (line,) = [line for line in (ROOT / "requirements" / "torch.txt").read_text().splitlines() if line[:1] != "#"]
    (pin,) = Requirement(line).specifier
    assert Version(importlib.metadata.version("torch")).public == pin.version
    (torch,) = [entry for entry in PROJECT["tool"]["uv"]["dependency-metadata"] if entry["name"] == "torch"]
    required = [text for text in importlib.metadata.requires("torch") or [] if "extra ==" not in text]
    assert sorted(torch["requires-dist"]) == sorted(required)
