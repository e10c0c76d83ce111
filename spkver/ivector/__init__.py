"""The i-vector back-end on a UBM: Baum-Welch statistics, the total-variability model, LDA/WCCN and PLDA.

Built on :mod:`spkver.gmm` (the UBM's posteriors) and used by
:mod:`spkver.storage` and :mod:`spkver.api`; see ``ARCHITECTURE.md``.
"""

# Defaults of the i-vector back-end (README, "i-vector back-end": measured on the four protocols). Here, in
# the package's light first module, so that the command line's help shows them without loading numpy.
DEFAULT_RANK = 200
DEFAULT_SEGMENT_SECONDS = 5.0
DEFAULT_WCCN = True  # within-class covariance normalisation: better on 3 of the 4 protocols' fusions
