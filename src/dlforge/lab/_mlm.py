"""Shared by topics 24 and 28: a tiny BERT pretrained by masked-language modelling on the
pydoc passages, scored on held-out passages; few-label splits of a labelled table; and
fine-tuning the packaged MiniLM on a few of those labels (:func:`finetune_minilm`).

The corpus (:func:`dlforge.data.corpus.pydoc_corpus`, about 1,280 passages and 44,000
words) is shuffled once with the seed and cut into training and held-out passages; the
WordPiece vocabulary is learned from the training passages only, so nothing about the
held-out text leaks into the tokenizer. Passages are packed into fixed-length windows
(:func:`pack`). Training masks are drawn afresh every epoch (:class:`Remask`); held-out
masks are drawn once, so every model and every epoch is scored on the same masked tokens.

Example:
    >>> c = mlm_corpus(max_len=16, vocab_size=300, n_passages=120)
    >>> model = tiny_bert(c.vocab_size, 16)
    >>> held = fixed_masks(c.heldout_ids, c.special, c.vocab_size)
    >>> curve = pretrain(model, c, held, epochs=1, batch_size=32, lr=2e-3)
    >>> 0.0 <= curve[-1]["val_accuracy"] <= 1.0
    True
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np
import torch
from tokenizers import Tokenizer
from torch.utils.data import TensorDataset

from dlforge.data.corpus import pydoc_corpus
from dlforge.data.mlm import IGNORE_INDEX, mask_tokens
from dlforge.data.text import load_text_table
from dlforge.data.tokenizer import encode_texts, load_tokenizer, special_ids, train_wordpiece
from dlforge.errors import ConfigError, DataError
from dlforge.models.bert import BertClassifier, build_bert, from_pretrained
from dlforge.train import Callback, evaluate_loss, fit, freeze, param_groups, seed_everything, trainable_summary
from dlforge.train.losses import cross_entropy
from dlforge.train.state import TrainState

DIM, LAYERS, HEADS, FFN = 64, 2, 4, 128  # the tiny BERT both topics train
SHAPE = f"dim {DIM}, {LAYERS} layers, {HEADS} heads, FFN {FFN}"  # for method texts
MAX_LEN, VOCAB_SIZE = 32, 500  # windows of 32 word pieces; a small vocabulary learns fast
MLM_BATCH, MLM_LR = 32, 3e-3
HELDOUT_SHARE = 0.2  # of the passages, never trained on (neither tokenizer nor model)
MASK_PROB = 0.15  # BERT's share of masked tokens
MLM_DROPOUT = 0.0  # a few epochs over ~90k tokens do not overfit (train and held-out agree)
WARMUP_EPOCHS = 0.5  # post-LN Transformers need a warmup (Xiong et al., 2020)
MINILM_MAX_LEN = 32  # 90% of stdlib_docs texts are at most 27 MiniLM tokens
FROZEN = ["bert.embeddings.*", "bert.encoder.layer.[0-3].*"]  # train layers 4-5 and the head
FT_BATCH, FT_LR, HEAD_LR = 16, 2e-4, 3e-3  # a new head starts from noise: it gets more


class MLMCorpus(NamedTuple):
    """Token ids of the training and held-out passages, and the tokenizer that made them."""

    tokenizer: Tokenizer
    train_ids: torch.Tensor  # (N_train, T) int64 windows, padded with [PAD] = 0
    heldout_ids: torch.Tensor  # (N_heldout, T) windows of the held-out passages
    special: dict[str, int]  # pad, unk, cls, sep, mask
    train_words: int  # whitespace words in the training passages

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()


def pack(tokenizer: Tokenizer, texts: list[str], max_len: int) -> torch.Tensor:
    """Every text's word pieces, cut into windows of ``max_len - 2`` pieces, each wrapped as
    ``[CLS] ... [SEP]``: (N_windows, max_len) int64. Only a text's last window is padded.

    Windows, as in BERT's pretraining data, use all of the text; truncating each passage to
    ``max_len`` would throw away most of the longer ones.

    Example:
        >>> tok = train_wordpiece(["a b c d e f g"] * 3, vocab_size=40)
        >>> pack(tok, ["a b c d e f g"], max_len=6).tolist() == [
        ...     [2, *tok.encode("a b c d").ids[1:5], 3], [2, *tok.encode("e f g").ids[1:4], 3, 0]]
        True
    """
    ids = special_ids(tokenizer)
    width = max_len - 2
    rows = []
    for encoding in tokenizer.encode_batch(texts, add_special_tokens=False):
        pieces = encoding.ids
        for start in range(0, len(pieces), width):
            window = pieces[start:start + width]
            rows.append([ids["cls"], *window, ids["sep"]] + [ids["pad"]] * (width - len(window)))
    return torch.tensor(rows, dtype=torch.int64).reshape(-1, max_len)


def mlm_corpus(max_len: int, vocab_size: int, seed: int = 0,
               n_passages: int | None = None) -> MLMCorpus:
    """The pydoc passages, shuffled with ``seed``, split 80/20 by passage, and packed into
    windows of ``max_len`` tokens (:func:`pack`).

    ``n_passages`` keeps only the first passages after shuffling (a smaller, faster corpus).

    Example:
        >>> c = mlm_corpus(max_len=16, vocab_size=300, n_passages=50)
        >>> c.train_ids.shape[1], len(c.train_ids) > 40
        (16, True)
    """
    passages = pydoc_corpus()
    order = np.random.default_rng(seed).permutation(len(passages))[:n_passages]
    texts = [passages[i] for i in order]
    n_heldout = max(1, round(HELDOUT_SHARE * len(texts)))
    train_texts, heldout_texts = texts[n_heldout:], texts[:n_heldout]
    tokenizer = train_wordpiece(train_texts, vocab_size=vocab_size)
    return MLMCorpus(tokenizer, pack(tokenizer, train_texts, max_len),
                     pack(tokenizer, heldout_texts, max_len), special_ids(tokenizer),
                     sum(len(t.split()) for t in train_texts))


def tiny_bert(vocab_size: int, max_len: int, *, task_head: str = "mlm",
              num_outputs: int | None = None, causal: bool = False,
              dropout: float = 0.1) -> BertClassifier:
    """The small BERT of topics 24 and 28 (:data:`SHAPE`).

    Sequence heads pool by the mean over tokens: MLM pretraining never trains [CLS] or
    BERT's tanh pooler (that is next-sentence prediction's job), so a pretrained [CLS]
    carries little. Parameters are the same whatever ``causal`` is, so two builds after the
    same seed start from the same weights.

    Example:
        >>> tiny_bert(100, 8, task_head="sequence", num_outputs=3)(torch.ones(2, 8).long()).shape
        torch.Size([2, 3])
    """
    out = vocab_size if task_head == "mlm" else num_outputs
    return build_bert((max_len,), out, vocab_size=vocab_size, dim=DIM, num_layers=LAYERS,
                      num_heads=HEADS, ffn_dim=FFN, dropout=dropout, attention_dropout=dropout,
                      causal=causal, task_head=task_head,
                      pool="cls" if task_head == "mlm" else "mean")


def fixed_masks(ids: torch.Tensor, special: dict[str, int], vocab_size: int,
                seed: int = 0, copies: int = 1) -> TensorDataset:
    """``(inputs, labels)`` with BERT's masking drawn once, so every model is scored on the
    same tokens. ``copies`` masks each row that many times, independently: more scored
    tokens from the same text, so less noise from which tokens happened to be masked.

    Example:
        >>> ids = torch.tensor([[2, 7, 8, 9, 3, 0]])
        >>> x, y = fixed_masks(ids, {"pad": 0, "cls": 2, "sep": 3, "mask": 4}, 10, copies=3).tensors
        >>> x.shape, int((y != -100).sum()) >= 3
        (torch.Size([3, 6]), True)
    """
    g = torch.Generator().manual_seed(seed)
    inputs, labels = mask_tokens(ids.repeat(copies, 1), mask_id=special["mask"],
                                 vocab_size=vocab_size, special_ids=special, prob=MASK_PROB,
                                 generator=g)
    return TensorDataset(inputs, labels)  # (copies * N, T), (copies * N, T)


@torch.no_grad()
def masked_predictions(model: torch.nn.Module, masked: TensorDataset, batch_size: int = 256
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per masked token, in row-major order: whether the model's top guess is right (M,)
    and its cross-entropy (M,). Eval mode; the model's mode is restored.

    Example:
        >>> special = {"pad": 0, "cls": 2, "sep": 3, "mask": 4}
        >>> d = fixed_masks(torch.tensor([[2, 7, 8, 9, 3, 0]]), special, 10)
        >>> correct, loss = masked_predictions(tiny_bert(10, 6), d)
        >>> correct.shape == loss.shape == (int((d.tensors[1] != -100).sum()),)
        True
    """
    was_training = model.training
    model.eval()
    correct, losses = [], []
    x_all, y_all = masked.tensors
    for start in range(0, len(x_all), batch_size):
        x, y = x_all[start:start + batch_size], y_all[start:start + batch_size]
        scored = y != IGNORE_INDEX  # (B, T)
        logits = model(x)[scored]  # (M, vocab): the masked positions only
        correct.append(logits.argmax(-1) == y[scored])
        losses.append(torch.nn.functional.cross_entropy(logits, y[scored], reduction="none"))
    model.train(was_training)
    return torch.cat(correct), torch.cat(losses)


