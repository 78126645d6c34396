"""The digit classifier that measures the embedded default model's samples (class fidelity).

One measure for the training script, the embedded-model test, benchmarks and precision reports:
an SVC (RBF, gamma 0.001, C 10) fit on scikit-learn's real 8x8 digits after the same 16x16 round
trip that generated samples go through (0..16 -> [-1, 1], bilinear 2x upsampling as in training,
then 2x2 average pooling back to 8x8 on the 0..16 scale).

Held-out accuracy on real digits: 99.4% (fit on a stratified 70% of the 1,797 digits, seed 0,
scored on the other 539; `held_out_accuracy()` recomputes it). Noise images in [-1, 1] score near
the 10% of chance, so a high score on samples means they look like the digit they were asked for.

Self-contained: numpy and scikit-learn are imported inside the functions, so importing mobilegen
does not need scikit-learn; torch is not used at all.
"""

from __future__ import annotations

from typing import Any

HELD_OUT_ACCURACY = 0.994  # held_out_accuracy() with its defaults; see the module docstring
NULL_LABEL = 10  # the embedded model's null label for classifier-free guidance


def upsample_2x(images: Any) -> Any:
    """(N, C, H, W) -> (N, C, 2H, 2W), bilinear with half-pixel centres and edge clamping.

    Equal to torch's F.interpolate(scale 2, mode="bilinear", align_corners=False).
    """
    import numpy as np

    x = np.asarray(images, dtype=np.float64)

    def along(a: Any, axis: int) -> Any:
        n = a.shape[axis]
        prev = np.take(a, np.clip(np.arange(n) - 1, 0, n - 1), axis=axis)
        nxt = np.take(a, np.clip(np.arange(n) + 1, 0, n - 1), axis=axis)
        even, odd = 0.25 * prev + 0.75 * a, 0.75 * a + 0.25 * nxt
        out = np.stack([even, odd], axis=axis + 1)  # interleave: 2i, 2i + 1
        shape = list(a.shape)
        shape[axis] = 2 * n
        return out.reshape(shape)

    return along(along(x, 2), 3)


def real_digits_16x16() -> tuple[Any, Any]:
    """scikit-learn's digits as the model sees them: (N, 1, 16, 16) float32 in [-1, 1], labels."""
    import numpy as np
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images[:, None].astype(np.float64) / 8.0 - 1.0  # 0..16 -> [-1, 1]
    return upsample_2x(x).astype(np.float32), d.target.astype(np.int64)


def features(images: Any) -> Any:
    """(N, 1, 16, 16) in [-1, 1] -> (N, 64) on the digits' 0..16 scale (2x2 average pooling)."""
    import numpy as np

    x = np.clip(np.asarray(images, dtype=np.float64), -1.0, 1.0)
    if x.ndim != 4 or x.shape[1:] != (1, 16, 16):
        raise ValueError(f"expected images of shape (N, 1, 16, 16), found {x.shape}")
    x = x.reshape(len(x), 8, 2, 8, 2).mean(axis=(2, 4))
    return ((x + 1.0) * 8.0).reshape(len(x), 64)


def fit_classifier(images: Any = None, labels: Any = None) -> Any:
    """An SVC fit on real digits (all 1,797 by default) in the samples' 16x16 form."""
    from sklearn.svm import SVC

    if images is None:
        images, labels = real_digits_16x16()
    return SVC(gamma=0.001, C=10.0).fit(features(images), labels)


def classify(classifier: Any, images: Any) -> Any:
    """Predicted digit (N,) int64 for generated (N, 1, 16, 16) samples in [-1, 1]."""
    import numpy as np

    return np.asarray(classifier.predict(features(images)), dtype=np.int64)


def accuracy(classifier: Any, images: Any, labels: Any) -> float:
    """Fraction of samples the classifier assigns to the class they were generated for."""
    import numpy as np

    return float((classify(classifier, images) == np.asarray(labels)).mean())


def held_out_accuracy(test_fraction: float = 0.3, seed: int = 0) -> float:
    """Fit on a stratified split of the real digits, score on the held-out rest."""
    from sklearn.model_selection import train_test_split

    images, labels = real_digits_16x16()
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    return accuracy(fit_classifier(x_tr, y_tr), x_te, y_te)
