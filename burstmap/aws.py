"""Talking to AWS Lambda: clients that leave retries to burstmap, one-line errors, and the invoker.

Both the Lambda backend (to invoke the function) and ``burstmap lambda deploy`` (to create it)
go through these: botocore's own retries are off and `with_backoff` retries throttling and
transient errors with full jitter, and `explain` turns any refusal into one line without a secret.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, Protocol

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError
from botocore.exceptions import ConnectionError as BotoConnectionError

from .errors import BurstmapError, ConfigError

__all__ = ["BotoInvoker", "Invoker", "LambdaError", "explain", "lambda_client", "transient", "with_backoff"]

_TRANSIENT = {
    "TooManyRequestsException", "ThrottlingException", "Throttling", "ServiceException",
    "EC2ThrottledException", "ENILimitReachedException", "RequestTimeout", "InternalFailure",
}


class LambdaError(BurstmapError):
    """The Lambda control plane refused a request, or an invocation could not be made."""


class Invoker(Protocol):
    """Starts one asynchronous invocation of the function with an event; returns at once."""

    def invoke(self, payload: bytes) -> None: ...


def with_backoff(action: Callable[[], Any], retryable: Callable[[Exception], bool], attempts: int = 8,
                 base: float = 0.1, cap: float = 20.0, sleep: Callable[[float], None] = time.sleep) -> Any:
    """Run ``action``; on a retryable error sleep a random time up to ``base * 2**n`` (capped) and retry.

    "Full jitter" spreads the retries of many threads apart, so a throttled burst does not return
    as one. The last error is raised when ``attempts`` are used up.
    """
    for n in range(attempts - 1):
        try:
            return action()
        except Exception as e:
            if not retryable(e):
                raise
        sleep(random.uniform(0, min(cap, base * 2 ** n)))
    return action()


def _error_code(error: Exception) -> str:
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code", ""))
    return type(error).__name__


def transient(error: Exception) -> bool:
    """Whether an AWS request that failed with ``error`` may succeed if tried again (throttling, 5xx, network)."""
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return _error_code(error) in _TRANSIENT or status >= 500
    return isinstance(error, BotoConnectionError)


def lambda_client(region: str | None, endpoint_url: str | None, service: str = "lambda") -> Any:
    """A boto3 client for Lambda (or IAM) with botocore's own retries off: burstmap backs off itself.

    Raises:
        ConfigError: no region is configured, or the region is not one where Lambda runs.
    """
    session = boto3.session.Session(region_name=region)
    if service == "lambda" and endpoint_url is None and session.region_name:
        known = session.get_available_regions("lambda") + session.get_available_regions("lambda", "aws-us-gov") \
            + session.get_available_regions("lambda", "aws-cn")
        if session.region_name not in known:
            raise ConfigError(f"unknown AWS region {session.region_name!r} for Lambda; e.g. us-east-1, eu-west-1")
    config = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=10, read_timeout=70,
                    max_pool_connections=64)
    try:
        return session.client(service, endpoint_url=endpoint_url, config=config)
    except NoRegionError:
        raise ConfigError("no AWS region: pass region= or set AWS_DEFAULT_REGION") from None


def explain(error: Exception, function_name: str, where: str) -> LambdaError | ConfigError:
    """One line that says what went wrong with a Lambda or IAM request, without any secret."""
    if isinstance(error, NoCredentialsError):
        return ConfigError("no AWS credentials found: run `aws configure`, or set AWS_PROFILE or "
                           "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if isinstance(error, BotoConnectionError):
        return LambdaError(f"cannot reach Lambda {where}: {type(error).__name__}")
    code = _error_code(error)
    if code == "ResourceNotFoundException":
        return ConfigError(f"Lambda function {function_name!r} is not deployed {where}; "
                           f"deploy it with: burstmap lambda deploy --function-name {function_name}")
    if code in {"UnrecognizedClientException", "InvalidSignatureException", "ExpiredTokenException"}:
        return ConfigError(f"AWS refused the credentials {where} ({code})")
    if code in {"AccessDeniedException", "AccessDenied"}:
        return ConfigError(f"the AWS credentials may not use Lambda function {function_name!r} {where} ({code})")
    message = error.response.get("Error", {}).get("Message", "") if isinstance(error, ClientError) else ""
    return LambdaError(f"Lambda function {function_name!r} {where}: {code}{': ' + message if message else ''}")


class BotoInvoker:
    """Invokes the deployed function through boto3, backing off on throttling and transient errors."""

    def __init__(self, client: Any, function_name: str, attempts: int = 8,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self.function_name = function_name
        self.attempts = attempts
        self._sleep = sleep

    def invoke(self, payload: bytes) -> None:
        """Queue one asynchronous invocation; raise `LambdaError` or `ConfigError` if it cannot be."""
        try:
            with_backoff(
                lambda: self.client.invoke(FunctionName=self.function_name, InvocationType="Event", Payload=payload),
                transient, self.attempts, sleep=self._sleep,
            )
        except (ClientError, BotoCoreError) as e:
            raise explain(e, self.function_name, "on invoke") from None
