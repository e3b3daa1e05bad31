"""Float32 tolerances for comparing two evaluations of the same computation in a different
summation order (batched vs one-by-one, vmap vs batch, 40 vs 16 text columns, 1 vs 2 threads).

Derivation. Summing n float32 terms in two different orders gives results that differ by at
most about 2 n u sum|terms| (u = 2**-24, the unit roundoff; Higham, "Accuracy and Stability of
Numerical Algorithms", section 4.2). The tiny test model's reductions have n <= 64 (hidden 32,
MLP 64, at most 17 image and 40 text tokens), so one reduction contributes at most
2 * 64 * 6e-8 = 7.6e-6 of the magnitude of its terms; from pixels to the ITM logit there are
about a dozen such reductions in a row (patch embedding, attention and MLP of the vision layer,
self-attention, cross-attention and MLP of two text layers, the head), each passing on the
relative error it received: REL = 1e-4 of the magnitudes involved. XLA's choice of blocking and
thread split depends on the batch shape and the machine, which is why a tolerance measured on
one machine (1e-5 absolute on logits of magnitude 6) failed on another (2.1e-5, issue 22),
while every difference seen so far (quiet and busy 2-core machines, Eigen multi- and
single-threaded) is below 4e-6 of the magnitude.

Grad-CAM maps take a forward and a backward pass (2 * REL of the raw map's terms) and are then
min-max normalised, and the PWE map divides by the norm of token-map differences; both divide
by quantities smaller than the terms they are built from. MAP_TOL allows a factor 5 for that on
the normalised [0, 1] maps (seen: 3e-5 quiet, 1.0e-4 on the busy VM of issue 22).

Decisions (IGRS accept/stop, proposal selection) are compared exactly; `assert_clear_margin`
first checks that the compared inputs are farther from the decision boundary than these
tolerances, so the exact comparison is a statement about the code, not about rounding luck.
"""

from __future__ import annotations

import numpy as np

REL = 1e-4
MAP_TOL = 2 * REL * 5  # 1e-3 on min-max normalised Grad-CAM maps


def logit_tol(reference) -> float:
    """Absolute tolerance for logits: REL of the largest logit magnitude."""
    return REL * float(np.abs(np.asarray(reference)).max())


def prob_rtol(max_logit: float = 16.0) -> float:
    """Relative tolerance for P(match) = softmax(logits)[1]: d log p = (1 - p) d(l1 - l0), so
    |dp| / p <= 2 * REL * max|logit| (the default bounds the tiny model's logits, |l| < 16);
    the same number bounds the change of the log-odds l1 - l0 itself."""
    return 2 * REL * max_logit


def upsampled_map_tol(grid_diff: float) -> float:
    """Bound on the difference of the returned (upsampled) heat maps given the difference of
    the grid maps they come from: bicubic taps (a = -0.75) sum in absolute value to at most
    1.375 per axis (1.9 in 2-D), min-max normalisation of the upsampled map moves a value by at
    most 3x a shift of its inputs, the pass-0 stretch 1 / (1 + exp(-20 (x - 0.5))) has slope
    <= 5: at most 1.9 * 3 * 5 < 30x, plus a few float32 roundings of the [0, 1] result."""
    return 30.0 * grid_diff + 1e-6


def assert_clear_margin(scores, tol_logodds: float) -> None:
    """Each consecutive pair of IGRS scores P(match) (NaN after the stop) differs in log-odds
    by more than 10x `tol_logodds` (the log-odds log(p / (1 - p)) = l1 - l0 moves by at most
    2 * REL * max|logit|, `prob_rtol`), so rounding cannot flip an accept / stop decision."""
    s = np.asarray(scores, np.float64)
    for row in s:
        done = row[~np.isnan(row)]
        logodds = np.log(done) - np.log1p(-done)
        gap = np.abs(np.diff(logodds))
        assert (gap > 10 * tol_logodds).all(), f"scores {done} too close to compare decisions"
