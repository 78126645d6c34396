"""Coloured digits with captions: the data of the shipped text-to-image pipeline, and the judge of
prompt fidelity that scores any image against its prompt without looking at a model.

Images are 32x32 RGB: one of scikit-learn's 8x8 digits, scaled to a random size and shifted a
little, drawn in a colour on a background. Captions follow one grammar:

    a {colour} {digit} on a {background} background

The judge reads an image back into (digit, colour, background):
- background: the border ring's median colour, nearest of the two backgrounds;
- ink: each pixel's distance from that background over the strongest ink's distance (an alpha
  map); colour: the median of the strongest ink pixels, nearest of the five colours;
- digit: the ink's bounding box squared and resized to 8x8 (0..16), scored by the digits
  classifier (`mobilegen.digits_classifier`: same SVC and features) fit on scikit-learn's real
  digits after the same bounding-box normalisation, so position and scale do not matter.

numpy, Pillow and scikit-learn only (no torch): the judge is independent of every model here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 200, 30), "blue": (40, 60, 230),
    "yellow": (230, 220, 30), "white": (240, 240, 240),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (0, 0, 0), "gray": (128, 128, 128)}
IMAGE_SIZE = 32
DIGIT_SIZES = (16, 24)  # the drawn 8x8 grid's side in pixels, uniform in [lo, hi]
MAX_SHIFT = 3  # pixels either way from the centre
_MIN_INK = 40.0  # RGB distance from the background below which an image has no ink


@dataclass(frozen=True)
class Caption:
    digit: int
    colour: str
    background: str

    @property
    def text(self) -> str:
        return f"a {self.colour} {DIGIT_WORDS[self.digit]} on a {self.background} background"


def parse_caption(text: str) -> Caption | None:
    """The caption grammar read back; None for text outside it."""
    words = text.strip().lower().split()
    if (len(words) != 7 or words[0] != "a" or words[3:5] != ["on", "a"]
            or words[6] != "background" or words[1] not in COLOURS
            or words[2] not in DIGIT_WORDS or words[5] not in BACKGROUNDS):
        return None
    return Caption(DIGIT_WORDS.index(words[2]), words[1], words[5])


def balanced_captions(n: int, seed: int = 0) -> list[Caption]:
    """n captions, digits cycling 0..9, colours and backgrounds balanced, in a seeded order."""
    import numpy as np

    colours, backs = list(COLOURS), list(BACKGROUNDS)
    out = [Caption(i % 10, colours[(i // 10) % len(colours)],
                   backs[(i // 10 // len(colours) + i) % len(backs)]) for i in range(n)]
    order = np.random.default_rng(seed).permutation(n)
    return [out[i] for i in order]


# ------------------------------------------------------------------------------ rendering
def render(digit8: Any, caption: Caption, rng: Any) -> Any:
    """One 8x8 digit (0..16) -> (32, 32, 3) uint8, drawn at a random size and shift."""
    import numpy as np
    from PIL import Image

    lo, hi = DIGIT_SIZES
    size = int(rng.integers(lo, hi + 1))
    alpha = np.asarray(Image.fromarray(np.asarray(digit8, np.float32) / 16.0, mode="F")
                       .resize((size, size), Image.BILINEAR), np.float32).clip(0.0, 1.0)
    canvas = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
    base = (IMAGE_SIZE - size) // 2
    dy, dx = (int(v) for v in rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, size=2))
    y0 = min(max(base + dy, 0), IMAGE_SIZE - size)
    x0 = min(max(base + dx, 0), IMAGE_SIZE - size)
    canvas[y0:y0 + size, x0:x0 + size] = alpha
    fg = np.asarray(COLOURS[caption.colour], np.float32)
    bg = np.asarray(BACKGROUNDS[caption.background], np.float32)
    img = bg + canvas[..., None] * (fg - bg)
    return np.round(img).clip(0, 255).astype(np.uint8)


def dataset_batch(rng: Any, n: int) -> tuple[Any, list[Caption]]:
    """n random training images (n, 3, 32, 32) float32 in [-1, 1] and their captions."""
    import numpy as np

    images8, labels = _digits()
    colours, backs = list(COLOURS), list(BACKGROUNDS)
    idx = rng.integers(0, len(images8), size=n)
    caps = [Caption(int(labels[i]), colours[int(rng.integers(len(colours)))],
                    backs[int(rng.integers(len(backs)))]) for i in idx]
    imgs = np.stack([render(images8[i], c, rng) for i, c in zip(idx, caps, strict=True)])
    return (imgs.astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2), caps


@lru_cache(maxsize=1)
def _digits() -> tuple[Any, Any]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target


# ------------------------------------------------------------------------------ judge
@dataclass(frozen=True)
class Verdict:
    digit: int | None  # None: no ink found
    colour: str | None
    background: str

    def matches(self, caption: Caption) -> dict[str, bool]:
        return {"digit": self.digit == caption.digit, "colour": self.colour == caption.colour,
                "background": self.background == caption.background}


def _nearest(rgb: Any, table: dict[str, tuple[int, int, int]]) -> str:
    import numpy as np

    names = list(table)
    d = [float(np.linalg.norm(np.asarray(table[k], np.float64) - rgb)) for k in names]
    return names[int(np.argmin(d))]


def ink_to_8x8(alpha: Any) -> Any | None:
    """An (H, W) ink map in [0, 1] -> (8, 8) on the digits' 0..16 scale: the bounding box of
    alpha > 0.25, squared about its centre, resized; None when there is no ink."""
    import numpy as np
    from PIL import Image

    a = np.asarray(alpha, np.float32)
    ys, xs = np.nonzero(a > 0.25)
    if len(ys) == 0:
        return None
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    side = max(y1 - y0, x1 - x0)
    cy, cx = (y0 + y1) / 2.0, (x0 + x1) / 2.0
    pad = np.zeros((a.shape[0] + 2 * side, a.shape[1] + 2 * side), np.float32)
    pad[side:side + a.shape[0], side:side + a.shape[1]] = a
    top, left = round(cy - side / 2.0) + side, round(cx - side / 2.0) + side
    crop = pad[top:top + side, left:left + side]
    small = Image.fromarray(crop, mode="F").resize((8, 8), Image.BOX)
    return np.asarray(small, np.float32).clip(0.0, 1.0) * 16.0


def _as_16x16(digits8: Any) -> Any:
    """(N, 8, 8) on 0..16 -> the classifier's (N, 1, 16, 16) form in [-1, 1]."""
    import numpy as np

    from mobilegen.digits_classifier import upsample_2x

    x = np.asarray(digits8, np.float64)[:, None] / 8.0 - 1.0
    return upsample_2x(x).astype(np.float32)


