"""The embedded default model (checkpoints/stoic-digits.safetensors) is really trained.

A digit classifier fit on scikit-learn's real digits must recognise the model's class-conditional
samples; the same classifier on noise images scores near chance, so the check can fail.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sklearn_datasets = pytest.importorskip("sklearn.datasets")
from sklearn.svm import SVC  # noqa: E402

from mobilegen.checkpoints import load_checkpoint  # noqa: E402
from mobilegen.models.stoic import StoicConfig  # noqa: E402
from mobilegen.sampling import SamplerConfig, VPSchedule, sample  # noqa: E402

CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "stoic-digits.safetensors"
LABELS = np.repeat(np.arange(10, dtype=np.int64), 4)  # 40 samples, 4 per class
MIN_ACCURACY = 0.5  # the shipped model scores ~0.65 here (docs/training.md); noise ~0.1


@pytest.fixture(scope="module")
def loaded():
    if not CHECKPOINT.exists():
        pytest.fail(f"embedded model missing: {CHECKPOINT} (run scripts/train_digits.py)")
    return load_checkpoint(CHECKPOINT)


@pytest.fixture(scope="module")
def classifier() -> SVC:
    d = sklearn_datasets.load_digits()
    return SVC(gamma=0.001, C=10.0).fit(d.data, d.target)


def to_8x8_features(images: np.ndarray) -> np.ndarray:
    """(N, 1, 16, 16) in [-1, 1] -> (N, 64) on the digits' 0..16 scale (2x2 average pooling)."""
    x = np.clip(np.asarray(images, dtype=np.float64), -1.0, 1.0)
    x = x.reshape(len(x), 8, 2, 8, 2).mean(axis=(2, 4))
    return ((x + 1.0) * 8.0).reshape(len(x), 64)


def test_family_and_config(loaded) -> None:
    cfg = loaded.config
    assert loaded.family == "stoic"
    assert isinstance(cfg, StoicConfig)
    assert (cfg.in_channels, cfg.image_size, cfg.stride) == (1, 16, 2)
    assert (cfg.conditioning, cfg.num_classes) == ("class", 10)
    assert CHECKPOINT.stat().st_size < 10 * 1024 * 1024  # a few MB: fits in the repository


def test_samples_are_class_faithful_digits(loaded, classifier) -> None:
    model = loaded.model
    torch.set_num_threads(1)

    @torch.no_grad()
    def denoise(x: np.ndarray, t: np.ndarray, cond: np.ndarray | None) -> np.ndarray:
        x_t, t_t = torch.from_numpy(x).float(), torch.from_numpy(t).float()
        return model(x_t, t_t, torch.from_numpy(cond).long()).numpy()

    config = SamplerConfig(kind="dpm++2m", steps=20, guidance_scale=4.0, seed=0)
    images = sample(denoise, (len(LABELS), 1, 16, 16), config, VPSchedule(), cond=LABELS,
                    null_cond=np.full(len(LABELS), 10, dtype=np.int64))
    assert images.shape == (len(LABELS), 1, 16, 16)
    assert np.isfinite(images).all()
    accuracy = (classifier.predict(to_8x8_features(images)) == LABELS).mean()
    assert accuracy >= MIN_ACCURACY, f"classifier accuracy on samples {accuracy:.0%}"

    # The check can fail: noise images in the same value range score near chance.
    noise = np.random.default_rng(0).uniform(-1, 1, size=(200, 1, 16, 16))
    noise_labels = np.resize(np.arange(10), 200)
    noise_acc = (classifier.predict(to_8x8_features(noise)) == noise_labels).mean()
    assert noise_acc < 0.3, f"classifier accuracy on noise {noise_acc:.0%}"
