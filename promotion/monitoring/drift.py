"""Drift statistics: how far live inputs and predictions have moved from a reference profile.

Two statistics per column, both against the version's reference profile
(promotion.monitoring.profile):
  PSI  population stability index over the profile's own bins (numeric and categorical):
       sum over bins of (a - e) * ln(a / e), e the reference share, a the live share. A bin
       empty on either side counts as `epsilon` (1e-4) instead of 0, so that the logarithm is
       defined; nothing is renormalised. Common reading: < 0.1 stable, 0.1-0.25 moderate,
       > 0.25 major.
  KS   the two-sample Kolmogorov-Smirnov statistic and p-value (scipy.stats.ks_2samp) of the
       profile's reference sample against a bounded random sample of the live values
       (numeric columns and numeric predictions only).

`DriftAccumulator` streams chunks (a DataFrame of inputs, an array of predictions) into
per-bin counts and a seeded reservoir per numeric column, so memory does not grow with the
number of rows; `result()` turns them into a `Drift`. numpy and scipy are imported inside
functions.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from promotion.errors import InvalidInput
from promotion.monitoring.profile import (
    FeatureProfile,
    Profile,
    count_labels,
    count_numeric,
    numbers,
    prediction_values,
)

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

EPSILON = 1e-4  # the share an empty bin counts as, on either side, in PSI


def psi(expected: Sequence[float], actual_counts: Sequence[float], *,
        epsilon: float = EPSILON) -> float:
    """Population stability index of live `actual_counts` against the reference `expected`.

    Both are over the same bins and are normalised to shares (so `expected` may be shares or
    counts). A share of 0 on either side is replaced by `epsilon`: identical distributions give
    exactly 0, and a bin the reference never saw contributes (a - ε)·ln(a/ε) rather than ∞.
    ValueError on mismatched lengths, negative or non-finite values, or no live values.
    """
    import numpy as np

    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual_counts, dtype=np.float64)
    if e.ndim != 1 or e.shape != a.shape or e.size == 0:
        raise ValueError(f"psi needs two equally long lists of bins, got {e.shape} and {a.shape}")
    if not (np.isfinite(e).all() and np.isfinite(a).all()) or (e < 0).any() or (a < 0).any():
        raise ValueError("psi needs finite, non-negative shares and counts")
    if a.sum() <= 0 or e.sum() <= 0:
        raise ValueError("psi needs at least one reference and one live value")
    e, a = e / e.sum(), a / a.sum()
    e = np.where(e > 0, e, epsilon)
    a = np.where(a > 0, a, epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def ks(reference_sample: Sequence[float], live_sample: Sequence[float]) -> tuple[float, float]:
    """(statistic, p-value) of scipy.stats.ks_2samp, two-sided, scipy's default method ("auto":
    the exact p-value for samples up to 10,000 values, else the asymptotic one).

    Both samples must be non-empty (ValueError); the accumulator passes finite values only.
    """
    import numpy as np
    from scipy import stats

    reference = np.asarray(reference_sample, dtype=np.float64)
    live = np.asarray(live_sample, dtype=np.float64)
    if reference.size == 0 or live.size == 0:
        raise ValueError("ks needs at least one reference and one live value")
    with warnings.catch_warnings():
        # scipy says so when its exact p-value does not converge and it uses the asymptotic one
        # instead: a note about its method, not about the data, and not for a watch's stderr.
        warnings.filterwarnings("ignore", message="ks_2samp: Exact calculation unsuccessful",
                                category=RuntimeWarning)
        result = stats.ks_2samp(reference, live)
    return float(result.statistic), float(result.pvalue)


@dataclass(frozen=True)
class FeatureDrift:
    """The drift of one column (or of the predictions) over the live rows seen."""

    name: str
    psi: float | None  # None when the column never appeared live (then `missing` is True)
    ks: float | None  # numeric only, None without values on both sides
    ks_pvalue: float | None
    live_rows: int  # the live rows counted in its bins (rows of chunks without it: missing)
    missing: bool = False  # the reference column is absent from every live chunk


@dataclass(frozen=True)
class Drift:
    """Every reference column's drift, the predictions', and the live columns never profiled.

    With no live rows at all (`rows == 0`) nothing was compared: every PSI and KS is None and
    no column counts as missing.
    """

    features: tuple[FeatureDrift, ...]
    prediction: FeatureDrift
    rows: int
    unexpected: tuple[str, ...] = ()  # live columns the reference has never seen

    @property
    def worst_feature(self) -> FeatureDrift | None:
        """The input column with the highest PSI; a missing column counts as +inf (it is the
        worst drift there is: the model is fed nothing it was profiled on). The first one wins
        a tie; None without a column that has a PSI or is missing. Predictions are not
        features and are not considered."""
        worst: FeatureDrift | None = None
        worst_score = -math.inf
        for feature in self.features:
            score = math.inf if feature.missing else feature.psi
            if score is not None and score > worst_score:
                worst, worst_score = feature, score
        return worst


class _Reservoir:
    """A uniform random sample of at most `size` finite values from a stream, bounded memory.

    Every value gets a uniform random key; the sample is the `size` values with the smallest
    keys (a uniform sample without replacement of everything seen). Once full, only values
    whose key would be below the current largest key `t` can enter: in a chunk of m values
    they are a Binomial(m, t) number of uniformly chosen positions, with keys uniform on
    [0, t). Drawing just those keeps the sample exact at a cost per chunk that shrinks as the
    stream grows (about m·size/seen values), instead of one random key per value.
    """

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        import numpy as np

        self.size = size
        self.rng = rng
        self.values = np.empty(0, dtype=np.float64)
        self.keys = np.empty(0, dtype=np.float64)

    def add(self, x: np.ndarray) -> None:
        import numpy as np

        if self.size == 0 or x.size == 0:
            return
        if self.keys.size < self.size:
            finite = x[np.isfinite(x)]
            self._merge(finite, self.rng.random(finite.size))
            return
        threshold = float(self.keys.max())
        chosen = int(self.rng.binomial(x.size, threshold))
        if chosen == 0:
            return
        values = x[self.rng.choice(x.size, chosen, replace=False)]
        keys = threshold * self.rng.random(chosen)
        finite = np.isfinite(values)
        self._merge(values[finite], keys[finite])

    def _merge(self, values: np.ndarray, keys: np.ndarray) -> None:
        import numpy as np

        all_values = np.concatenate([self.values, values])
        all_keys = np.concatenate([self.keys, keys])
        if all_keys.size > self.size:
            keep = np.argpartition(all_keys, self.size - 1)[:self.size]
            all_values, all_keys = all_values[keep], all_keys[keep]
        self.values, self.keys = all_values, all_keys


class _Column:
    """The running counts (and, numeric, the live sample) of one profiled column."""

    def __init__(self, profile: FeatureProfile, sample_size: int,
                 rng: np.random.Generator) -> None:
        import numpy as np

        self.profile = profile
        self.edges = np.asarray(profile.edges, dtype=np.float64)
        self.reference = np.asarray(profile.sample, dtype=np.float64)
        self.counts = np.zeros(profile.bins, dtype=np.int64)
        self.seen = False
        self.sample = _Reservoir(sample_size, rng) if profile.kind == "numeric" else None

    def add(self, values: Any) -> None:
        self.seen = True
        if self.sample is None:
            self.counts += count_labels(self.profile.categories, values)
            return
        x = numbers(values)
        self.counts += count_numeric(self.edges, x)
        self.sample.add(x)

    def absent(self, rows: int) -> None:
        """A chunk without this column: its rows are missing values of it."""
        self.counts[-1] += rows

    def drift(self, rows: int) -> FeatureDrift:
        name = self.profile.name
        if rows == 0:
            return FeatureDrift(name, None, None, None, 0)
        if not self.seen:
            return FeatureDrift(name, None, None, None, 0, missing=True)
        value = (psi(self.profile.fractions, cast("Sequence[float]", self.counts))
                 if math.fsum(self.profile.fractions) > 0 else None)
        statistic = pvalue = None
        if self.sample is not None and self.reference.size and self.sample.values.size:
            statistic, pvalue = ks(cast("Sequence[float]", self.reference),
                                   cast("Sequence[float]", self.sample.values))
        return FeatureDrift(name, value, statistic, pvalue, int(self.counts.sum()))


class DriftAccumulator:
    """Streams chunks of (inputs DataFrame, predictions ndarray) into per-bin counts and a
    bounded, seeded reservoir sample per numeric column (for KS); memory independent of the
    number of rows.

    Columns are matched by name (as strings). A reference column absent from a chunk counts
    as missing for that chunk's rows; absent from every chunk, it is reported `missing`. Live
    columns the profile does not know are listed in `Drift.unexpected`. Predictions arrive as
    float64 (NaN where not numeric); a categorical prediction profile also takes an object array.
    The per-chunk work is vectorised (a comparison pass per bin edge, a categorical lookup per
    categorical column), with no Python loop over rows.
    """

    def __init__(self, profile: Profile, *, sample_size: int = 5000, seed: int = 0) -> None:
        import numpy as np

        if sample_size < 0:
            raise InvalidInput(f"sample_size must be ≥ 0, got {sample_size}")
        rng = np.random.default_rng(seed)
        self.profile = profile
        self._columns = {f.name: _Column(f, sample_size, rng) for f in profile.features}
        self._prediction = _Column(profile.prediction, sample_size, rng)
        self._unexpected: dict[str, None] = {}
        self._rows = 0

    @property
    def rows(self) -> int:
        return self._rows

    def _column(self, name: str | None) -> _Column:
        if name is None:
            return self._prediction
        if name not in self._columns:
            raise InvalidInput(f"{name!r} is not a column of the reference profile")
        return self._columns[name]

    def counts(self, name: str | None = None) -> tuple[int, ...]:
        """The live count per bin of reference column `name` (None: the predictions), in the
        order of its profile's bins (`FeatureProfile.bin_labels`)."""
        return tuple(int(c) for c in self._column(name).counts)

    def sample(self, name: str | None = None) -> tuple[float, ...]:
        """The live values kept for the KS test of numeric column `name` (None: predictions)."""
        kept = self._column(name).sample
        return () if kept is None else tuple(float(v) for v in kept.values)

    def add(self, inputs: pd.DataFrame, predictions: np.ndarray) -> None:
        """Count one chunk: `predictions` holds one value per row of `inputs`."""
        import pandas as pd

        if not isinstance(inputs, pd.DataFrame):
            raise InvalidInput(f"inputs: expected a pandas DataFrame, got "
                               f"{type(inputs).__name__}")
        values = prediction_values(predictions, len(inputs))
        if len(inputs) == 0:
            return
        live = {str(c): c for c in inputs.columns}
        if len(live) != inputs.shape[1]:
            names = [str(c) for c in inputs.columns]
            raise InvalidInput(f"inputs: duplicate column names "
                               f"{sorted({n for n in names if names.count(n) > 1})}")
        for name, column in self._columns.items():
            if name in live:
                column.add(inputs[live[name]])
            else:
                column.absent(len(inputs))
        for name in live:
            if name not in self._columns:
                self._unexpected.setdefault(name)
        self._prediction.add(values)
        self._rows += len(inputs)

    def result(self) -> Drift:
        """The drift of everything added so far (the accumulator can keep taking chunks)."""
        return Drift(features=tuple(c.drift(self._rows) for c in self._columns.values()),
                     prediction=self._prediction.drift(self._rows), rows=self._rows,
                     unexpected=tuple(self._unexpected))
