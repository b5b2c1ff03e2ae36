"""Topic 24, BERT: masked-LM pretraining reads both sides; fine-tuning it is cheap.

Claim: BERT is a Transformer encoder pretrained by masked-language modelling (MLM): 15%
of the tokens are hidden and predicted from the rest of the sequence. Because every
token attends to both its left and its right, a bidirectional encoder predicts a hidden
token better than a causal (left-to-right) encoder trained the same way; and a
pretrained BERT adapts to a new task cheaply: a few labelled examples per class and a
few epochs on part of its weights beat the best constant guess by a wide margin.

Method: (1) two identical tiny BERTs (:func:`dlforge.lab._mlm.tiny_bert`, dim 64, two
layers), one bidirectional and one with ``causal=True``, start from the same weights and
train with MLM on the same pydoc passages, batches, masks, optimiser and epochs. Each is
scored on held-out passages whose masks are drawn once (masked-token accuracy and
cross-entropy), against the accuracy of always guessing the most frequent token. That
the causal model really reads one direction is checked numerically: changing the tokens
after position t must leave its outputs up to t unchanged. (2) the packaged MiniLM
(all-MiniLM-L6-v2, 6 layers, dim 384) is fine-tuned on ``stdlib_docs`` (which standard
module a docstring comes from, 6 classes) with a few labels per class, its embeddings
and lower layers frozen, and scored on a stratified held-out test set against chance
and the best constant guess; the fraction of its weights trained and the seconds taken
are reported.
"""

from __future__ import annotations

import torch

from dlforge.lab._mlm import (
    FT_BATCH,
    FT_LR,
    HEAD_LR,
    MAX_LEN,
    MINILM_MAX_LEN,
    MLM_BATCH,
    MLM_DROPOUT,
    MLM_LR,
    SHAPE,
    VOCAB_SIZE,
    finetune_minilm,
    fixed_masks,
    masked_predictions,
    mlm_corpus,
    paired_se,
    pretrain,
    tiny_bert,
    unigram_accuracy,
)
from dlforge.lab.finding import Check, Finding, plot
from dlforge.train import seed_everything

TOPIC = 24
TITLE = "BERT"
CLAIM = ("A bidirectional encoder predicts masked tokens better than a causal encoder trained "
         "the same way, because it reads both sides of the gap; and a pretrained BERT "
         "fine-tunes cheaply: a few labels per class and a few epochs on part of its weights "
         "beat the best constant guess by a wide margin.")
BUDGETS = {
    # The bidirectional gain grows with MLM training (seed 0: +0.003 after ~100 steps per
    # model, +0.010 after ~300, +0.019 after ~4,100), so the budgets sit at two points of
    # that curve. quick: about 50 steps per model, too few to leave the most-frequent-token
    # guess (lift 0.000): it exercises the pipeline. full: about 300 steps per model (all of
    # the corpus, three epochs), what five seeds afford in four minutes: the gain reaches
    # about the 1-point bar there.
    "quick": {"n_passages": 640, "mlm_epochs": 1, "per_class": 8, "ft_epochs": 3, "n_test": 72},
    "full": {"n_passages": None, "mlm_epochs": 3, "per_class": 16, "ft_epochs": 4,
             "n_test": 240},
}
HELDOUT_COPIES = 4  # independent maskings of each held-out passage: more scored tokens
MARGIN_OVER_MAJORITY = 0.1  # fine-tuned accuracy at least this far above the constant guess
CAUSAL_TOL = 1e-5  # float32 rounding; a model that reads ahead moves by ~0.1-1
# Masked-token accuracy points. Near the most-frequent-token guess two models mostly guess
# the same few words, so their paired standard error is tiny and a gain of a few tenths of
# a point can clear it without either model reading any context: ask for more.
MIN_LIFT = 0.02  # bidirectional accuracy above the most-frequent-token guess
MIN_GAIN = 0.01  # bidirectional above causal, and above two paired standard errors
# The former full budget (40 epochs of the whole corpus, seed 0, docs/lab_report.html before
# issue 18): the gain it reached, and its steps per model; quoted in the notes, not checked.
EARLIER_RUN_GAIN, EARLIER_RUN_STEPS = 0.0194, 4120
OVERFIT_GAP = 0.05  # training minus held-out masked accuracy that counts as memorising


