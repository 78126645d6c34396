import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mobilegen.measure.parity import compare, cosine, psnr

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


def test_identical_arrays():
    a = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    p = compare(a, a.copy())
    assert p.max_abs_error == 0 and p.cosine == 1.0 and math.isinf(p.psnr_db)
    assert p.to_dict()["identical"] is True


def test_known_psnr():
    ref = np.array([0.0, 1.0], dtype=np.float32)  # range 1
    test = ref + np.float32(0.1)  # mse 0.01 -> 20 dB
    assert abs(psnr(ref, test) - 20.0) < 1e-4
    assert abs(psnr(ref, test, data_range=2.0) - 26.0206) < 1e-3


def test_non_finite_output_is_worst_case():
    ref = np.ones(4, np.float32)
    bad = np.array([1, np.nan, 1, 1], np.float32)
    p = compare(ref, bad)
    assert p.psnr_db == -math.inf and p.cosine == 0.0


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.integers(2, 40), elements=finite),
       arrays(np.float32, st.integers(2, 40), elements=finite))
def test_metric_properties(a, b):
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    c = cosine(a, b)
    assert -1.0 - 1e-9 <= c <= 1.0 + 1e-9
    assert abs(c - cosine(b, a)) < 1e-9
    p = compare(a, b)
    # the mean of n equal errors may round one ulp above their max
    assert p.max_abs_error * (1 + 1e-12) >= p.mean_abs_error >= 0
    if np.array_equal(a, b):
        assert math.isinf(p.psnr_db)
    else:
        # moving the test array further away never raises the PSNR
        assert psnr(a, a + 2 * (b - a)) <= p.psnr_db + 1e-9
