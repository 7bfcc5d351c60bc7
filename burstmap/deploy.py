"""``burstmap lambda deploy|remove``: package burstmap for AWS Lambda, and create, update or remove the function.

The package holds burstmap and its pure-Python dependencies (boto3 comes with Lambda's Python
runtimes); compiled speedups such as PyYAML's are left out, so one zip serves every architecture.
Pickled functions only load on the Python minor version that pickled them, so the runtime defaults
to the client's own.
"""

from __future__ import annotations

import importlib
import io
import json
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from botocore.exceptions import BotoCoreError, ClientError

from . import __version__
from .aws import explain, lambda_client, with_backoff
from .config import load_config
from .errors import BurstmapError, ConfigError

__all__ = ["Package", "build_package", "deploy", "remove", "lambda_group", "RUNTIMES", "ARCHITECTURES"]

RUNTIMES = ("python3.10", "python3.11", "python3.12", "python3.13")
ARCHITECTURES = ("x86_64", "arm64")
#: Top-level packages shipped in the zip: burstmap and what it imports on Lambda.
PACKAGES = ("burstmap", "cloudpickle", "platformdirs", "yaml", "tqdm")
ENTRY_POINT = "burstmap.lambda_handler.handler"
_SKIP_SUFFIXES = (".pyc", ".so", ".pyd", ".dylib")
_TRUST = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
_POLICY = "burstmap-worker"  # the inline policy of a role made by --create-role: S3 and CloudWatch logs


@dataclass(frozen=True)
class Package:
    """A deployment zip and what is in it."""

    zip_bytes: bytes
    files: dict[str, int]  # path inside the zip -> uncompressed size

    def summary(self) -> str:
        """Files and bytes per top-level package, then the zip's size."""
        sizes: dict[str, list[int]] = {}
        for path, size in self.files.items():
            entry = sizes.setdefault(path.split("/", 1)[0], [0, 0])
            entry[0] += 1
            entry[1] += size
        lines = [f"  {name:<14} {count:>4} files {total / 1024:>9.1f} KiB"
                 for name, (count, total) in sorted(sizes.items())]
        lines.append(f"package: {len(self.files)} files, {len(self.zip_bytes) / 1024:.1f} KiB zipped")
        return "\n".join(lines)


def build_package(packages: tuple[str, ...] = PACKAGES) -> Package:
    """Zip the source of ``packages`` as installed here, leaving out bytecode and compiled modules."""
    buffer = io.BytesIO()
    files: dict[str, int] = {}
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in packages:
            root = Path(importlib.import_module(name).__file__ or "").parent
            for path in sorted(root.rglob("*")):
                if path.is_dir() or "__pycache__" in path.parts or path.suffix in _SKIP_SUFFIXES:
                    continue
                arcname = f"{name}/{path.relative_to(root).as_posix()}"
                data = path.read_bytes()
                archive.writestr(zipfile.ZipInfo(arcname, (2020, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
                files[arcname] = len(data)
    return Package(buffer.getvalue(), files)


@dataclass(frozen=True)
class Target:
    """Where the function lives and how to reach its control plane."""

    function_name: str
    region: str | None
    endpoint_url: str | None

    def client(self, service: str) -> Any:
        return lambda_client(self.region, self.endpoint_url, service)


def _aws(target: Target, action: Callable[[], Any], retry: Callable[[Exception], bool] = lambda e: False) -> Any:
    """Run one AWS request, turning its failure into one line."""
    try:
        return with_backoff(action, retry, attempts=10, base=0.5, cap=5.0)
    except (ClientError, BotoCoreError) as e:
        raise explain(e, target.function_name, f"in {target.region or 'the default region'}") from None


def _code(error: Exception) -> str:
    return str(error.response.get("Error", {}).get("Code", "")) if isinstance(error, ClientError) else ""


def ensure_role(target: Target, role: str, create: bool, bucket: str | None, say: Callable[[str], None]) -> str:
    """The ARN of ``role`` (a name or an ARN); create it with S3 and log access if ``create``."""
    if role.startswith("arn:"):
        return role
    iam = target.client("iam")
    try:
        return iam.get_role(RoleName=role)["Role"]["Arn"]
    except ClientError as e:
        if _code(e) != "NoSuchEntity":
            raise explain(e, target.function_name, "in IAM") from None
    except BotoCoreError as e:
        raise explain(e, target.function_name, "in IAM") from None
    if not create:
        raise ConfigError(f"IAM role {role!r} does not exist; pass --create-role to create it, "
                          "or --role with an existing one")
    arn = _aws(target, lambda: iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(_TRUST),
                                               Description="burstmap Lambda workers"))["Role"]["Arn"]
    resources = [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"] if bucket else ["*"]
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Resource": resources,
         "Action": ["s3:GetObject", "s3:PutObject", "s3:ListBucket", "s3:DeleteObject"]},
        {"Effect": "Allow", "Resource": "*",
         "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"]},
    ]}
    _aws(target, lambda: iam.put_role_policy(RoleName=role, PolicyName=_POLICY, PolicyDocument=json.dumps(policy)))
    say(f"created IAM role {role} ({arn}) with S3 access to {bucket or 'every bucket'} and CloudWatch logs")
    return arn


def _role_not_ready(error: Exception) -> bool:
    """A role just created takes a few seconds before Lambda may assume it."""
    return _code(error) == "InvalidParameterValueException" and "assume" in str(error)


