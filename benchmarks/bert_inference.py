"""How fast is dlforge's BERT against transformers.BertModel on the same MiniLM weights?

One command: ``python benchmarks/bert_inference.py [--quick] [--threads 1]``.

Both models load the packaged all-MiniLM-L6-v2 folder (6 layers, dim 384, 12 heads):
dlforge through ``dlforge.models.bert.from_pretrained``, transformers through
``BertModel.from_pretrained(..., attn_implementation="sdpa")``, its fastest CPU path.
The batch is the first ``--batch`` sentences (default 32) of CPython's
``pydoc_data.topics`` text, tokenized with MiniLM's own tokenizer, truncated to
``--max-len`` tokens (default 128) and padded to the longest; the attention mask comes
from the padding. Both run in eval mode under ``torch.inference_mode()``.

dlforge runs twice: as built (``dlforge``: the layers skip padding tokens, see
``dlforge.models.bert.Unpadding``) and with ``skip_padding = False``
(``dlforge_all_positions``: every position computed, the same work as transformers).
Sentences of different lengths padded to the longest leave much of the batch padding
(about 70% at the defaults), and that is the work skipping saves.

Before timing, the last hidden states at real tokens are checked equal (atol 1e-4), so
all compute the same thing. Each model is warmed up, then they alternate for
``--rounds`` rounds (the order rotates every round, so none always runs on a warmer
cache). Reported: each variant's median seconds per batch and sentences per second, the
ratio to transformers (from the medians; above 1 means dlforge is faster) and the
paired ratio (median over rounds of each round's ratio, which cancels slow drift in
the machine's speed).

Target: ``sentences_per_s_ratio_vs_transformers >= 1.0`` (dlforge as built).

Threads default to 1 (``--threads N`` to change): the machine has two cores shared by
several people, and one thread gives steadier timings.

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from dlforge.models.bert import from_pretrained, minilm_path

FULL = {"batch": 32, "max_len": 128, "rounds": 10}
QUICK = {"batch": 8, "max_len": 32, "rounds": 3}
WARMUP = 2


def sentences(n: int) -> list[str]:
    """The first ``n`` sentences of six words or more from CPython's pydoc topics text."""
    from pydoc_data.topics import topics

    text = " ".join(topics[key] for key in sorted(topics))
    found = (" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+", text))
    return [s for s in found if len(s.split()) >= 6][:n]


def tokenize(texts: list[str], max_len: int) -> tuple[Tensor, Tensor]:
    """MiniLM's tokenizer: ids (B, T) padded with 0 to the longest, and the mask (B, T)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
    tok.enable_truncation(max_length=max_len)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(texts)
    return torch.tensor([e.ids for e in enc]), torch.tensor([e.attention_mask for e in enc])


def timed(fn: Callable[[], Tensor]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small batch, a smoke run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--batch", type=int, default=None, help="sentences per batch")
    parser.add_argument("--max-len", type=int, default=None, help="truncate to this many tokens")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds")
    args = parser.parse_args()
    preset = QUICK if args.quick else FULL
    batch, max_len = args.batch or preset["batch"], args.max_len or preset["max_len"]
    rounds = args.rounds or preset["rounds"]
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # load only the local folder
    from transformers import BertModel

    folder = minilm_path()
    ours = from_pretrained(folder, num_outputs=2, max_len=max_len).eval()
    ours_all = copy.deepcopy(ours)
    ours_all.bert.skip_padding = False
    theirs = BertModel.from_pretrained(folder, attn_implementation="sdpa").eval()
    ids, mask = tokenize(sentences(batch), max_len)
    B, T = ids.shape

    calls = {
        "dlforge": lambda: ours.bert(ids, attention_mask=mask).last_hidden_state,
        "dlforge_all_positions": lambda: ours_all.bert(ids, attention_mask=mask).last_hidden_state,
        "transformers": lambda: theirs(input_ids=ids, attention_mask=mask).last_hidden_state,
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.inference_mode():
        real = mask.bool()
        want = calls["transformers"]()[real]
        for name in ("dlforge", "dlforge_all_positions"):
            torch.testing.assert_close(calls[name]()[real], want, atol=1e-4, rtol=1e-4)
        for _ in range(WARMUP):
            for fn in calls.values():
                fn()
        names = list(calls)
        for r in range(rounds):
            for name in names[r % 3:] + names[:r % 3]:  # rotate the order
                times[name].append(timed(calls[name]))

    median = {name: statistics.median(ts) for name, ts in times.items()}
    per_s = {name: B / sec for name, sec in median.items()}
    ratio = {name: per_s[name] / per_s["transformers"] for name in calls}
    paired = {name: statistics.median(t / o for o, t in zip(ts, times["transformers"]))
              for name, ts in times.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, MiniLM-L6 "
          f"(dim 384), batch {B} x {T} tokens ({int(mask.sum())} real), {rounds} rounds")
    print(f"  {'variant':22s} {'median ms':>10s} {'sentences/s':>12s} {'vs transformers':>16s}"
          f" {'paired':>7s}")
    for name in calls:
        print(f"  {name:22s} {median[name] * 1000:10.1f} {per_s[name]:12.1f} "
              f"{ratio[name]:16.3f} {paired[name]:7.3f}")
    print(f"target: dlforge / transformers sentences per second >= 1.0: {ratio['dlforge']:.3f}")
    print(json.dumps({
        "sentences_per_s_ratio_vs_transformers": round(ratio["dlforge"], 4),
        "paired_ratio_vs_transformers": round(paired["dlforge"], 4),
        "all_positions_ratio_vs_transformers": round(ratio["dlforge_all_positions"], 4),
        "all_positions_paired_ratio_vs_transformers": round(paired["dlforge_all_positions"], 4),
        "sentences_per_s_dlforge": round(per_s["dlforge"], 2),
        "sentences_per_s_dlforge_all_positions": round(per_s["dlforge_all_positions"], 2),
        "sentences_per_s_transformers": round(per_s["transformers"], 2),
        "median_ms_dlforge": round(median["dlforge"] * 1000, 2),
        "median_ms_dlforge_all_positions": round(median["dlforge_all_positions"] * 1000, 2),
        "median_ms_transformers": round(median["transformers"] * 1000, 2),
        "real_token_fraction": round(float(mask.float().mean()), 4),
        "threads": torch.get_num_threads(),
        "batch": B,
        "seq_len": T,
        "rounds": rounds,
    }))


if __name__ == "__main__":
    main()
