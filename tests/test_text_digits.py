"""The coloured-digits data and the prompt-fidelity judge (mobilegen.text_digits): the judge
reads rendered training images back into their captions, and does not accept noise or a wrong
caption."""

from __future__ import annotations

import numpy as np
import pytest

from mobilegen import text_digits as td

pytest.importorskip("sklearn")


def _u8(images: np.ndarray) -> np.ndarray:
    return np.round((images.transpose(0, 2, 3, 1) + 1.0) * 127.5).clip(0, 255).astype(np.uint8)


def test_captions_follow_the_grammar_and_are_balanced() -> None:
    caps = td.balanced_captions(100)
    assert sorted(c.digit for c in caps) == sorted(list(range(10)) * 10)
    assert {td.parse_caption(c.text) for c in caps} == set(caps)
    for colour in td.COLOURS:
        assert sum(c.colour == colour for c in caps) == 20
    assert sum(c.background == "black" for c in caps) == 50
    assert td.parse_caption("a red seven on a black background") == td.Caption(7, "red", "black")
    assert td.parse_caption("a purple seven on a black background") is None
    assert td.parse_caption("a red seven") is None


def test_judge_reads_rendered_images_back() -> None:
    images, caps = td.dataset_batch(np.random.default_rng(3), 200)
    assert images.shape == (200, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    s = td.score(_u8(images), caps)
    assert s.colour == 1.0 and s.background == 1.0
    assert s.digit >= 0.95, s


def test_judge_refuses_noise_and_wrong_captions() -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (40, 32, 32, 3)).astype(np.uint8)
    assert td.score(noise, td.balanced_captions(40)).all_three <= 0.1
    images, caps = td.dataset_batch(np.random.default_rng(4), 40)
    shifted = [td.Caption((c.digit + 1) % 10, c.colour, c.background) for c in caps]
    assert td.score(_u8(images), shifted).digit <= 0.1
    blank = np.zeros((1, 32, 32, 3), np.uint8)
    assert td.judge(blank[0]).digit is None
    with pytest.raises(ValueError, match="expected an"):
        td.judge(np.zeros((32, 32)))