def deploy(target: Target, role: str, create_role: bool = False, bucket: str | None = None,
           runtime: str = f"python3.{sys.version_info.minor}", architecture: str = "x86_64", memory_mb: int = 1024,
           timeout: int = 300, say: Callable[[str], None] = print) -> None:
    """Create the function, or update its code and configuration, then say what was done.

    Lambda's own retries of failed asynchronous invocations are switched off: burstmap re-runs
    lost calls itself, so a call is not run three times behind its back.
    """
    client = target.client("lambda")
    package = build_package()
    arn = ensure_role(target, role, create_role, bucket, say)
    settings = dict(Role=arn, Handler=ENTRY_POINT, Runtime=runtime, Timeout=timeout, MemorySize=memory_mb,
                    Environment={"Variables": {"BURSTMAP_SECRET_KEY": load_config().secret().decode()}},
                    Description=f"burstmap {__version__} workers")
    name = target.function_name
    try:
        client.get_function(FunctionName=name)
        exists = True
    except ClientError as e:
        if _code(e) != "ResourceNotFoundException":
            raise explain(e, name, f"in {target.region}") from None
        exists = False
    except BotoCoreError as e:
        raise explain(e, name, f"in {target.region}") from None
    if exists:
        _aws(target, lambda: client.update_function_code(FunctionName=name, ZipFile=package.zip_bytes,
                                                         Architectures=[architecture]))
        _wait_updated(target, client)
        _aws(target, lambda: client.update_function_configuration(FunctionName=name, **settings))
        verb = "updated"
    else:
        _aws(target, lambda: client.create_function(FunctionName=name, Code={"ZipFile": package.zip_bytes},
                                                    Architectures=[architecture], **settings), _role_not_ready)
        verb = "created"
    _wait_updated(target, client)
    _aws(target, lambda: client.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=0))
    say(f"{verb} Lambda function {name} in {client.meta.region_name}: burstmap {__version__}, {runtime} "
        f"{architecture}, {memory_mb} MB, timeout {timeout} s, {len(package.zip_bytes) / 1024:.0f} KiB package, "
        f"role {arn}")


def _wait_updated(target: Target, client: Any, limit: float = 120) -> None:
    """Wait until the function accepts another change (AWS refuses one while an update runs)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        configuration = _aws(target, lambda: client.get_function(FunctionName=target.function_name))["Configuration"]
        if configuration.get("LastUpdateStatus") != "InProgress" and configuration.get("State") != "Pending":
            return
        time.sleep(1)
    raise BurstmapError(f"Lambda function {target.function_name!r} was still updating after {limit:.0f} s")


def remove(target: Target, role: str | None, say: Callable[[str], None] = print) -> None:
    """Delete the function, and the role ``deploy --create-role`` made if ``role`` is given."""
    client = target.client("lambda")
    _aws(target, lambda: client.delete_function(FunctionName=target.function_name))
    say(f"removed Lambda function {target.function_name} from {client.meta.region_name}")
    if role:
        iam = target.client("iam")
        _aws(target, lambda: iam.delete_role_policy(RoleName=role, PolicyName=_POLICY))
        _aws(target, lambda: iam.delete_role(RoleName=role))
        say(f"removed IAM role {role}")


def _target_options(command: Callable) -> Callable:
    for option in reversed((
        click.option("--function-name", default="burstmap", show_default=True, help="Name of the Lambda function."),
        click.option("--region", default=None, help="AWS region (default: your AWS configuration)."),
        click.option("--endpoint-url", default=None, hidden=True, help="Another Lambda/IAM endpoint (for tests)."),
    )):
        command = option(command)
    return command


@click.group("lambda")
def lambda_group() -> None:
    """Deploy burstmap's worker function to AWS Lambda, or remove it."""


@lambda_group.command("deploy")
@_target_options
@click.option("--role", default="burstmap-lambda", show_default=True, help="IAM role name or ARN the function runs as.")
@click.option("--create-role", is_flag=True, help="Create the role (S3 and log access) if it does not exist.")
@click.option("--bucket", default=None, help="Limit the created role's S3 access to this bucket.")
@click.option("--runtime", type=click.Choice(RUNTIMES), default=f"python3.{sys.version_info.minor}", show_default=True,
              help="Lambda runtime; must match the Python that runs your client.")
@click.option("--architecture", type=click.Choice(ARCHITECTURES), default="x86_64", show_default=True)
@click.option("--memory", "memory_mb", type=click.IntRange(128, 10240), default=1024, show_default=True, help="MB.")
@click.option("--timeout", type=click.IntRange(1, 900), default=300, show_default=True, help="Seconds.")
@click.option("--dry-run", is_flag=True, help="Build the package and show it; call no AWS API.")
def deploy_command(function_name: str, region: str | None, endpoint_url: str | None, role: str, create_role: bool,
                   bucket: str | None, runtime: str, architecture: str, memory_mb: int, timeout: int,
                   dry_run: bool) -> None:
    """Create or update the function that runs burstmap calls."""
    if dry_run:
        package = build_package()
        click.echo(package.summary())
        click.echo(f"would deploy {function_name}: burstmap {__version__}, {runtime} {architecture}, "
                   f"{memory_mb} MB, timeout {timeout} s, handler {ENTRY_POINT}")
        return
    _run(lambda: deploy(Target(function_name, region, endpoint_url), role, create_role, bucket, runtime,
                        architecture, memory_mb, timeout, click.echo))


@lambda_group.command("remove")
@_target_options
@click.option("--delete-role", "role", default=None, help="Also delete this IAM role (one made by --create-role).")
def remove_command(function_name: str, region: str | None, endpoint_url: str | None, role: str | None) -> None:
    """Delete the function (and optionally its role)."""
    _run(lambda: remove(Target(function_name, region, endpoint_url), role, click.echo))


def _run(action: Callable[[], None]) -> None:
    try:
        action()
    except BurstmapError as e:
        raise click.ClickException(str(e)) from None


if __name__ == "__main__":
    lambda_group()