def masked_scores(model: torch.nn.Module, masked: TensorDataset) -> dict[str, float]:
    """Accuracy and mean cross-entropy over the masked tokens (each token weighs the same).

    Example:
        >>> special = {"pad": 0, "cls": 2, "sep": 3, "mask": 4}
        >>> d = fixed_masks(torch.tensor([[2, 7, 8, 9, 3, 0]]), special, 10)
        >>> sorted(masked_scores(tiny_bert(10, 6), d))
        ['accuracy', 'loss', 'tokens']
    """
    correct, losses = masked_predictions(model, masked)
    return {"accuracy": float(correct.float().mean()), "loss": float(losses.mean()),
            "tokens": len(correct)}


def paired_se(a_correct: torch.Tensor, b_correct: torch.Tensor) -> float:
    """Standard error of ``accuracy(a) - accuracy(b)`` when both score the same items:
    std of the per-item differences over sqrt(n). Two of them is a rough 95% noise bar.

    Example:
        >>> a, b = torch.tensor([1, 1, 0, 1]), torch.tensor([1, 0, 0, 0])  # d = 0, 1, 0, 1
        >>> round(paired_se(a, b), 3)
        0.289
    """
    d = a_correct.float() - b_correct.float()  # (n,) in {-1, 0, 1}
    return float(d.std() / len(d) ** 0.5) if len(d) > 1 else float("inf")


