"""Skipping padding tokens in BERT: :class:`Unpadding` (moved out of ``bert.py``, which
re-exports it).

Example:
    >>> import torch
    >>> u = Unpadding.of(torch.tensor([[True, True, False], [True, False, False]]))
    >>> u.index.tolist(), u.pad(torch.ones(3, 2)).shape
    ([0, 1, 3], torch.Size([2, 3, 2]))
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class Unpadding(NamedTuple):
    """Where the real tokens of a padded (B, T) batch are, to skip the padding.

    Every part of BERT but attention treats each token alone, so those parts run on the
    N real tokens only, (N, dim); attention scatters them back to (B, T) for its scores.
    N depends on the data (``nonzero``), so ``torch.compile`` does not unpad: it keeps
    every token and zeroes the padding positions afterwards (:func:`zero_padding`).

    Example:
        >>> import torch
        >>> u = Unpadding.of(torch.tensor([[True, True, False], [True, False, False]]))
        >>> u.index.tolist(), u.pad(torch.ones(3, 2)).shape
        ([0, 1, 3], torch.Size([2, 3, 2]))
    """

    index: Tensor  # (N,) flat positions b * T + t of the real tokens
    B: int
    T: int

    @classmethod
    def of(cls, keep: Tensor) -> Unpadding:
        return cls(keep.flatten().nonzero().squeeze(1), *keep.shape)

    def unpad(self, x: Tensor) -> Tensor:
        return x.flatten(0, 1).index_select(0, self.index)  # (B, T, D) -> (N, D)

    def pad(self, x: Tensor) -> Tensor:
        out = x.new_zeros(self.B * self.T, x.shape[-1]).index_copy(0, self.index, x)
        return out.view(self.B, self.T, -1)  # (N, D) -> (B, T, D), zeros at padding


def zero_padding(x: Tensor, keep: Tensor) -> Tensor:
    """x (B, T, D) with the positions where ``keep`` (B, T) is False set to zero: what
    :meth:`Unpadding.pad` gives, as a tensor op with static shapes (for ``torch.compile``).

    Example:
        >>> import torch
        >>> zero_padding(torch.ones(1, 3, 2), torch.tensor([[True, True, False]]))[0, :, 0]
        tensor([1., 1., 0.])
    """
    return x.masked_fill(~keep[..., None], 0.0)  # (B, T, D)
