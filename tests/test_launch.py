"""Stand-alone instances: launch/list/terminate against moto's EC2, IAM and SSM on loopback, and the user-data
script EC2 holds run here (a temporary install root, a venv with burstmap from a wheel of this checkout,
the worker on loopback Redis) until the worker exits idle and the script powers the machine off."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from click.testing import CliRunner

import burstmap
from burstmap.backends.standalone import StandaloneBackend
from burstmap.cli import main
from burstmap.errors import ConfigError
from burstmap.launch import (
    FLEET_TAG,
    Fleet,
    Machines,
    WorkerSpec,
    launch,
    list_instances,
    user_data,
)
from burstmap.storage.redis import RedisStorage

from .conftest import TEST_SECRET

REGION = "us-east-1"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def aws(moto_server: str) -> Iterator[str]:
    """Fake credentials and the HMAC key in the environment; yields the moto endpoint."""
    patch = pytest.MonkeyPatch()
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", REGION), ("BURSTMAP_SECRET_KEY", TEST_SECRET)):
        patch.setenv(name, value)
    try:
        yield moto_server
    finally:
        patch.undo()


def _ec2(aws: str):
    return boto3.client("ec2", endpoint_url=aws, region_name=REGION)


def _user_data(aws: str, instance_id: str) -> str:
    reply = _ec2(aws).describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    return base64.b64decode(reply["UserData"]["Value"]).decode()


def _cli(aws: str, *args: str) -> str:
    result = CliRunner().invoke(main, ["standalone", *args, "--region", REGION, "--endpoint-url", aws])
    assert result.exit_code == 0, result.output
    return result.output


def test_launch_tags_secures_and_limits_what_the_instances_get(aws: str) -> None:
    fleet = Fleet("science", REGION, aws)
    spec = WorkerSpec("sqs://calls?region=us-east-1", "s3://results", idle_timeout=300, requirements=("numpy>=2",))
    ids = launch(fleet, Machines(2, "c5.xlarge"), spec, say=lambda line: None)
    assert len(ids) == 2
    instances = {i["InstanceId"]: i for i in list_instances(fleet)}
    assert set(instances) == set(ids)
    for instance in instances.values():
        tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
        assert tags[FLEET_TAG] == "science" and tags["burstmap:version"] == burstmap.__version__
        assert instance["InstanceType"] == "c5.xlarge"
        shutdown = _ec2(aws).describe_instance_attribute(InstanceId=instance["InstanceId"],
                                                         Attribute="instanceInitiatedShutdownBehavior")
        assert shutdown["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
    # moto checks that the profile exists, and associates it with the first instance of a request only.
    (association,) = _ec2(aws).describe_iam_instance_profile_associations(
        Filters=[{"Name": "instance-id", "Values": [ids[0]]}])["IamInstanceProfileAssociations"]
    assert association["IamInstanceProfile"]["Arn"].endswith("instance-profile/burstmap-worker-science")
    script = _user_data(aws, ids[0])
    assert script == user_data(fleet, spec, REGION)
    assert TEST_SECRET not in script and "sqs://calls" not in script and "s3://results" not in script
    assert "trap 'shutdown -h now' EXIT" in script and "--idle-timeout 300" in script
    assert f"'burstmap[aws,redis]=={burstmap.__version__}' 'numpy>=2'" in script
    assert '--concurrency "$(nproc)"' in script and "-m burstmap.launch /burstmap/science/worker" in script
    ssm = boto3.client("ssm", endpoint_url=aws, region_name=REGION)
    parameter = ssm.get_parameter(Name="/burstmap/science/worker", WithDecryption=True)["Parameter"]
    assert parameter["Type"] == "SecureString"
    assert json.loads(parameter["Value"]) == {"secret_key": TEST_SECRET, "queue": spec.queue, "store": spec.store}
    iam = boto3.client("iam", endpoint_url=aws, region_name=REGION)
    trust = iam.get_role(RoleName="burstmap-worker-science")["Role"]["AssumeRolePolicyDocument"]
    assert "ec2.amazonaws.com" in json.dumps(trust)
    policy = iam.get_role_policy(RoleName="burstmap-worker-science", PolicyName="burstmap-worker")["PolicyDocument"]
    resources = {json.dumps(s["Action"]): s["Resource"] for s in policy["Statement"]}
    assert resources == {
        '"ssm:GetParameter"': "arn:aws:ssm:us-east-1:123456789012:parameter/burstmap/science/worker",
        '["sqs:GetQueueUrl", "sqs:GetQueueAttributes", "sqs:ReceiveMessage", "sqs:DeleteMessage", '
        '"sqs:ChangeMessageVisibility"]': "arn:aws:sqs:us-east-1:123456789012:calls",
        '"s3:ListBucket"': "arn:aws:s3:::results",
        '["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]': "arn:aws:s3:::results/burstmap/*",
    }


def test_spot_request_shape_and_list_terminate_through_the_cli(aws: str) -> None:
    output = _cli(aws, "launch", "3", "--fleet", "spotty", "--spot", "--max-price", "0.05", "--instance-type",
                  "m6g.large", "--queue", "redis://10.0.0.5:6379/0?stream=calls", "--store", "s3://results",
                  "--idle-timeout", "120")
    assert "launched 3 m6g.large spot (max 0.05) instances of fleet spotty" in output
    listed = _cli(aws, "list", "--fleet", "spotty").splitlines()
    assert len(listed) == 3 and all("\tspot\t" in line and "m6g.large" in line for line in listed)
    ids = [line.split("\t")[0] for line in listed]
    # moto marks the instances as spot but records no spot request: the request's shape is checked as sent.
    assert Machines(3, "m6g.large", spot=True, max_price="0.05").request()["InstanceMarketOptions"] == {
        "MarketType": "spot", "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior":
                                              "terminate", "MaxPrice": "0.05"}}
    images = {i["ImageId"] for i in list_instances(Fleet("spotty", REGION, aws))}
    arm_image = boto3.client("ssm", endpoint_url=aws, region_name=REGION).get_parameter(
        Name="/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64")["Parameter"]["Value"]
    assert images == {arm_image}
    other = _ec2(aws).run_instances(ImageId=arm_image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    refused = CliRunner().invoke(main, ["standalone", "terminate", other, ids[0], "--fleet", "spotty", "--region",
                                        REGION, "--endpoint-url", aws])
    assert refused.exit_code == 1 and f"not instances of burstmap fleet 'spotty': {other}" in refused.output
    assert "terminating 1 instances of fleet spotty: " + ids[0] in _cli(aws, "terminate", ids[0], "--fleet", "spotty")
    assert "terminating 2 instances" in _cli(aws, "terminate", "--all", "--fleet", "spotty")
    assert list_instances(Fleet("spotty", REGION, aws)) == []
    state = _ec2(aws).describe_instances(InstanceIds=[other])["Reservations"][0]["Instances"][0]["State"]["Name"]
    assert state == "running"


def test_bad_options_are_one_clear_line(aws: str) -> None:
    with pytest.raises(ConfigError, match="--store must be s3://bucket or redis://host:port/db"):
        WorkerSpec("sqs://calls", "file:///tmp/store/")
    with pytest.raises(ConfigError, match="--fleet must be 1 to 48 letters"):
        Fleet("two\nlines")
    with pytest.raises(ConfigError, match="--queue must be redis://"):
        WorkerSpec("http://calls", "s3://results")
    result = CliRunner().invoke(main, ["standalone", "launch", "1", "--queue", "sqs://q", "--store", "s3://b",
                                       "--max-price", "0.1"])
    assert result.exit_code == 2 and "--max-price needs --spot" in result.output


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of this checkout, as the instances would install burstmap from an index."""
    source = tmp_path_factory.mktemp("source")
    for name in ("burstmap", "pyproject.toml", "README.md"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheels")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(source)],
                   check=True)
    return next(out.glob("burstmap-*.whl"))