def unigram_accuracy(train_ids: torch.Tensor, masked: TensorDataset,
                     special: dict[str, int]) -> float:
    """Masked-token accuracy of always guessing the most frequent ordinary training token:
    what a model gets without reading any context.

    Example:
        >>> ids = torch.tensor([[2, 7, 7, 9, 3]])
        >>> labels = torch.tensor([[-100, 7, 7, 9, -100]])  # 7 is the most frequent: 2 of 3
        >>> d = TensorDataset(torch.tensor([[2, 4, 4, 4, 3]]), labels)
        >>> round(unigram_accuracy(ids, d, {"pad": 0, "cls": 2, "sep": 3, "mask": 4}), 3)
        0.667
    """
    counts = torch.bincount(train_ids.flatten())  # (vocab,)
    counts[list(special.values())] = 0
    labels = masked.tensors[1]
    scored = labels[labels != IGNORE_INDEX]
    return float((scored == counts.argmax()).float().mean())


class Remask(Callback):
    """Fresh BERT masks for a whole TensorDataset at the start of every epoch.

    :class:`dlforge.data.mlm.MaskedLMDataset` masks row by row through a DataLoader;
    for this tiny model that took about a quarter of the training time (measured: 2.0 of
    7.5 CPU seconds), so the whole set is masked in one :func:`mask_tokens` call instead
    (same rule, one generator).
    ``dataset`` must be the object ``fit`` iterates: a CPU TensorDataset on a CPU run.

    Example:
        >>> ids = torch.tensor([[2, 7, 8, 9, 3]] * 4)
        >>> cb = Remask(ids, {"pad": 0, "cls": 2, "sep": 3, "mask": 4}, vocab_size=10)
        >>> cb.on_epoch_start(None); x, y = cb.dataset.tensors
        >>> x.shape, bool((y[:, [0, 4]] == -100).all())
        (torch.Size([4, 5]), True)
    """

    def __init__(self, ids: torch.Tensor, special: dict[str, int], vocab_size: int,
                 seed: int = 0) -> None:
        self.ids, self.special, self.vocab_size = ids, special, vocab_size
        self.generator = torch.Generator().manual_seed(seed)
        self.dataset = TensorDataset(ids, torch.full_like(ids, IGNORE_INDEX))  # masked per epoch

    def on_epoch_start(self, state: TrainState | None) -> None:
        self.dataset.tensors = mask_tokens(
            self.ids, mask_id=self.special["mask"], vocab_size=self.vocab_size,
            special_ids=self.special, prob=MASK_PROB, generator=self.generator)  # (N, T) x 2


