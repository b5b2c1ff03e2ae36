"""Topic 28, Pretraining and fine-tuning: does self-supervised pretraining pay on few labels?

Claim: pretraining an encoder on unlabelled text with a self-supervised objective (here
BERT's masked-language modelling) and then fine-tuning it for a few epochs on a small
labelled set beats training the same architecture from scratch on that set: it reaches
a higher accuracy, and reaches the scratch model's best accuracy in fewer epochs.

Method: a tiny BERT (:func:`dlforge.lab._mlm.tiny_bert`, dim 64, two layers) is pretrained
with MLM on the training part of the pydoc passages (the Python language reference in
prose; the WordPiece vocabulary is learned from the same passages). Its encoder is copied
into a classifier (mean pooling, a new linear head) and fine-tuned on ``stdlib_docs``
(which standard module a docstring comes from, 6 classes) with a few labels per class. The
same classifier from a fresh initialisation trains on the same examples with the same
optimiser, learning rate, batches and epochs. Both are scored every epoch on a validation
set (a few texts per class) and at the end on the remaining texts; "epochs to target" is
the first epoch at which a model's validation accuracy reaches the scratch model's best.
The copy is checked: the classifier's encoder equals the pretrained one right after
loading.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

from dlforge.data.text import load_text_table
from dlforge.data.tokenizer import encode_texts
from dlforge.lab._mlm import (
    copy_encoder,
    few_label_split,
    fixed_masks,
    masked_scores,
    mlm_corpus,
    paired_se,
    pretrain,
    tiny_bert,
    unigram_accuracy,
)
from dlforge.lab.finding import Check, Finding, figure_from_matplotlib
from dlforge.train import fit, seed_everything

TOPIC = 28
TITLE = "Pretraining and fine-tuning"
CLAIM = ("Self-supervised (masked-LM) pretraining followed by a few epochs of fine-tuning "
         "beats training the same architecture from scratch on little labelled data: higher "
         "test accuracy, and the scratch model's best accuracy in fewer epochs.")
BUDGETS = {
    "quick": {"mlm_epochs": 4, "per_class": 16, "epochs": 15},
    "full": {"mlm_epochs": 40, "per_class": 16, "epochs": 30},
}
MAX_LEN, VOCAB_SIZE = 32, 500
MLM_BATCH, MLM_LR = 32, 3e-3  # as topic 24
VAL_PER_CLASS = 5
FT_BATCH, FT_LR = 16, 1e-3  # the same for both models
BERT_WORDS = 3.3e9  # BooksCorpus + English Wikipedia (Devlin et al., 2019)


def epochs_to_reach(curve: list[float], target: float) -> int:
    """First epoch (1-based) whose accuracy is at least ``target``; ``len(curve) + 1`` if
    none is (the target was not reached within the budget).

    Example:
        >>> epochs_to_reach([0.2, 0.5, 0.7], 0.5), epochs_to_reach([0.2, 0.3], 0.5)
        (2, 3)
    """
    return next((e + 1 for e, a in enumerate(curve) if a >= target), len(curve) + 1)


def _finetune(model: torch.nn.Module, train, val, test, epochs: int, seed: int):
    result = fit(model, train, val, epochs=epochs, batch_size=FT_BATCH,
                 optim={"name": "adamw", "lr": FT_LR, "weight_decay": 0.01},
                 clip_grad_norm=1.0, device="cpu", seed=seed)
    curve = [r["val_accuracy"] for r in result.history if r["type"] == "epoch"]
    model.eval()
    with torch.no_grad():
        correct = model(test.tensors[0]).argmax(-1) == test.tensors[1]  # (N_test,)
    return curve, correct


def _figure(curves: dict[str, list[float]], target: float, mlm_curve: list[float], unigram: float):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]})
    for name, curve in curves.items():
        ax1.plot(range(1, len(curve) + 1), curve, "o-", ms=3, label=name)
    ax1.axhline(target, color="grey", ls="--", label="target: scratch's best")
    ax1.set_xlabel("fine-tuning epoch")
    ax1.set_ylabel("validation accuracy (stdlib_docs)")
    ax1.legend(fontsize=8)
    ax2.plot(range(1, len(mlm_curve) + 1), mlm_curve, "o-", ms=3, color="tab:green")
    ax2.axhline(unigram, color="grey", ls="--", label="most frequent token")
    ax2.set_xlabel("MLM epoch")
    ax2.set_ylabel("held-out masked-token accuracy")
    ax2.legend(fontsize=8)
    return figure_from_matplotlib(fig, "Pretrained versus scratch fine-tuning; the pretraining")


def run(budget: str = "quick", seed: int = 0) -> Finding:
    cfg = BUDGETS[budget]
    corpus = mlm_corpus(MAX_LEN, VOCAB_SIZE, seed)
    heldout = fixed_masks(corpus.heldout_ids, corpus.special, corpus.vocab_size, seed)
    seed_everything(seed)
    mlm = tiny_bert(corpus.vocab_size, MAX_LEN)
    mlm_curve = [r["val_accuracy"] for r in pretrain(
        mlm, corpus, heldout, epochs=cfg["mlm_epochs"], batch_size=MLM_BATCH, lr=MLM_LR, seed=seed)]
    mlm_scores = masked_scores(mlm, heldout)

    table = load_text_table("stdlib_docs")
    x = torch.from_numpy(encode_texts(corpus.tokenizer, table.texts, MAX_LEN))  # (N, T)
    y = torch.from_numpy(table.labels)
    tr, va, te = few_label_split(table.labels, cfg["per_class"], VAL_PER_CLASS, seed)
    train, val, test = (TensorDataset(x[i], y[i]) for i in (tr, va, te))
    n_classes = len(table.class_names)

    seed_everything(seed)  # the same head initialisation for both
    pretrained = tiny_bert(corpus.vocab_size, MAX_LEN, task_head="sequence", num_outputs=n_classes)
    seed_everything(seed)
    scratch = tiny_bert(corpus.vocab_size, MAX_LEN, task_head="sequence", num_outputs=n_classes)
    loaded_diff = copy_encoder(mlm, pretrained)
    pre_curve, pre_correct = _finetune(pretrained, train, val, test, cfg["epochs"], seed)
    scr_curve, scr_correct = _finetune(scratch, train, val, test, cfg["epochs"], seed)

    target = max(scr_curve)
    unk = float((x[:, 1:] == corpus.special["unk"]).sum() / (x[:, 1:] > 0).sum())
    numbers = {
        "corpus_train_words": corpus.train_words,
        "mlm_epochs": cfg["mlm_epochs"],
        "mlm_heldout_accuracy": round(mlm_scores["accuracy"], 4),
        "unigram_accuracy": round(unigram_accuracy(corpus.train_ids, heldout, corpus.special), 4),
        "loaded_encoder_max_diff": loaded_diff,
        "per_class": cfg["per_class"],
        "train_examples": len(tr),
        "val_examples": len(va),
        "test_examples": len(te),
        "epochs": cfg["epochs"],
        "chance_accuracy": round(1 / n_classes, 4),
        "majority_accuracy": round(float(np.bincount(table.labels[te]).max() / len(te)), 4),
        "pretrained_test_accuracy": round(float(pre_correct.float().mean()), 4),
        "scratch_test_accuracy": round(float(scr_correct.float().mean()), 4),
        "gain_two_se": round(2 * paired_se(pre_correct, scr_correct), 4),
        "pretrained_val_curve": [round(a, 4) for a in pre_curve],
        "scratch_val_curve": [round(a, 4) for a in scr_curve],
        "target_accuracy": round(target, 4),
        "pretrained_epochs_to_target": epochs_to_reach(pre_curve, target),
        "scratch_epochs_to_target": epochs_to_reach(scr_curve, target),
        "stdlib_unknown_token_share": round(unk, 4),
        "bert_words_over_corpus_words": round(BERT_WORDS / corpus.train_words),
    }
    numbers["pretraining_gain"] = round(
        numbers["pretrained_test_accuracy"] - numbers["scratch_test_accuracy"], 4)
    checks = [
        Check("mlm_heldout_accuracy", ">", "unigram_accuracy"),
        Check("pretraining_gain", ">", "gain_two_se"),
        Check("pretrained_epochs_to_target", "<", "scratch_epochs_to_target"),
    ]
    method = (f"MLM pretraining of a tiny BERT (dim 64, 2 layers, 4 heads, FFN 128, dropout "
              f"0.1) on {corpus.train_words} words of pydoc passages (80% of them; WordPiece "
              f"vocabulary {corpus.vocab_size} from the same text; max_len {MAX_LEN}), AdamW lr "
              f"{MLM_LR}, batch {MLM_BATCH}, {cfg['mlm_epochs']} epochs, held-out masked-token "
              f"accuracy reported. Fine-tuning on stdlib_docs: {cfg['per_class']} training and "
              f"{VAL_PER_CLASS} validation texts per class, the other {len(te)} for test; the "
              "pretrained encoder plus a new mean-pooled linear head versus the same classifier "
              f"from scratch, same head initialisation, AdamW lr {FT_LR}, batch {FT_BATCH}, "
              f"{cfg['epochs']} epochs, same batches. Target: the scratch model's best "
              "validation accuracy. Supported if the MLM model beats the most-frequent-token "
              "guess, the pretrained classifier beats scratch on test by more than two paired "
              "standard errors, and it reaches the target in fewer epochs.")
    gain, two_se = numbers["pretraining_gain"], numbers["gain_two_se"]
    if gain > two_se:
        verdict_word = "helped by more than the noise"
    elif gain > -two_se:
        verdict_word = "made no difference beyond the noise"
    else:
        verdict_word = "hurt by more than the noise"
    pre_e, scr_e = numbers["pretrained_epochs_to_target"], numbers["scratch_epochs_to_target"]
    reach = (f"reached the target ({target:.2f}) after {pre_e} epochs against {scr_e} for "
             "scratch" if pre_e <= cfg["epochs"] else
             f"never reached the target ({target:.2f}) in {cfg['epochs']} epochs; scratch did "
             f"after {scr_e}")
    notes = (f"Pretraining {verdict_word}: test accuracy {numbers['pretrained_test_accuracy']:.3f} "
             f"pretrained versus {numbers['scratch_test_accuracy']:.3f} from scratch (gain "
             f"{gain:+.3f}, two paired standard errors {two_se:.3f}; chance "
             f"{1 / n_classes:.2f}, constant guess {numbers['majority_accuracy']:.2f}). The "
             f"pretrained model {reach}. Scale caveat: the MLM model saw {corpus.train_words} "
             f"words, about 1/{numbers['bert_words_over_corpus_words']:,} of BERT's 3.3 billion, "
             f"for {cfg['mlm_epochs']} epochs, and reached {mlm_scores['accuracy']:.3f} held-out "
             f"masked-token accuracy against {numbers['unigram_accuracy']:.3f} for guessing the "
             "most frequent token; what it can pass on is mostly which word pieces occur "
             "together, and the pydoc prose (the language reference) is close to but not the "
             "same as the docstrings. The claim is about pretraining at scale; this measures "
             "how much of it survives at toy scale.")
    return Finding(topic=TOPIC, title=TITLE, claim=CLAIM, method=method, numbers=numbers,
                   checks=checks,
                   figures=[_figure({"MLM-pretrained": pre_curve, "from scratch": scr_curve},
                                    target, mlm_curve, numbers["unigram_accuracy"])],
                   notes=notes)
