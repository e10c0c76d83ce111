"""numba source of :func:`spkver.gmm.kernels.softmax_rows` (imported lazily: numba is slow to import).

Module-level functions so that numba's on-disk cache recognises them across runs.
"""

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

LOG2E = 1.4426950408889634
# Taylor coefficients of 2**r = exp(r ln 2), highest power first, for r in [-0.5, 0.5].
COEFFICIENTS = (1.5403530393381606e-4, 1.3333558146428443e-3, 9.618129107628477e-3,
                5.550410866482158e-2, 2.402265069591007e-1, 6.931471805599453e-1, 1.0)
# exp(x − max) is clamped at exp(−87): 2**−125.5 is still a normal float32.
LOWEST_EXPONENT = -87.0


C0, C1, C2, C3, C4, C5, C6 = (np.float32(c) for c in COEFFICIENTS)
LOG2E_32, LOWEST_32 = np.float32(LOG2E), np.float32(LOWEST_EXPONENT)
ZERO_32 = np.float32(0.0)
NEGATIVE_INFINITY = np.float32(-np.inf)
HALF, BIAS, MANTISSA_BITS = np.float32(0.5), np.int32(127), np.int32(23)
F32 = ir.FloatType()


@intrinsic
def float_from_bits(typingctx, bits):
    """Reinterpret an int32 as a float32."""
    if not isinstance(bits, types.Integer):
        return None  # numba widens int32 arithmetic to int64; the signature casts back

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], F32)

    return types.float32(types.int32), codegen


@intrinsic
def maxnum(typingctx, a, b):
    """float32 maximum as ``llvm.maxnum``, which the loop vectoriser understands."""
    if not (isinstance(a, types.Float) and isinstance(b, types.Float)):
        return None

    def codegen(context, builder, sig, args):
        fn = builder.module.declare_intrinsic("llvm.maxnum", [F32], ir.FunctionType(F32, [F32, F32]))
        return builder.call(fn, args)

    return types.float32(types.float32, types.float32), codegen


@numba.njit(fastmath=True, boundscheck=False, cache=True, nogil=True)
def fused_softmax_rows(scores, floor):  # pragma: no cover - compiled
    n, k = scores.shape
    log_likelihood, product = 0.0, 1.0
    for i in range(n):
        row = scores[i]
        peak = NEGATIVE_INFINITY  # a loop over the whole row vectorises better than one from row[1]
        for j in range(k):
            peak = maxnum(peak, row[j])
        s = np.float32(0.0)
        for j in range(k):
            t = maxnum(row[j] - peak, LOWEST_32) * LOG2E_32
            whole = np.int32(t - HALF)  # truncation towards zero: ceil(t − ½), as t ≤ 0
            r = t - np.float32(whole)
            p = (((((C0 * r + C1) * r + C2) * r + C3) * r + C4) * r + C5) * r + C6
            value = p * float_from_bits((whole + BIAS) << MANTISSA_BITS)
            row[j] = value
            s += value
        inverse = np.float32(1.0) / s  # normalise while the row is still in L1
        for j in range(k):
            v = row[j] * inverse
            row[j] = v if v >= floor else ZERO_32  # kernels.POSTERIOR_FLOOR says why
        # Σ log(s) as the log of a product, taken every 16 rows: one log call
        # per row costs as much as the rest of a 64-wide row (1 ≤ s ≤ k, so
        # 16 factors stay far inside float64's range for any k < 2**63).
        log_likelihood += np.float64(peak)
        product *= np.float64(s)
        if i % 16 == 15:
            log_likelihood += np.log(product)
            product = 1.0
    return log_likelihood + np.log(product)
