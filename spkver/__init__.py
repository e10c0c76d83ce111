"""spkver: GMM-UBM speaker verification from the command line.

The package reads like the data flow: ``audio`` → ``features`` → ``gmm`` (EM)
→ ``adapt`` (MAP) → ``scoring`` → ``metrics``, with ``models`` (storage) and
``cli`` at the edges.
"""

__version__ = "0.1.0"
