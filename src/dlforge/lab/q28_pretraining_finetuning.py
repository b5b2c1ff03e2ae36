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
    DIM,
    LAYERS,
    MAX_LEN,
    MLM_BATCH,
    MLM_DROPOUT,
    MLM_LR,
    SHAPE,
    VOCAB_SIZE,
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
from dlforge.lab.finding import Check, Finding, plot
from dlforge.train import fit, seed_everything

TOPIC = 28
TITLE = "Pretraining and fine-tuning"
CLAIM = ("Self-supervised (masked-LM) pretraining followed by a few epochs of fine-tuning "
         "beats training the same architecture from scratch on little labelled data: higher "
         "test accuracy, and the scratch model's best accuracy in fewer epochs.")
BUDGETS = {
    # quick: a token pretraining (part of the corpus, three epochs) to exercise the pipeline;
    # full: the experiment (about 5 CPU minutes)
    "quick": {"n_passages": 400, "mlm_epochs": 3, "per_class": 16, "epochs": 12},
    "full": {"n_passages": None, "mlm_epochs": 40, "per_class": 16, "epochs": 30},
}
VAL_PER_CLASS = 5
FT_BATCH, FT_LR = 16, 1e-3  # the same for both models
FITS_AT = 0.95  # last-epoch training accuracy that counts as having fit the few labels
MIN_LIFT = 0.02  # MLM accuracy above the most-frequent-token guess that counts as learning
BERT_WORDS = 3.3e9  # BooksCorpus + English Wikipedia (Devlin et al., 2019)


def epochs_to_reach(curve: list[float], target: float) -> int:
    """First epoch (1-based) whose accuracy is at least ``target``; ``len(curve) + 1`` if
    none is (the target was not reached within the budget).

    Example:
        >>> epochs_to_reach([0.2, 0.5, 0.7], 0.5), epochs_to_reach([0.2, 0.3], 0.5)
        (2, 3)
    """
    return next((e + 1 for e, a in enumerate(curve) if a >= target), len(curve) + 1)


def probe_correct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                  train_idx: np.ndarray, test_idx: np.ndarray) -> torch.Tensor:
    """Per test row, whether a logistic regression on the frozen, mean-pooled token states
    of ``model.bert`` (standardised with the training rows) gets it right: how usable an
    encoder's features are before any fine-tuning. Returns a bool tensor (N_test,).

    Example:
        >>> m = tiny_bert(40, 8, task_head="sequence", num_outputs=2)
        >>> x, y = torch.randint(5, 40, (20, 8)), torch.arange(20) % 2
        >>> probe_correct(m, x, y, np.arange(10), np.arange(10, 20)).shape
        torch.Size([10])
    """
    from sklearn.linear_model import LogisticRegression

    was_training = model.training
    model.eval()
    with torch.no_grad():
        h = model.bert(x, attention_mask=x != 0).last_hidden_state  # (N, T, dim)
    model.train(was_training)
    keep = (x != 0).unsqueeze(-1).float()  # (N, T, 1)
    features = ((h * keep).sum(1) / keep.sum(1)).numpy()  # (N, dim)
    mean, std = features[train_idx].mean(0), features[train_idx].std(0) + 1e-8
    features = (features - mean) / std
    clf = LogisticRegression(max_iter=2000).fit(features[train_idx], y[train_idx].numpy())
    return torch.from_numpy(clf.predict(features[test_idx]) == y[test_idx].numpy())


def _finetune(model: torch.nn.Module, train, val, test, epochs: int, seed: int):
    result = fit(model, train, val, epochs=epochs, batch_size=FT_BATCH,
                 optim={"name": "adamw", "lr": FT_LR, "weight_decay": 0.01},
                 clip_grad_norm=1.0, device="cpu", seed=seed)
    records = [r for r in result.history if r["type"] == "epoch"]
    model.eval()
    with torch.no_grad():
        correct = model(test.tensors[0]).argmax(-1) == test.tensors[1]  # (N_test,)
    # last epoch's accuracy on the training batches (dropout on): did it fit them?
    return [r["val_accuracy"] for r in records], correct, records[-1]["train_accuracy"]


