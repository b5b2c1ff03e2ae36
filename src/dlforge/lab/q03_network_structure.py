"""Topic 3, network structure: one hidden layer is what turns a perceptron into XOR.

Claim: a single perceptron (inputs wired straight to the output) draws one straight
line, so it cannot fit XOR, whose classes sit on opposite corners; put one hidden layer
between input and output and the network fits it exactly.

Method: two XOR tasks. The four clean corner points (-1,-1), (-1,1), (1,-1), (1,1),
where no line gets more than 3 of 4 right; and points drawn uniformly from the square,
labelled by whether the coordinate signs differ (noise 0), scored on held-out points.
On each, train dlforge's MLP with no hidden layer (``hidden: []``, a perceptron with a
softmax output) and with one hidden ReLU layer, with the same optimizer, learning rate
and number of steps. Each seed is one draw of the square's points and of both nets'
initial weights; the runner repeats the seeds (``SEEDS``).
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import TensorDataset

from dlforge.data import load_source, prepare
from dlforge.lab.finding import Check, Finding, plot
from dlforge.models import MLP, build
from dlforge.train import evaluate_loss, fit, resolve_loss, seed_everything

TOPIC = 3
TITLE = "Network structure"
CLAIM = ("One perceptron cannot fit XOR (at most 3 of the 4 corners, 0.5-0.75 accuracy); "
         "the same network with one hidden layer fits it (accuracy 1.0).")
BUDGETS = {
    "quick": {"n_samples": 400, "corner_steps": 200, "square_steps": 300},
    "full": {"n_samples": 2000, "corner_steps": 500, "square_steps": 2000},
}
SEEDS = {"quick": 3, "full": 10}  # cheap (a fraction of a second a seed): ten draws at full
HIDDEN = [16]
OPTIM = {"name": "adam", "lr": 0.03}
PERCEPTRON_AT_MOST = 0.75     # one line: 3 of 4 corners at best
HIDDEN_CORNERS_AT_LEAST = 1.0  # all four corners
HIDDEN_SQUARE_AT_LEAST = 0.95  # held-out points near the axes may fall on the wrong side


def xor_corners() -> TensorDataset:
    """The four clean XOR points, labelled 1 where the signs differ."""
    x = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])  # (4, 2)
    return TensorDataset(x, torch.tensor([0, 1, 1, 0]))


def train(hidden: list[int], train_set: TensorDataset, steps: int, batch_size: int,
          seed: int) -> MLP:
    """An MLP with ``hidden`` widths ([] is a perceptron) trained for about ``steps`` steps."""
    seed_everything(seed)  # the initial weights depend on the seed too
    model = build({"arch": "mlp", "hidden": hidden}, input_shape=(2,), num_outputs=2)
    epochs = max(1, math.ceil(steps / math.ceil(len(train_set) / batch_size)))
    fit(model, train_set, epochs=epochs, batch_size=batch_size, optim=OPTIM, device="cpu",
        seed=seed)
    return model


def score(model: MLP, data: TensorDataset) -> dict[str, float]:
    return evaluate_loss(model, data, resolve_loss(None, data.tensors[1]))


def _figure(models: dict[str, MLP], square: TensorDataset):
    grid = torch.linspace(-1.5, 1.5, 121)
    gx, gy = torch.meshgrid(grid, grid, indexing="xy")
    points = torch.stack([gx.flatten(), gy.flatten()], dim=1)  # (121*121, 2)
    with plot("Decision regions on XOR", 1, len(models), figsize=(5 * len(models), 4.2)) as drawn:
        axes = drawn.axes
        x, y = square.tensors
        for ax, (name, model) in zip(axes, models.items()):
            with torch.no_grad():
                p = torch.softmax(model(points), dim=1)[:, 1].reshape(gx.shape)
            ax.contourf(gx.numpy(), gy.numpy(), p.numpy(), levels=20, cmap="coolwarm", alpha=0.6)
            ax.scatter(x[:, 0], x[:, 1], c=y, cmap="coolwarm", s=5, edgecolors="none")
            ax.set_title(f"{name}: P(signs differ)")
    return drawn.figure


def run(cfg: dict, seed: int) -> Finding:
    corners = xor_corners()
    data = prepare(load_source("xor", n_samples=cfg["n_samples"], noise=0.0, seed=seed),
                   val=0, test=0.3, seed=seed, standardize=False)  # keep the axes at 0
    numbers: dict[str, float] = {}
    last: dict[str, MLP] = {}
    for name, hidden in (("perceptron", []), ("hidden", HIDDEN)):
        on_corners = score(train(hidden, corners, cfg["corner_steps"], 4, seed), corners)
        last[name] = train(hidden, data.train, cfg["square_steps"], 32, seed)
        numbers[f"{name}_corners_accuracy"] = round(on_corners["accuracy"], 4)
        numbers[f"{name}_corners_loss"] = round(on_corners["loss"], 5)
        numbers[f"{name}_square_accuracy"] = round(score(last[name], data.test)["accuracy"], 4)
    # "At most 0.75" bounds every run, not the mean of runs: a line's accuracy is any value up
    # to 0.75 depending on which line training picks (0.47-0.66 on the square over three
    # seeds), so the mean's t interval over few seeds reaches past 0.75 although no run does.
    # So each is a 0/1 per seed; over seeds, the fraction of runs that beat one line.
    for task in ("corners", "square"):
        numbers[f"perceptron_{task}_beats_one_line"] = float(numbers[f"perceptron_{task}_accuracy"]
                                                             > PERCEPTRON_AT_MOST)
    numbers["log2"] = round(math.log(2), 5)  # the loss of a constant 50/50 guess
    checks = [
        Check("perceptron_corners_beats_one_line", "<=", 0.0),  # on no seed
        Check("perceptron_square_beats_one_line", "<=", 0.0),
        Check("hidden_corners_accuracy", ">=", HIDDEN_CORNERS_AT_LEAST),
        Check("hidden_square_accuracy", ">=", HIDDEN_SQUARE_AT_LEAST),
    ]
    method = (f"XOR corners (4 points, full batch, {cfg['corner_steps']} steps) and XOR on "
              f"the square ({cfg['n_samples']} uniform points, noise 0, 30% held out, batch "
              f"32, about {cfg['square_steps']} steps); dlforge MLP with hidden [] "
              f"(perceptron) versus hidden {HIDDEN} ReLU; Adam lr {OPTIM['lr']}; one draw of "
              "the points and the initial weights per seed; accuracies are means over seeds.")
    notes = (f"The perceptron's loss on the corners ends near log 2 = {math.log(2):.3f}: with "
             "cross-entropy, the best a line can do on XOR is to give every corner probability "
             "1/2, so its corner accuracy (0.25, 0.5 or 0.75 on a seed) depends on how the "
             "near-ties fall, not on a line that gets 3 of 4 right. The hidden layer's corner "
             "loss falls to almost 0.")
    figure = _figure({"perceptron": last["perceptron"], "one hidden layer": last["hidden"]},
                     data.test)
    return Finding(topic=TOPIC, title=TITLE, claim=CLAIM, method=method, numbers=numbers,
                   checks=checks, figures=[figure], notes=notes)