def future_change(model: torch.nn.Module, ids: torch.Tensor, t: int, seed: int = 0) -> float:
    """Max abs change of the outputs at positions 0..t when every real token after t is
    replaced by another random ordinary token (eval mode). 0 for a causal model.

    Example:
        >>> m = tiny_bert(50, 8, causal=True)
        >>> future_change(m, torch.randint(5, 50, (2, 8)), t=3) < 1e-5
        True
    """
    g = torch.Generator().manual_seed(seed)
    changed = ids.clone()
    later = changed[:, t + 1:]  # (B, T - t - 1), a view
    # train_wordpiece gives the special tokens ids 0..4; keep them ([PAD], [SEP]) in place
    noise = torch.randint(5, model.config.vocab_size, later.shape, generator=g)
    later.copy_(torch.where(later > 4, noise, later))
    model.eval()
    with torch.no_grad():
        return float((model(ids)[:, :t + 1] - model(changed)[:, :t + 1]).abs().max())


def ahead_from(a: list[float], b: list[float]) -> int:
    """First epoch (1-based) from which curve ``a`` stays above curve ``b`` to the end;
    ``len(a) + 1`` if ``a`` ends at or below ``b``.

    Example:
        >>> ahead_from([0.1, 0.3, 0.2, 0.4], [0.2, 0.2, 0.3, 0.3]), ahead_from([0.1], [0.2])
        (4, 2)
    """
    start = len(a) + 1
    for e in range(len(a), 0, -1):
        if a[e - 1] <= b[e - 1]:
            break
        start = e
    return start


def _pretrain_pair(cfg: dict, seed: int):
    corpus = mlm_corpus(MAX_LEN, VOCAB_SIZE, seed, cfg["n_passages"])
    heldout = fixed_masks(corpus.heldout_ids, corpus.special, corpus.vocab_size, seed,
                          copies=HELDOUT_COPIES)
    runs = {}
    for name, causal in (("bidirectional", False), ("causal", True)):
        seed_everything(seed)  # same initial weights: causal changes the mask, not the weights
        model = tiny_bert(corpus.vocab_size, MAX_LEN, causal=causal, dropout=MLM_DROPOUT)
        curve = pretrain(model, corpus, heldout, epochs=cfg["mlm_epochs"],
                         batch_size=MLM_BATCH, lr=MLM_LR, seed=seed)
        correct, losses = masked_predictions(model, heldout)
        runs[name] = {"model": model, "curve": [r["val_accuracy"] for r in curve],
                      "train_accuracy": curve[-1]["train_accuracy"],  # last epoch, while training
                      "correct": correct, "loss": float(losses.mean())}
    return corpus, heldout, runs


def _figure(curves: dict[str, list[float]], unigram: float, ft: dict):
    from matplotlib.ticker import MaxNLocator

    with plot("Bidirectional versus causal MLM; MiniLM with few labels", 1, 2, figsize=(11, 4)) as drawn:
        ax1, ax2 = drawn.axes
        for name, curve in curves.items():
            ax1.plot(range(1, len(curve) + 1), curve, "o-", ms=3, label=name)
        ax1.axhline(unigram, color="grey", ls="--", label="most frequent token")
        ax1.set_xlabel("MLM epoch")
        ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax1.set_ylabel("held-out masked-token accuracy")
        ax1.legend(fontsize=8)
        names = ["chance", "constant guess", "MiniLM fine-tuned"]
        values = [ft["chance"], ft["majority"], ft["accuracy"]]
        ax2.bar(names, values, color=["#bbb", "#999", "tab:blue"])
        for i, v in enumerate(values):
            ax2.text(i, v + 0.01, f"{v:.2f}", ha="center")
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel("test accuracy (stdlib_docs, 6 classes)")
        ax2.set_title(f"{ft['train']} labels, {ft['trainable'] / ft['total']:.0%} of weights trained",
                      fontsize=9)
        drawn.fig.tight_layout()
    return drawn.figure


