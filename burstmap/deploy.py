"""``burstmap lambda deploy|remove``: package burstmap for AWS Lambda, and create, update or remove the function.

The package holds burstmap and its pure-Python dependencies (boto3 comes with Lambda's Python
runtimes); compiled speedups such as PyYAML's are left out, so one zip serves every architecture.
The user's libraries (``--requirements``, ``--package``) are binary wheels pip resolves for the
function's runtime and architecture (`burstmap.lambda_package`): in the zip, or in a layer when large.
Pickled functions only load on the Python minor version that pickled them, so the runtime defaults
to the client's own.
"""

from __future__ import annotations

import importlib
import io
import json
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from botocore.exceptions import BotoCoreError, ClientError

from . import __version__
from .aws import explain, lambda_client, with_backoff
from .config import load_config
from .errors import BurstmapError, ConfigError
from .lambda_package import (
    PACKAGES_VARIABLE,
    UNZIPPED_LIMIT,
    ZIP_LIMIT,
    Libraries,
    Platform,
    install_libraries,
    write_container,
)

__all__ = ["ARCHITECTURES", "RUNTIMES", "Bundle", "Package", "build_bundle", "deploy", "lambda_group", "publish_layer",
           "remove", "zip_files"]

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


def _source_files(packages: tuple[str, ...]) -> Iterator[tuple[str, Path]]:
    """``(path inside the zip, file)`` of the source of ``packages`` as installed here, without bytecode."""
    for name in packages:
        root = Path(importlib.import_module(name).__file__ or "").parent
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix not in _SKIP_SUFFIXES:
                yield f"{name}/{path.relative_to(root).as_posix()}", path


def zip_files(files: Iterable[tuple[str, Path]]) -> Package:
    """A zip of ``(path inside the zip, file)`` pairs with fixed timestamps, so the same files give the same zip."""
    buffer = io.BytesIO()
    sizes: dict[str, int] = {}
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for arcname, path in files:
            info = zipfile.ZipInfo(arcname, (2020, 1, 1, 0, 0, 0))
            info.external_attr = (path.stat().st_mode & 0o777 | 0o444) << 16
            data = path.read_bytes()
            archive.writestr(info, data, zipfile.ZIP_DEFLATED)
            sizes[arcname] = len(data)
    return Package(buffer.getvalue(), sizes)


@dataclass(frozen=True)
class Bundle:
    """What a deploy uploads: the function's zip, a layer of libraries when they are large, and their versions."""

    code: Package
    layer: Package | None = None
    versions: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """The zips' contents and sizes, then the libraries and their versions."""
        parts = [self.code.summary()]
        if self.layer:
            parts.append("layer (unpacked in /opt):\n" + self.layer.summary())
        if self.versions:
            parts.append("libraries: " + ", ".join(f"{name}=={v}" for name, v in sorted(self.versions.items())))
        return "\n".join(parts)


def build_bundle(libraries: Libraries | None = None) -> Bundle:
    """burstmap's package with the user's libraries: in the zip if it stays under Lambda's upload limit,
    else in a layer.

    Raises:
        ConfigError: function and libraries are over Lambda's 250 MB unpacked; a container image is the way.
    """
    own = list(_source_files(PACKAGES))
    if libraries is None:
        return Bundle(zip_files(own))
    extra = list(libraries.files(skip=PACKAGES))
    unpacked = sum(path.stat().st_size for _, path in own + extra)
    if unpacked > UNZIPPED_LIMIT:
        raise ConfigError(f"the function and its libraries are {unpacked / 2**20:.0f} MB unpacked, over Lambda's "
                          f"{UNZIPPED_LIMIT // 2**20} MB limit: build a container image with --container DIR")
    code = zip_files(own + extra)
    if len(code.zip_bytes) <= ZIP_LIMIT:
        return Bundle(code, None, libraries.versions)
    return Bundle(zip_files(own), zip_files((f"python/{name}", path) for name, path in extra), libraries.versions)


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
           timeout: int = 300, say: Callable[[str], None] = print, bundle: Bundle | None = None) -> None:
    """Create the function, or update its code and configuration, then say what was done.

    ``bundle`` (default: burstmap alone) may carry the user's libraries, recorded with their versions
    in the function's environment, and a layer, uploaded through ``bucket``. Lambda's own retries of
    failed asynchronous invocations are switched off: burstmap re-runs lost calls itself, so a call is
    not run three times behind its back.
    """
    client = target.client("lambda")
    bundle = bundle or build_bundle()
    arn = ensure_role(target, role, create_role, bucket, say)
    variables = {"BURSTMAP_SECRET_KEY": load_config().secret().decode()}
    if bundle.versions:
        variables[PACKAGES_VARIABLE] = json.dumps(bundle.versions, separators=(",", ":"), sort_keys=True)
    layers = [publish_layer(target, bundle.layer, bucket, runtime, architecture, say)] if bundle.layer else []
    settings = dict(Role=arn, Handler=ENTRY_POINT, Runtime=runtime, Timeout=timeout, MemorySize=memory_mb,
                    Environment={"Variables": variables}, Layers=layers,
                    Description=f"burstmap {__version__} workers")
    package = bundle.code
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


