"""The Lambda package with the user's libraries: wheels resolved by pip for Lambda's platform, the package
unpacked into empty folders and run by a bare Python (no site-packages, nothing installed) on Lambda-shaped
events against moto's S3, its deploy (zip or layer) against moto's Lambda, and the version-drift warning."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pytest
from click.testing import CliRunner

import burstmap
from burstmap import deploy as deploy_module
from burstmap.backends.aws_lambda import LambdaBackend
from burstmap.cli import main
from burstmap.deploy import Bundle, Package, Target, build_bundle, deploy
from burstmap.errors import ConfigError
from burstmap.lambda_handler import PYTHON
from burstmap.lambda_package import (
    Libraries,
    Platform,
    install_libraries,
    version_drift,
)
from burstmap.serialize import dumps_function, seal
from burstmap.storage.s3 import S3Storage

from .lambda_emulator import HMAC_KEY, REGION, EmulatedInvoker, deploy_function

RUNTIME = f"python{PYTHON}"  # the target is this Python's version: a bare Python of it runs the package


@pytest.fixture(scope="module")
def aws(moto_server: str) -> Iterator[str]:
    """Fake credentials and the HMAC key in the environment; pip's wheel cache kept across sessions."""
    patch = pytest.MonkeyPatch()
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", REGION), ("BURSTMAP_SECRET_KEY", HMAC_KEY),
                        ("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))):
        patch.setenv(name, value)
    try:
        yield moto_server
    finally:
        patch.undo()


@pytest.fixture(scope="module")
def libraries(aws: str, tmp_path_factory: pytest.TempPathFactory) -> Libraries:
    """numpy, as pip resolves it for the Lambda runtime of this Python on x86_64 (once per session)."""
    return install_libraries(None, ["numpy"], Platform(RUNTIME, "x86_64"), tmp_path_factory.mktemp("libraries"))


@pytest.fixture(scope="module")
def lambda_runtime(aws: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What Lambda's Python runtime itself provides on its path (``/var/runtime``): boto3."""
    folder = tmp_path_factory.mktemp("var-runtime")
    install_libraries(None, ["boto3"], Platform(RUNTIME, "x86_64"), folder)
    return folder


def unpack(package: Package, folder: Path) -> Path:
    """Unpack a zip into an empty folder, as Lambda does into ``/var/task`` (or ``/opt`` for a layer)."""
    folder.mkdir()
    with zipfile.ZipFile(io.BytesIO(package.zip_bytes)) as archive:
        archive.extractall(folder)
    return folder


def uses_numpy(n: int) -> tuple[float, str, str, str, bool]:
    """A numpy computation, and where numpy and burstmap came from in the process that ran it."""
    return (float(np.sqrt(np.arange(n) ** 2).sum()), np.__version__, np.__file__, burstmap.__file__,
            bool(sys.flags.no_site))


def _run_numpy_job(aws: str, path: list[Path], bucket: str) -> list[tuple]:
    deploy_function(aws, f"bare-{bucket}", bucket)
    invoker = EmulatedInvoker(timeout=60, path=path, function=f"bare-{bucket}")
    backend = LambdaBackend(function_name=f"bare-{bucket}", endpoint_url=aws, region=REGION, concurrency=4,
                            calls_per_invoke=2, poll_interval=0.05, grace=1, timeout=60, invoker=invoker)
    storage = S3Storage(bucket, endpoint_url=aws, region=REGION)
    with burstmap.Executor(backend=backend, storage=storage, secret_key=HMAC_KEY, progress=False) as ex:
        return burstmap.get_all_results(ex.map(uses_numpy, [3, 4, 10]), timeout=120)


def test_pip_resolves_wheels_for_lambdas_glibc_not_this_machines(libraries: Libraries) -> None:
    assert set(libraries.versions) == {"numpy"}
    # Lambda's python3.10/3.11 run on glibc 2.26: numpy releases built only for glibc 2.27+ must not be picked.
    wheel = (libraries.folder / f"numpy-{libraries.versions['numpy']}.dist-info" / "WHEEL").read_text()
    tags = [line.split(": ")[1] for line in wheel.splitlines() if line.startswith("Tag: ")]
    glibc = max(int(tag.split("manylinux_2_")[1].split("_")[0]) for tag in tags if "manylinux_2_" in tag)
    assert glibc <= (26 if RUNTIME in ("python3.10", "python3.11") else 34)
    assert all(f"cp{PYTHON.replace('.', '')}" in tag and tag.endswith("x86_64") for tag in tags)


def test_a_numpy_function_runs_through_the_unpacked_package_in_a_bare_python(
        aws: str, libraries: Libraries, lambda_runtime: Path, tmp_path: Path) -> None:
    bundle = build_bundle(libraries)
    assert bundle.layer is None  # numpy fits in the zip
    task = unpack(bundle.code, tmp_path / "var-task")
    bare = subprocess.run([sys.executable, "-I", "-S", "-c", "import burstmap"], capture_output=True, cwd=tmp_path,
                          check=False)
    assert b"No module named 'burstmap'" in bare.stderr  # nothing but the package can provide it
    results = _run_numpy_job(aws, [task, lambda_runtime], "bare-zip")
    assert [r[0] for r in results] == [3.0, 6.0, 45.0]
    for _, version, numpy_file, burstmap_file, no_site in results:
        assert version == libraries.versions["numpy"]
        assert numpy_file.startswith(str(task)) and burstmap_file.startswith(str(task)) and no_site


def test_large_libraries_go_in_a_layer_unpacked_under_opt(
        aws: str, libraries: Libraries, lambda_runtime: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deploy_module, "ZIP_LIMIT", 2 * 2**20)
    bundle = build_bundle(libraries)
    assert bundle.layer is not None and not any(name.startswith("numpy") for name in bundle.code.files)
    assert all(name.startswith("python/") for name in bundle.layer.files)
    task, opt = unpack(bundle.code, tmp_path / "var-task"), unpack(bundle.layer, tmp_path / "opt")
    results = _run_numpy_job(aws, [task, opt / "python", lambda_runtime], "bare-layer")
    assert [r[0] for r in results] == [3.0, 6.0, 45.0]
    assert all(r[2].startswith(str(opt / "python" / "numpy")) and r[3].startswith(str(task)) for r in results)


def test_over_lambdas_unpacked_limit_says_to_use_a_container(
        libraries: Libraries, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deploy_module, "UNZIPPED_LIMIT", 10 * 2**20)
    with pytest.raises(ConfigError, match=r"MB unpacked, over Lambda's 10 MB limit: build a container image "
                                          r"with --container DIR"):
        build_bundle(libraries)


def test_deploy_records_versions_and_the_client_warns_when_its_own_differ(
        aws: str, libraries: Libraries, caplog: pytest.LogCaptureFixture) -> None:
    boto3.client("s3", endpoint_url=aws, region_name=REGION).create_bucket(Bucket="drift")
    target = Target("with-numpy", REGION, aws)
    bundle = build_bundle(libraries)
    deploy(target, "with-numpy-role", create_role=True, runtime=RUNTIME, bundle=bundle, say=lambda line: None)
    variables = target.client("lambda").get_function(FunctionName="with-numpy")["Configuration"]["Environment"]
    assert json.loads(variables["Variables"]["BURSTMAP_PACKAGES"]) == libraries.versions
    # Deployed again as if with a numpy this client cannot have, whatever pip resolved today:
    deploy(target, "with-numpy-role", runtime=RUNTIME, bundle=dataclasses.replace(bundle, versions={"numpy": "0.0.1"}),
           say=lambda line: None)
    backend = LambdaBackend(function_name="with-numpy", endpoint_url=aws, region=REGION,
                            invoker=EmulatedInvoker(timeout=30))
    storage = S3Storage("drift", endpoint_url=aws, region=REGION)
    with caplog.at_level(logging.WARNING, logger="burstmap.backends.aws_lambda"), \
            burstmap.Executor(backend=backend, storage=storage, secret_key=HMAC_KEY, progress=False) as ex:
        burstmap.get_all_results([*ex.map(uses_numpy, [1, 2]), *ex.map(len, ["one"])], timeout=60)
    drift = [r.getMessage() for r in caplog.records if "on the function" in r.getMessage()]
    assert len(drift) == 1 and f"numpy is {np.__version__} here but 0.0.1 on the function (numpy)" in drift[0]


def test_version_drift_names_only_libraries_the_function_uses() -> None:
    blob = seal(b"k", "func", dumps_function(uses_numpy))
    assert version_drift(blob, {"numpy": np.__version__}) == []
    assert version_drift(blob, {"NumPy": "1.0"}) == [f"numpy is {np.__version__} here but 1.0 on the function (NumPy)"]
    assert version_drift(seal(b"k", "func", dumps_function(len)), {"numpy": "1.0"}) == []


def test_deploy_with_a_layer_uploads_it_through_s3(aws: str, tmp_path: Path) -> None:
    boto3.client("s3", endpoint_url=aws, region_name=REGION).create_bucket(Bucket="layers")
    target = Target("with-layer", REGION, aws)
    (tmp_path / "lib.py").write_text("VALUE = 1\n")
    layer = deploy_module.zip_files([("python/lib.py", tmp_path / "lib.py")])
    bundle = Bundle(build_bundle().code, layer, {"lib": "1.0"})
    with pytest.raises(ConfigError, match="which Lambda only takes from S3: pass --bucket BUCKET"):
        deploy(target, "layer-role", create_role=True, runtime=RUNTIME, bundle=bundle, say=lambda line: None)
    deploy(target, "layer-role", create_role=True, bucket="layers", runtime=RUNTIME, bundle=bundle,
           say=lambda line: None)
    layers = target.client("lambda").get_function(FunctionName="with-layer")["Configuration"]["Layers"]
    assert len(layers) == 1 and ":layer:with-layer-libraries:" in layers[0]["Arn"]
    stored = boto3.client("s3", endpoint_url=aws, region_name=REGION).get_object(
        Bucket="layers", Key="burstmap-lambda/with-layer-libraries.zip")["Body"].read()
    assert stored == layer.zip_bytes


def test_arm64_and_a_newer_runtime_get_aarch64_wheels_of_that_python(aws: str, tmp_path: Path) -> None:
    platform = Platform("python3.12", "arm64")
    assert platform.wheel_platforms()[0] == "manylinux_2_34_aarch64"
    found = install_libraries(None, ["markupsafe"], platform, tmp_path)
    compiled = [p.name for p in (tmp_path / "markupsafe").glob("*.so")]
    assert compiled and all("cpython-312-aarch64-linux-gnu" in name for name in compiled)
    assert set(found.versions) == {"MarkupSafe"}


def test_a_requirement_with_no_wheel_for_the_platform_is_one_clear_line(aws: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"pip could not install binary wheels for python3.11 x86_64: "
                                          r"ERROR: No matching distribution found for burstmap-no-such-library"):
        install_libraries(None, ["burstmap-no-such-library"], Platform("python3.11", "x86_64"), tmp_path)
    with pytest.raises(ConfigError, match="unknown Lambda runtime 'python2.7'"):
        Platform("python2.7", "x86_64")


def test_cli_dry_run_resolves_requirements_and_shows_versions(aws: str, libraries: Libraries, tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("numpy\n")
    result = CliRunner().invoke(main, ["lambda", "deploy", "--dry-run", "--runtime", RUNTIME, "-r", str(requirements)])
    assert result.exit_code == 0, result.output
    assert f"libraries: numpy=={libraries.versions['numpy']}" in result.output
    assert "numpy.libs" in result.output and f"would deploy burstmap: burstmap {burstmap.__version__}" in result.output


def test_cli_container_writes_a_dockerfile_and_the_commands_without_the_secret(aws: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["lambda", "deploy", "--container", str(tmp_path / "image"), "--runtime",
                                       "python3.12", "--architecture", "arm64", "--package", "numpy",
                                       "--package", "scipy>=1.11"])
    assert result.exit_code == 0, result.output
    dockerfile = (tmp_path / "image" / "Dockerfile").read_text()
    assert "FROM --platform=linux/arm64 public.ecr.aws/lambda/python:3.12" in dockerfile
    assert 'CMD ["burstmap.lambda_handler.handler"]' in dockerfile
    assert (tmp_path / "image" / "requirements.txt").read_text() == "numpy\nscipy>=1.11\n"
    assert (tmp_path / "image" / "task" / "burstmap" / "lambda_handler.py").exists()
    assert "docker push" in result.output and "--package-type Image" in result.output
    written = [p.read_bytes() for p in (tmp_path / "image").rglob("*") if p.is_file()]
    assert HMAC_KEY not in result.output and not any(HMAC_KEY.encode() in data for data in written)
    assert os.environ["BURSTMAP_SECRET_KEY"] == HMAC_KEY
