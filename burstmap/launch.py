"""``burstmap standalone launch|list|terminate``: EC2 instances that run `burstmap worker` and retire themselves.

Each instance's user data (`user_data`) installs this burstmap version (and the job's requirements)
in a venv, starts the worker daemon with one slot per core and ``--idle-timeout``, and powers the
machine off when the daemon exits, for any reason; the instance is launched with shutdown meaning
*terminate*, so nothing runs after the work. The HMAC key, queue and store reach the instance in an
SSM Parameter Store SecureString that only its role may read (`run_worker` reads it there); the
user data holds none of them. The role may read that parameter, use the SQS queue (if any) and the
store's bucket under the job prefix (if S3), nothing else. Instances carry the tag ``burstmap:fleet``
so `list`/`terminate` see exactly burstmap's.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import parse_qsl, urlsplit

import boto3
import click
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from . import __version__
from .aws import explain, lambda_client, with_backoff
from .config import load_config
from .errors import BurstmapError, ConfigError

__all__ = ["FLEET_TAG", "Fleet", "Machines", "WorkerSpec", "launch", "list_instances", "run_worker", "standalone_group",
           "terminate", "user_data", "worker_policy"]

FLEET_TAG = "burstmap:fleet"
VERSION_TAG = "burstmap:version"
#: Amazon Linux 2023, latest, by architecture: AWS's public SSM parameters.
AMI_PARAMETERS = {"x86_64": "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64",
                  "arm64": "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64"}
_LIVE = ["pending", "running", "stopping", "stopped", "shutting-down"]
_TRUST = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
_POLICY = "burstmap-worker"


@dataclass(frozen=True)
class Fleet:
    """burstmap's instances in one region: those tagged ``burstmap:fleet=<name>``."""

    name: str = "burstmap"
    region: str | None = None
    endpoint_url: str | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,48}", self.name):
            raise ConfigError(f"--fleet must be 1 to 48 letters, digits, '-' or '_' (it names an IAM role), "
                              f"not {self.name!r}")

    def client(self, service: str) -> Any:
        return lambda_client(self.region, self.endpoint_url, service)

    @property
    def parameter(self) -> str:
        """The SecureString that holds the workers' key, queue and store."""
        return f"/burstmap/{self.name}/worker"

    @property
    def role(self) -> str:
        """The workers' IAM role, and the instance profile of the same name."""
        return f"burstmap-worker-{self.name}"


@dataclass(frozen=True)
class WorkerSpec:
    """What each instance runs: the daemon's queue, store and options, and what pip installs first."""

    queue: str
    store: str
    idle_timeout: float = 600.0
    concurrency: int | None = None  # default: the instance's cores
    requirements: tuple[str, ...] = ()
    install: str = f"burstmap[aws,redis]=={__version__}"
    python: str = f"python3.{sys.version_info.minor}"  # pickles load only on the minor version that made them

    def __post_init__(self) -> None:
        queue, store = urlsplit(self.queue), urlsplit(self.store)
        if queue.scheme not in ("redis", "rediss", "sqs"):
            raise ConfigError(f"--queue must be redis://host:port/db?stream=NAME or sqs://NAME, not {self.queue!r}")
        if store.scheme not in ("s3", "redis", "rediss") or not store.netloc:
            raise ConfigError(f"--store must be s3://bucket or redis://host:port/db, which EC2 workers can reach, "
                              f"not {self.store!r}")


_USER_DATA = """\
#!/bin/bash
# burstmap {version} stand-alone worker of fleet {fleet}: install, work until idle, power off.
# Whatever happens (even a failed install) the machine powers off at the end: shutdown terminates it.
set -euo pipefail
trap 'shutdown -h now' EXIT
ROOT="${{INSTALL_ROOT:-/opt/burstmap}}"
export AWS_DEFAULT_REGION={region}
if ! command -v {python} >/dev/null; then
    dnf install -y {python} {python}-pip || (apt-get update && apt-get install -y {python} {python}-venv)
fi
mkdir -p "$ROOT"
{python} -m venv --system-site-packages "$ROOT/venv"
"$ROOT/venv/bin/pip" install --quiet --disable-pip-version-check {install}
"$ROOT/venv/bin/python" -m burstmap.launch {parameter} --concurrency {concurrency} --idle-timeout {idle} \\
    >> "$ROOT/worker.log" 2>&1 || echo "burstmap worker exited with status $?" >> "$ROOT/worker.log"
"""