def publish_layer(target: Target, layer: Package, bucket: str | None, runtime: str, architecture: str,
                  say: Callable[[str], None]) -> str:
    """Upload the libraries' layer to ``bucket`` and publish it; return the new layer version's ARN.

    A layer this large cannot be uploaded directly (Lambda takes at most 50 MB that way), so it goes
    through S3, in the same region as the function.
    """
    if not bucket:
        raise ConfigError(f"the libraries make a {len(layer.zip_bytes) / 2**20:.0f} MB layer, which Lambda only "
                          "takes from S3: pass --bucket BUCKET (in the function's region)")
    key = f"burstmap-lambda/{target.function_name}-libraries.zip"
    s3 = target.client("s3")
    _aws(target, lambda: s3.put_object(Bucket=bucket, Key=key, Body=layer.zip_bytes))
    lambda_ = target.client("lambda")
    reply = _aws(target, lambda: lambda_.publish_layer_version(
        LayerName=f"{target.function_name}-libraries", Content={"S3Bucket": bucket, "S3Key": key},
        CompatibleRuntimes=[runtime], CompatibleArchitectures=[architecture],
        Description=f"libraries of burstmap function {target.function_name}"))
    say(f"published layer {reply['LayerVersionArn']} ({len(layer.zip_bytes) / 2**20:.1f} MB zipped) from s3://{bucket}/{key}")
    return reply["LayerVersionArn"]


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
@click.option("--requirements", "-r", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A pip requirements file of libraries your functions import (binary wheels for Lambda's platform).")
@click.option("--package", "packages", multiple=True, metavar="NAME",
              help="A library (pip requirement) to include; may be repeated.")
@click.option("--container", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="Write a Dockerfile (Lambda Python base image) and the commands to deploy it, instead.")
@click.option("--dry-run", is_flag=True, help="Build the package and show it; call no AWS API.")
def deploy_command(function_name: str, region: str | None, endpoint_url: str | None, role: str, create_role: bool,
                   bucket: str | None, runtime: str, architecture: str, memory_mb: int, timeout: int,
                   requirements: Path | None, packages: tuple[str, ...], container: Path | None,
                   dry_run: bool) -> None:
    """Create or update the function that runs burstmap calls, with the libraries your functions need."""
    platform = Platform(runtime, architecture)
    if container:
        wanted = [*(requirements.read_text().splitlines() if requirements else []), *packages]
        role_arn = role if role.startswith("arn:") else f"arn:aws:iam::$ACCOUNT:role/{role}"
        task = [(name, path.read_bytes()) for name, path in _source_files(PACKAGES)]
        click.echo(write_container(container, task, wanted, platform, dict(
            function=function_name, timeout=timeout, memory=memory_mb, role=role_arn, version=__version__,
            entry_point=ENTRY_POINT)), nl=False)
        return
    with tempfile.TemporaryDirectory(prefix="burstmap-libraries-") as folder:
        _run(lambda: _deploy(Target(function_name, region, endpoint_url), role, create_role, bucket, platform,
                             memory_mb, timeout, requirements, packages, Path(folder), dry_run))


def _deploy(target: Target, role: str, create_role: bool, bucket: str | None, platform: Platform, memory_mb: int,
            timeout: int, requirements: Path | None, packages: tuple[str, ...], folder: Path, dry_run: bool) -> None:
    """Resolve the libraries, build the bundle, then deploy it or (``dry_run``) show it."""
    libraries = install_libraries(requirements, packages, platform, folder) if requirements or packages else None
    bundle = build_bundle(libraries)
    if dry_run:
        click.echo(bundle.summary())
        click.echo(f"would deploy {target.function_name}: burstmap {__version__}, {platform.runtime} "
                   f"{platform.architecture}, {memory_mb} MB, timeout {timeout} s, handler {ENTRY_POINT}")
        return
    deploy(target, role, create_role, bucket, platform.runtime, platform.architecture, memory_mb, timeout,
           click.echo, bundle)


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
