"""Recurrent models: Elman RNN, LSTM and GRU, written out cell by cell and fused.

One set of parameters, two ways to run it. ``Recurrent`` owns a ``torch.nn.RNN``,
``nn.LSTM`` or ``nn.GRU`` (so weights copy across by name: ``weight_ih_l{k}[_reverse]``,
``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``, gates i,f,g,o for the LSTM and
r,z,n for the GRU). ``path="fused"`` calls that module and PyTorch's own kernels;
``path="explicit"`` reads the same parameters and loops over time with the cells below,
which is slow but shows every gate. Both paths agree to float64 precision.

Example:
    >>> import torch
    >>> from dlforge.models.rnn import RNNClassifier, RNNConfig
    >>> model = RNNClassifier(RNNConfig(input_shape=(12, 3), num_outputs=2, hidden_size=8))
    >>> model(torch.zeros(4, 12, 3)).shape
    torch.Size([4, 2])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from dlforge.errors import ConfigError, DataError
from dlforge.models._config import (
    check_choice,
    check_dropout,
    check_positive,
    check_sizes,
    check_types,
    make_config,
)

KINDS = ("rnn", "lstm", "gru")
NONLINEARITIES = ("tanh", "relu")
PATHS = ("explicit", "fused")
HEADS = ("last", "mean")
TASK_HEADS = ("sequence", "token")  # one prediction per sequence, or one per step (token)

_TORCH_MODULES: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}

# h_n for the RNN and GRU, (h_n, c_n) for the LSTM; each (num_layers * D, B, H).
State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


@dataclass
class RNNConfig:
    input_shape: tuple[int, ...]  # (T, F): steps per sequence, features per step
    num_outputs: int
    kind: str = "lstm"  # rnn (Elman) | lstm | gru
    hidden_size: int = 64
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0  # between stacked layers, as torch.nn.LSTM applies it
    nonlinearity: str = "tanh"  # Elman RNN only: tanh | relu
    path: str = "fused"  # fused (PyTorch kernels) | explicit (cells looped over time)
    head: str = "last"  # last: final state of each direction; mean: mean over valid steps
    task_head: str = "sequence"  # sequence: (B, num_outputs); token: (B, T, num_outputs), one per step

    def __post_init__(self) -> None:
        check_types(self)
        check_sizes("input_shape", self.input_shape)
        if len(self.input_shape) != 2:
            raise ConfigError(
                f"model.input_shape is {list(self.input_shape)}, but an rnn needs (T, F)",
                hint="give [steps, features per step], e.g. [20, 1]",
            )
        check_positive("num_outputs", self.num_outputs)
        check_choice("kind", self.kind, KINDS)
        check_positive("hidden_size", self.hidden_size)
        check_positive("num_layers", self.num_layers)
        check_dropout(self.dropout)
        check_choice("nonlinearity", self.nonlinearity, NONLINEARITIES)
        if self.kind != "rnn" and self.nonlinearity != "tanh":
            raise ConfigError(
                f"model.nonlinearity is {self.nonlinearity!r}, but a {self.kind} has fixed "
                "gate activations",
                hint="remove model.nonlinearity, or use kind: rnn",
            )
        check_choice("path", self.path, PATHS)
        check_choice("head", self.head, HEADS)
        check_choice("task_head", self.task_head, TASK_HEADS)
        if self.task_head == "token" and self.bidirectional:
            raise ConfigError(
                "model.task_head 'token' with bidirectional: true would let step t see the future",
                hint="use bidirectional: false for per-step predictions",
            )


# ---- the cells: one time step, written out gate by gate ---------------------------------


def rnn_cell(
    x: torch.Tensor,
    h: torch.Tensor,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    b_ih: torch.Tensor | None,
    b_hh: torch.Tensor | None,
    nonlinearity: str = "tanh",
) -> torch.Tensor:
    """One Elman step: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``.

    ``x`` is (B, F), ``h`` is (B, H), ``w_ih`` (H, F), ``w_hh`` (H, H); returns h' (B, H).

    Example:
        >>> w_ih, w_hh = torch.eye(2), torch.zeros(2, 2)
        >>> rnn_cell(torch.tensor([[0.0, 1.0]]), torch.zeros(1, 2), w_ih, w_hh, None, None)
        tensor([[0.0000, 0.7616]])
    """
    pre = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)  # (B, H)
    return torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre)


def lstm_cell(
    x: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    b_ih: torch.Tensor | None,
    b_hh: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step; weights stack the gates in PyTorch's order i, f, g, o.

    ``x`` (B, F), ``h`` and ``c`` (B, H), ``w_ih`` (4H, F), ``w_hh`` (4H, H); returns
    (h', c'), each (B, H).

    Example:
        >>> H, F_ = 3, 2
        >>> h, c = lstm_cell(torch.ones(1, F_), torch.zeros(1, H), torch.zeros(1, H),
        ...                  torch.zeros(4 * H, F_), torch.zeros(4 * H, H), None, None)
        >>> h.shape, c.shape
        (torch.Size([1, 3]), torch.Size([1, 3]))
    """
    x_i, x_f, x_g, x_o = F.linear(x, w_ih, b_ih).chunk(4, dim=1)  # 4 x (B, H)
    h_i, h_f, h_g, h_o = F.linear(h, w_hh, b_hh).chunk(4, dim=1)  # 4 x (B, H)
    i = torch.sigmoid(x_i + h_i)  # input gate: how much of the candidate to write
    f = torch.sigmoid(x_f + h_f)  # forget gate: how much of the old cell to keep
    g = torch.tanh(x_g + h_g)  # cell candidate
    o = torch.sigmoid(x_o + h_o)  # output gate: how much of the cell to show
    c = f * c + i * g  # (B, H); the additive path lets gradients cross many steps
    h = o * torch.tanh(c)  # (B, H)
    return h, c