def run(cfg: dict, seed: int) -> Finding:
    corpus, heldout, runs = _pretrain_pair(cfg, seed)
    bi, causal = runs["bidirectional"], runs["causal"]
    probe = corpus.heldout_ids[:16]  # (16, T)
    t = MAX_LEN // 2
    ft = finetune_minilm(cfg["per_class"], cfg["ft_epochs"], cfg["n_test"], seed)
    numbers = {
        "corpus_train_words": corpus.train_words,
        "vocab_size": corpus.vocab_size,
        "heldout_masked_tokens": len(bi["correct"]),
        "unigram_accuracy": round(unigram_accuracy(corpus.train_ids, heldout, corpus.special), 4),
        "bidirectional_accuracy": round(float(bi["correct"].float().mean()), 4),
        "causal_accuracy": round(float(causal["correct"].float().mean()), 4),
        "bidirectional_train_accuracy": round(bi["train_accuracy"], 4),
        "bidirectional_loss": round(bi["loss"], 4),
        "causal_loss": round(causal["loss"], 4),
        "gain_two_se": round(2 * paired_se(bi["correct"], causal["correct"]), 4),
        "causal_future_change": float(f"{future_change(causal['model'], probe, t, seed):.3g}"),
        "bidirectional_future_change": round(future_change(bi["model"], probe, t, seed), 4),
        "per_class": cfg["per_class"],
        "finetune_train_examples": ft["train"],
        "finetune_test_examples": ft["test"],
        "chance_accuracy": round(ft["chance"], 4),
        "majority_accuracy": round(ft["majority"], 4),
        "minilm_accuracy": round(ft["accuracy"], 4),
        "trainable_parameters": ft["trainable"],
        "total_parameters": ft["total"],
        "trainable_fraction": round(ft["trainable"] / ft["total"], 4),
        "finetune_seconds": round(ft["seconds"], 2),
        "finetune_cpu_seconds": round(ft["cpu_seconds"], 2),  # wall time on a shared box varies
        "mlm_steps_per_model": cfg["mlm_epochs"] * -(-len(corpus.train_ids) // MLM_BATCH),
        "bidirectional_curve": [round(a, 4) for a in bi["curve"]],
        "causal_curve": [round(a, 4) for a in causal["curve"]],
    }
    numbers["bidirectional_gain"] = round(
        numbers["bidirectional_accuracy"] - numbers["causal_accuracy"], 4)
    bi_curve, causal_curve = numbers["bidirectional_curve"], numbers["causal_curve"]
    numbers["bidirectional_ahead_from_epoch"] = ahead_from(bi_curve, causal_curve)
    numbers["causal_ahead_epochs"] = sum(c > b for b, c in zip(bi_curve, causal_curve))
    numbers["bidirectional_lift"] = round(
        numbers["bidirectional_accuracy"] - numbers["unigram_accuracy"], 4)
    numbers["gain_bar"] = max(numbers["gain_two_se"], MIN_GAIN)
    numbers["minilm_gain_over_majority"] = round(
        numbers["minilm_accuracy"] - numbers["majority_accuracy"], 4)
    checks = [
        Check("bidirectional_lift", ">=", MIN_LIFT),
        Check("bidirectional_gain", ">", "gain_bar"),
        Check("causal_future_change", "<", CAUSAL_TOL),
        Check("minilm_gain_over_majority", ">=", MARGIN_OVER_MAJORITY),
    ]
    method = (f"(1) pydoc passages shuffled and split 80/20 ({corpus.train_words} training "
              f"words); WordPiece vocabulary of {corpus.vocab_size} learned on the training "
              f"part; passages packed into windows of {MAX_LEN} tokens. Two BERTs ({SHAPE}, "
              f"dropout {MLM_DROPOUT}), same initial weights, one with causal=True, trained "
              "with MLM (15%, 80/10/10) on the same batches and masks: AdamW lr "
              f"{MLM_LR}, batch {MLM_BATCH}, {cfg['mlm_epochs']} epochs, warmup then cosine. "
              f"Scored on {numbers['heldout_masked_tokens']} masked tokens of the held-out "
              f"passages ({HELDOUT_COPIES} fixed maskings each). Causality: max change of the "
              f"causal model's outputs at positions <= {t} when the later tokens change. (2) "
              f"all-MiniLM-L6-v2, mean pooling, max_len {MINILM_MAX_LEN}, {cfg['per_class']} "
              "labels per class of stdlib_docs, embeddings and layers 0-3 frozen, AdamW lr "
              f"{FT_LR} (head {HEAD_LR}), batch {FT_BATCH}, {cfg['ft_epochs']} epochs; "
              f"{ft['test']} stratified test texts. Supported if the bidirectional model beats "
              f"the most-frequent-token guess by >= {MIN_LIFT}, beats the causal model by more "
              f"than two paired standard errors and more than {MIN_GAIN}, the causal model "
              f"ignores later tokens (< {CAUSAL_TOL:g}), and MiniLM beats the best constant "
              f"guess by >= {MARGIN_OVER_MAJORITY}.")
    gain, bar = numbers["bidirectional_gain"], numbers["gain_bar"]
    lead, epochs = numbers["bidirectional_ahead_from_epoch"], cfg["mlm_epochs"]
    if gain > bar:
        mlm_word = "ahead of the causal one by more than the bar"
    elif gain > -bar:
        mlm_word = "level with the causal one within the bar"
    else:
        mlm_word = "behind the causal one by more than the bar"
    steps = numbers["mlm_steps_per_model"]
    notes = (f"On seed {seed}, after {epochs} MLM epoch(s) ({steps} steps per model) the "
             f"bidirectional model scores "
             f"{numbers['bidirectional_accuracy']:.3f} and the causal one "
             f"{numbers['causal_accuracy']:.3f} on held-out masked tokens (always guessing the "
             f"most frequent token: {numbers['unigram_accuracy']:.3f}): the bidirectional model "
             f"is {mlm_word} (gain {gain:+.3f}; bar {bar:.3f}, the larger of two paired "
             f"standard errors and {MIN_GAIN})"
             + (f", and has led since epoch {lead}. " if lead <= epochs else
                ", and is not ahead at the last epoch. "))
    overfit = numbers["bidirectional_train_accuracy"] - numbers["bidirectional_accuracy"]
    notes += (f"On its training windows the bidirectional model scored "
              f"{numbers['bidirectional_train_accuracy']:.3f} in the last epoch, "
              + ("so it had not begun to memorise them. " if overfit < OVERFIT_GAP else
                 f"{overfit:.3f} above held-out: it had begun to memorise them. "))
    if numbers["bidirectional_lift"] < MIN_LIFT:
        notes += ("Both models are still close to the most-frequent-token guess: this short "
                  "run shows the pipeline, not the claim. ")
    causal_led = numbers["causal_ahead_epochs"]
    if causal_led:
        notes += (f"The causal model was ahead in {causal_led} of the {epochs} epochs. Seeing "
                  "both sides only pays once a model attends by position (to the next word "
                  "piece, the word after the gap). Early on a small model predicts from token "
                  "frequencies and the bag of words around the gap; learned position "
                  "embeddings starting from noise take many steps to become useful, while a "
                  "causal mask hands a model position information for free (how many tokens it "
                  "sees; Haviv et al., 2022). ")
    if gain <= bar:
        notes += ("The bidirectional gain grows with training at this size: a single-seed run "
                  f"of 40 epochs (about {EARLIER_RUN_STEPS:,} steps per model) reached "
                  f"{EARLIER_RUN_GAIN:+.3f}, with the causal model ahead in 21 of its 40 "
                  f"epochs; on this seed {steps} steps did not clear the bar. ")
    notes += (f"The causal model's outputs moved by {numbers['causal_future_change']:.1g} when "
              f"later tokens changed, the bidirectional model's by "
              f"{numbers['bidirectional_future_change']:.2f}. Fine-tuning MiniLM on "
              f"{ft['train']} labelled docstrings for {cfg['ft_epochs']} epochs trained "
              f"{numbers['trainable_fraction']:.0%} of its {ft['total'] / 1e6:.1f} M weights in "
              f"{ft['seconds']:.1f} s ({ft['cpu_seconds']:.1f} s of CPU) and reached "
              f"{ft['accuracy']:.2f} test accuracy, against {ft['chance']:.2f} for chance and "
              f"{ft['majority']:.2f} for always naming the most common module.")
    return Finding(topic=TOPIC, title=TITLE, claim=CLAIM, method=method, numbers=numbers,
                   checks=checks,
                   figures=[_figure({"bidirectional": bi["curve"], "causal": causal["curve"]},
                                    numbers["unigram_accuracy"], ft)],
                   notes=notes)
