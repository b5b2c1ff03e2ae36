"""Target conventions every layer shares (data makes the targets, train scores them).

``IGNORE_INDEX`` marks a target that carries no loss and no accuracy: padding, and the
tokens masked-LM pretraining does not score. It is PyTorch's own default ``ignore_index``
(``torch.nn.functional.cross_entropy``), so a label tensor works with torch's losses too.

Example:
    >>> import torch
    >>> labels = torch.tensor([[7, IGNORE_INDEX, 3]])
    >>> int((labels != IGNORE_INDEX).sum())
    2
"""

IGNORE_INDEX = -100

__all__ = ["IGNORE_INDEX"]