def user_data(fleet: Fleet, spec: WorkerSpec, region: str) -> str:
    """The shell script an instance runs at first boot; it names the parameter, never what is in it."""
    return _USER_DATA.format(
        version=__version__, fleet=fleet.name, region=shlex.quote(region), python=shlex.quote(spec.python),
        install=" ".join(shlex.quote(item) for item in (spec.install, *spec.requirements)),
        parameter=shlex.quote(fleet.parameter), concurrency=spec.concurrency or '"$(nproc)"',
        idle=f"{spec.idle_timeout:g}")


def worker_policy(fleet: Fleet, spec: WorkerSpec, region: str, account: str, prefix: str) -> dict[str, Any]:
    """The least the workers need: read their parameter, use the SQS queue and the bucket under ``prefix``.

    ``s3:ListBucket`` is on the whole bucket: the workers' check of the store (HeadBucket) needs it.
    A Redis queue or store needs no IAM permission, only the network.
    """
    statements: list[dict[str, Any]] = [{"Effect": "Allow", "Action": "ssm:GetParameter",
                                         "Resource": f"arn:aws:ssm:{region}:{account}:parameter{fleet.parameter}"}]
    queue, store = urlsplit(spec.queue), urlsplit(spec.store)
    if queue.scheme == "sqs":
        queue_region = dict(parse_qsl(queue.query)).get("region", region)
        statements.append({"Effect": "Allow", "Resource": f"arn:aws:sqs:{queue_region}:{account}:{queue.netloc}",
                           "Action": ["sqs:GetQueueUrl", "sqs:GetQueueAttributes", "sqs:ReceiveMessage",
                                      "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"]})
    if store.scheme == "s3":
        statements += [
            {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{store.netloc}"},
            {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
             "Resource": f"arn:aws:s3:::{store.netloc}/{prefix}/*"},
        ]
    return {"Version": "2012-10-17", "Statement": statements}


def _aws(action: Callable[[], Any], retry: Callable[[Exception], bool] = lambda e: False) -> Any:
    """Run one AWS request, turning its failure into one line without a secret."""
    try:
        return with_backoff(action, retry, attempts=10, base=0.5, cap=5.0)
    except (ClientError, BotoCoreError) as e:
        raise _refusal(e) from None


def _refusal(error: Exception) -> BurstmapError:
    """One line that says which AWS request failed and why."""
    if isinstance(error, ClientError):
        info = error.response.get("Error", {})
        return BurstmapError(f"AWS refused {error.operation_name}: {info.get('Code', '')}: {info.get('Message', '')}")
    if isinstance(error, NoCredentialsError):
        return explain(error, "", "")
    return BurstmapError(f"cannot reach AWS: {type(error).__name__}")


def _profile_not_ready(error: Exception) -> bool:
    """A new instance profile takes a few seconds before EC2 accepts it."""
    return isinstance(error, ClientError) and "iamInstanceProfile" in str(error)


def _ensure_role(fleet: Fleet, policy: dict[str, Any]) -> None:
    """Create the workers' role and instance profile if missing, and (re)write the role's one inline policy."""
    iam = fleet.client("iam")
    try:
        iam.get_role(RoleName=fleet.role)
    except (ClientError, BotoCoreError) as e:
        if not isinstance(e, ClientError) or e.response.get("Error", {}).get("Code") != "NoSuchEntity":
            raise _refusal(e) from None
        _aws(lambda: iam.create_role(RoleName=fleet.role, AssumeRolePolicyDocument=json.dumps(_TRUST),
                                     Description=f"burstmap stand-alone workers of fleet {fleet.name}"))
        _aws(lambda: iam.create_instance_profile(InstanceProfileName=fleet.role))
        _aws(lambda: iam.add_role_to_instance_profile(InstanceProfileName=fleet.role, RoleName=fleet.role))
    _aws(lambda: iam.put_role_policy(RoleName=fleet.role, PolicyName=_POLICY, PolicyDocument=json.dumps(policy)))


def _image(fleet: Fleet, instance_type: str) -> str:
    """The latest Amazon Linux 2023 image for the instance type's architecture."""
    ec2, ssm = fleet.client("ec2"), fleet.client("ssm")
    described = _aws(lambda: ec2.describe_instance_types(InstanceTypes=[instance_type]))["InstanceTypes"]
    architectures = described[0]["ProcessorInfo"]["SupportedArchitectures"]
    parameter = AMI_PARAMETERS["arm64" if "arm64" in architectures else "x86_64"]
    return _aws(lambda: ssm.get_parameter(Name=parameter))["Parameter"]["Value"]


@dataclass(frozen=True)
class Machines:
    """How many instances of which kind, and where: what EC2 needs besides the worker."""

    count: int
    instance_type: str = "m5.large"
    spot: bool = False
    max_price: str | None = None
    image: str | None = None  # default: the latest Amazon Linux 2023
    key_name: str | None = None
    subnet: str | None = None
    security_groups: tuple[str, ...] = ()

    def request(self) -> dict[str, Any]:
        """``run_instances`` arguments for these machines (without image, user data, profile and tags)."""
        request: dict[str, Any] = dict(InstanceType=self.instance_type, MinCount=self.count, MaxCount=self.count,
                                       InstanceInitiatedShutdownBehavior="terminate")
        if self.spot:
            options: dict[str, Any] = {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}
            if self.max_price:
                options["MaxPrice"] = self.max_price
            request["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": options}
        if self.key_name:
            request["KeyName"] = self.key_name
        if self.subnet:
            request["SubnetId"] = self.subnet
        if self.security_groups:
            request["SecurityGroupIds"] = list(self.security_groups)
        return request


def launch(fleet: Fleet, machines: Machines, spec: WorkerSpec, say: Callable[[str], None] = print) -> list[str]:
    """Store the workers' settings, make their role, and start the instances; return their ids."""
    region = fleet.client("ec2").meta.region_name
    account = _aws(lambda: fleet.client("sts").get_caller_identity())["Account"]
    config = load_config()
    secret = json.dumps({"secret_key": config.secret().decode(), "queue": spec.queue, "store": spec.store})
    ssm = fleet.client("ssm")
    _aws(lambda: ssm.put_parameter(Name=fleet.parameter, Value=secret, Type="SecureString", Overwrite=True,
                                   Description=f"burstmap fleet {fleet.name}: HMAC key, queue and store"))
    _ensure_role(fleet, worker_policy(fleet, spec, region, account, config.prefix))
    tags = [{"Key": FLEET_TAG, "Value": fleet.name}, {"Key": VERSION_TAG, "Value": __version__},
            {"Key": "Name", "Value": f"burstmap-worker-{fleet.name}"}]
    ec2 = fleet.client("ec2")
    request = dict(machines.request(), ImageId=machines.image or _image(fleet, machines.instance_type),
                   UserData=user_data(fleet, spec, region), IamInstanceProfile={"Name": fleet.role},
                   TagSpecifications=[{"ResourceType": kind, "Tags": tags} for kind in ("instance", "volume")])
    reply = _aws(lambda: ec2.run_instances(**request), _profile_not_ready)
    ids = [instance["InstanceId"] for instance in reply["Instances"]]
    market = f"spot (max {machines.max_price or 'on-demand price'})" if machines.spot else "on-demand"
    say(f"launched {len(ids)} {machines.instance_type} {market} instances of fleet {fleet.name} in {region}: "
        f"{' '.join(ids)}; each exits after {spec.idle_timeout:g} s idle")
    return ids


def list_instances(fleet: Fleet) -> list[dict[str, Any]]:
    """The fleet's instances that are not terminated yet."""
    ec2 = fleet.client("ec2")
    filters = [{"Name": f"tag:{FLEET_TAG}", "Values": [fleet.name]}, {"Name": "instance-state-name", "Values": _LIVE}]
    pages = _aws(lambda: list(ec2.get_paginator("describe_instances").paginate(Filters=filters)))
    return [instance for page in pages for reservation in page["Reservations"] for instance in reservation["Instances"]]


def terminate(fleet: Fleet, ids: Sequence[str], say: Callable[[str], None] = print) -> list[str]:
    """Terminate the given instances of the fleet (all of them if ``ids`` is empty); refuse any other instance."""
    ours = [instance["InstanceId"] for instance in list_instances(fleet)]
    strangers = sorted(set(ids) - set(ours))
    if strangers:
        raise ConfigError(f"not instances of burstmap fleet {fleet.name!r}: {' '.join(strangers)}; "
                          "list them with: burstmap standalone list")
    chosen = list(ids) or ours
    if chosen:
        ec2 = fleet.client("ec2")
        _aws(lambda: ec2.terminate_instances(InstanceIds=chosen))
    say(f"terminating {len(chosen)} instances of fleet {fleet.name}{': ' + ' '.join(chosen) if chosen else ''}")
    return chosen


def run_worker(parameter: str, options: Sequence[str]) -> NoReturn:
    """On an instance: read the fleet's parameter with the instance role, then become ``burstmap worker``.

    The key travels in this process's environment only, never in user data, argv or a file.
    """
    reply = boto3.client("ssm").get_parameter(Name=parameter, WithDecryption=True)
    settings = json.loads(reply["Parameter"]["Value"])
    os.environ["BURSTMAP_SECRET_KEY"] = settings["secret_key"]
    worker = str(Path(sys.executable).with_name("burstmap"))
    os.execv(worker, [worker, "worker", "--queue", settings["queue"], "--store", settings["store"], *options])


# ---- CLI ----------------------------------------------------------------------------------------------

def _fleet_options(command: Callable) -> Callable:
    for option in reversed((
        click.option("--fleet", default="burstmap", show_default=True, help="Name of the group of instances."),
        click.option("--region", default=None, help="AWS region (default: your AWS configuration)."),
        click.option("--endpoint-url", default=None, hidden=True, help="Another AWS endpoint (for tests)."),
    )):
        command = option(command)
    return command


def _run(action: Callable[[], Any]) -> Any:
    try:
        return action()
    except BurstmapError as e:
        raise click.ClickException(str(e)) from None


@click.group("standalone")
def standalone_group() -> None:
    """Launch EC2 instances running `burstmap worker` that terminate themselves when idle; list or end them."""


@standalone_group.command("launch")
@click.argument("count", type=click.IntRange(1, 1000))
@_fleet_options
@click.option("--queue", required=True, help="Queue URL the workers take calls from (redis://... or sqs://NAME).")
@click.option("--store", required=True, help="Store URL the workers write to (s3://bucket or redis://...).")
@click.option("--instance-type", default="m5.large", show_default=True)
@click.option("--spot", is_flag=True, help="Spot instances (one-time requests, terminated on interruption).")
@click.option("--max-price", default=None, help="Most to pay per instance-hour with --spot (default: on-demand price).")
@click.option("--idle-timeout", default=600.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds without work after which a worker exits and its instance terminates.")
@click.option("--concurrency", default=None, type=click.IntRange(min=1), help="Calls at once (default: cores).")
@click.option("--requirements", "-r", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A pip requirements file installed on each instance with burstmap.")
@click.option("--install", default=f"burstmap[aws,redis]=={__version__}", show_default=True,
              help="The pip requirement that installs burstmap on the instances.")
@click.option("--ami", default=None, help="Image id (default: the latest Amazon Linux 2023).")
@click.option("--key-name", default=None, help="EC2 key pair for SSH.")
@click.option("--subnet-id", default=None)
@click.option("--security-group", "security_groups", multiple=True, help="Security group id; may be repeated.")
def launch_command(count: int, fleet: str, region: str | None, endpoint_url: str | None, queue: str, store: str,
                   instance_type: str, spot: bool, max_price: str | None, idle_timeout: float,
                   concurrency: int | None, requirements: Path | None, install: str, ami: str | None,
                   key_name: str | None, subnet_id: str | None, security_groups: tuple[str, ...]) -> None:
    """Launch COUNT instances that run `burstmap worker` on QUEUE and STORE until idle."""
    if max_price and not spot:
        raise click.UsageError("--max-price needs --spot")
    lines = requirements.read_text().splitlines() if requirements else []
    wanted = tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    _run(lambda: launch(
        Fleet(fleet, region, endpoint_url),
        Machines(count, instance_type, spot, max_price, ami, key_name, subnet_id, security_groups),
        WorkerSpec(queue, store, idle_timeout, concurrency, wanted, install), click.echo))


@standalone_group.command("list")
@_fleet_options
def list_command(fleet: str, region: str | None, endpoint_url: str | None) -> None:
    """List the fleet's instances that are not terminated."""
    instances = _run(lambda: list_instances(Fleet(fleet, region, endpoint_url)))
    if not instances:
        click.echo(f"no instances of fleet {fleet}", err=True)
        return
    for i in instances:
        click.echo("\t".join([i["InstanceId"], i["State"]["Name"], i["InstanceType"],
                              i.get("InstanceLifecycle", "on-demand"), i["LaunchTime"].isoformat(timespec="seconds"),
                              i.get("PublicDnsName") or "-"]))


@standalone_group.command("terminate")
@click.argument("instance_ids", nargs=-1)
@_fleet_options
@click.option("--all", "everything", is_flag=True, help="Terminate every instance of the fleet.")
def terminate_command(instance_ids: tuple[str, ...], fleet: str, region: str | None, endpoint_url: str | None,
                      everything: bool) -> None:
    """Terminate instances of the fleet: those named, or --all."""
    if bool(instance_ids) == everything:
        raise click.UsageError("name instance ids, or pass --all (not both)")
    _run(lambda: terminate(Fleet(fleet, region, endpoint_url), instance_ids, click.echo))


if __name__ == "__main__":
    run_worker(sys.argv[1], sys.argv[2:])
