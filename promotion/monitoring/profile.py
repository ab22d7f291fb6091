"""The reference profile of a model version: what its inputs and predictions looked like.

A profile is computed once, when the version is trained (on its holdout inputs and its own
predictions on them), and stored next to the version's run as JSON. `promote watch` later
compares the live inputs and predictions against it (promotion.monitoring.drift).

Each column becomes a `FeatureProfile`:
  numeric      (bool counts as numeric 0/1) interior bin edges at the reference quantiles,
               deduplicated; bins are left-closed, [e[i-1], e[i]), with open ends below the first
               edge and from the last edge up. When the last edge is the reference maximum (a
               constant column, or heavy ties at the top) one more edge just above it is added,
               so a live value above everything seen lands in a bin the reference left empty.
               Plus up to `sample_size` reference values, drawn with a seed, for the KS test.
  categorical  the most frequent values (at most MAX_CATEGORIES, ties by value), every other
               value in one "other" bin.
Both end with a "missing" bin: None, NaN and ±inf (a value no bin can meaningfully hold).
`fractions` is the reference share of every bin, in that order.

The binning functions here (`count_numeric`, `count_labels`) are the only ones: the profile's
fractions and the live counts of the accumulator come from the same code. numpy and pandas are
imported inside functions: the command that reads a profile should not pay for them at --help.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from promotion.errors import InvalidInput

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

PROFILE_SCHEMA = 1
MAX_CATEGORIES = 20
OTHER = "other"  # the label of the categorical bin holding every value not in `categories`
MISSING = "missing"  # the label of the last bin of every feature
PREDICTION = "prediction"  # the name of the prediction's FeatureProfile
FRACTION_TOLERANCE = 1e-6  # how far a stored profile's fractions may sum from 1

Kind = Literal["numeric", "categorical"]


@dataclass(frozen=True)
class FeatureProfile:
    """The reference distribution of one column (or of the predictions), as bins."""

    name: str
    kind: Kind
    edges: tuple[float, ...] = ()  # numeric: interior bin edges, strictly increasing
    categories: tuple[str, ...] = ()  # categorical: the most frequent values (≤ MAX_CATEGORIES)
    fractions: tuple[float, ...] = ()  # reference share per bin, the missing bin last
    sample: tuple[float, ...] = ()  # numeric: reference values (finite) for the KS test
    count: int = 0  # reference rows
    mean: float | None = None  # numeric, of the finite reference values (None: none, overflow)
    std: float | None = None  # numeric, population standard deviation (ddof 0), likewise

    @property
    def bins(self) -> int:
        """How many bins, the missing bin included."""
        return (len(self.edges) if self.kind == "numeric" else len(self.categories)) + 2

    def bin_labels(self) -> tuple[str, ...]:
        """A readable name per bin, for reports: "< 1.5", "[1.5, 2)", ">= 2", "missing"."""
        if self.kind == "categorical":
            return (*self.categories, OTHER, MISSING)
        if not self.edges:
            return ("all values", MISSING)
        e = [f"{v:.6g}" for v in self.edges]
        inner = [f"[{a}, {b})" for a, b in itertools.pairwise(e)]
        return (f"< {e[0]}", *inner, f">= {e[-1]}", MISSING)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "edges": list(self.edges),
                "categories": list(self.categories), "fractions": list(self.fractions),
                "sample": list(self.sample), "count": self.count, "mean": self.mean,
                "std": self.std}


@dataclass(frozen=True)
class Profile:
    """A version's reference profile: every input column, the predictions, and its origin."""

    features: tuple[FeatureProfile, ...]
    prediction: FeatureProfile  # the version's predictions on the reference inputs
    rows: int
    source: str  # how it was made and on what: "training: sklearn:load_diabetes holdout"
    created_at: str  # ISO 8601, UTC

    def feature(self, name: str) -> FeatureProfile | None:
        return next((f for f in self.features if f.name == name), None)

    def to_json(self) -> bytes:
        """Strict JSON (no NaN), keys in a stable order; floats round-trip exactly."""
        document = {"schema": PROFILE_SCHEMA, "rows": self.rows, "source": self.source,
                    "created_at": self.created_at,
                    "features": [f.to_dict() for f in self.features],
                    "prediction": self.prediction.to_dict()}
        return json.dumps(document, allow_nan=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes, *, where: str = "profile") -> Profile:
        """Read a stored profile; any problem is one InvalidInput naming `where` and the key."""
        try:
            document = json.loads(data)
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidInput(f"{where}: not a JSON document ({exc})") from exc
        return _read_profile(_Reader(where), document)


# --------------------------------------------------------------------------------------------
# Reading a stored profile


