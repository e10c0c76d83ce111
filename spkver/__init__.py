"""spkver: GMM-UBM speaker verification from the command line.

The package is layered as the data flows (ARCHITECTURE.md): ``audio`` →
``features`` → ``gmm`` → ``storage`` → ``backend`` → ``api`` → ``cli``.
"""

__version__ = "0.1.0"
