"""mobilegen.digits_classifier: the measure of the embedded model's class fidelity."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")

from mobilegen import digits_classifier as dc


def test_importing_needs_neither_sklearn_nor_torch() -> None:
    code = ("import sys, mobilegen.digits_classifier; "
            "print(any(m.split('.')[0] in ('sklearn', 'torch') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_held_out_accuracy_is_the_stated_one() -> None:
    acc = dc.held_out_accuracy()
    assert acc == pytest.approx(dc.HELD_OUT_ACCURACY, abs=0.0005)
    assert acc > 0.97


def test_real_digits_in_sample_form_and_noise_near_chance() -> None:
    images, labels = dc.real_digits_16x16()
    assert images.shape == (1797, 1, 16, 16) and images.dtype == np.float32
    assert images.min() >= -1.0 and images.max() <= 1.0
    clf = dc.fit_classifier()
    noise = np.random.default_rng(0).uniform(-1, 1, size=(200, 1, 16, 16))
    assert dc.accuracy(clf, noise, np.resize(np.arange(10), 200)) < 0.3
    assert dc.classify(clf, images[:20]).dtype == np.int64
    assert dc.accuracy(clf, images, labels) > 0.99  # its own training data
    with pytest.raises(ValueError, match="16, 16"):
        dc.features(np.zeros((2, 1, 8, 8)))


def test_upsampling_matches_torch_bilinear() -> None:
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).uniform(-1, 1, size=(3, 1, 8, 8)).astype(np.float32)
    want = torch.nn.functional.interpolate(
        torch.from_numpy(x), scale_factor=2, mode="bilinear", align_corners=False
    ).numpy()
    np.testing.assert_allclose(dc.upsample_2x(x), want, atol=1e-6)