class _Reader:
    """Typed access to a parsed JSON document; every failure names where and the key."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, path: str, problem: str) -> InvalidInput:
        return InvalidInput(f"{self.where}: {path}: {problem}" if path else
                            f"{self.where}: {problem}")

    def get(self, obj: Mapping[str, Any], key: str, path: str) -> Any:
        if key not in obj:
            raise self.fail(path + key, "missing key")
        return obj[key]

    def mapping(self, value: Any, path: str) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected an object, got {_json_type(value)}")
        return value

    def text(self, obj: Mapping[str, Any], key: str, path: str) -> str:
        value = self.get(obj, key, path)
        if not isinstance(value, str):
            raise self.fail(path + key, f"expected a string, got {_json_type(value)}")
        return value

    def integer(self, obj: Mapping[str, Any], key: str, path: str) -> int:
        value = self.get(obj, key, path)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(path + key, f"expected a non-negative integer, got {value!r}")
        return value

    def number(self, value: Any, path: str) -> float:
        try:
            finite = not isinstance(value, bool) and isinstance(value, int | float) and \
                math.isfinite(value)
        except OverflowError:  # an integer beyond float range
            finite = False
        if not finite:
            raise self.fail(path, f"expected a finite number, got {str(value)[:40]}")
        return float(value)

    def optional_number(self, obj: Mapping[str, Any], key: str, path: str) -> float | None:
        value = self.get(obj, key, path)
        return None if value is None else self.number(value, path + key)

    def numbers(self, obj: Mapping[str, Any], key: str, path: str) -> tuple[float, ...]:
        value = self.get(obj, key, path)
        if not isinstance(value, list):
            raise self.fail(path + key, f"expected a list of numbers, got {_json_type(value)}")
        return tuple(self.number(v, f"{path}{key}[{i}]") for i, v in enumerate(value))

    def texts(self, obj: Mapping[str, Any], key: str, path: str) -> tuple[str, ...]:
        value = self.get(obj, key, path)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(path + key, "expected a list of strings")
        return tuple(value)


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _read_profile(r: _Reader, document: Any) -> Profile:
    top = r.mapping(document, "")
    schema = r.get(top, "schema", "")
    if schema != PROFILE_SCHEMA:
        raise r.fail("schema", f"profile schema {schema!r} is not supported (this Promote "
                                f"reads schema {PROFILE_SCHEMA})")
    raw = r.get(top, "features", "")
    if not isinstance(raw, list):
        raise r.fail("features", f"expected a list, got {_json_type(raw)}")
    features = tuple(_read_feature(r, item, f"features[{i}]") for i, item in enumerate(raw))
    seen: set[str] = set()
    for i, f in enumerate(features):
        if f.name in seen:
            raise r.fail(f"features[{i}].name", f"duplicate feature {f.name!r}")
        seen.add(f.name)
    return Profile(features=features,
                   prediction=_read_feature(r, r.get(top, "prediction", ""), "prediction"),
                   rows=r.integer(top, "rows", ""), source=r.text(top, "source", ""),
                   created_at=r.text(top, "created_at", ""))


def _read_feature(r: _Reader, value: Any, path: str) -> FeatureProfile:
    obj = r.mapping(value, path)
    p = path + "."
    kind = r.text(obj, "kind", p)
    if kind not in ("numeric", "categorical"):
        raise r.fail(p + "kind", f"expected 'numeric' or 'categorical', got {kind!r}")
    feature = FeatureProfile(
        name=r.text(obj, "name", p), kind="numeric" if kind == "numeric" else "categorical",
        edges=r.numbers(obj, "edges", p), categories=r.texts(obj, "categories", p),
        fractions=r.numbers(obj, "fractions", p), sample=r.numbers(obj, "sample", p),
        count=r.integer(obj, "count", p), mean=r.optional_number(obj, "mean", p),
        std=r.optional_number(obj, "std", p))
    _check_feature(r, feature, p)
    return feature


def _check_feature(r: _Reader, f: FeatureProfile, p: str) -> None:
    """The invariants the drift statistics rely on: bins line up with fractions."""
    if any(b <= a for a, b in itertools.pairwise(f.edges)):
        raise r.fail(p + "edges", "must be strictly increasing")
    if f.kind == "numeric" and f.categories:
        raise r.fail(p + "categories", "a numeric feature has no categories")
    if f.kind == "categorical" and (f.edges or f.sample):
        raise r.fail(p + ("edges" if f.edges else "sample"),
                     "a categorical feature has no edges and no sample")
    if len(set(f.categories)) != len(f.categories):
        raise r.fail(p + "categories", "duplicate category")
    if len(f.categories) > MAX_CATEGORIES:
        raise r.fail(p + "categories", f"at most {MAX_CATEGORIES} categories")
    if len(f.fractions) != f.bins:
        what = "len(edges)" if f.kind == "numeric" else "len(categories)"
        raise r.fail(p + "fractions", f"expected {f.bins} numbers ({what} + 2), "
                                      f"got {len(f.fractions)}")
    if any(v < 0 for v in f.fractions):
        raise r.fail(p + "fractions", "must not be negative")
    total = math.fsum(f.fractions)
    if (f.count > 0 and abs(total - 1) > FRACTION_TOLERANCE) or (f.count == 0 and total != 0):
        raise r.fail(p + "fractions", f"must sum to 1 (0 for no rows), got {total!r}")


# --------------------------------------------------------------------------------------------
# Binning: the one place values become bin counts


def numbers(values: Any) -> np.ndarray:
    """`values` as float64, NaN where missing or not a number (strings, None, pd.NA).

    A float64 array or column comes back as it is (no copy): the accumulator calls this for
    every column of every chunk.
    """
    import numpy as np
    import pandas as pd

    if isinstance(values, np.ndarray) and values.dtype == np.float64:
        return values
    series = values if isinstance(values, pd.Series) else pd.Series(np.asarray(values))
    if series.dtype == np.float64:
        return series.to_numpy()
    if series.dtype == np.float32:
        # By their shortest decimal text: a float32 0.1 is 0.100000001 as a float64, while the
        # same value logged as JSON reads back as 0.1, the other side of an edge at it.
        return series.to_numpy().astype(str).astype(np.float64)
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    coerced = pd.to_numeric(series, errors="coerce")
    return np.asarray(coerced.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)


def count_numeric(edges: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Counts per bin of float64 `x` against increasing `edges`: len(edges) + 1 left-closed
    value bins, then the missing bin (NaN, ±inf). int64, length len(edges) + 2.

    One comparison pass per edge (count_nonzero of x < e) rather than searchsorted + bincount:
    for the ten-odd edges of a profile it is an order of magnitude faster (searchsorted costs
    about 20 ns a value here, a comparison well under 1 ns); past 64 edges searchsorted wins.
    """
    import numpy as np

    finite = int(np.count_nonzero(np.isfinite(x)))
    if len(edges) > 64:
        fin = x[np.isfinite(x)]
        value_bins = np.bincount(np.searchsorted(edges, fin, side="right"),
                                 minlength=len(edges) + 1)
        return np.append(value_bins, x.size - finite).astype(np.int64)
    below_inf = int(np.count_nonzero(x == -np.inf))  # x < e counts -inf: it is missing
    below = [int(np.count_nonzero(x < e)) - below_inf for e in edges]
    return np.diff(np.array([0, *below, finite, x.size], dtype=np.int64))


