"""Evaluation metrics and the paired bootstrap of their difference, vectorised with numpy.

Every metric is written as a function of resampling *weights*: a (B, n) matrix whose row b holds
how many times each of the n evaluation rows was drawn in resample b (a row of ones is the plain,
unresampled metric). Most metrics are functions of weighted means of per-row terms (squared
error, hit or miss, log loss, true/false positive indicators for F1), so B resamples of every such
metric, for both models at once, cost one matrix product. ROC AUC is not a mean of per-row terms:
it is computed as a weighted Mann-Whitney statistic over the rows sorted once by score, still
without a loop over resamples.

The bootstrap is *paired*: candidate and Production are scored on the very same resampled rows,
so the difference is free of the row-to-row variation both models share, and the interval of
the difference is much tighter than two independent intervals would suggest.

The weights come from one (resamples x n) index matrix drawn from `np.random.default_rng(seed)`.
It is drawn in blocks of rows to bound memory (a block holds about `BLOCK_CELLS` weights);
numpy draws the blocks as the same stream as one whole matrix, so the result depends on the
seed only, never on the block size. Nothing here imports mlflow or pandas.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

Task = Literal["regression", "classification"]
Needs = Literal["values", "labels", "probabilities"]
Goal = Literal["minimize", "maximize"]

# About 2M float64 weights (16 MB) per block: 10,000 rows -> 200 resamples a block.
BLOCK_CELLS = 2_000_000


@dataclass(frozen=True)
class MetricSpec:
    """What a metric needs from a model and which direction is better."""

    name: str
    task: Task
    needs: Needs  # values: regression predictions; labels: predicted classes; probabilities
    goal: Goal


METRICS: Mapping[str, MetricSpec] = {
    spec.name: spec for spec in (
        MetricSpec("rmse", "regression", "values", "minimize"),
        MetricSpec("mae", "regression", "values", "minimize"),
        MetricSpec("r2", "regression", "values", "maximize"),
        MetricSpec("accuracy", "classification", "labels", "maximize"),
        MetricSpec("f1", "classification", "labels", "maximize"),
        MetricSpec("roc_auc", "classification", "probabilities", "maximize"),
        MetricSpec("log_loss", "classification", "probabilities", "minimize"),
    )
}


@dataclass(frozen=True)
class Outputs:
    """What one model produced for the n evaluation rows.

    `predictions`: regression values or class labels, shape (n,). `probabilities`: (n, k), its
    columns in the order of `classes` (a scikit-learn classifier's `classes_`); only metrics that
    need probabilities read them.
    """

    predictions: np.ndarray
    probabilities: np.ndarray | None = None
    classes: np.ndarray | None = None


@dataclass(frozen=True)
class Comparison:
    """One metric for both models on the same rows, and the interval of their difference."""

    metric: str
    candidate: float
    production: float
    difference: float  # candidate - production on the full set (the point estimate)
    low: float  # percentile bounds of candidate - production over the paired resamples
    high: float
    confidence: float


# --------------------------------------------------------------------------------------------
# Statistics: a metric bound to one model's outputs, evaluated under any weights


class Statistic(Protocol):
    def __call__(self, weights: np.ndarray) -> np.ndarray:
        """(B, n) weights -> (B,) metric values."""
        ...


@dataclass(frozen=True)
class MeanStatistic:
    """A metric that is a function of weighted means of per-row terms.

    `terms` is (n, k); `finish` maps the (B, k) weighted means to the (B,) metric. Kept apart so
    that the bootstrap can stack the terms of every such statistic into one matrix product.
    """

    terms: np.ndarray
    finish: Callable[[np.ndarray], np.ndarray]

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        return self.finish(weights @ self.terms / weights.shape[1])


@dataclass(frozen=True)
class AucStatistic:
    """Binary ROC AUC (one-vs-rest macro average over several classes) under weights.

    AUC is the probability that a random positive row outscores a random negative one, ties
    counting half. With the negative rows sorted once by score, the weighted count of negatives
    below each positive is a cumulative sum read at a position found once by binary search, so
    every resample is a few array passes. Resamples that drew no positive or no negative row give
    NaN (the interval leaves them out).
    """

    classes: tuple[_BinaryAuc, ...]

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        result: np.ndarray = np.mean([c(weights) for c in self.classes], axis=0)
        return result


@dataclass(frozen=True)
class _BinaryAuc:
    positives: np.ndarray  # row indices of the positive class
    negatives: np.ndarray  # row indices of the others, by ascending score
    below: np.ndarray  # per positive: how many negatives score strictly lower
    not_above: np.ndarray  # per positive: how many negatives score lower or equal

    @classmethod
    def build(cls, score: np.ndarray, positive: np.ndarray) -> _BinaryAuc:
        negatives = np.flatnonzero(~positive)
        negatives = negatives[np.argsort(score[negatives], kind="stable")]
        positives = np.flatnonzero(positive)
        ranked = score[negatives]
        return cls(positives, negatives,
                   np.searchsorted(ranked, score[positives], side="left"),
                   np.searchsorted(ranked, score[positives], side="right"))

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        # cumulative[:, k]: the weight of the k lowest-scored negatives.
        cumulative = np.zeros((len(weights), len(self.negatives) + 1))
        np.cumsum(weights[:, self.negatives], axis=1, out=cumulative[:, 1:])
        positive = weights[:, self.positives]
        if np.array_equal(self.below, self.not_above):  # no score shared across classes
            wins = (positive * cumulative[:, self.below]).sum(axis=1)
        else:
            wins = 0.5 * (positive * (cumulative[:, self.below]
                                      + cumulative[:, self.not_above])).sum(axis=1)
        pairs = positive.sum(axis=1) * cumulative[:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            auc: np.ndarray = np.where(pairs > 0, wins / np.where(pairs > 0, pairs, 1), np.nan)
        return auc


def statistic(metric: str, target: np.ndarray, outputs: Outputs) -> Statistic:
    """Bind `metric` to the true values and one model's outputs. Raises ValueError if undefined."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r} (known: {', '.join(METRICS)})")
    return _BUILDERS[metric](np.asarray(target), outputs)


def _rmse(y: np.ndarray, out: Outputs) -> Statistic:
    error = _values(out) - y.astype(np.float64)
    return MeanStatistic((error * error)[:, None], lambda m: np.sqrt(m[:, 0]))


def _mae(y: np.ndarray, out: Outputs) -> Statistic:
    error = _values(out) - y.astype(np.float64)
    return MeanStatistic(np.abs(error)[:, None], lambda m: m[:, 0])


def _r2(y: np.ndarray, out: Outputs) -> Statistic:
    y = y.astype(np.float64)
    error = _values(out) - y
    # Centre once: the variance is shift-invariant and mean(y^2) - mean(y)^2 then loses no digits.
    centred = y - y.mean()

    def finish(m: np.ndarray) -> np.ndarray:
        residual, total = m[:, 0], m[:, 2] - m[:, 1] ** 2
        # A resample of equal targets has zero variance; the subtraction may leave rounding
        # dust of the order of eps * mean(y^2) instead of an exact zero.
        varies = total > 64 * np.finfo(np.float64).eps * m[:, 2]
        with np.errstate(invalid="ignore", divide="ignore"):
            # scikit-learn's convention for a constant target: 1 if predicted exactly, else 0.
            return np.where(varies, 1 - residual / np.where(varies, total, 1),
                            np.where(residual == 0, 1.0, 0.0))

    return MeanStatistic(np.column_stack([error * error, centred, centred * centred]), finish)


def _accuracy(y: np.ndarray, out: Outputs) -> Statistic:
    hits = (np.asarray(out.predictions) == y).astype(np.float64)
    return MeanStatistic(hits[:, None], lambda m: m[:, 0])


def _f1(y: np.ndarray, out: Outputs) -> Statistic:
    """Binary F1 of the greater label for two labels (scikit-learn's pos_label=1 for 0/1),
    macro-averaged F1 over the labels of y and the predictions otherwise."""
    predicted = np.asarray(out.predictions)
    labels = np.unique(np.concatenate([y, predicted]))
    classes = labels[-1:] if len(labels) <= 2 else labels
    terms = []
    for label in classes:
        truth, guess = y == label, predicted == label
        terms += [truth & guess, ~truth & guess, truth & ~guess]  # tp, fp, fn
    k = len(classes)

    def finish(m: np.ndarray) -> np.ndarray:
        counts = m.reshape(len(m), k, 3)
        tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
        denominator = 2 * tp + fp + fn
        with np.errstate(invalid="ignore", divide="ignore"):
            # A label never predicted nor present scores 0, as scikit-learn's zero_division does.
            scores = np.where(denominator > 0, 2 * tp / np.where(denominator > 0, denominator, 1),
                              0.0)
        result: np.ndarray = scores.mean(axis=1)
        return result

    return MeanStatistic(np.column_stack(terms).astype(np.float64), finish)


def _roc_auc(y: np.ndarray, out: Outputs) -> Statistic:
    probabilities, classes = _probabilities(y, out)
    present = np.unique(y)
    if len(present) < 2:
        raise ValueError("roc_auc needs at least two classes in the target; "
                         f"the evaluation set only has {_labels(present)}")
    if len(classes) == 2:
        columns = [(1, classes[1])]  # scikit-learn's binary convention: the greater class
    else:
        missing = [c for c in classes if c not in set(present.tolist())]
        if missing:
            raise ValueError(f"roc_auc (one-vs-rest) needs every class the model knows in the "
                             f"target; the evaluation set has no row of {_labels(missing)}")
        columns = list(enumerate(classes))
    return AucStatistic(tuple(_BinaryAuc.build(probabilities[:, j], y == label)
                              for j, label in columns))


def _log_loss(y: np.ndarray, out: Outputs) -> Statistic:
    probabilities, classes = _probabilities(y, out)
    # As scikit-learn: rows normalised to sum to 1, then clipped to [eps, 1 - eps].
    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)
    eps = np.finfo(probabilities.dtype).eps
    probabilities = np.clip(probabilities, eps, 1 - eps)
    column = np.searchsorted(classes, y)
    truth = probabilities[np.arange(len(y)), column]
    return MeanStatistic(-np.log(truth)[:, None], lambda m: m[:, 0])


