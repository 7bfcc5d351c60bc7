"""Configuration: file, environment and keyword arguments, in that order; unknown keys are errors."""

from __future__ import annotations

import pytest

import burstmap
from burstmap.backends.local import LocalBackend
from burstmap.config import Component, load_config, secret_key_path
from burstmap.errors import ConfigError
from burstmap.storage.local import LocalStorage


@pytest.fixture
def config_file(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    monkeypatch.setenv("BURSTMAP_CONFIG", str(path))
    return path


def test_defaults_without_any_file():
    config = load_config()
    assert config.backend == Component("local") and config.storage == Component("local")
    assert config.worker_retries == 2 and config.timeout is None


def test_file_then_environment_then_keywords(config_file, monkeypatch):
    config_file.write_text("backend: {name: local, workers: 3}\ntimeout: 10\nworker_retries: 1\nprefix: fromfile\n")
    assert load_config().timeout == 10 and load_config().backend.options == {"workers": 3}
    monkeypatch.setenv("BURSTMAP_TIMEOUT", "20")
    monkeypatch.setenv("BURSTMAP_BACKEND_WORKERS", "4")
    config = load_config()
    assert config.timeout == 20 and config.backend.options == {"workers": 4} and config.prefix == "fromfile"
    assert load_config(timeout=30).timeout == 30


def test_unknown_keys_are_clear_errors(config_file, monkeypatch):
    config_file.write_text("backend: local\ntimout: 10\n")
    with pytest.raises(ConfigError, match="unknown key.*timout"):
        load_config()
    config_file.write_text("backend: local\n")
    with pytest.raises(ConfigError, match="unknown setting.*colour"):
        load_config(colour="red")



def test_environment_variables_that_name_no_setting_are_left_alone(config_file, monkeypatch):
    config_file.write_text("storage: {name: local, path: /tmp/x}\n")
    monkeypatch.setenv("BURSTMAP_HOME", "/somewhere")  # some other tool's variable
    monkeypatch.setenv("BURSTMAP_TIMEOUT", "7")
    monkeypatch.setenv("BURSTMAP_STORAGE_ENDPOINT_URL", "http://127.0.0.1:9")  # an S3 option: not for a local store
    config = load_config()
    assert config.timeout == 7 and config.storage == Component("local", {"path": "/tmp/x"})
    assert load_config(storage="s3://b").storage == Component("s3", {"endpoint_url": "http://127.0.0.1:9",
                                                                      "bucket": "b"})


def test_bad_values_and_files(config_file):
    config_file.write_text("timeout: -1\n")
    with pytest.raises(ConfigError, match="timeout must be a positive number"):
        load_config()
    config_file.write_text("progress: maybe\n")
    with pytest.raises(ConfigError, match="progress must be auto, true or false, not 'maybe'"):
        load_config()
    config_file.write_text("backend: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config()
    config_file.unlink()
    with pytest.raises(ConfigError, match="does not exist"):
        load_config()


def test_unknown_backend_or_option_names_what_exists(config_file):
    config_file.write_text("backend: {name: local, wrokers: 2}\n")
    with pytest.raises(ConfigError, match="backend 'local' has no option.*wrokers.*it takes: workers"):
        burstmap.Executor()
    config_file.write_text("storage: floppy\n")
    with pytest.raises(ConfigError, match="unknown storage 'floppy'; known: .*local"):
        burstmap.Executor()


def test_executor_takes_instances_and_names(tmp_path):
    with burstmap.Executor(backend=LocalBackend(workers=1), storage=LocalStorage(tmp_path)) as ex:
        assert ex.backend.workers == 1 and ex.storage.path == tmp_path
    with burstmap.Executor(backend="local", storage="local") as ex:
        assert isinstance(ex.backend, LocalBackend) and isinstance(ex.storage, LocalStorage)


def test_secret_key_is_generated_once_per_user_and_private():
    first = load_config().secret()
    assert load_config().secret() == first and len(first) == 64
    assert secret_key_path().stat().st_mode & 0o777 == 0o600
    assert "secret_key" not in repr(load_config(secret_key="hunter2-hunter2"))
    assert "hunter2" not in repr(load_config(secret_key="hunter2-hunter2"))


def test_a_backend_named_in_code_keeps_its_configured_options(config_file, monkeypatch):
    config_file.write_text("backend: {name: local, workers: 3}\n")
    assert load_config(backend="local").backend == Component("local", {"workers": 3})
    monkeypatch.setenv("BURSTMAP_BACKEND_ADDRESS", "tcp://scheduler:8786")
    assert load_config(backend="dask").backend == Component("dask", {"address": "tcp://scheduler:8786"})


def test_stores_and_backends_by_url_or_path(config_file, tmp_path):
    config_file.write_text("storage: {name: s3, bucket: configured, endpoint_url: 'http://127.0.0.1:9'}\n")
    assert load_config(storage="s3://other/").storage == Component(
        "s3", {"bucket": "other", "endpoint_url": "http://127.0.0.1:9"})
    assert load_config(storage="redis://:pw@host:6380/2").storage == Component("redis", {"url": "redis://:pw@host:6380/2"})
    assert load_config(storage=f"file://{tmp_path}").storage == Component("local", {"path": str(tmp_path)})
    assert load_config(storage=tmp_path).storage == Component("local", {"path": str(tmp_path)})
    assert load_config(backend="tcp://scheduler:8786").backend == Component("dask", {"address": "tcp://scheduler:8786"})
    assert load_config(backend="sqs://calls").backend == Component("standalone", {"queue": "sqs://calls"})
    for bad, message in (("s3://bucket/key", "must name a bucket and nothing in it"),
                         ("ftp://host/x", "unknown scheme; known: file://, s3://")):
        with pytest.raises(ConfigError, match=message):
            load_config(storage=bad)
    config_file.write_text("")
    with burstmap.Executor(storage=f"file://{tmp_path}/store", progress=False) as ex:
        assert ex.storage.path == tmp_path / "store" and ex.call_async(abs, -2).result(timeout=60) == 2
    with burstmap.Executor(storage=str(tmp_path / "other"), progress=False) as ex:
        assert ex.storage.path == tmp_path / "other"


def test_a_missing_option_is_one_line_naming_it(config_file):
    config_file.write_text("")
    for kind, name, option in (("storage", "s3", "bucket"), ("backend", "standalone", "queue")):
        with pytest.raises(ConfigError) as missing:
            burstmap.Executor(**{kind: name})
        assert str(missing.value).startswith(f"{kind} {name!r} needs option {option!r}: ")
        assert "\n" not in str(missing.value) and "positional argument" not in str(missing.value)
