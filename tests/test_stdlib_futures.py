"""CPython's own `concurrent.futures` tests, run against `Executor.as_executor()` and `ResponseFuture`.

The tests are Debian's copy of ``Lib/test/test_concurrent_futures.py`` (package
``libpython3.11-testsuite``), loaded by path. Its generic mixins run unchanged over an executor of
two local worker processes; the functions they submit are that module's own, shipped by value
since no worker can import it. Only tests that cannot apply are left out, each saying why.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib.util
import logging
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from unittest import mock

import pytest

import burstmap
from burstmap.backends.local import LocalBackend
from burstmap.future import ResponseFuture
from burstmap.job import Layout
from burstmap.storage.local import LocalStorage

from .conftest import TEST_SECRET

STDLIB_TESTS = Path("/usr/lib/python3.11/test/test_concurrent_futures.py")


def _load(path: Path) -> ModuleType:
    """The stdlib test module, under a top-level name that is on no import path, as a user's module would be."""
    if not path.exists():
        pytest.fail(f"{path} is missing: run `apt-get install -y libpython3.11-testsuite`", pytrace=False)
    spec = importlib.util.spec_from_file_location("cpython_test_concurrent_futures", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


cpython = _load(STDLIB_TESTS)
_stores = tempfile.TemporaryDirectory(prefix="burstmap-stdlib-futures-")


def burstmap_executor(max_workers: int | None = None) -> cf.Executor:
    """What the tests construct as ``executor_type(max_workers=...)``: two local workers whatever the number.

    ``max_workers`` is checked as the standard executors check it; the pool's size is the backend's own setting.
    """
    if max_workers is not None and max_workers <= 0:
        raise ValueError("max_workers must be greater than 0")
    store = LocalStorage(tempfile.mkdtemp(dir=_stores.name))
    return burstmap.Executor(backend=LocalBackend(workers=2), storage=store, secret_key=TEST_SECRET,
                             progress=False).as_executor()


class BurstmapMixin(cpython.ExecutorMixin):
    executor_type = staticmethod(burstmap_executor)


class BurstmapExecutorTest(BurstmapMixin, cpython.ExecutorTest, cpython.BaseTestCase):
    pass


class BurstmapShutdownTest(BurstmapMixin, cpython.ExecutorShutdownTest, cpython.BaseTestCase):
    def setUp(self) -> None:
        """Start with the workers up, as a pool that has run calls before.

        test_cancel_futures expects some of its calls to have started when it shuts down at once: the
        standard pools hand calls to their queue before any worker runs, while burstmap hands a call
        over (and so stops it being cancellable) only to a worker that is ready for it.
        """
        super().setUp()
        self.executor.submit(int).result()
    # These three run a script that imports the executor class by name from concurrent.futures
    # (`from concurrent.futures import {executor_type}`), which no other executor can satisfy. The same
    # behaviour is tested for burstmap in tests/test_lifecycle.py: test_the_end_of_the_program_waits_for_its_calls
    # (exit without shutdown) and test_shutdown_without_wait_fails_unfinished_calls_with_how_to_resume_them.
    test_interpreter_shutdown = None
    test_submit_after_interpreter_shutdown = None
    test_hang_gh83386 = None


class BurstmapWaitTests(BurstmapMixin, cpython.WaitTests, cpython.BaseTestCase):
    pass


class BurstmapAsCompletedTests(BurstmapMixin, cpython.AsCompletedTests, cpython.BaseTestCase):
    pass


class DetachedResponseFuture(ResponseFuture):
    """A `ResponseFuture` of no job, for tests that build their futures with a bare ``Future()``."""

    def __init__(self) -> None:
        super().__init__(Layout("stdlib-tests", "none"), 0, None)


class ResponseFutureTests(cpython.FutureTests):
    """The stdlib's `Future` tests, with every future they build (``Future()``, ``create_future``) a `ResponseFuture`."""

    # Both expect the stdlib's repr, `<Future at 0x... state=...>`: a ResponseFuture's repr names its job
    # and call instead (`<ResponseFuture <job>/00003 pending>`). Everything else they check is checked here too.
    test_repr = None
    test_multiple_set_result = None
    test_multiple_set_exception = None

    def setUp(self) -> None:
        """Swap in `ResponseFuture`; log a failing callback to stderr as plain Python does, not to pytest."""
        super().setUp()
        quiet = mock.patch.object(logging.getLogger("concurrent.futures"), "propagate", False)
        quiet.start()
        self.addCleanup(quiet.stop)
        patch = mock.patch.multiple(cpython, Future=DetachedResponseFuture)
        patch.start()
        self.addCleanup(patch.stop)
        constants = {f"{name}_FUTURE": cpython.create_future(**fields) for name, fields in (
            ("PENDING", {"state": cpython.PENDING}), ("RUNNING", {"state": cpython.RUNNING}),
            ("CANCELLED", {"state": cpython.CANCELLED}),
            ("CANCELLED_AND_NOTIFIED", {"state": cpython.CANCELLED_AND_NOTIFIED}),
            ("EXCEPTION", {"state": cpython.FINISHED, "exception": OSError()}),
            ("SUCCESSFUL", {"state": cpython.FINISHED, "result": 42}),
        )}
        constants_patch = mock.patch.multiple(cpython, **constants)
        constants_patch.start()
        self.addCleanup(constants_patch.stop)