def labels(values: Any) -> tuple[np.ndarray, pd.Series]:
    """The missing mask of `values` and the present values as strings.

    Integral floats read as integers ("1", not "1.0"): class labels logged as float64 must
    meet the same category as the integers they were.
    """
    import numpy as np
    import pandas as pd

    series = values if isinstance(values, pd.Series) else pd.Series(np.asarray(values))
    series = series.reset_index(drop=True)
    if isinstance(series.dtype, pd.CategoricalDtype):  # as its values are, not "1.0" for 1
        series = series.astype(series.cat.categories.dtype)
    missing = series.isna().to_numpy()
    if pd.api.types.is_datetime64_any_dtype(series):  # ISO text, as the inference log has it
        present = series[~missing]
        return missing, pd.Series([v.isoformat() for v in present], dtype=object)
    if pd.api.types.is_float_dtype(series):
        v = series.to_numpy(dtype=np.float64, na_value=np.nan)
        missing = ~np.isfinite(v)
        present = v[~missing]
        out = present.astype(str).astype(object)
        integral = (present == np.round(present)) & (np.abs(present) < 2.0 ** 53)
        out[integral] = present[integral].astype(np.int64).astype(str)
        return missing, pd.Series(out, dtype=object)
    return missing, series[~missing].astype(str)


def count_labels(categories: Sequence[str], values: Any) -> np.ndarray:
    """Counts per bin of `values` against `categories`: one per category, "other", missing."""
    import numpy as np
    import pandas as pd

    missing, present = labels(values)
    codes = pd.Categorical(present, categories=list(categories)).codes
    codes = np.where(codes < 0, len(categories), codes)
    counts = np.bincount(codes, minlength=len(categories) + 1)
    return np.append(counts, int(np.count_nonzero(missing))).astype(np.int64)


def count_bins(feature: FeatureProfile, values: Any) -> np.ndarray:
    """Counts of `values` in `feature`'s bins (length `feature.bins`)."""
    import numpy as np

    if feature.kind == "numeric":
        return count_numeric(np.asarray(feature.edges, dtype=np.float64), numbers(values))
    return count_labels(feature.categories, values)


# --------------------------------------------------------------------------------------------
# Building a profile


