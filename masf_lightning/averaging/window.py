"""SWAD's averaging window (Cha et al., NeurIPS 2021; public code khanrc/swad, `domainbed/swad.py`, `LossValley`),
as a pure function of the validation losses, one per check.

Segment i = the training steps after check i − 1 up to check i, ending with the online model's source-validation
loss `losses[i]`. The decisions are the code's:
- **opens** at check t when the first of the last `n_converge` losses is their minimum (argmin 0: the loss has
  not improved since); the window starts with that segment c = t − n_converge + 1, and the threshold is
  (1 + tolerance_ratio) × the mean of those n_converge losses (`th_base = np.mean(...)` in the code);
- segment s ≥ c stays in while the minimum loss over checks s … s + n_tolerance − 1 is at most the threshold;
  the first segment for which all n_tolerance losses exceed it **closes** the window before it (the code's
  "dead valley"). Segments decided before the window opened (s + n_tolerance − 1 ≤ t) are in;
- at the end of training a segment whose n_tolerance checks have not all happened is judged on the losses
  there are (the code's `get_final_model` tail);
- never opened: the last n_converge segments (the issue's fallback; the code returns the last segment alone).

Where this differs from the code, on purpose: every step inside the window counts once. The code adds the
opening segment two or three times and, when n_tolerance > n_converge, also up to n_tolerance − n_converge
segments before it that were under the threshold (its queue bookkeeping); the paper's Eq. 2 is a uniform
average over the window's steps, which is what this is.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SwadWindow:
    n_converge: int
    n_tolerance: int
    tolerance_ratio: float
    losses: list[float] = field(default_factory=list)

    def record(self, loss: float) -> None:
        """One validation check's source-validation loss of the online model."""
        self.losses.append(float(loss))

    @property
    def opened_at(self) -> int | None:
        """The check at which the window opened (t), or None."""
        n = self.n_converge
        for t in range(n - 1, len(self.losses)):
            recent = self.losses[t - n + 1 : t + 1]
            if recent[0] <= min(recent):
                return t
        return None

    @property
    def start(self) -> int | None:
        """The window's first segment (c = t − n_converge + 1), or None while it has not opened."""
        t = self.opened_at
        return None if t is None else t - self.n_converge + 1

    @property
    def threshold(self) -> float | None:
        t, c = self.opened_at, self.start
        if t is None or c is None:
            return None
        recent = self.losses[c : t + 1]
        return (1.0 + self.tolerance_ratio) * sum(recent) / len(recent)

    def _segments(self, final: bool) -> tuple[list[int], bool]:
        """The segments in the window so far (decided ones only unless `final`), and whether it has closed."""
        t, c, th = self.opened_at, self.start, self.threshold
        last = len(self.losses) - 1
        if t is None or c is None or th is None:
            return [], False
        kept = []
        for s in range(c, last + 1):
            end = s + self.n_tolerance - 1
            if end <= t:  # decided before the window opened: in
                kept.append(s)
                continue
            if end > last and not final:
                break  # not all of its n_tolerance checks have happened yet
            if min(self.losses[s : min(end, last) + 1]) > th:
                return kept, end <= last  # all of them above the threshold: the valley is over (or, at the tail, stop)
            kept.append(s)
        return kept, False

    def decided(self) -> list[int]:
        """The segments known to be inside the window now."""
        return self._segments(final=False)[0]

    @property
    def closed(self) -> bool:
        """Whether the window has closed (n_tolerance checks in a row above the threshold)."""
        return self._segments(final=False)[1]

    def undecided_from(self) -> int:
        """The first segment whose fate is still open (everything before it is in, out, or never needed)."""
        if self.opened_at is None:
            return max(0, len(self.losses) - self.n_converge)  # the fallback's segments stay candidates
        kept, closed = self._segments(final=False)
        if closed:
            return len(self.losses)
        return (kept[-1] + 1) if kept else (self.start or 0)

    def final(self) -> tuple[list[int], bool]:
        """The segments averaged at the end, and whether the window opened (False: the fallback, the last n_converge)."""
        if self.opened_at is None:
            return list(range(max(0, len(self.losses) - self.n_converge), len(self.losses))), False
        return self._segments(final=True)[0], True
