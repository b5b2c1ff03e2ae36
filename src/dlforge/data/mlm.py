"""Masked-language-model inputs: BERT's 80/10/10 masking rule and a dataset that applies it.

BERT pretraining picks 15% of the tokens of each sequence; the model must predict
the original token there. Of the picked tokens 80% are replaced by ``[MASK]``, 10%
by a random token and 10% are left as they are, so the model cannot rely on
``[MASK]`` marking the positions it is scored on (Devlin et al., 2019, section 3.1).
Labels use ``IGNORE_INDEX`` (-100, :mod:`dlforge.targets`) at unscored positions, the
default ``ignore_index`` of ``torch.nn.functional.cross_entropy``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from dlforge.errors import ConfigError, DataError
from dlforge.targets import IGNORE_INDEX  # -100, torch's default ignore_index

MASK_SHARE = 0.8  # of the chosen tokens: replaced by [MASK]
RANDOM_SHARE = 0.1  # of the chosen tokens: replaced by a random token; the rest stay


def _special_set(special_ids: Iterable[int] | Mapping[str, int], mask_id: int) -> list[int]:
    ids = special_ids.values() if isinstance(special_ids, Mapping) else special_ids
    return sorted({int(i) for i in ids} | {int(mask_id)})


def _check(ids: torch.Tensor, mask_id: int, vocab_size: int, special: list[int],
           prob: float) -> None:
    if not isinstance(ids, torch.Tensor) or ids.dtype != torch.int64 or ids.ndim != 2:
        shown = f"{ids.dtype} {tuple(ids.shape)}" if isinstance(ids, torch.Tensor) else type(ids)
        raise DataError(f"mask_tokens needs int64 token ids of shape (B, T), got {shown}",
                        hint="pass torch.from_numpy(encode_texts(...)) or a batch of it")
    if not (isinstance(prob, (int, float)) and not isinstance(prob, bool) and 0 < prob <= 1):
        raise ConfigError(f"the masking probability must be in (0, 1], got {prob!r}",
                          hint="use prob=0.15, as BERT")
    if not 0 <= mask_id < vocab_size or any(not 0 <= s < vocab_size for s in special):
        raise DataError(f"mask_id {mask_id} or special ids {special} are outside the "
                        f"vocabulary of {vocab_size}",
                        hint="pass the ids and vocab_size of the same tokenizer")
    if len(special) >= vocab_size:
        raise DataError("every id in the vocabulary is special, so no random token exists",
                        hint="pass the tokenizer's vocab_size and its special ids")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise DataError(f"token ids span [{int(ids.min())}, {int(ids.max())}], outside the "
                        f"vocabulary of {vocab_size}",
                        hint="pass the vocab_size of the tokenizer that made the ids")


def mask_tokens(
    ids: torch.Tensor, *, mask_id: int, vocab_size: int,
    special_ids: Iterable[int] | Mapping[str, int], prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask ``ids`` by BERT's rule: ``(inputs, labels)``, both int64 ``(B, T)`` on ids' device.

    Each token that is not special (``special_ids`` include [PAD]; [MASK] is always
    treated as special) is chosen with probability ``prob``. A chosen token becomes
    ``mask_id`` (80%), a random non-special token (10%) or stays (10%); ``labels``
    hold the original id at chosen positions and -100 elsewhere. A row that has a
    maskable token but drew none gets one chosen uniformly at random, so no row's
    loss is empty; this raises the chosen share above ``prob`` only for very short
    rows (by at most ``(1 - prob) ** n`` for a row of ``n`` maskable tokens).
    Random numbers come from ``generator`` (on its own device) when given.

    Example:
        >>> ids = torch.tensor([[2, 7, 8, 9, 3, 0]])  # [CLS] a b c [SEP] [PAD]
        >>> inputs, labels = mask_tokens(ids, mask_id=4, vocab_size=10,
        ...                              special_ids=[0, 1, 2, 3, 4], prob=0.5,
        ...                              generator=torch.Generator().manual_seed(0))
        >>> bool(((labels == -100) | (labels == ids)).all()), int((labels != -100).sum()) >= 1
        (True, True)
        >>> bool((labels[:, [0, 4, 5]] == -100).all())  # specials and padding are never chosen
        True
    """
    special = _special_set(special_ids, mask_id)
    _check(ids, mask_id, vocab_size, special, prob)
    rand_device = ids.device if generator is None else generator.device

    def uniform() -> torch.Tensor:  # (B, T) in [0, 1), drawn where the generator lives
        return torch.rand(ids.shape, generator=generator, device=rand_device).to(ids.device)

    maskable = ~torch.isin(ids, torch.tensor(special, device=ids.device))  # (B, T)
    chosen = (uniform() < prob) & maskable  # (B, T)

    # At-least-one rule: in rows that drew nothing, choose the maskable token with the
    # highest fresh uniform score, i.e. one picked uniformly among the maskable ones.
    score = uniform().masked_fill(~maskable, -1.0)  # (B, T)
    needs_one = maskable.any(dim=1) & ~chosen.any(dim=1)  # (B,)
    if bool(needs_one.any()):
        rows = torch.nonzero(needs_one).squeeze(1)  # (R,)
        chosen[rows, score[rows].argmax(dim=1)] = True

    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))  # (B, T)
    action = uniform()  # one draw decides mask / random / keep for each chosen token
    to_mask = chosen & (action < MASK_SHARE)
    to_random = chosen & (action >= MASK_SHARE) & (action < MASK_SHARE + RANDOM_SHARE)

    # A random token is drawn among the non-special ids only, so a replacement never
    # looks like padding or [CLS].
    keep = torch.ones(vocab_size, dtype=torch.bool)
    keep[special] = False
    ordinary = torch.nonzero(keep).squeeze(1).to(ids.device)  # (V - S,)
    pick = (uniform() * len(ordinary)).long().clamp_(max=len(ordinary) - 1)  # (B, T)
    inputs = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    inputs = torch.where(to_random, ordinary[pick], inputs)
    return inputs, labels