def gru_cell(
    x: torch.Tensor,
    h: torch.Tensor,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    b_ih: torch.Tensor | None,
    b_hh: torch.Tensor | None,
) -> torch.Tensor:
    """One GRU step; weights stack the gates in PyTorch's order r, z, n.

    PyTorch's convention puts the reset gate after the hidden-side product:
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``. ``x`` (B, F), ``h`` (B, H),
    ``w_ih`` (3H, F), ``w_hh`` (3H, H); returns h' (B, H).

    Example:
        >>> H, F_ = 3, 2
        >>> gru_cell(torch.ones(1, F_), torch.ones(1, H), torch.zeros(3 * H, F_),
        ...          torch.zeros(3 * H, H), None, None)  # z = 0.5, n = 0: half of h stays
        tensor([[0.5000, 0.5000, 0.5000]])
    """
    x_r, x_z, x_n = F.linear(x, w_ih, b_ih).chunk(3, dim=1)  # 3 x (B, H)
    h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, dim=1)  # 3 x (B, H)
    r = torch.sigmoid(x_r + h_r)  # reset gate: how much of h feeds the new gate
    z = torch.sigmoid(x_z + h_z)  # update gate: how much of the old h to keep
    n = torch.tanh(x_n + r * h_n)  # new gate (candidate state)
    return (1 - z) * n + z * h  # (B, H)


# ---- the recurrent stack ----------------------------------------------------------------


