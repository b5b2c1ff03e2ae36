"""DistillationLoss against the formula of Hinton, Vinyals and Dean 2015, written out with
plain torch ops: alpha * CE(student, y) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dlforge.errors import ConfigError, DataError
from dlforge.targets import IGNORE_INDEX
from dlforge.train.losses import DistillationLoss

STUDENT = torch.tensor([[1.0, -0.5, 0.3], [0.2, 0.9, -1.1], [-0.4, 0.1, 0.6], [2.0, 0.0, -2.0]])  # (B=4, K=3)
TEACHER = torch.tensor([[3.0, -1.0, 0.0], [0.5, 2.5, -2.0], [-1.0, 0.0, 1.5], [1.0, 1.0, -3.0]])
LABELS = torch.tensor([0, 1, 2, 1])


def pack(labels: torch.Tensor, teacher: torch.Tensor = TEACHER) -> torch.Tensor:
    return torch.cat([labels.float()[:, None], teacher], dim=1)  # (B, 1 + K)


def by_hand(student, teacher, labels, t, alpha):
    """The formula with elementary ops: CE over labelled rows, KL summed over classes, mean over all rows."""
    p = (teacher / t).softmax(dim=1)  # teacher's soft targets
    log_q = (student / t).log_softmax(dim=1)
    kl = (p * (p.log() - log_q)).sum(dim=1).mean()
    keep = labels != IGNORE_INDEX
    log_p_student = student[keep].log_softmax(dim=1)
    ce = -log_p_student[torch.arange(int(keep.sum())), labels[keep]].mean() if keep.any() else 0.0
    return alpha * ce + (1 - alpha) * t * t * kl


@pytest.mark.parametrize("t,alpha", [(1.0, 0.5), (4.0, 0.1), (2.5, 0.0), (8.0, 0.7)])
def test_loss_equals_the_formula_on_hand_values(t, alpha):
    got = DistillationLoss(temperature=t, alpha=alpha)(STUDENT, pack(LABELS))
    torch.testing.assert_close(got, by_hand(STUDENT, TEACHER, LABELS, t, alpha))


def test_kl_term_matches_torch_kldivloss_batchmean():
    t = 3.0
    got = DistillationLoss(temperature=t, alpha=0.0)(STUDENT, pack(LABELS))
    ref = torch.nn.KLDivLoss(reduction="batchmean")((STUDENT / t).log_softmax(1), (TEACHER / t).softmax(1))
    torch.testing.assert_close(got, t * t * ref)


def test_temperature_one_alpha_one_is_plain_cross_entropy_exactly():
    student = STUDENT.clone().requires_grad_()
    got = DistillationLoss(temperature=1.0, alpha=1.0)(student, pack(LABELS))
    assert torch.equal(got, F.cross_entropy(STUDENT, LABELS))
    got.backward()
    ref = STUDENT.clone().requires_grad_()
    F.cross_entropy(ref, LABELS).backward()
    assert torch.equal(student.grad, ref.grad)


def test_integer_targets_give_plain_cross_entropy():  # a validation set without teacher outputs
    assert torch.equal(DistillationLoss(4.0, 0.1)(STUDENT, LABELS), F.cross_entropy(STUDENT, LABELS))


def test_soft_term_is_scaled_by_t_squared():
    """At high T the soft gradient is (q - p) / T per logit, so without the T^2 factor it would
    shrink like 1/T^2 (Hinton et al. section 2). Exact factor: loss / T^2 equals the bare KL."""
    for t in (2.0, 5.0):
        got = DistillationLoss(temperature=t, alpha=0.0)(STUDENT, pack(LABELS))
        bare = F.kl_div((STUDENT / t).log_softmax(1), (TEACHER / t).log_softmax(1), reduction="batchmean",
                        log_target=True)
        torch.testing.assert_close(got, t * t * bare)
    # with logits of zero mean the scaled gradient tends to (s - t) / (K B): constant in T
    s, te = STUDENT - STUDENT.mean(1, keepdim=True), TEACHER - TEACHER.mean(1, keepdim=True)
    norms = []
    for t in (10.0, 40.0, 160.0):
        x = s.clone().requires_grad_()
        DistillationLoss(temperature=t, alpha=0.0)(x, pack(LABELS, te)).backward()
        norms.append(x.grad.norm().item())
    limit = ((s - te) / (3 * len(s))).norm().item()
    assert norms == pytest.approx([limit] * 3, rel=0.05)


def test_unlabelled_rows_add_only_the_soft_term():
    t, alpha = 3.0, 0.4
    labels = torch.tensor([0, IGNORE_INDEX, 2, IGNORE_INDEX])
    loss = DistillationLoss(temperature=t, alpha=alpha)
    got = loss(STUDENT, pack(labels))
    torch.testing.assert_close(got, by_hand(STUDENT, TEACHER, labels, t, alpha))
    # changing an unlabelled row's (absent) label changes nothing; its soft target still counts
    soft = t * t * F.kl_div((STUDENT / t).log_softmax(1), (TEACHER / t).log_softmax(1), reduction="batchmean",
                            log_target=True)
    ce_labelled = F.cross_entropy(STUDENT[[0, 2]], labels[[0, 2]])
    torch.testing.assert_close(got, alpha * ce_labelled + (1 - alpha) * soft)
    none = torch.full((4,), IGNORE_INDEX)
    torch.testing.assert_close(loss(STUDENT, pack(none)), (1 - alpha) * soft)  # a transfer set: soft only
    assert DistillationLoss(temperature=t, alpha=1.0)(STUDENT, pack(none)).item() == 0.0


@pytest.mark.parametrize("kwargs", [{"temperature": 0.0}, {"temperature": -1.0}, {"alpha": -0.1},
                                    {"alpha": 1.5}, {"temperature": float("nan")}])
def test_bad_temperature_or_alpha_is_a_config_error(kwargs):
    with pytest.raises(ConfigError):
        DistillationLoss(**kwargs)


def test_wrongly_packed_targets_are_a_data_error():
    with pytest.raises(DataError, match="teacher_targets"):
        DistillationLoss()(STUDENT, TEACHER)  # teacher logits without the label column