@lru_cache(maxsize=1)
def _classifier() -> Any:
    """The digits classifier, fit on real digits drawn at 24x24 and normalised like a judged
    image."""
    import numpy as np
    from PIL import Image

    from mobilegen.digits_classifier import fit_classifier

    images8, labels = _digits()
    norm = []
    for img in images8:
        big = np.asarray(Image.fromarray(img.astype(np.float32) / 16.0, mode="F")
                         .resize((24, 24), Image.BILINEAR), np.float32).clip(0.0, 1.0)
        norm.append(ink_to_8x8(big))
    return fit_classifier(_as_16x16(np.stack(norm)), labels)


def judge(image: Any) -> Verdict:
    """(32, 32, 3) uint8 (or any HxWx3 on 0..255) -> what it shows."""
    import numpy as np

    img = np.asarray(image, np.float64)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, found shape {img.shape}")
    ring = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    background = _nearest(np.median(ring, axis=0), BACKGROUNDS)
    bg = np.asarray(BACKGROUNDS[background], np.float64)
    dist = np.linalg.norm(img - bg, axis=-1)
    if dist.max() < _MIN_INK:
        return Verdict(None, None, background)
    strong = img[dist > 0.6 * dist.max()]
    colour = _nearest(np.median(strong, axis=0), COLOURS)
    full = float(np.linalg.norm(np.asarray(COLOURS[colour], np.float64) - bg))
    alpha = np.clip(dist / max(full, 1.0), 0.0, 1.0)
    digit8 = ink_to_8x8(alpha)
    if digit8 is None:
        return Verdict(None, colour, background)
    from mobilegen.digits_classifier import features

    digit = int(_classifier().predict(features(_as_16x16(digit8[None])))[0])
    return Verdict(digit, colour, background)


@dataclass(frozen=True)
class Score:
    """Fractions of images right on each attribute, and on all three at once."""

    n: int
    digit: float
    colour: float
    background: float
    all_three: float

    def to_dict(self) -> dict[str, float | int]:
        return {"n": self.n, "digit": self.digit, "colour": self.colour,
                "background": self.background, "all_three": self.all_three}


def score(images: Any, captions: list[Caption]) -> Score:
    """Judge (N, 32, 32, 3) uint8 images against the captions they were drawn for."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images for {len(captions)} captions")
    hits = [judge(img).matches(cap) for img, cap in zip(images, captions, strict=True)]
    n = len(hits)

    def frac(key: str) -> float:
        return sum(h[key] for h in hits) / n if n else 0.0

    return Score(n, frac("digit"), frac("colour"), frac("background"),
                 sum(all(h.values()) for h in hits) / n if n else 0.0)