class Recurrent(nn.Module):
    """A stack of RNN/LSTM/GRU layers over batch-first sequences, fused or explicit.

    ``self.rnn`` is the ``torch.nn`` module that owns every parameter; the explicit path
    reads them by name, so ``torch.nn.LSTM(...).load_state_dict(rec.rnn.state_dict())``
    gives a reference with the same weights.

    Example:
        >>> rec = Recurrent("gru", input_size=3, hidden_size=5, bidirectional=True)
        >>> out, h_n = rec(torch.zeros(2, 7, 3), lengths=torch.tensor([7, 4]))
        >>> out.shape, h_n.shape
        (torch.Size([2, 7, 10]), torch.Size([2, 2, 5]))
    """

    def __init__(
        self,
        kind: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        bidirectional: bool = False,
        dropout: float = 0.0,
        nonlinearity: str = "tanh",
        path: str = "fused",
    ) -> None:
        super().__init__()
        check_choice("kind", kind, KINDS)
        check_choice("path", path, PATHS)
        self.kind, self.path = kind, path
        options: dict[str, Any] = {"nonlinearity": nonlinearity} if kind == "rnn" else {}
        # torch warns about dropout on a single layer, where it has nothing to act on.
        self.rnn = _TORCH_MODULES[kind](
            input_size,
            hidden_size,
            num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
            **options,
        )

    @property
    def num_directions(self) -> int:
        return 2 if self.rnn.bidirectional else 1

    def forward(
        self,
        x: torch.Tensor,
        h0: State | None = None,
        lengths: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State]:
        """Run the stack over ``x`` (B, T, F) and return (output, final state).

        ``output`` is the top layer's (B, T, D*H), zero past each sequence's length;
        the final state is h_n (or (h_n, c_n) for the LSTM), each (num_layers*D, B, H),
        taken at each sequence's own end. ``lengths`` (B,) gives the valid steps.
        """
        if lengths is not None:
            lengths = _check_lengths(lengths, x)
        if self.path == "fused":
            return self._fused(x, h0, lengths)
        return self._explicit(x, h0, lengths)

    def _fused(
        self, x: torch.Tensor, h0: State | None, lengths: torch.Tensor | None
    ) -> tuple[torch.Tensor, State]:
        if lengths is None:
            return self.rnn(x, h0)
        # Packing makes the kernel stop each sequence at its end, in both directions.
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, state = self.rnn(packed, h0)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out, state  # out (B, T, D*H), padded with zeros

    def _explicit(
        self, x: torch.Tensor, h0: State | None, lengths: torch.Tensor | None
    ) -> tuple[torch.Tensor, State]:
        B, T, _ = x.shape
        H, D = self.rnn.hidden_size, self.num_directions
        L = self.rnn.num_layers
        if h0 is None:
            zeros = x.new_zeros(L * D, B, H)
            h0 = (zeros, zeros) if self.kind == "lstm" else zeros
        h_init, c_init = h0 if self.kind == "lstm" else (h0, None)
        steps = torch.arange(T, device=x.device)
        valid = (
            steps[None, :] < lengths.to(x.device)[:, None]
            if lengths is not None
            else torch.ones(B, T, dtype=torch.bool, device=x.device)
        )  # (B, T)
        layer_in = x  # (B, T, F) for layer 0, (B, T, D*H) above
        h_last, c_last = [], []
        for layer in range(L):
            outputs = []
            for direction in range(D):
                index = layer * D + direction
                c = c_init[index] if c_init is not None else None
                out, h, c = self._run_direction(
                    layer_in, valid, h_init[index], c, layer, reverse=direction == 1
                )
                outputs.append(out)
                h_last.append(h)
                c_last.append(c)
            layer_in = torch.cat(outputs, dim=2)  # (B, T, D*H)
            if layer < L - 1 and self.rnn.dropout > 0:
                layer_in = F.dropout(layer_in, self.rnn.dropout, self.training)
        h_n = torch.stack(h_last)  # (L*D, B, H)
        if self.kind == "lstm":
            return layer_in, (h_n, torch.stack(c_last))
        return layer_in, h_n

    def _run_direction(
        self,
        x: torch.Tensor,
        valid: torch.Tensor,
        h: torch.Tensor,
        c: torch.Tensor | None,
        layer: int,
        *,
        reverse: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Loop one layer and direction over time; masked steps leave the state alone."""
        suffix = f"_l{layer}" + ("_reverse" if reverse else "")
        w_ih, w_hh, b_ih, b_hh = (
            getattr(self.rnn, f"{name}{suffix}")
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        )
        T = x.shape[1]
        outputs: list[torch.Tensor] = [x.new_empty(0)] * T
        # The reverse direction starts at each sequence's last valid step, because steps
        # past the end are masked and keep the initial state.
        for t in reversed(range(T)) if reverse else range(T):
            keep = valid[:, t, None]  # (B, 1)
            if self.kind == "lstm":
                h_new, c_new = lstm_cell(x[:, t], h, c, w_ih, w_hh, b_ih, b_hh)
                c = torch.where(keep, c_new, c)
            elif self.kind == "gru":
                h_new = gru_cell(x[:, t], h, w_ih, w_hh, b_ih, b_hh)
            else:
                h_new = rnn_cell(x[:, t], h, w_ih, w_hh, b_ih, b_hh, self.rnn.nonlinearity)
            h = torch.where(keep, h_new, h)  # (B, H)
            outputs[t] = torch.where(keep, h_new, torch.zeros_like(h_new))
        return torch.stack(outputs, dim=1), h, c  # (B, T, H), (B, H), (B, H) | None


def _check_lengths(lengths: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    if lengths.shape != (x.shape[0],) or lengths.min() < 1 or lengths.max() > x.shape[1]:
        raise DataError(
            f"lengths must be one value in [1, {x.shape[1]}] per sequence, got "
            f"{lengths.tolist()}",
            hint="pass lengths of shape (B,) with each sequence's count of valid steps",
        )
    return lengths


# ---- the model family ------------------------------------------------------------------


class RNNClassifier(nn.Module):
    """Read a sequence with a recurrent stack and map its summary to ``num_outputs``.

    The summary is, for ``head="last"``, the final state of each direction concatenated
    (forward at the last valid step, backward at step 0), or, for ``head="mean"``, the
    top layer's output averaged over valid steps. ``self.recurrent`` is the
    :class:`Recurrent` stack and ``self.head`` the final Linear.

    Example:
        >>> model = build_rnn((10, 2), 3, kind="gru", hidden_size=8, bidirectional=True)
        >>> model(torch.zeros(5, 10, 2), lengths=torch.full((5,), 6)).shape
        torch.Size([5, 3])
    """

    ARCH = "rnn"

    def __init__(self, config: RNNConfig) -> None:
        super().__init__()
        self.config = config
        self.recurrent = Recurrent(
            config.kind,
            config.input_shape[1],
            config.hidden_size,
            config.num_layers,
            bidirectional=config.bidirectional,
            dropout=config.dropout,
            nonlinearity=config.nonlinearity,
            path=config.path,
        )
        directions = 2 if config.bidirectional else 1
        self.head = nn.Linear(directions * config.hidden_size, config.num_outputs)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(x)
        B, T, _ = x.shape
        out, _ = self.recurrent(x, lengths=lengths)  # (B, T, D*H)
        if self.config.task_head == "token":
            return self.head(out)  # (B, T, num_outputs); zero state past each length
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.long)
        lengths = lengths.to(x.device)
        if self.config.head == "mean":
            summary = out.sum(dim=1) / lengths[:, None].to(out.dtype)  # zeros past the end
        else:
            H = self.config.hidden_size
            forward_end = out[torch.arange(B, device=x.device), lengths - 1, :H]  # (B, H)
            parts = [forward_end]
            if self.config.bidirectional:
                parts.append(out[:, 0, H:])  # the backward direction ends at step 0
            summary = torch.cat(parts, dim=1)  # (B, D*H)
        return self.head(summary)  # (B, num_outputs)

    def forward_chunk(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Per-step outputs for a chunk of a longer sequence, carrying the state across chunks.

        x (B, k, F) and the state after the previous chunk (None at the start) ->
        (outputs (B, k, num_outputs), state after this chunk). This is what truncated BPTT
        (:mod:`dlforge.train.tbptt`) calls; a bidirectional stack cannot run chunk by chunk.

        Example:
            >>> model = build_rnn((8, 1), 2, hidden_size=4)
            >>> out, state = model.forward_chunk(torch.zeros(3, 5, 1))
            >>> out.shape, model.forward_chunk(torch.zeros(3, 3, 1), state)[0].shape
            (torch.Size([3, 5, 2]), torch.Size([3, 3, 2]))
        """
        self._check_input(x)
        if self.config.bidirectional:
            raise ConfigError("a bidirectional rnn cannot be run chunk by chunk (truncated BPTT)",
                              hint="use bidirectional: false, or remove train.tbptt")
        out, state = self.recurrent(x, state)  # (B, k, H)
        return self.head(out), state  # (B, k, num_outputs)

    def _check_input(self, x: torch.Tensor) -> None:
        # Any number of steps is fine for a recurrent net; the features per step are not.
        features = self.config.input_shape[1]
        if x.dim() != 3 or x.shape[2] != features:
            raise DataError(
                f"the rnn got input of shape {tuple(x.shape)}, expected (B, T, {features})",
                hint="the data's per-sample shape must be (steps, model.input_shape[1]); "
                "add a batch dimension with x.unsqueeze(0) for a single sequence",
            )


def build_rnn(input_shape: Sequence[int], num_outputs: int, **options: Any) -> RNNClassifier:
    """Build an RNNClassifier from explicit arguments; ``options`` are other RNNConfig fields.

    Example:
        >>> model = build_rnn((20, 1), 2, kind="lstm", hidden_size=16, num_layers=2)
        >>> model.recurrent.rnn
        LSTM(1, 16, num_layers=2, batch_first=True)
    """
    values = {"input_shape": tuple(input_shape), "num_outputs": num_outputs, **options}
    return RNNClassifier(make_config(RNNConfig, RNNClassifier.ARCH, values))
