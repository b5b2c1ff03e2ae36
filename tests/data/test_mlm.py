"""BERT masking: 15% chosen, 80/10/10 split, specials untouched, fresh reproducible masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dlforge.data.mlm import MaskedLMDataset, mask_tokens
from dlforge.errors import ConfigError, DataError

PAD, UNK, CLS, SEP, MASK = range(5)
SPECIAL = [PAD, UNK, CLS, SEP, MASK]
VOCAB = 1000


def padded_batch(n: int, length: int, seed: int = 0) -> torch.Tensor:
    """[CLS] w1 .. wk [SEP] [PAD]..: random ordinary ids, random lengths k >= 1."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(SPECIAL), VOCAB, (n, length), generator=gen)  # (N, T)
    lengths = torch.randint(1, length - 1, (n,), generator=gen)  # words per row
    for row, k in zip(ids, lengths.tolist()):
        row[0], row[k + 1] = CLS, SEP
        row[k + 2:] = PAD
    return ids


def within(count: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    """Is ``count`` of ``n`` Bernoulli(p) trials within ``sigmas`` binomial std of n*p?"""
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


@pytest.fixture(scope="module")
def masked():
    ids = padded_batch(2000, 64)
    inputs, labels = mask_tokens(ids, mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIAL,
                                 generator=torch.Generator().manual_seed(1))
    return ids, inputs, labels


def test_shapes_and_dtypes(masked):
    ids, inputs, labels = masked
    assert inputs.shape == labels.shape == ids.shape
    assert inputs.dtype == labels.dtype == torch.int64


def test_chosen_share_is_prob_of_maskable_tokens(masked):
    ids, _, labels = masked
    maskable = ~torch.isin(ids, torch.tensor(SPECIAL))
    chosen = labels != -100
    # Rows are >= 1 word long; the at-least-one rule adds well under 1% here.
    assert within(int(chosen.sum()), int(maskable.sum()), 0.15, sigmas=5)
    assert not (chosen & ~maskable).any()  # specials and padding are never chosen
    assert torch.equal(labels[chosen], ids[chosen])  # labels hold the original ids


def test_80_10_10_split(masked):
    ids, inputs, labels = masked
    chosen = labels != -100
    n = int(chosen.sum())
    to_mask = chosen & (inputs == MASK)
    kept = chosen & (inputs == ids)
    replaced = chosen & (inputs != MASK) & (inputs != ids)
    assert within(int(to_mask.sum()), n, 0.8)
    # A random replacement equals the original with chance 1/(VOCAB - 5): counted as kept.
    p_same = 1 / (VOCAB - len(SPECIAL))
    assert within(int(kept.sum()), n, 0.1 + 0.1 * p_same)
    assert within(int(replaced.sum()), n, 0.1 * (1 - p_same))
    # Random tokens are never special; positions not chosen are untouched.
    assert not torch.isin(inputs[replaced], torch.tensor(SPECIAL)).any()
    assert torch.equal(inputs[~chosen], ids[~chosen])


def test_random_replacements_cover_the_ordinary_vocabulary(masked):
    _, inputs, labels = masked
    replaced = inputs[(labels != -100) & (inputs != MASK) & (inputs != labels)]
    values = replaced.unique()
    # About 1,300 uniform draws over 995 ids: most ids appear, none outside the range.
    assert len(values) > 600 and values.min() >= len(SPECIAL) and values.max() < VOCAB


def test_every_row_with_a_maskable_token_gets_one():
    ids = torch.tensor([[CLS, 7, SEP, PAD]] * 500 + [[CLS, SEP, PAD, PAD]])
    _, labels = mask_tokens(ids, mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIAL,
                            prob=0.01, generator=torch.Generator().manual_seed(0))
    chosen = labels != -100
    assert chosen[:500, 1].all()  # forced where nothing was drawn
    assert not chosen[500].any()  # a row of specials only has nothing to choose


def test_forced_choice_is_uniform_over_maskable_positions():
    ids = torch.tensor([[CLS, 7, 8, 9, SEP, PAD]] * 3000)
    _, labels = mask_tokens(ids, mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIAL,
                            prob=1e-6, generator=torch.Generator().manual_seed(0))
    counts = (labels != -100).sum(dim=0)  # (T,)
    assert counts.sum() == 3000 and counts[[0, 4, 5]].sum() == 0
    assert all(within(int(c), 3000, 1 / 3) for c in counts[1:4])


def test_same_generator_seed_same_masks_and_special_dict_accepted():
    ids = padded_batch(8, 32)
    specials = {"pad": PAD, "unk": UNK, "cls": CLS, "sep": SEP, "mask": MASK}
    a = mask_tokens(ids, mask_id=MASK, vocab_size=VOCAB, special_ids=specials,
                    generator=torch.Generator().manual_seed(3))
    b = mask_tokens(ids, mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIAL,
                    generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    torch.manual_seed(3)  # without a generator, the global RNG decides
    c = mask_tokens(ids, mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIAL)
    torch.manual_seed(3)
    assert torch.equal(c[1], mask_tokens(ids, mask_id=MASK, vocab_size=VOCAB,
                                         special_ids=SPECIAL)[1])


def test_mask_tokens_refuses_bad_input():
    ids = padded_batch(2, 8)
    kw = {"mask_id": MASK, "vocab_size": VOCAB, "special_ids": SPECIAL}
    with pytest.raises(DataError, match="int64 token ids"):
        mask_tokens(ids.float(), **kw)
    with pytest.raises(DataError, match="int64 token ids"):
        mask_tokens(ids[0], **kw)
    with pytest.raises(ConfigError, match="probability"):
        mask_tokens(ids, prob=1.5, **kw)
    with pytest.raises(DataError, match="outside the vocabulary"):
        mask_tokens(ids, mask_id=MASK, vocab_size=50, special_ids=SPECIAL)


def test_dataset_draws_a_new_mask_every_time_and_is_seeded():
    ids = padded_batch(4, 200).numpy()
    ds = MaskedLMDataset(ids, mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIAL, seed=5)
    same = MaskedLMDataset(ids, mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIAL, seed=5)
    other = MaskedLMDataset(ids, mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIAL, seed=6)
    assert len(ds) == 4
    first, second = ds[2], ds[2]
    assert first[0].shape == first[1].shape == (200,)
    assert not torch.equal(first[1], second[1])  # new mask each access
    row = torch.as_tensor(ids[2])
    for inputs, labels in (first, second):
        chosen = labels != -100
        assert chosen.any() and torch.equal(labels[chosen], row[chosen])
        assert torch.equal(inputs[~chosen], row[~chosen])
    replay = [same[2], same[2]]
    assert torch.equal(replay[0][0], first[0]) and torch.equal(replay[1][1], second[1])
    assert not torch.equal(other[2][1], first[1])


def test_dataset_in_a_dataloader():
    ids = padded_batch(10, 16)
    ds = MaskedLMDataset(ids.int(), mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIAL)
    inputs, labels = next(iter(DataLoader(ds, batch_size=4)))
    assert inputs.shape == labels.shape == (4, 16) and inputs.dtype == torch.int64
    assert ((labels == -100) | (labels == ids[:4])).all()


def test_dataloader_workers_draw_different_masks_reproducibly():
    row = np.r_[CLS, np.arange(100, 162), SEP]  # 62 maskable tokens
    ids = np.tile(row, (4, 1))  # four identical rows

    def epoch() -> torch.Tensor:
        ds = MaskedLMDataset(ids, mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIAL)
        torch.manual_seed(0)  # fixes the worker seeds DataLoader hands out
        loader = DataLoader(ds, batch_size=1, num_workers=2, multiprocessing_context="fork")
        return torch.cat([labels for _, labels in loader])  # (4, T)

    labels = epoch()
    # Without reseeding, worker 0 and worker 1 would mask row 0 and row 1 identically.
    assert not torch.equal(labels[0], labels[1])
    assert torch.equal(labels, epoch())


def test_dataset_validates_at_construction():
    with pytest.raises(DataError, match="outside the vocabulary"):
        MaskedLMDataset(np.array([[2, 5000, 3]]), mask_id=MASK, vocab_size=VOCAB,
                        special_ids=SPECIAL)
