"""The evaluation metrics on hand-built cases whose answers are worked out in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from masf_lightning.eval.calibration import reliability
from masf_lightning.eval.invariance import class_gap, magnification_predictability
from masf_lightning.eval.patient import patient_metrics
from masf_lightning.eval.retrieval import class_search, nearest, own_patient_search, vote_accuracy


def _logits(probs: list[list[float]]) -> torch.Tensor:
    return torch.tensor(probs, dtype=torch.double).log()


# -- patient level --------------------------------------------------------------------------------
def test_patient_scores_recognition_rate_and_vote() -> None:
    # A (class 0): predictions 0, 0, 1 → score 2/3, vote 0 (right)
    # B (class 1): predictions 0, 1 → score 1/2, a 1–1 tie; class 1 has more summed probability → right
    # C (class 1): prediction 0 → score 0, vote wrong
    logits = _logits([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.55, 0.45], [0.1, 0.9], [0.7, 0.3]])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    m = patient_metrics(logits, labels, ["A", "A", "A", "B", "B", "C"])
    assert m["patient_scores"] == pytest.approx({"A": 2 / 3, "B": 0.5, "C": 0.0})
    assert m["patient_recognition_rate"] == pytest.approx((2 / 3 + 0.5 + 0) / 3)  # 7/18, not the image accuracy 1/2
    assert m["patient_vote_acc"] == pytest.approx(2 / 3)
    assert m["patient_n"] == 3


def test_patient_vote_tie_follows_probability_not_class_order() -> None:
    # one patient of class 0, predictions 0 and 1, but the class-1 image is far surer: the tie goes to 1
    m = patient_metrics(_logits([[0.51, 0.49], [0.01, 0.99]]), torch.tensor([0, 0]), ["A", "A"])
    assert m["patient_vote_acc"] == 0.0 and m["patient_recognition_rate"] == 0.5


def test_a_patient_filed_under_two_classes_is_two_units() -> None:
    """BreaKHis's 14-13412 is filed as DC and as LC: each set of images is scored against its own class."""
    logits = _logits([[0.9, 0.1], [0.2, 0.8], [0.9, 0.1]])
    m = patient_metrics(logits, torch.tensor([0, 1, 1]), ["14-13412", "14-13412", "P"])
    assert m["patient_scores"] == {"14-13412 (class 0)": 1.0, "14-13412 (class 1)": 1.0, "P": 0.0}
    assert m["patient_n"] == 3 and m["patient_vote_acc"] == pytest.approx(2 / 3)


# -- search ---------------------------------------------------------------------------------------
def _line(xs: list[float]) -> torch.Tensor:
    return torch.tensor([[x, 0.0] for x in xs])


def test_class_search_never_returns_the_querys_own_patient() -> None:
    # query: patient 0, class 0, at x=0. Database by distance: own patient (class 0) at 0.1, then
    # patient 1 (class 1) at 1, patient 2 (class 0) at 3, patient 3 (class 1) at 5.
    # Own patient removed, the ranking is [1, 0, 1] in class terms:
    #   top-1 vote: class 1 → wrong;  top-3 vote: 1, 0, 1 → class 1 → wrong
    #   AP@3 = precision at rank 2 = 1/2;  with the own patient kept it would be (1 + 2/3) / 2 and top-1 right
    res = class_search(
        _line([0.0]), torch.tensor([0]), torch.tensor([0]),
        _line([0.1, 1.0, 3.0, 5.0]), torch.tensor([0, 1, 0, 1]), torch.tensor([0, 1, 2, 3]),
        vote_ks=(1, 3), map_ks=(3,),
    )  # fmt: skip
    assert res["vote"] == {1: 0.0, 3: 0.0}
    assert res["map"] == {3: pytest.approx(0.5)}
    assert res["n"] == 1


def test_class_search_vote_and_map_over_two_queries() -> None:
    # q0 (patient 10, class 0) at 0: database by distance 1 (c0, p1), 2 (c1, p2), 4 (c0, p3)
    #   top-1 right; top-3: 0, 1, 0 → 0 right; AP@3 = (1/1 + 2/3) / 2 = 5/6
    # q1 (patient 11, class 1) at 4.2: by distance 4 (c0), 2 (c1), 1 (c0)
    #   top-1 wrong; top-3: 0, 1, 0 → 0 wrong; AP@3 = (1/2) / 1 = 1/2
    res = class_search(
        _line([0.0, 4.2]), torch.tensor([0, 1]), torch.tensor([10, 11]),
        _line([1.0, 2.0, 4.0]), torch.tensor([0, 1, 0]), torch.tensor([1, 2, 3]),
        vote_ks=(1, 3), map_ks=(1, 3),
    )  # fmt: skip
    assert res["vote"] == {1: 0.5, 3: 0.5}
    assert res["map"][3] == pytest.approx((5 / 6 + 1 / 2) / 2)
    assert res["map"][1] == pytest.approx(0.5)  # AP@1 is precision@1


def test_vote_tie_goes_to_the_nearest() -> None:
    labels = torch.tensor([[1, 0], [0, 1]])
    valid = torch.ones(2, 2, dtype=torch.bool)
    assert vote_accuracy(labels, valid, torch.tensor([1, 0]), (2,)) == {2: 1.0}
    assert vote_accuracy(labels, valid, torch.tensor([0, 1]), (2,)) == {2: 0.0}