def _values(out: Outputs) -> np.ndarray:
    values = np.asarray(out.predictions, dtype=np.float64)
    return values


def _probabilities(y: np.ndarray, out: Outputs) -> tuple[np.ndarray, np.ndarray]:
    if out.probabilities is None or out.classes is None:
        raise ValueError("this metric needs class probabilities")
    classes = np.asarray(out.classes)
    if np.any(classes[1:] <= classes[:-1]):
        # scikit-learn keeps classes_ sorted; searchsorted below relies on it.
        order = np.argsort(classes, kind="stable")
        classes, probabilities = classes[order], np.asarray(out.probabilities)[:, order]
    else:
        probabilities = np.asarray(out.probabilities)
    unknown = sorted(set(np.unique(y).tolist()) - set(classes.tolist()))
    if unknown:
        raise ValueError(f"the target holds classes the model does not know: {_labels(unknown)} "
                         f"(the model's classes: {_labels(classes)})")
    return probabilities.astype(np.float64), classes


def _labels(values: Sequence[object] | np.ndarray, limit: int = 8) -> str:
    shown = [repr(v.item() if isinstance(v, np.generic) else v) for v in list(values)[:limit]]
    more = f", ... ({len(values)} in all)" if len(values) > limit else ""
    return ", ".join(shown) + more


