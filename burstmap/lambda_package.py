"""The user's libraries for a Lambda function: wheels resolved by pip for Lambda's platform, not this machine's.

``pip install --target`` with ``--platform``/``--python-version``/``--only-binary=:all:`` picks the
binary wheels that load on the function's runtime: Amazon Linux 2 (glibc 2.26) for python3.10 and
3.11, Amazon Linux 2023 (glibc 2.34) for python3.12 and later, on x86_64 or aarch64. The libraries go
into the function's zip, or into a layer (unpacked by Lambda under ``/opt/python``) when they would
push the zip over the direct-upload limit. What was installed is recorded in the function's
``BURSTMAP_PACKAGES`` variable, so a client can warn when its own versions differ for a library a
job's function uses (`version_drift`).
"""

from __future__ import annotations

import importlib.metadata
import json
import pickletools
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .serialize import MAC_SIZE

__all__ = ["GLIBC", "PACKAGES_VARIABLE", "UNZIPPED_LIMIT", "ZIP_LIMIT", "Libraries", "Platform",
           "install_libraries", "recorded_packages", "version_drift", "write_container"]

#: The glibc minor version of each Lambda runtime's operating system: wheels for newer ones do not load.
GLIBC = {"python3.10": 26, "python3.11": 26, "python3.12": 34, "python3.13": 34}
#: Lambda's limits: a zip uploaded directly, and the function with its layers unpacked.
ZIP_LIMIT = 50 * 2**20
UNZIPPED_LIMIT = 250 * 2**20
#: The function's environment variable that holds ``{distribution: version}`` of its libraries, as JSON.
PACKAGES_VARIABLE = "BURSTMAP_PACKAGES"
_MACHINES = {"x86_64": "x86_64", "arm64": "aarch64"}
_OLDEST_MANYLINUX = 17  # manylinux2014


@dataclass(frozen=True)
class Platform:
    """A Lambda runtime and architecture, as pip needs to know them."""

    runtime: str
    architecture: str

    def __post_init__(self) -> None:
        if self.runtime not in GLIBC:
            raise ConfigError(f"unknown Lambda runtime {self.runtime!r}; one of {', '.join(GLIBC)}")
        if self.architecture not in _MACHINES:
            raise ConfigError(f"unknown Lambda architecture {self.architecture!r}; one of {', '.join(_MACHINES)}")

    @property
    def python_version(self) -> str:
        return self.runtime.removeprefix("python")

    def wheel_platforms(self) -> list[str]:
        """Every manylinux tag that loads on the runtime's glibc, newest first (pip does not expand them)."""
        machine = _MACHINES[self.architecture]
        tags = [f"manylinux_2_{minor}_{machine}" for minor in range(GLIBC[self.runtime], _OLDEST_MANYLINUX - 1, -1)]
        return [*tags, f"manylinux2014_{machine}"]

    def pip_options(self) -> list[str]:
        """The options that make pip resolve for this platform instead of the machine it runs on."""
        platforms = [option for tag in self.wheel_platforms() for option in ("--platform", tag)]
        return [*platforms, "--implementation", "cp", "--python-version", self.python_version,
                "--only-binary=:all:"]


@dataclass(frozen=True)
class Libraries:
    """The libraries pip installed into a folder: their files and ``{distribution: version}``."""

    folder: Path
    versions: dict[str, str]

    def files(self, skip: Iterable[str] = ()) -> Iterator[tuple[str, Path]]:
        """``(path inside the folder, file)`` of every file to ship, leaving out top-level names in ``skip``."""
        skipped = {"bin", "__pycache__", *skip}
        for path in sorted(self.folder.rglob("*")):
            relative = path.relative_to(self.folder)
            if path.is_file() and relative.parts[0] not in skipped and "__pycache__" not in relative.parts:
                yield relative.as_posix(), path


def install_libraries(requirements: Path | None, packages: Iterable[str], platform: Platform,
                      folder: Path) -> Libraries:
    """Install binary wheels of the requirements for ``platform`` into ``folder`` with pip.

    Raises:
        ConfigError: pip found no wheel for the platform (or another failure), with pip's last line.
    """
    wanted = [*(["-r", str(requirements)] if requirements else []), *packages]
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--disable-pip-version-check",
               "--target", str(folder), *platform.pip_options(), *wanted]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()] or ["(no output)"]
        raise ConfigError(f"pip could not install binary wheels for {platform.runtime} {platform.architecture}: "
                          f"{lines[-1].strip()}")
    distributions = importlib.metadata.distributions(path=[str(folder)])
    return Libraries(folder, {d.metadata["Name"]: d.version for d in distributions})


