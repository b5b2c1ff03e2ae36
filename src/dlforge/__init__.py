"""dlforge: a deep-learning workbench on PyTorch.

Build, train, diagnose, evaluate and serve models from Python or the ``dlforge`` CLI.
"""

__version__ = "0.1.0"