_BUILDERS: Mapping[str, Callable[[np.ndarray, Outputs], Statistic]] = {
    "rmse": _rmse, "mae": _mae, "r2": _r2, "accuracy": _accuracy, "f1": _f1,
    "roc_auc": _roc_auc, "log_loss": _log_loss,
}


# --------------------------------------------------------------------------------------------
# Resampling


def resample_weights(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """The bootstrap weights, block by block: (b, n) float64 counts, rows summing to n.

    Together the blocks are the row counts of one (resamples x n) index matrix drawn from
    `np.random.default_rng(seed)`.
    """
    if n < 1 or resamples < 1:
        raise ValueError("resampling needs at least one row and one resample")
    rng = np.random.default_rng(seed)
    block = max(1, min(resamples, BLOCK_CELLS // n))
    offsets = (np.arange(block, dtype=np.int64) * n)[:, None]
    for start in range(0, resamples, block):
        rows = min(block, resamples - start)
        indices = rng.integers(0, n, size=(rows, n))
        # Row r's indices shifted into [r*n, (r+1)*n): one bincount counts every row at once.
        indices += offsets[:rows]
        counts = np.bincount(indices.ravel(), minlength=rows * n)
        yield counts.reshape(rows, n).astype(np.float64)


def replicate(statistics: Sequence[Statistic], n: int, resamples: int, seed: int) -> np.ndarray:
    """Every statistic under the same `resamples` bootstrap resamples: (len(statistics), B)."""
    means = [(i, s) for i, s in enumerate(statistics) if isinstance(s, MeanStatistic)]
    others = [(i, s) for i, s in enumerate(statistics) if not isinstance(s, MeanStatistic)]
    stacked = np.column_stack([s.terms for _, s in means]) if means else np.empty((n, 0))
    bounds = np.cumsum([0] + [s.terms.shape[1] for _, s in means])
    out = np.empty((len(statistics), resamples))
    done = 0
    for weights in resample_weights(n, resamples, seed):
        rows = slice(done, done + len(weights))
        weighted = weights @ stacked / n  # one product for every mean-based statistic
        for j, (i, stat) in enumerate(means):
            out[i, rows] = stat.finish(weighted[:, bounds[j]:bounds[j + 1]])
        for i, other in others:
            out[i, rows] = other(weights)
        done += len(weights)
    return out


def point(stat: Statistic, n: int) -> float:
    """The statistic on the full, unresampled set."""
    return float(stat(np.ones((1, n)))[0])


def percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central `confidence` percentile interval; undefined (NaN) resamples are left out."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2
    low, high = np.quantile(finite, [tail, 1 - tail])
    return float(low), float(high)


def compare(metrics: Sequence[str], target: np.ndarray, candidate: Outputs, production: Outputs,
            *, resamples: int, seed: int, confidence: float) -> dict[str, Comparison]:
    """Paired bootstrap of candidate - production for each metric, on shared resamples.

    All metrics of both models are evaluated under the same weights, so every interval comes
    from one draw and the comparison of one metric is independent of which others are asked.
    """
    target = np.asarray(target)
    n = len(target)
    stats: list[Statistic] = []
    for name in metrics:
        stats += [statistic(name, target, candidate), statistic(name, target, production)]
    replicas = replicate(stats, n, resamples, seed)
    result = {}
    for k, name in enumerate(metrics):
        cand, prod = point(stats[2 * k], n), point(stats[2 * k + 1], n)
        low, high = percentile_interval(replicas[2 * k] - replicas[2 * k + 1], confidence)
        result[name] = Comparison(name, cand, prod, cand - prod, low, high, confidence)
    return result


def score(metrics: Sequence[str], target: np.ndarray, outputs: Outputs) -> dict[str, float]:
    """Each metric for one model on the full set (no Production to compare with)."""
    target = np.asarray(target)
    return {name: point(statistic(name, target, outputs), len(target)) for name in metrics}