def pretrain(model: BertClassifier, corpus: MLMCorpus, heldout: TensorDataset, *,
             epochs: int, batch_size: int, lr: float, seed: int = 0) -> list[dict]:
    """Masked-LM training on the corpus's training windows with :func:`dlforge.train.fit`;
    one record per epoch, whose ``val_accuracy`` is the masked-token accuracy on ``heldout``
    (from :func:`fixed_masks`).

    Every epoch draws new masks (:class:`Remask`). AdamW with weight decay 0.01, a short
    linear warmup then cosine decay, clipping at 1.0. The same ``seed`` gives the same
    batches and the same masks, so two models pretrained with it differ only in what they
    are.

    Example:
        >>> c = mlm_corpus(max_len=16, vocab_size=300, n_passages=60)
        >>> held = fixed_masks(c.heldout_ids, c.special, c.vocab_size)
        >>> len(pretrain(tiny_bert(c.vocab_size, 16), c, held, epochs=2, batch_size=16, lr=1e-3))
        2
    """
    if model.config.task_head != "mlm":
        raise ConfigError(f"pretrain needs a masked-LM model, got task_head "
                          f"{model.config.task_head!r}",
                          hint="build it with tiny_bert(...), whose task_head is 'mlm'")
    remask = Remask(corpus.train_ids, corpus.special, corpus.vocab_size, seed)
    optim = {"name": "adamw", "lr": lr, "weight_decay": 0.01,
             "schedule": {"name": "cosine", "warmup_epochs": min(WARMUP_EPOCHS, epochs / 4)}}
    result = fit(model, remask.dataset, heldout, epochs=epochs, batch_size=batch_size,
                 optim=optim, clip_grad_norm=1.0, device="cpu", seed=seed, callbacks=[remask])
    return [r for r in result.history if r["type"] == "epoch"]


def copy_encoder(source: BertClassifier, target: BertClassifier) -> float:
    """Load ``source``'s encoder (embeddings and layers) into ``target``; return the max
    abs difference between the two encoders afterwards (0.0 when the copy is exact).

    The heads differ (masked LM versus classes) and stay as they are.

    Example:
        >>> a, b = tiny_bert(50, 8), tiny_bert(50, 8, task_head="sequence", num_outputs=2)
        >>> copy_encoder(a, b)
        0.0
    """
    target.bert.load_state_dict(source.bert.state_dict())
    theirs = source.bert.state_dict()
    return max(float((p - theirs[k]).abs().max()) for k, p in target.bert.state_dict().items())