def is_numeric(values: Any) -> bool:
    """True for a numeric or boolean column / array; everything else is categorical."""
    import numpy as np
    import pandas as pd

    if isinstance(values, pd.Series):
        return bool(pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values))
    return np.asarray(values).dtype.kind in "biuf"


def numeric_feature(name: str, values: Any, *, bins: int, sample_size: int,
                    rng: np.random.Generator) -> FeatureProfile:
    """Quantile bins, mean, std and a seeded sample of one numeric column."""
    import numpy as np

    x = numbers(values)
    finite = x[np.isfinite(x)]
    edges = np.array([], dtype=np.float64)
    if finite.size and bins > 1:
        with np.errstate(all="ignore"):  # between ±1e308 the interpolation itself overflows
            edges = np.unique(np.quantile(finite, np.arange(1, bins) / bins))
        edges = edges[np.isfinite(edges)]
    if edges.size:
        top = float(finite.max())
        above = np.nextafter(top, np.inf)
        if edges[-1] == top and math.isfinite(above):
            edges = np.append(edges, above)
    counts = count_numeric(edges, x)
    sample = finite if finite.size <= sample_size else rng.choice(finite, sample_size,
                                                                  replace=False)
    return FeatureProfile(
        name=name, kind="numeric", edges=tuple(float(e) for e in edges),
        fractions=_fractions(counts), sample=tuple(float(v) for v in sample), count=int(x.size),
        mean=_finite_or_none(finite.mean) if finite.size else None,
        std=_finite_or_none(finite.std) if finite.size else None)


def _finite_or_none(statistic: Any) -> float | None:
    """A moment of the reference, or None where it overflows (values near ±1e308)."""
    import numpy as np

    with np.errstate(all="ignore"):
        value = float(statistic())
    return value if math.isfinite(value) else None


def categorical_feature(name: str, values: Any) -> FeatureProfile:
    """The most frequent values of one column (ties by value), and every bin's share."""
    missing, present = labels(values)
    frequency = present.value_counts()
    ranked = sorted(frequency.items(), key=lambda item: (-int(item[1]), str(item[0])))
    categories = tuple(str(value) for value, _ in ranked[:MAX_CATEGORIES])
    counts = count_labels(categories, values)
    return FeatureProfile(name=name, kind="categorical", categories=categories,
                          fractions=_fractions(counts), count=len(missing))


def _fractions(counts: np.ndarray) -> tuple[float, ...]:
    total = int(counts.sum())
    return tuple(float(c) / total if total else 0.0 for c in counts)


def prediction_values(predictions: Any, rows: int) -> Any:
    """`predictions` as one value per row (an (n, 1) array is flattened); InvalidInput else."""
    import numpy as np
    import pandas as pd

    values = predictions if isinstance(predictions, pd.Series) else np.asarray(predictions)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values.ravel()
    if values.ndim != 1:
        raise InvalidInput(f"predictions: expected one value per row, got shape {values.shape}")
    if len(values) != rows:
        raise InvalidInput(f"predictions: {len(values)} values for {rows} input rows")
    return values


def build_profile(inputs: pd.DataFrame, predictions: Any, *, source: str, bins: int = 10,
                  sample_size: int = 1000, seed: int = 0) -> Profile:
    """The reference profile of `inputs` and the version's `predictions` on them.

    Numeric columns (bool as 0/1) get quantile bins and a sample of at most `sample_size`
    values drawn with `seed`; other columns are categorical. Numeric predictions get a numeric
    profile, class labels (strings, objects) a categorical one.
    """
    import numpy as np
    import pandas as pd

    if not isinstance(inputs, pd.DataFrame):
        raise InvalidInput(f"inputs: expected a pandas DataFrame, got {type(inputs).__name__}")
    if len(inputs) == 0:
        raise InvalidInput("inputs: no rows to profile")
    if bins < 1 or sample_size < 0:
        raise InvalidInput(f"bins must be ≥ 1 and sample_size ≥ 0 (got {bins}, {sample_size})")
    names = [str(c) for c in inputs.columns]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidInput(f"inputs: duplicate column names {duplicates}")
    values = prediction_values(predictions, len(inputs))
    rng = np.random.default_rng(seed)
    features = []
    for name, (_, column) in zip(names, inputs.items(), strict=True):
        features.append(numeric_feature(name, column, bins=bins, sample_size=sample_size,
                                        rng=rng) if is_numeric(column)
                        else categorical_feature(name, column))
    prediction = (numeric_feature(PREDICTION, values, bins=bins, sample_size=sample_size, rng=rng)
                  if is_numeric(values) else categorical_feature(PREDICTION, values))
    return Profile(features=tuple(features), prediction=prediction, rows=len(inputs),
                   source=source,
                   created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