def version_drift(function_blob: bytes, deployed: dict[str, str]) -> list[str]:
    """One line per library the pickled function names whose version here differs from the deployed one.

    The pickle is scanned, never loaded: the names of the modules it refers to are strings in it.
    """
    if not deployed:
        return []
    names = {str(arg).split(".", 1)[0] for _, arg, _ in pickletools.genops(function_blob[MAC_SIZE:])
             if isinstance(arg, str)}
    providers = importlib.metadata.packages_distributions()
    deployed_by_key = {_key(name): (name, version) for name, version in deployed.items()}
    lines = []
    for module in sorted(names & providers.keys()):
        for distribution in providers[module]:
            name, version = deployed_by_key.get(_key(distribution), (None, None))
            mine = importlib.metadata.version(distribution)
            if version is not None and version != mine:
                lines.append(f"{module} is {mine} here but {version} on the function ({name})")
    return sorted(set(lines))


def _key(distribution: str) -> str:
    """A distribution name as PyPI compares them (PEP 503)."""
    return distribution.lower().replace("_", "-").replace(".", "-")


_DOCKERFILE = """\
# burstmap {version} workers as a Lambda container image: for libraries over the zip limits.
FROM --platform={docker_platform} public.ecr.aws/lambda/python:{python}
COPY task/ ${{LAMBDA_TASK_ROOT}}/
COPY requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir --target "${{LAMBDA_TASK_ROOT}}" -r /tmp/requirements.txt
CMD ["{entry_point}"]
"""

_COMMANDS = """\
# Build, push and deploy the image (Docker, the AWS CLI, an ECR repository in your account):
export BURSTMAP_SECRET_KEY=...   # the key your clients use (burstmap config show says where it is)
ACCOUNT=$(aws sts get-caller-identity --query Account --output text)
REGION=$(aws configure get region)
IMAGE=$ACCOUNT.dkr.ecr.$REGION.amazonaws.com/{function}:{version}
aws ecr create-repository --repository-name {function} || true
aws ecr get-login-password | docker login --username AWS --password-stdin ${{IMAGE%%/*}}
docker build --platform {docker_platform} -t "$IMAGE" {folder}
docker push "$IMAGE"
aws lambda create-function --function-name {function} --package-type Image --code ImageUri="$IMAGE" \\
    --architectures {architecture} --timeout {timeout} --memory-size {memory} --role {role} \\
    --environment "Variables={{BURSTMAP_SECRET_KEY=$BURSTMAP_SECRET_KEY}}"
aws lambda put-function-event-invoke-config --function-name {function} --maximum-retry-attempts 0
# To update it later: docker build/push again, then
# aws lambda update-function-code --function-name {function} --image-uri "$IMAGE"
"""


def write_container(folder: Path, task_files: Iterable[tuple[str, bytes]], requirements: list[str],
                    platform: Platform, settings: dict[str, object]) -> str:
    """Write a Dockerfile on the AWS Lambda Python base image into ``folder``; return the commands to ship it.

    ``settings`` holds the function's ``function``, ``timeout``, ``memory``, ``role``, ``version`` and
    ``entry_point``. The secret key is not written anywhere: the commands read it from the shell.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in task_files:
        target = folder / "task" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    (folder / "requirements.txt").write_text("".join(f"{line}\n" for line in requirements))
    values = dict(settings, python=platform.python_version, architecture=platform.architecture, folder=folder,
                  docker_platform="linux/arm64" if platform.architecture == "arm64" else "linux/amd64")
    (folder / "Dockerfile").write_text(_DOCKERFILE.format(**values))
    return _COMMANDS.format(**values)


def recorded_packages(variables: dict[str, str]) -> dict[str, str]:
    """The ``{distribution: version}`` a deployed function's environment records (empty if none)."""
    try:
        recorded = json.loads(variables.get(PACKAGES_VARIABLE, "{}"))
    except ValueError:
        return {}
    return recorded if isinstance(recorded, dict) else {}