class MaskedLMDataset(Dataset):
    """Token-id rows that come back freshly masked on every access.

    ``ds[i]`` is ``(inputs (T,), labels (T,))`` from :func:`mask_tokens`; each access
    draws a new mask, so every epoch sees new masks. Masks come from the dataset's
    own generator seeded with ``seed``, so the same seed and access order give the
    same masks. In DataLoader worker processes each worker reseeds from ``seed`` and
    the worker seed PyTorch gives it (different per worker and per epoch, and fixed
    by ``torch.manual_seed``), so workers do not repeat each other's masks.

    Example:
        >>> ids = np.array([[2, 7, 8, 9, 3], [2, 9, 3, 0, 0]])
        >>> ds = MaskedLMDataset(ids, mask_id=4, vocab_size=10, special_ids=[0, 1, 2, 3, 4])
        >>> inputs, labels = ds[1]
        >>> len(ds), inputs.shape, labels.dtype
        (2, torch.Size([5]), torch.int64)
    """

    def __init__(
        self, ids: np.ndarray | torch.Tensor, *, mask_id: int, vocab_size: int,
        special_ids: Iterable[int] | Mapping[str, int], prob: float = 0.15, seed: int = 0,
    ) -> None:
        ids = torch.as_tensor(ids)
        # Any integer dtype is accepted; mask_tokens works on int64 like the embedding lookup.
        self.ids = ids if ids.is_floating_point() or ids.dtype == torch.bool else ids.long()
        self.mask_id, self.vocab_size, self.prob, self.seed = mask_id, vocab_size, prob, seed
        self.special_ids = _special_set(special_ids, mask_id)
        _check(self.ids, mask_id, vocab_size, self.special_ids, prob)  # fail now, not mid-epoch
        self.generator = torch.Generator().manual_seed(seed)
        self._worker_seed: int | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        worker = get_worker_info()
        if worker is not None and worker.seed != self._worker_seed:
            self._worker_seed = worker.seed
            self.generator.manual_seed((self.seed * 1_000_003 + worker.seed) % 2**63)
        inputs, labels = mask_tokens(
            self.ids[i][None],  # (1, T): mask_tokens works on batches
            mask_id=self.mask_id, vocab_size=self.vocab_size, special_ids=self.special_ids,
            prob=self.prob, generator=self.generator)
        return inputs[0], labels[0]  # (T,), (T,)