def square(x: int) -> int:
    return x * x


def test_the_user_data_script_installs_runs_calls_exits_idle_and_powers_off(
        aws: str, redis_server: str, wheel: Path, tmp_path: Path) -> None:
    server = redis_server.rsplit("/", 1)[0]
    queue, store = f"{server}/4?stream=fleet&lease=5", f"{server}/4"
    fleet = Fleet("here", REGION, aws)
    spec = WorkerSpec(queue, store, idle_timeout=3, install=f"burstmap[aws,redis] @ {wheel.as_uri()}")
    (instance,) = launch(fleet, Machines(1, "t3.micro"), spec, say=lambda line: None)
    script = tmp_path / "user-data"
    script.write_text(_user_data(aws, instance))
    bin_dir, root = tmp_path / "bin", tmp_path / "root"
    bin_dir.mkdir()
    (bin_dir / "shutdown").write_text('#!/bin/sh\necho "$@" > "$INSTALL_ROOT/powered-off"\n')
    (bin_dir / "shutdown").chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": os.environ["HOME"],
           "INSTALL_ROOT": str(root), "AWS_ENDPOINT_URL": aws, "AWS_ACCESS_KEY_ID": "instance-role",
           "AWS_SECRET_ACCESS_KEY": "instance-role", "XDG_CONFIG_HOME": str(tmp_path / "config")}
    booted = subprocess.Popen(["bash", str(script)], env=env, cwd=tmp_path)
    try:
        with burstmap.Executor(backend=StandaloneBackend(queue), storage=RedisStorage(store),
                               secret_key=TEST_SECRET, progress=False) as ex:
            futures = ex.map(square, range(20))
            while not all(f.done() for f in futures):
                if booted.poll() is not None:
                    pytest.fail(f"the script ended before the calls did: {(root / 'worker.log').read_text()}")
                time.sleep(0.2)
            assert burstmap.get_all_results(futures) == [x * x for x in range(20)]
        assert booted.wait(timeout=300) == 0
    finally:
        if booted.poll() is None:
            booted.kill()
    assert (root / "powered-off").read_text() == "-h now\n"
    log = (root / "worker.log").read_text()
    assert f"{os.cpu_count()} slots on" in log and "idle for 3s, exiting" in log
    assert TEST_SECRET not in log
    where = subprocess.run([str(root / "venv" / "bin" / "python"), "-c", "import burstmap; print(burstmap.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, check=True).stdout
    assert where.startswith(str(root / "venv"))
    assert {f.record.worker.split(":")[0] for f in futures} == {os.uname().nodename}
