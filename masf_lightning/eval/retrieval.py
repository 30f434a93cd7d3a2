"""Cross-magnification image search: what a pathologist's archive query does with these embeddings.

Queries are images of the unseen magnification, the database images of the source magnifications.
Distances are Euclidean (the space Eq. 8's triplet loss shapes). Neighbours from the query's own
patient are removed from class search: a patient's other fields of view would answer for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics.retrieval import RetrievalHitRate, RetrievalMAP


def nearest(
    query: torch.Tensor, database: torch.Tensor, k: int, exclude: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the k nearest database rows per query, nearest first, and which of them are real.

    `exclude[i, j]` True forbids database row j for query i; a query with fewer than k allowed rows
    gets invalid (False) trailing slots.
    """
    k = min(k, len(database))
    dist = torch.cdist(query.double(), database.double())
    if exclude is not None:
        dist = dist.masked_fill(exclude, float("inf"))
    d, idx = dist.topk(k, largest=False)  # sorted nearest first
    return idx, torch.isfinite(d)


def vote_accuracy(neighbour_labels: torch.Tensor, valid: torch.Tensor, labels: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Top-k majority vote accuracy; a tie goes to the class of the nearest tied neighbour."""
    if len(labels) == 0 or neighbour_labels.shape[1] == 0:
        return {k: float("nan") for k in ks}
    num_classes = int(max(neighbour_labels.max(), labels.max())) + 1
    out = {}
    for k in ks:
        lab, ok = neighbour_labels[:, :k], valid[:, :k]
        votes = torch.nn.functional.one_hot(lab, num_classes).double() * ok[..., None]
        # earlier (closer) neighbours get a tiny bonus that only matters for ties
        weights = 1.0 + 1e-6 * torch.arange(lab.shape[1], 0, -1, dtype=torch.double)
        pred = (votes * weights[None, :, None]).sum(1).argmax(1)
        out[k] = float((pred == labels).double().mean())
    return out


def _retrieval(metric: type, top_k: int, relevant: torch.Tensor, valid: torch.Tensor) -> float:
    """torchmetrics' retrieval metric over each query's ranked neighbours (only the top k can matter)."""
    n, kmax = relevant.shape
    # rank order as the score; positive, since RetrievalMAP counts a score <= 0 as not retrieved
    scores = torch.arange(kmax, 0, -1, dtype=torch.float32).expand(n, kmax)
    indexes = torch.arange(n)[:, None].expand(n, kmax)
    m = metric(top_k=top_k, empty_target_action="neg")
    return float(m(scores[valid], relevant[valid], indexes=indexes[valid]))


def class_search(
    query: torch.Tensor,
    query_labels: torch.Tensor,
    query_patients: torch.Tensor,
    database: torch.Tensor,
    database_labels: torch.Tensor,
    database_patients: torch.Tensor,
    vote_ks: Sequence[int] = (1, 3, 5),
    map_ks: Sequence[int] = (5, 10),
) -> dict[str, dict[int, float] | int]:
    """Search by class, never returning the query's own patient: top-k vote accuracy and mAP@k.

    AP@k (torchmetrics' RetrievalMAP): the mean precision at the ranks of the same-class images within
    the first k, 0 when there is none. Patients are integer codes shared by query and database.
    """
    if len(query) == 0 or len(database) == 0:
        return {"vote": {k: float("nan") for k in vote_ks}, "map": {k: float("nan") for k in map_ks}, "n": len(query)}
    own = query_patients[:, None] == database_patients[None, :]
    idx, valid = nearest(query, database, max(*vote_ks, *map_ks), exclude=own)
    neighbour_labels = database_labels[idx]
    relevant = neighbour_labels == query_labels[:, None]
    return {
        "vote": vote_accuracy(neighbour_labels, valid, query_labels, vote_ks),
        "map": {k: _retrieval(RetrievalMAP, k, relevant, valid) for k in map_ks},
        "n": len(query),
    }


def own_patient_search(
    query: torch.Tensor, query_patients: torch.Tensor, database: torch.Tensor, database_patients: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, dict[int, float] | int]:
    """Does a query find its own patient's tissue at the other magnifications? Recall@k as in metric learning.

    Recall@k = share of queries with at least one image of their own patient among the k nearest
    (torchmetrics' RetrievalHitRate). Queries whose patient has no database image are left out; n counts the rest.
    """
    has_own = (query_patients[:, None] == database_patients[None, :]).any(1)
    query, query_patients = query[has_own], query_patients[has_own]
    if len(query) == 0:
        return {"recall": {k: float("nan") for k in ks}, "n": 0}
    idx, valid = nearest(query, database, max(ks))
    relevant = database_patients[idx] == query_patients[:, None]
    return {"recall": {k: _retrieval(RetrievalHitRate, k, relevant, valid) for k in ks}, "n": len(query)}
