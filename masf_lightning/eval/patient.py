"""Patient-level scores of BreaKHis's own protocol (Spanhol et al., 2016): a diagnosis is per patient, not per image."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def patient_metrics(logits: torch.Tensor, labels: torch.Tensor, patients: Sequence[str]) -> dict[str, object]:
    """Patient score, patient recognition rate and patient-level majority-vote accuracy.

    patient score = share of the patient's images classified right; recognition rate = their mean
    over patients (Spanhol et al.); vote accuracy = share of patients whose images' majority vote is
    their class (a tie goes to the tied class with the larger summed probability). The unit is a
    (patient, class) pair: BreaKHis files one patient (14-13412) under two tumour types.
    """
    if len(labels) == 0:
        return {"patient_recognition_rate": float("nan"), "patient_vote_acc": float("nan"), "patient_n": 0, "patient_scores": {}}
    preds = logits.argmax(1)
    probs = logits.float().softmax(1)
    units = sorted(set(zip(patients, labels.tolist(), strict=True)))
    two_classes = {p for p, _ in units if sum(q == p for q, _ in units) > 1}
    pat = list(patients)
    scores: dict[str, float] = {}
    votes_right = 0
    for patient, label in units:
        mask = torch.tensor([p == patient for p in pat]) & (labels == label)
        scores[patient if patient not in two_classes else f"{patient} (class {label})"] = float((preds[mask] == label).double().mean())
        counts = torch.bincount(preds[mask], minlength=logits.shape[1]).double()
        # probabilities sum to at most the image count, so they only decide between equal vote counts
        tie_break = probs[mask].double().sum(0) / (mask.sum() + 1)
        votes_right += int(int((counts + tie_break).argmax()) == label)
    return {
        "patient_recognition_rate": sum(scores.values()) / len(scores),
        "patient_vote_acc": votes_right / len(units),
        "patient_n": len(units),
        "patient_scores": scores,
    }
