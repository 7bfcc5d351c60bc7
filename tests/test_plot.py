"""Pictures of real jobs: the PNG has the expected size and shows calls in their outcome colors."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from burstmap.plot import COLORS, plot
from burstmap.storage.local import LocalStorage

from .real_jobs import N_CALLS, SECRET, new_executor, square, unstarted_job, wait_done


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def futures(store: Path) -> Iterator[list]:
    ex = new_executor(store)
    yield wait_done(ex.map(square, range(N_CALLS)))
    ex.shutdown()


def has_color(pixels: np.ndarray, color: str) -> bool:
    return bool((np.abs(pixels[..., :3] - to_rgb(color)).max(axis=-1) < 0.02).any())


def test_plot_of_futures_draws_both_outcomes(futures, tmp_path):
    path = plot(futures, tmp_path / "job.png", key=SECRET.encode())
    pixels = imread(path)
    assert pixels.shape[:2] == (700, 1000)
    assert pixels[..., :3].std() > 0.05
    assert len(np.unique(pixels[..., :3].reshape(-1, 3), axis=0)) > 20
    assert has_color(pixels, COLORS["ok"]) and has_color(pixels, COLORS["error"])
    assert not has_color(pixels, COLORS["died"])


def test_plot_of_a_job_id_read_from_the_store(futures, store, tmp_path):
    path = plot(futures[0].job_id, tmp_path / "job.png", storage=LocalStorage(store), prefix="burstmap", key=SECRET.encode())
    assert imread(path).shape[:2] == (700, 1000)
    assert has_color(imread(path), COLORS["ok"])


def test_plot_of_a_job_with_no_finished_call(store, tmp_path):
    unstarted_job(LocalStorage(store), "unstarted-0000", time.time())
    path = plot("unstarted-0000", tmp_path / "none.png", storage=LocalStorage(store), prefix="burstmap", key=SECRET.encode())
    pixels = imread(path)
    assert pixels[..., :3].std() > 0.01
    assert not has_color(pixels, COLORS["ok"])