def few_label_split(labels: np.ndarray, per_class: int, val_per_class: int, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices: ``per_class`` training and ``val_per_class`` validation rows of each class,
    drawn with ``seed``; every other row is test.

    Example:
        >>> tr, va, te = few_label_split(np.array([0] * 10 + [1] * 6), 2, 1)
        >>> len(tr), len(va), len(te)
        (4, 2, 10)
    """
    rng = np.random.default_rng(seed)
    train, val, test = [], [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) < per_class + val_per_class + 1:
            raise DataError(f"class {c} has {len(idx)} rows, too few for {per_class} training "
                            f"and {val_per_class} validation rows and a test set",
                            hint="lower per_class or val_per_class")
        train += list(idx[:per_class])
        val += list(idx[per_class:per_class + val_per_class])
        test += list(idx[per_class + val_per_class:])
    return np.sort(train), np.sort(val), np.sort(test)


def stratified_subset(idx: np.ndarray, labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """About ``n`` of ``idx`` (each class's share of ``n`` rounded, at least one of each
    class), drawn with ``seed``: a cheaper test set with the same class mix.

    Example:
        >>> y = np.array([0] * 30 + [1] * 10)
        >>> np.bincount(y[stratified_subset(np.arange(40), y, 20)]).tolist()
        [15, 5]
    """
    if n >= len(idx):
        return idx
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels[idx]):
        of_c = idx[labels[idx] == c]
        keep += list(rng.permutation(of_c)[:max(1, round(n * len(of_c) / len(idx)))])
    return np.sort(np.asarray(keep))


def finetune_minilm(per_class: int, epochs: int, n_test: int, seed: int = 0) -> dict:
    """Fine-tune all-MiniLM-L6-v2 on ``stdlib_docs`` with ``per_class`` labels per class.

    Embeddings and layers 0-3 are frozen; layers 4-5 train at ``FT_LR``, the new head at
    ``HEAD_LR``. The training rows are those :func:`few_label_split` gives any caller with
    the same ``per_class`` and ``seed``; the test rows a stratified sample of the rest.
    Returns accuracies, the trained fraction of the weights and the seconds.

    Example:
        >>> d = finetune_minilm(per_class=2, epochs=1, n_test=12)  # doctest: +SKIP
        >>> 0 <= d["accuracy"] <= 1  # doctest: +SKIP
        True
    """
    table = load_text_table("stdlib_docs")
    x = torch.from_numpy(encode_texts(load_tokenizer("minilm"), table.texts, MINILM_MAX_LEN))
    y = torch.from_numpy(table.labels)  # (N,) int64
    train_idx, _, test_idx = few_label_split(table.labels, per_class, 0, seed)
    test_idx = stratified_subset(test_idx, table.labels, n_test, seed)
    seed_everything(seed)
    model = from_pretrained("minilm", num_outputs=len(table.class_names), pool="mean",
                            max_len=MINILM_MAX_LEN)
    freeze(model, FROZEN)
    counts = trainable_summary(model)
    groups = param_groups(model, FT_LR, [{"pattern": "head.*", "lr": HEAD_LR}])
    start, cpu_start = time.perf_counter(), time.process_time()
    fit(model, TensorDataset(x[train_idx], y[train_idx]), None, epochs=epochs,
        batch_size=FT_BATCH, optim={"name": "adamw", "lr": FT_LR}, param_groups=groups,
        device="cpu", seed=seed)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    test = TensorDataset(x[test_idx], y[test_idx])
    return {"accuracy": evaluate_loss(model, test, cross_entropy, batch_size=64)["accuracy"],
            "majority": float(np.bincount(table.labels[test_idx]).max() / len(test_idx)),
            "chance": 1 / len(table.class_names), "train": len(train_idx), "test": len(test_idx),
            "trainable": counts["trainable"], "total": counts["total"], "seconds": seconds,
            "cpu_seconds": cpu_seconds}