def _figure(curves: dict[str, list[float]], target: float, mlm_curve: list[float], unigram: float):
    from matplotlib.ticker import MaxNLocator

    with plot("Pretrained versus scratch fine-tuning; the pretraining", 1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]}) as drawn:
        ax1, ax2 = drawn.axes
        for name, curve in curves.items():
            ax1.plot(range(1, len(curve) + 1), curve, "o-", ms=3, label=name)
        ax1.axhline(target, color="grey", ls="--", label="target: scratch's best")
        ax1.set_xlabel("fine-tuning epoch")
        ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax1.set_ylabel("validation accuracy (stdlib_docs)")
        ax1.legend(fontsize=8)
        ax2.plot(range(1, len(mlm_curve) + 1), mlm_curve, "o-", ms=3, color="tab:green")
        ax2.axhline(unigram, color="grey", ls="--", label="most frequent token")
        ax2.set_xlabel("MLM epoch")
        ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax2.set_ylabel("held-out masked-token accuracy")
        ax2.legend(fontsize=8)
        drawn.fig.tight_layout()
    return drawn.figure


def run(cfg: dict, seed: int) -> Finding:
    corpus = mlm_corpus(MAX_LEN, VOCAB_SIZE, seed, cfg["n_passages"])
    heldout = fixed_masks(corpus.heldout_ids, corpus.special, corpus.vocab_size, seed)
    seed_everything(seed)
    mlm = tiny_bert(corpus.vocab_size, MAX_LEN, dropout=MLM_DROPOUT)
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
    probes = {name: probe_correct(m, x, y, tr, te)
              for name, m in (("pretrained", pretrained), ("random", scratch))}
    pre_curve, pre_correct, pre_fit = _finetune(pretrained, train, val, test, cfg["epochs"], seed)
    scr_curve, scr_correct, scr_fit = _finetune(scratch, train, val, test, cfg["epochs"], seed)

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
        "pretrained_train_accuracy": round(pre_fit, 4),
        "scratch_train_accuracy": round(scr_fit, 4),
        "pretrained_val_curve": [round(a, 4) for a in pre_curve],
        "scratch_val_curve": [round(a, 4) for a in scr_curve],
        "target_accuracy": round(target, 4),
        "pretrained_epochs_to_target": epochs_to_reach(pre_curve, target),
        "scratch_epochs_to_target": epochs_to_reach(scr_curve, target),
        "pretrained_probe_accuracy": round(float(probes["pretrained"].float().mean()), 4),
        "random_probe_accuracy": round(float(probes["random"].float().mean()), 4),
        "probe_two_se": round(2 * paired_se(probes["pretrained"], probes["random"]), 4),
        "stdlib_unknown_token_share": round(unk, 4),
        "bert_words_over_corpus_words": round(BERT_WORDS / corpus.train_words),
    }
    numbers["mlm_lift"] = round(numbers["mlm_heldout_accuracy"] - numbers["unigram_accuracy"], 4)
    numbers["pretraining_gain"] = round(
        numbers["pretrained_test_accuracy"] - numbers["scratch_test_accuracy"], 4)
    # The MLM lift is reported, not checked: it says whether the pretraining learned
    # anything, and the claim is about what that buys downstream.
    checks = [
        Check("pretraining_gain", ">", "gain_two_se"),
        Check("pretrained_epochs_to_target", "<", "scratch_epochs_to_target"),
    ]
    method = (f"MLM pretraining of a tiny BERT ({SHAPE}, dropout {MLM_DROPOUT}) on "
              f"{corpus.train_words} words of pydoc passages (80% of them, packed into windows "
              f"of {MAX_LEN} tokens; WordPiece vocabulary {corpus.vocab_size} from the same "
              f"text), AdamW lr {MLM_LR}, batch {MLM_BATCH}, {cfg['mlm_epochs']} epochs. "
              f"Fine-tuning on stdlib_docs: {cfg['per_class']} training and {VAL_PER_CLASS} "
              f"validation texts per class, the other {len(te)} for test; the pretrained "
              "encoder plus a new mean-pooled linear head (dropout 0.1) versus the same "
              "classifier from scratch, same head initialisation, AdamW lr "
              f"{FT_LR}, batch {FT_BATCH}, {cfg['epochs']} epochs, same batches. Target: the "
              "scratch model's best validation accuracy. Probe: logistic regression on the "
              "frozen mean-pooled features of each encoder before fine-tuning. Supported if "
              "the pretrained classifier beats scratch on test by more than two paired "
              "standard errors and reaches the target in fewer epochs.")
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
    probe_pre, probe_rnd = numbers["pretrained_probe_accuracy"], numbers["random_probe_accuracy"]
    if min(pre_fit, scr_fit) >= FITS_AT:
        fitting = "both fit them, so any gap is in how they generalise"
    elif pre_fit < FITS_AT <= scr_fit:
        fitting = ("the pretrained model fits them less well: at the same learning rate its "
                   "weights are slower to move to the new task")
    elif scr_fit < FITS_AT <= pre_fit:
        fitting = "the pretrained model fits them better"
    else:
        fitting = "neither fits them fully in this many epochs"
    notes = (f"Pretraining {verdict_word}: test accuracy {numbers['pretrained_test_accuracy']:.3f} "
             f"pretrained versus {numbers['scratch_test_accuracy']:.3f} from scratch (gain "
             f"{gain:+.3f}, two paired standard errors {two_se:.3f}; chance "
             f"{1 / n_classes:.2f}, constant guess {numbers['majority_accuracy']:.2f}). The "
             f"pretrained model {reach}. On their {len(tr)} training texts the pretrained and "
             f"scratch models reached {pre_fit:.2f} and {scr_fit:.2f} accuracy in the last "
             f"epoch: {fitting}. Before any fine-tuning, a logistic regression on the "
             f"frozen mean-pooled features scores {probe_pre:.3f} for the pretrained encoder and "
             f"{probe_rnd:.3f} for the randomly initialised one")
    if probe_rnd - probe_pre > numbers["probe_two_se"]:
        notes += (": the MLM features are less usable here than random ones, by more than two "
                  "paired standard errors. A random encoder passes on which word pieces a text "
                  "holds, and these six classes are told apart largely by a few topical words; "
                  "a small MLM encoder's states are shaped by what predicts a hidden piece from "
                  "its neighbours, which at this size is mostly frequent words and syntax. ")
    elif probe_pre - probe_rnd > numbers["probe_two_se"]:
        notes += ": pretraining made the features more usable. "
    else:
        notes += ", the same within two paired standard errors. "
    if numbers["mlm_lift"] < MIN_LIFT:
        notes += ("The MLM model is still close to guessing the most frequent token, so this "
                  "run exercises the pipeline more than it tests the claim. ")
    notes += (f"Scale caveat: the MLM model saw {corpus.train_words} words, about "
              f"1/{numbers['bert_words_over_corpus_words']:,} of BERT's 3.3 billion, for "
              f"{cfg['mlm_epochs']} epochs, with dim {DIM} and {LAYERS} layers, and reached "
              f"{mlm_scores['accuracy']:.3f} held-out masked-token accuracy (the most frequent "
              f"token: {numbers['unigram_accuracy']:.3f}); its text, the language reference, is "
              "near the docstrings' domain but not the same. The claim is about pretraining at "
              "scale (topic 24 shows a pretrained MiniLM needing only a few labels); this "
              "measures how much of it survives at toy scale.")
    return Finding(topic=TOPIC, title=TITLE, claim=CLAIM, method=method, numbers=numbers,
                   checks=checks,
                   figures=[_figure({"MLM-pretrained": pre_curve, "from scratch": scr_curve},
                                    target, mlm_curve, numbers["unigram_accuracy"])],
                   notes=notes)
