"""Reference profiles and drift statistics, pure: no server, no model, only numbers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from promotion.errors import InvalidInput
from promotion.monitoring.drift import Drift, DriftAccumulator, FeatureDrift, ks, psi
from promotion.monitoring.profile import (
    MAX_CATEGORIES,
    PROFILE_SCHEMA,
    Profile,
    build_profile,
    count_bins,
    count_numeric,
)

RNG = np.random.default_rng(20240601)


def normal_frame(rows: int, *, loc: float = 0.0, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"a": rng.normal(loc, 1.0, rows), "b": rng.exponential(2.0, rows) + loc,
                         "city": rng.choice(["paris", "lyon", "nice"], rows, p=[.5, .3, .2])})


def stream(profile: Profile, inputs: pd.DataFrame, predictions, *, chunk: int,
           **kwargs) -> DriftAccumulator:
    acc = DriftAccumulator(profile, **kwargs)
    for start in range(0, len(inputs), chunk):
        acc.add(inputs.iloc[start:start + chunk], np.asarray(predictions)[start:start + chunk])
    return acc


def reference_counts(edges, x) -> list[int]:
    """The textbook binning the fast one must agree with: searchsorted, then a missing bin."""
    x = np.asarray(x, dtype=float)
    finite = np.isfinite(x)
    bins = np.bincount(np.searchsorted(np.asarray(edges, dtype=float), x[finite], side="right"),
                       minlength=len(edges) + 1)
    return [*bins.tolist(), int((~finite).sum())]


# --------------------------------------------------------------------------------------------
# PSI and KS


def test_psi_of_identical_distributions_is_zero_and_of_a_shifted_normal_is_major():
    reference = normal_frame(20_000, seed=1)
    profile = build_profile(reference, reference["a"].to_numpy() * 2, source="test")
    same = stream(profile, reference, reference["a"].to_numpy() * 2, chunk=5000).result()
    assert all(f.psi == 0.0 for f in (*same.features, same.prediction))

    fresh = normal_frame(20_000, seed=2)  # the same distribution, other rows: small, not zero
    stable = stream(profile, fresh, fresh["a"].to_numpy() * 2, chunk=5000).result()
    assert all(0 < f.psi < 0.01 for f in stable.features)

    shifted = normal_frame(20_000, loc=1.0, seed=3)
    moved = stream(profile, shifted, shifted["a"].to_numpy() * 2, chunk=5000).result()
    by_name = {f.name: f for f in moved.features}
    assert by_name["a"].psi > 0.25 and by_name["b"].psi > 0.25
    assert by_name["city"].psi < 0.01  # the categorical column did not move
    assert moved.prediction.psi > 0.25
    assert moved.worst_feature is not None and moved.worst_feature.name in {"a", "b"}


def test_psi_matches_its_formula_and_empty_bins_count_as_epsilon():
    expected = [0.5, 0.3, 0.2, 0.0]
    counts = [40, 40, 0, 20]
    e, a = np.array([0.5, 0.3, 0.2, 1e-4]), np.array([0.4, 0.4, 1e-4, 0.2])
    assert psi(expected, counts) == pytest.approx(float(np.sum((a - e) * np.log(a / e))))
    assert psi(expected, counts, epsilon=1e-2) < psi(expected, counts)
    assert psi([0.25] * 4, [10, 10, 10, 10]) == 0.0
    for bad in ([1, 2, 3], [-1, 1, 1, 1], [np.nan, 1, 1, 1], [0, 0, 0, 0]):
        with pytest.raises(ValueError):
            psi(expected, bad)


def test_ks_is_scipy_ks_2samp():
    a, b = RNG.normal(size=700), RNG.normal(0.3, 1.2, size=900)
    reference = stats.ks_2samp(a, b)
    assert ks(a.tolist(), b.tolist()) == (reference.statistic, reference.pvalue)
    statistic, pvalue = ks(a, a)
    assert statistic == 0.0 and pvalue == 1.0
    with pytest.raises(ValueError):
        ks([], [1.0])


def test_ks_of_the_accumulator_compares_the_reference_sample_with_the_live_sample():
    reference = normal_frame(3000, seed=4)
    profile = build_profile(reference, reference["a"].to_numpy(), source="test", sample_size=500)
    live = normal_frame(4000, loc=0.5, seed=5)
    acc = stream(profile, live, live["a"].to_numpy(), chunk=1000, sample_size=800)
    drift = acc.result()
    a = next(f for f in drift.features if f.name == "a")
    expected = stats.ks_2samp(profile.feature("a").sample, acc.sample("a"))
    assert (a.ks, a.ks_pvalue) == (expected.statistic, expected.pvalue)
    assert a.ks > 0.1 and a.ks_pvalue < 1e-6
    city = next(f for f in drift.features if f.name == "city")
    assert city.ks is None and city.ks_pvalue is None and city.psi is not None


# --------------------------------------------------------------------------------------------
# Building profiles: bins, categories, missing values, constants


def test_numeric_profile_has_quantile_bins_a_seeded_sample_and_moments():
    frame = pd.DataFrame({"x": np.arange(1000, dtype=float)})
    profile = build_profile(frame, np.zeros(1000), source="s", bins=10, sample_size=100, seed=3)
    x = profile.features[0]
    assert x.kind == "numeric" and x.count == 1000
    assert x.edges == tuple(np.quantile(np.arange(1000.0), np.arange(1, 10) / 10))
    assert x.fractions == (0.1,) * 10 + (0.0,)
    assert len(x.sample) == 100 and set(x.sample) <= set(range(1000))
    assert x.mean == pytest.approx(499.5) and x.std == pytest.approx(np.arange(1000.0).std())
    again = build_profile(frame, np.zeros(1000), source="s", bins=10, sample_size=100, seed=3)
    other = build_profile(frame, np.zeros(1000), source="s", bins=10, sample_size=100, seed=4)
    assert again.features[0].sample == x.sample != other.features[0].sample
    assert profile.rows == 1000 and profile.source == "s" and profile.created_at.endswith("Z")


def test_categorical_keeps_the_most_frequent_values_and_the_rest_is_other():
    values = [f"v{i:02d}" for i in range(25) for _ in range(30 - i)]  # v00 most frequent
    frame = pd.DataFrame({"c": values})
    c = build_profile(frame, np.zeros(len(values)), source="s").features[0]
    assert c.kind == "categorical"
    assert c.categories == tuple(f"v{i:02d}" for i in range(MAX_CATEGORIES))
    assert c.fractions[-2] == pytest.approx(sum(30 - i for i in range(20, 25)) / len(values))
    assert c.fractions[-1] == 0.0

    live = pd.DataFrame({"c": ["v00", "never-seen", "v24", None, "v01"]})
    counts = count_bins(c, live["c"])
    assert counts.tolist() == [1, 1] + [0] * 18 + [2, 1]  # unseen and rare -> other; None
    assert c.bin_labels()[-2:] == ("other", "missing")


def test_categorical_ties_are_broken_by_value_so_the_profile_is_reproducible():
    frame = pd.DataFrame({"c": ["b", "a", "c", "a", "b", "c"]})
    assert build_profile(frame, np.zeros(6), source="s").features[0].categories == ("a", "b", "c")


def test_missing_values_have_their_own_bin_on_both_sides():
    frame = pd.DataFrame({"x": [1.0, 2.0, np.nan, 4.0, np.inf, 6.0, 7.0, 8.0],
                          "c": ["a", None, "b", "a", np.nan, "b", "a", "a"]})
    profile = build_profile(frame, np.arange(8.0), source="s", bins=4)
    x, c = profile.features
    assert x.fractions[-1] == 2 / 8 and x.count == 8 and len(x.sample) == 6
    assert x.mean == pytest.approx(np.mean([1, 2, 4, 6, 7, 8]))
    assert c.categories == ("a", "b") and c.fractions == (4 / 8, 2 / 8, 0.0, 2 / 8)

    live = pd.DataFrame({"x": pd.array([None, 3.0, None, None], dtype="Float64"),
                         "c": ["a", "a", "a", "a"]})
    acc = DriftAccumulator(profile)
    acc.add(live, np.array([np.nan, 1.0, 2.0, 3.0]))
    assert acc.counts("x")[-1] == 3 and sum(acc.counts("x")) == 4
    assert acc.counts()[-1] == 1  # the NaN prediction
    text = pd.DataFrame({"x": ["3.5", "not a number", None, 5], "c": [1, 2, 3, 4]})
    acc.add(text, np.zeros(4))
    assert acc.counts("x")[-1] == 3 + 2  # strings that are not numbers are missing
    assert acc.counts("c")[2] == 4  # integers never seen as categories -> other


def test_a_constant_column_is_one_bin_and_a_move_either_way_shows():
    frame = pd.DataFrame({"k": np.full(500, 3.0), "n": RNG.normal(size=500)})
    profile = build_profile(frame, np.zeros(500), source="s")
    k = profile.features[0]
    assert k.edges == (3.0, np.nextafter(3.0, np.inf)) and k.fractions == (0.0, 1.0, 0.0, 0.0)
    assert k.std == 0.0
    for value, moved in ((3.0, False), (4.0, True), (2.0, True)):
        live = frame.assign(k=value)
        drift = stream(profile, live, np.zeros(500), chunk=200).result()
        assert (drift.features[0].psi > 0.25) is moved, value


def test_booleans_are_numeric_and_predictions_may_be_class_labels():
    frame = pd.DataFrame({"flag": [True, False, True, True] * 25})
    labels = np.array(["cat", "dog", "cat", "bird"] * 25, dtype=object)
    profile = build_profile(frame, labels, source="s")
    assert profile.features[0].kind == "numeric" and profile.features[0].mean == 0.75
    assert profile.prediction.kind == "categorical"
    assert profile.prediction.categories == ("cat", "bird", "dog")

    acc = DriftAccumulator(profile)
    acc.add(frame, labels)
    acc.add(frame, np.full(100, np.nan))  # as the log returns non-numeric predictions
    assert acc.counts() == (50, 25, 25, 0, 100)
    drift = acc.result()
    assert drift.features[0].psi == 0.0 and drift.prediction.psi > 0.25


def test_integral_float_class_labels_meet_their_integer_categories():
    profile = build_profile(pd.DataFrame({"x": [1.0, 2.0]}), np.array(["1", "2"], dtype=object),
                            source="s")
    acc = DriftAccumulator(profile)
    acc.add(pd.DataFrame({"x": [1.0, 2.0, 3.0]}), np.array([1.0, 2.0, 2.5]))
    assert acc.counts() == (1, 1, 1, 0)


@pytest.mark.parametrize(("inputs", "predictions", "says"), [
    (pd.DataFrame({"x": []}), [], "no rows"),
    (pd.DataFrame({"x": [1.0, 2.0]}), [1.0], "1 values for 2 input rows"),
    (pd.DataFrame({"x": [1.0, 2.0]}), np.zeros((2, 3)), "one value per row"),
    ([[1.0, 2.0]], [1.0], "DataFrame"),
    (pd.DataFrame([[1.0, 2.0]], columns=["x", "x"]), [1.0], "duplicate column"),
])
def test_build_profile_refuses_what_it_cannot_profile(inputs, predictions, says):
    with pytest.raises(InvalidInput, match=says):
        build_profile(inputs, predictions, source="s")


# --------------------------------------------------------------------------------------------
# The accumulator


def test_chunks_give_exactly_the_counts_and_psi_of_one_pass():
    reference = normal_frame(5000, seed=6)
    profile = build_profile(reference, reference["b"].to_numpy(), source="s")
    live = normal_frame(12_345, loc=0.2, seed=7)
    live.loc[live.index % 17 == 0, "a"] = np.nan
    one = stream(profile, live, live["b"].to_numpy(), chunk=len(live))
    many = stream(profile, live, live["b"].to_numpy(), chunk=1000)
    for name in ("a", "b", "city"):
        assert many.counts(name) == one.counts(name)
        assert list(many.counts(name)) == list(count_bins(profile.feature(name), live[name]))
    assert many.counts() == one.counts()
    psis = [[f.psi for f in acc.result().features] for acc in (one, many)]
    assert psis[0] == psis[1]
    assert many.result().rows == 12_345 == many.result().prediction.live_rows


def _sampled(profile: Profile, seed: int, n: int = 200_000) -> DriftAccumulator:
    acc = DriftAccumulator(profile, sample_size=1000, seed=seed)
    for start in range(0, n, 20_000):
        x = np.arange(start, min(start + 20_000, n), dtype=float)
        x[::10] = np.nan  # never sampled
        acc.add(pd.DataFrame({"x": x}), np.zeros(len(x)))
    return acc


def test_the_live_sample_is_bounded_uniform_and_seeded():
    profile = build_profile(pd.DataFrame({"x": np.arange(100.0)}), np.zeros(100), source="s")
    small = DriftAccumulator(profile, sample_size=1000, seed=1)
    small.add(pd.DataFrame({"x": np.arange(300.0)}), np.zeros(300))
    assert sorted(small.sample("x")) == list(np.arange(300.0))  # below the bound: everything
    n = 200_000
    acc = _sampled(profile, seed=1, n=n)
    sample = np.array(acc.sample("x"))
    assert len(sample) == 1000 == len(set(sample.tolist())) and np.isfinite(sample).all()
    assert set(sample.tolist()) <= set(range(n)) and not (sample % 10 == 0).any()
    # Uniform over the stream, not the first chunks: mean ~ n/2 (sd ~ n/110), half late.
    assert abs(sample.mean() - n / 2) < 5 * n / np.sqrt(12 * 1000)
    assert 0.4 < np.mean(sample > n / 2) < 0.6
    assert len(acc.sample()) == 1000  # numeric predictions have their sample too
    assert _sampled(profile, seed=1, n=n).sample("x") == acc.sample("x")
    assert _sampled(profile, seed=2, n=n).sample("x") != acc.sample("x")
    assert DriftAccumulator(profile, sample_size=0).sample("x") == ()


def test_absent_unexpected_and_empty():
    reference = normal_frame(1000, seed=8)
    profile = build_profile(reference, np.zeros(1000), source="s")
    empty = DriftAccumulator(profile).result()
    assert empty.rows == 0 and empty.worst_feature is None
    assert all(f.psi is None and not f.missing for f in empty.features)

    acc = DriftAccumulator(profile)
    live = normal_frame(1000, seed=9)
    acc.add(live.drop(columns=["b"]).assign(extra=1), np.zeros(1000))
    acc.add(live.drop(columns=["b", "city"]).assign(more=2), np.zeros(1000))
    drift = acc.result()
    a, b, city = drift.features
    assert not a.missing and a.live_rows == 2000 and a.psi is not None and a.ks is not None
    assert b == FeatureDrift("b", None, None, None, 0, missing=True)
    assert drift.worst_feature == b  # a missing column is the worst there is
    assert city.live_rows == 2000 and acc.counts("city")[-1] == 1000  # absent -> missing
    assert city.psi > 0.25 and not city.missing
    assert drift.unexpected == ("extra", "more")
    with pytest.raises(InvalidInput, match="1000 input rows"):
        acc.add(live, np.zeros(10))
    with pytest.raises(InvalidInput, match="not a column"):
        acc.counts("nope")


def test_worst_feature_is_the_highest_psi_first_on_a_tie():
    drift = Drift(features=(FeatureDrift("a", 0.2, None, None, 5), FeatureDrift("b", 0.7, None,
                                                                                 None, 5),
                            FeatureDrift("c", 0.7, None, None, 5)),
                  prediction=FeatureDrift("prediction", 9.0, None, None, 5), rows=5)
    assert drift.worst_feature is not None and drift.worst_feature.name == "b"


# --------------------------------------------------------------------------------------------
# JSON


def test_json_round_trip_is_exact():
    frame = normal_frame(2000, seed=10)
    frame.loc[::7, "a"] = np.nan
    profile = build_profile(frame, np.where(frame["a"] > 0, "up", "down"), source="evaluation: x")
    data = profile.to_json()
    assert Profile.from_json(data) == profile
    document = json.loads(data)
    assert document["schema"] == PROFILE_SCHEMA and "NaN" not in data.decode()
    assert [f["name"] for f in document["features"]] == ["a", "b", "city"]


def _document() -> dict:
    frame = pd.DataFrame({"x": np.arange(50.0), "c": ["a", "b"] * 25})
    return json.loads(build_profile(frame, np.arange(50.0), source="s").to_json())


def _without(document: dict, *path) -> dict:
    target = document
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return document


def _with(document: dict, value, *path) -> dict:
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return document


@pytest.mark.parametrize(("change", "says"), [
    (lambda d: _without(d, "rows"), "rows: missing key"),
    (lambda d: _without(d, "features"), "features: missing key"),
    (lambda d: _without(d, "prediction", "kind"), "prediction.kind: missing key"),
    (lambda d: _without(d, "features", 1, "categories"), "features[1].categories: missing key"),
    (lambda d: _without(d, "features", 0, "fractions"), "features[0].fractions: missing key"),
    (lambda d: _with(d, 2, "schema"), "schema: profile schema 2 is not supported"),
    (lambda d: _without(d, "schema"), "schema: missing key"),
    (lambda d: _with(d, "ten", "rows"), "rows: expected a non-negative integer"),
    (lambda d: _with(d, "histogram", "features", 0, "kind"), "features[0].kind: expected"),
    (lambda d: _with(d, [0.5, 0.5], "features", 0, "fractions"),
     "features[0].fractions: expected 11 numbers"),
    (lambda d: _with(d, [2.0, 1.0], "features", 0, "edges"), "features[0].edges: must be strictly"),
    (lambda d: _with(d, [1.0, "x"], "features", 0, "sample"), "features[0].sample[1]: expected a"),
    (lambda d: _with(d, d["features"][0], "features", 1), "features[1].name: duplicate"),
    (lambda d: _with(d, {}, "prediction"), "prediction.kind: missing key"),
    (lambda d: _with(d, [1, 2], "prediction"), "prediction: expected an object"),
    (lambda d: [d], "expected an object"),
])
def test_a_bad_stored_profile_is_one_error_naming_where_and_the_key(change, says):
    data = json.dumps(change(_document())).encode()
    with pytest.raises(InvalidInput) as caught:
        Profile.from_json(data, where="version 3's run profile")
    assert str(caught.value).startswith("version 3's run profile: ")
    assert says in str(caught.value)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("data", [b"", b"{", b"\xff\xfe", b"NaN"])
def test_malformed_json_is_invalid_input(data):
    with pytest.raises(InvalidInput, match=r"^profile: "):
        Profile.from_json(data)


# --------------------------------------------------------------------------------------------
# Properties


values = st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                            st.sampled_from([0.0, 1.0, -1.0])), min_size=1, max_size=200)


@settings(max_examples=150, deadline=None)
@given(reference=values, live=values, bins=st.integers(1, 12), cut=st.integers(0, 200))
def test_binning_psi_and_chunking_properties(reference, live, bins, cut):
    """Counts agree with searchsorted binning; fractions sum to 1; PSI is never negative; any
    split of the live rows into two chunks gives the same counts."""
    frame = pd.DataFrame({"x": reference})
    profile = build_profile(frame, np.asarray(reference), source="s", bins=bins)
    x = profile.features[0]
    assert list(x.edges) == sorted(set(x.edges)) and len(x.edges) <= bins
    assert list(count_numeric(np.asarray(x.edges), np.asarray(live))) == reference_counts(x.edges,
                                                                                          live)
    assert sum(x.fractions) == pytest.approx(1.0)
    assert Profile.from_json(profile.to_json()) == profile
    whole = DriftAccumulator(profile)
    whole.add(pd.DataFrame({"x": live}), np.asarray(live))
    split = DriftAccumulator(profile)
    cut = min(cut, len(live))
    split.add(pd.DataFrame({"x": live[:cut]}), np.asarray(live[:cut]))
    split.add(pd.DataFrame({"x": live[cut:]}), np.asarray(live[cut:]))
    assert split.counts("x") == whole.counts("x") and split.counts() == whole.counts()
    drift = split.result()
    assert drift.features[0].psi is not None and drift.features[0].psi >= 0.0
    assert drift.features[0].psi == whole.result().features[0].psi


def test_a_reference_of_float32_dates_and_categoricals_meets_its_logged_self():
    """Live values come back from the inference log as JSON: float64 of the shortest decimal
    text, ISO dates, plain values. The same data must not look drifted."""
    import numpy as np
    import pandas as pd

    from promotion.monitoring.drift import DriftAccumulator
    from promotion.monitoring.profile import build_profile

    n = 300
    reference = pd.DataFrame({
        "f32": np.array([0.1, 0.2, 0.3] * (n // 3), dtype=np.float32),
        "when": pd.to_datetime(["2024-01-01", "2024-01-02"] * (n // 2)),
        "grade": pd.Categorical([1.0, 2.0] * (n // 2))})
    logged = pd.DataFrame({"f32": [0.1, 0.2, 0.3] * (n // 3),
                           "when": ["2024-01-01T00:00:00", "2024-01-02T00:00:00"] * (n // 2),
                           "grade": [1.0, 2.0] * (n // 2)})
    accumulator = DriftAccumulator(build_profile(reference, np.zeros(n), source="test"))
    accumulator.add(logged, np.zeros(n))
    assert {f.name: f.psi for f in accumulator.result().features} == {
        "f32": 0.0, "when": 0.0, "grade": 0.0}
