"""The embedded default model (checkpoints/stoic-digits.safetensors) is really trained.

mobilegen.digits_classifier (an SVC fit on scikit-learn's real digits, 99.4% on held-out real
digits) must recognise the model's class-conditional samples; the same classifier on noise images
scores near chance, so the check can fail.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from mobilegen import digits_classifier  # noqa: E402
from mobilegen.checkpoints.loader import load_checkpoint  # noqa: E402
from mobilegen.models.stoic import StoicConfig  # noqa: E402
from mobilegen.sampling.samplers import SamplerConfig, VPSchedule, sample  # noqa: E402

CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "stoic-digits.safetensors"
SHIPPED_GUIDANCE = 4.0  # recipes/stoic-digits.toml [sampler] guidance_scale
LABELS = np.repeat(np.arange(10, dtype=np.int64), 5)  # 50 samples, 5 per class, seed 0
# Floors on these 50 samples (docs/training.md has the 100-sample figures). Measured here: 100% at
# guidance 4.0 and 94% at 1.0 (seeds 1 and 2: 100% / 94% and 100% / 90%). The floors are the goals
# of issue 16 on the shipped sampler, 90% at the shipped guidance, and 80% at guidance 1.0 (the
# goal there is 60%; 80% leaves a margin of 7 samples for other CPUs' float differences).
MIN_ACCURACY = {SHIPPED_GUIDANCE: 0.90, 1.0: 0.80}


@pytest.fixture(scope="module")
def loaded():
    if not CHECKPOINT.exists():
        pytest.fail(f"embedded model missing: {CHECKPOINT} (run scripts/train_digits.py)")
    return load_checkpoint(CHECKPOINT)


@pytest.fixture(scope="module")
def classifier():
    return digits_classifier.fit_classifier()


def test_family_and_config(loaded) -> None:
    cfg = loaded.config
    assert loaded.family == "stoic"
    assert isinstance(cfg, StoicConfig)
    assert (cfg.in_channels, cfg.image_size, cfg.stride) == (1, 16, 2)
    assert (cfg.conditioning, cfg.num_classes) == ("class", 10)
    assert CHECKPOINT.stat().st_size < 10 * 1024 * 1024  # a few MB: fits in the repository


@pytest.mark.parametrize("guidance", sorted(MIN_ACCURACY, reverse=True))
def test_samples_are_class_faithful_digits(loaded, classifier, guidance: float) -> None:
    model = loaded.model
    torch.set_num_threads(1)

    @torch.no_grad()
    def denoise(x: np.ndarray, t: np.ndarray, cond: np.ndarray | None) -> np.ndarray:
        x_t, t_t = torch.from_numpy(x).float(), torch.from_numpy(t).float()
        return model(x_t, t_t, torch.from_numpy(cond).long()).numpy()

    config = SamplerConfig(kind="dpm++2m", steps=20, guidance_scale=guidance, seed=0)
    images = sample(denoise, (len(LABELS), 1, 16, 16), config, VPSchedule(), cond=LABELS,
                    null_cond=np.full(len(LABELS), digits_classifier.NULL_LABEL, dtype=np.int64))
    assert images.shape == (len(LABELS), 1, 16, 16)
    assert np.isfinite(images).all()
    accuracy = digits_classifier.accuracy(classifier, images, LABELS)
    assert accuracy >= MIN_ACCURACY[guidance], (
        f"classifier accuracy on samples at guidance {guidance:g}: {accuracy:.0%}"
    )


def test_the_check_can_fail(classifier) -> None:
    """Noise images in the same value range score near chance."""
    noise = np.random.default_rng(0).uniform(-1, 1, size=(200, 1, 16, 16))
    noise_acc = digits_classifier.accuracy(classifier, noise, np.resize(np.arange(10), 200))
    assert noise_acc < 0.3, f"classifier accuracy on noise {noise_acc:.0%}"
