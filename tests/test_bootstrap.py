"""The metrics and the paired bootstrap (pure numpy; no MLflow).

Every metric is checked against scikit-learn, on the full set and under resampling weights (a
weighted metric with bootstrap counts is the metric of the resampled rows); the interval is checked
for coverage, pairing, determinism and vectorisation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from promotion.evaluation import bootstrap
from promotion.evaluation.bootstrap import METRICS, MeanStatistic, Outputs


def _regression(n: int = 300, seed: int = 1) -> tuple[np.ndarray, Outputs]:
    rng = np.random.default_rng(seed)
    y = rng.normal(150, 60, size=n)
    return y, Outputs(y + rng.normal(0, 40, size=n))


def _binary(n: int = 400, seed: int = 2, decimals: int | None = None
            ) -> tuple[np.ndarray, Outputs]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    p = np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1)
    if decimals is not None:
        p = np.round(p, decimals)  # many tied scores
    return y, Outputs((p > 0.5).astype(int), np.column_stack([1 - p, p]), np.array([0, 1]))


def _multiclass(n: int = 400, seed: int = 3) -> tuple[np.ndarray, Outputs]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    p = rng.dirichlet([1, 1, 1], size=n)
    p[np.arange(n), y] += 0.6
    p /= p.sum(axis=1, keepdims=True)
    return y, Outputs(p.argmax(axis=1), p, np.array([0, 1, 2]))


def _sklearn(metric: str, y: np.ndarray, out: Outputs, weights: np.ndarray | None = None
             ) -> float:
    """The reference value; `weights` are scikit-learn sample weights (bootstrap counts)."""
    w = weights
    if metric == "rmse":
        return float(skm.root_mean_squared_error(y, out.predictions, sample_weight=w))
    if metric == "mae":
        return float(skm.mean_absolute_error(y, out.predictions, sample_weight=w))
    if metric == "r2":
        return float(skm.r2_score(y, out.predictions, sample_weight=w))
    if metric == "accuracy":
        return float(skm.accuracy_score(y, out.predictions, sample_weight=w))
    multi = out.classes is not None and len(out.classes) > 2
    if metric == "f1":
        return float(skm.f1_score(y, out.predictions, sample_weight=w,
                                  average="macro" if multi else "binary"))
    assert out.probabilities is not None
    if metric == "roc_auc":
        if multi:
            return float(skm.roc_auc_score(y, out.probabilities, multi_class="ovr",
                                           sample_weight=w))
        return float(skm.roc_auc_score(y, out.probabilities[:, 1], sample_weight=w))
    return float(skm.log_loss(y, out.probabilities, sample_weight=w, labels=out.classes))


CASES = [(m, "regression") for m in ("rmse", "mae", "r2")] + [
    (m, kind) for m in ("accuracy", "f1", "roc_auc", "log_loss")
    for kind in ("binary", "binary-ties", "multiclass")]


def _data(kind: str) -> tuple[np.ndarray, Outputs]:
    return {"regression": _regression, "binary": _binary,
            "binary-ties": lambda: _binary(decimals=1), "multiclass": _multiclass}[kind]()


@pytest.mark.parametrize(("metric", "kind"), CASES)
def test_each_metric_matches_sklearn_on_the_full_set(metric, kind):
    y, out = _data(kind)
    assert bootstrap.score([metric], y, out)[metric] == pytest.approx(
        _sklearn(metric, y, out), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize(("metric", "kind"), CASES)
def test_each_metric_matches_sklearn_on_every_resample(metric, kind):
    y, out = _data(kind)
    n = len(y)
    weights = np.vstack(list(bootstrap.resample_weights(n, 5, seed=11)))
    stat = bootstrap.statistic(metric, y, out)
    values = stat(weights)
    for row, value in zip(weights, values, strict=True):
        # The same value computed on the rows actually drawn, by scikit-learn.
        drawn = np.repeat(np.arange(n), row.astype(int))
        resampled = Outputs(out.predictions[drawn],
                            None if out.probabilities is None else out.probabilities[drawn],
                            out.classes)
        assert value == pytest.approx(_sklearn(metric, y[drawn], resampled), rel=1e-9, abs=1e-12)
        assert value == pytest.approx(_sklearn(metric, y, out, weights=row), rel=1e-9, abs=1e-12)


_VALUES = st.floats(-1e3, 1e3).map(lambda v: round(v, 3))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(_VALUES, _VALUES), min_size=2, max_size=40), st.integers(0, 2**32 - 1))
def test_weighted_regression_metrics_match_sklearn_sample_weights(pairs, seed):
    """Targets closer than ~1e-14 of their spread count as equal (the r2 of a constant target);
    values here have three decimals."""
    y = np.array([a for a, _ in pairs])
    out = Outputs(np.array([b for _, b in pairs]))
    weights = next(bootstrap.resample_weights(len(y), 3, seed))
    for metric in ("rmse", "mae", "r2"):
        values = bootstrap.statistic(metric, y, out)(weights)
        for row, value in zip(weights, values, strict=True):
            if metric == "r2" and np.ptp(y[row > 0]) == 0:
                # r2 of a constant target is undefined: the two sides pick different
                # conventions (and scikit-learn's float noise can make it -1e31).
                continue
            expected = _sklearn(metric, y, out, weights=row)
            assert value == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_weights_are_the_counts_of_one_index_matrix_from_the_seed():
    n, resamples = 37, 101
    weights = np.vstack(list(bootstrap.resample_weights(n, resamples, seed=5)))
    indices = np.random.default_rng(5).integers(0, n, size=(resamples, n))
    expected = np.stack([np.bincount(row, minlength=n) for row in indices])
    assert weights.shape == (resamples, n)
    np.testing.assert_array_equal(weights, expected)
    np.testing.assert_array_equal(weights.sum(axis=1), np.full(resamples, n))


def test_results_do_not_depend_on_the_block_size(monkeypatch):
    y, out = _binary()
    _, other = _binary(seed=9)
    whole = bootstrap.compare(list(METRICS)[3:], y, out, other, resamples=300, seed=4,
                              confidence=0.9)
    monkeypatch.setattr(bootstrap, "BLOCK_CELLS", 7 * len(y))  # 7 resamples per block
    blocked = bootstrap.compare(list(METRICS)[3:], y, out, other, resamples=300, seed=4,
                                confidence=0.9)
    # The same resamples; only the matrix product's summation order may differ in the last bit.
    for name, result in whole.items():
        assert (blocked[name].low, blocked[name].high) == pytest.approx(
            (result.low, result.high), rel=1e-12)


def test_the_seed_decides_the_interval():
    y, a = _regression(seed=1)
    b = Outputs(a.predictions + np.random.default_rng(8).normal(0, 5, len(y)))
    once = bootstrap.compare(["rmse", "r2"], y, a, b, resamples=500, seed=3, confidence=0.95)
    again = bootstrap.compare(["rmse", "r2"], y, a, b, resamples=500, seed=3, confidence=0.95)
    other = bootstrap.compare(["rmse", "r2"], y, a, b, resamples=500, seed=4, confidence=0.95)
    assert once == again
    assert once["rmse"].low != other["rmse"].low
    # The point estimates do not depend on the seed; only the interval does.
    assert once["rmse"].difference == other["rmse"].difference


def test_statistics_are_called_per_block_not_per_resample(monkeypatch):
    """Vectorised: one call per block of resamples, each returning a whole block of values."""
    y, out = _binary(n=200)
    calls: list[tuple[int, int]] = []
    auc = bootstrap.statistic("roc_auc", y, out)
    assert not isinstance(auc, MeanStatistic)

    def counting(weights):
        calls.append(weights.shape)
        return auc(weights)

    monkeypatch.setattr(bootstrap, "BLOCK_CELLS", 200 * 500)
    values = bootstrap.replicate([counting], len(y), 2000, seed=0)
    assert values.shape == (1, 2000)
    assert calls == [(500, 200)] * 4


def test_mean_statistics_share_one_product_per_block(monkeypatch):
    y, out = _regression()
    stats = [bootstrap.statistic(m, y, out) for m in ("rmse", "mae", "r2")]
    products = []

    class Weights(np.ndarray):
        def __matmul__(self, other):
            products.append(other.shape)
            return np.asarray(self) @ other

    real = bootstrap.resample_weights
    monkeypatch.setattr(bootstrap, "resample_weights",
                        lambda *a: (w.view(Weights) for w in real(*a)))
    replicas = bootstrap.replicate(stats, len(y), 100, seed=0)
    assert products == [(len(y), 5)]  # squared error, |error|, and r2's three terms, at once
    expected = np.vstack([s(np.vstack(list(real(len(y), 100, 0)))) for s in stats])
    np.testing.assert_allclose(replicas, expected, rtol=1e-12)


def test_interval_covers_the_true_difference_at_about_the_confidence_level():
    """Simulated test sets with a known population difference in MAE: the 90% interval should
    contain it in about 90% of them."""
    rng = np.random.default_rng(2026)
    n, trials, confidence = 150, 300, 0.90
    # Candidate error z ~ N(0, 1); Production error 1.1 z + 0.4 w ~ N(0, sqrt(1.37)); E|N(0,s)| =
    # s * sqrt(2 / pi).
    truth = (1 - math.sqrt(1.1**2 + 0.4**2)) * math.sqrt(2 / math.pi)
    covered = 0
    for trial in range(trials):
        z, w = rng.normal(size=n), rng.normal(size=n)
        y = np.zeros(n)
        result = bootstrap.compare(["mae"], y, Outputs(z), Outputs(1.1 * z + 0.4 * w),
                                   resamples=400, seed=trial, confidence=confidence)["mae"]
        covered += result.low <= truth <= result.high
    # Binomial(300, 0.9) has sd ~0.017; percentile intervals run slightly narrow at small n.
    assert 0.84 <= covered / trials <= 0.96


def test_pairing_removes_the_variation_both_models_share():
    """Two models with strongly correlated errors: paired resampling resolves a small real
    difference that two independent bootstraps cannot."""
    rng = np.random.default_rng(7)
    n = 400
    y = rng.normal(0, 50, size=n)
    shared = rng.normal(0, 30, size=n)
    champion = Outputs(y + shared + rng.normal(0, 3, size=n))
    challenger = Outputs(y + 0.97 * shared + rng.normal(0, 3, size=n))
    paired = bootstrap.compare(["rmse"], y, challenger, champion, resamples=2000, seed=0,
                               confidence=0.95)["rmse"]
    cand = bootstrap.replicate([bootstrap.statistic("rmse", y, challenger)], n, 2000, seed=0)[0]
    prod = bootstrap.replicate([bootstrap.statistic("rmse", y, champion)], n, 2000, seed=1)[0]
    low, high = bootstrap.percentile_interval(cand - prod, 0.95)
    assert paired.difference < 0
    assert paired.high < 0  # paired: significant
    assert low < 0 < high  # unpaired: the same data looks like noise
    assert (paired.high - paired.low) < (high - low) / 4


def test_identical_models_have_a_zero_width_interval():
    y, out = _regression()
    result = bootstrap.compare(["rmse", "r2"], y, out, out, resamples=200, seed=0,
                               confidence=0.95)
    assert (result["rmse"].low, result["rmse"].high, result["rmse"].difference) == (0, 0, 0)


def test_undefined_resamples_are_left_out_of_the_interval():
    # 1 positive in 12 rows: many resamples draw no positive, where AUC is undefined.
    y = np.array([1] + [0] * 11)
    p = np.linspace(0.9, 0.1, 12)
    out = Outputs((p > 0.5).astype(int), np.column_stack([1 - p, p]), np.array([0, 1]))
    values = bootstrap.replicate([bootstrap.statistic("roc_auc", y, out)], 12, 500, seed=0)[0]
    assert np.isnan(values).any() and np.isfinite(values).any()
    low, high = bootstrap.percentile_interval(values, 0.95)
    assert math.isfinite(low) and math.isfinite(high)
    assert bootstrap.percentile_interval(np.full(10, np.nan), 0.95) == (
        pytest.approx(float("nan"), nan_ok=True), pytest.approx(float("nan"), nan_ok=True))


@pytest.mark.parametrize(("metric", "y", "out", "message"), [
    ("roc_auc", np.array([1, 1, 1]),
     Outputs(np.array([1, 1, 1]), np.array([[0.2, 0.8]] * 3), np.array([0, 1])),
     "at least two classes"),
    ("log_loss", np.array([0, 1, 2]),
     Outputs(np.array([0, 1, 1]), np.array([[0.2, 0.8]] * 3), np.array([0, 1])),
     "classes the model does not know: 2"),
    ("roc_auc", np.array([0, 1, 1]),
     Outputs(np.array([0, 1, 1]), np.full((3, 3), 1 / 3), np.array([0, 1, 2])),
     "no row of 2"),
    ("log_loss", np.array([0, 1]), Outputs(np.array([0, 1])), "needs class probabilities"),
    ("precision", np.array([0, 1]), Outputs(np.array([0, 1])), "unknown metric"),
])
def test_undefined_metrics_are_refused_with_a_reason(metric, y, out, message):
    with pytest.raises(ValueError, match=message):
        bootstrap.statistic(metric, y, out)


@pytest.mark.parametrize("confidence", [0, 1, 1.5, -0.1])
def test_confidence_must_be_a_fraction(confidence):
    with pytest.raises(ValueError, match="confidence"):
        bootstrap.percentile_interval(np.arange(10.0), confidence)


def test_string_labels_and_unsorted_classes():
    y = np.array(["no", "yes", "yes", "no", "yes", "no"])
    p_yes = np.array([0.2, 0.7, 0.6, 0.4, 0.9, 0.55])
    # Columns given in the order ("yes", "no"): still matched to the right class.
    out = Outputs(np.where(p_yes > 0.5, "yes", "no"), np.column_stack([p_yes, 1 - p_yes]),
                  np.array(["yes", "no"]))
    got = bootstrap.score(["accuracy", "roc_auc", "log_loss", "f1"], y, out)
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y == "yes", p_yes))
    assert got["log_loss"] == pytest.approx(skm.log_loss(y, np.column_stack([1 - p_yes, p_yes])))
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, out.predictions))
    assert got["f1"] == pytest.approx(skm.f1_score(y, out.predictions, pos_label="yes"))