def test_nearest_marks_slots_beyond_the_allowed_rows_invalid() -> None:
    idx, valid = nearest(_line([0.0]), _line([1.0, 2.0, 3.0]), 3, exclude=torch.tensor([[True, False, True]]))
    assert idx[0, 0] == 1 and valid.tolist() == [[True, False, False]]


def test_own_patient_recall() -> None:
    # q0 (patient 0) at 0: database patient 2 at 0.5, patient 1 at 1, patient 0 at 2 → found at rank 3
    # q1 (patient 1) at 1.1: nearest is patient 1 at 1 → found at rank 1
    # q2 (patient 5) has no image in the database: left out (n = 2)
    res = own_patient_search(_line([0.0, 1.1, 7.0]), torch.tensor([0, 1, 5]), _line([2.0, 1.0, 0.5]), torch.tensor([0, 1, 2]), ks=(1, 2, 3))
    assert res["recall"] == {1: 0.5, 2: 0.5, 3: 1.0}
    assert res["n"] == 2


def test_search_on_empty_sets_is_nan_not_an_error() -> None:
    res = class_search(torch.empty(0, 2), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long),
                       _line([1.0]), torch.tensor([0]), torch.tensor([0]))  # fmt: skip
    assert math.isnan(res["vote"][1]) and res["n"] == 0
    assert own_patient_search(_line([0.0]), torch.tensor([3]), _line([1.0]), torch.tensor([0]))["n"] == 0


# -- invariance -----------------------------------------------------------------------------------
def _mag_data(signal: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """12 patients × 4 magnifications × 4 images; x = signal · one-hot(magnification) + noise."""
    g = torch.Generator().manual_seed(seed)
    patients = torch.arange(12).repeat_interleave(16)
    mags = torch.arange(4).repeat_interleave(4).repeat(12)
    x = signal * torch.nn.functional.one_hot(mags, 4).double() + torch.randn(len(mags), 4, generator=g, dtype=torch.double)
    return x, mags, patients


def test_magnification_predictability_separable_and_invariant() -> None:
    x, mags, patients = _mag_data(signal=20.0)
    assert magnification_predictability(x, mags, patients) == 1.0
    x, mags, patients = _mag_data(signal=0.0)
    assert magnification_predictability(x, mags, patients) < 0.4  # chance is 0.25


def test_magnification_predictability_folds_by_patient() -> None:
    """Each patient seen at one magnification only, x = that patient's look: without patient folds a
    classifier would read the magnification off the patient (≈100 %); with them it is at chance."""
    g = torch.Generator().manual_seed(1)
    patients = torch.arange(16).repeat_interleave(8)
    mags = (torch.arange(16) % 4).repeat_interleave(8)
    look = torch.randn(16, 6, generator=g, dtype=torch.double)
    x = look[patients] + 0.01 * torch.randn(len(patients), 6, generator=g, dtype=torch.double)
    assert magnification_predictability(x, mags, patients) < 0.5


def test_class_gap_known_numbers() -> None:
    # class 0: source at x = −1, +1 (mean 0), target at 3, 5 (mean 4); every point 1 from its mean → s = 1, gap 4
    # class 1: source and target both at y = 8, 12 → gap 0 (s = 2); class 2 only in the source: left out
    src = torch.tensor([[-1.0, 0], [1, 0], [0, 8], [0, 12], [50, 50]])
    tgt = torch.tensor([[3.0, 0], [5, 0], [0, 8], [0, 12]])
    res = class_gap(src, torch.tensor([0, 0, 1, 1, 2]), tgt, torch.tensor([0, 0, 1, 1]))
    assert res["per_class"] == {0: pytest.approx(4.0), 1: pytest.approx(0.0)}
    assert res["mean"] == pytest.approx(2.0)
    scaled = class_gap(7 * src, torch.tensor([0, 0, 1, 1, 2]), 7 * tgt, torch.tensor([0, 0, 1, 1]))
    assert scaled["mean"] == pytest.approx(2.0)  # scale-free


# -- calibration ----------------------------------------------------------------------------------
def test_ece_known_numbers() -> None:
    # 10 predictions at confidence 0.8, 7 right: |0.7 − 0.8| = 0.1 on 10/15 of the images
    # 5 at confidence 0.55, 4 right: |0.8 − 0.55| = 0.25 on 5/15 → ECE = 0.1·2/3 + 0.25/3 = 0.15
    probs = [[0.8, 0.2]] * 10 + [[0.55, 0.45]] * 5
    labels = torch.tensor([0] * 7 + [1] * 3 + [0] * 4 + [1])
    res = reliability(_logits(probs), labels, n_bins=15)
    assert res["ece"] == pytest.approx(0.15)
    assert res["bins"]["count"] == [5, 10]
    assert res["bins"]["accuracy"] == pytest.approx([0.8, 0.7]) and res["bins"]["confidence"] == pytest.approx([0.55, 0.8])


def test_ece_matches_torchmetrics() -> None:
    from torchmetrics.functional.classification import multiclass_calibration_error

    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(500, 8, generator=g, dtype=torch.double)
    labels = torch.randint(8, (500,), generator=g)
    ours = reliability(logits, labels, n_bins=15)["ece"]
    theirs = float(multiclass_calibration_error(logits.softmax(1), labels, 8, n_bins=15, norm="l1"))
    assert ours == pytest.approx(theirs, abs=1e-6)
