"""Does a world model rank policies like reality does? Pearson r and SIMPLER's MMRV.

For N policies with success rates ``R_i`` in the model (SIMPLER's "sim") and ``V_i`` in reality
(here: the MiniDROID simulator's ground-truth predicate)::

    MMRV = (1/N) sum_i max_j |V_i - V_j| * 1[(R_i > R_j) != (V_i > V_j)]

(Li et al., "Evaluating Real-World Robot Manipulation Policies in Simulation", 2024). Lower is better;
a violated pair is weighted by the *real* gap, so the argument order matters. The functions here take
``(model, real)`` in that order, as SIMPLER's ``mean_maximum_rank_violation(perf_sim, perf_real)`` does.
Comparisons are strict, as in SIMPLER: a tie on one side and an order on the other is a violation.

Pearson r is ``scipy.stats.pearsonr``; it is undefined (NaN, ``None`` in JSON) when either side is
constant. Bootstrap intervals resample the evaluation seeds (every policy ran on the same seeds in
both worlds, so a resample keeps the pairing) and report percentile intervals over the draws where
the statistic is defined.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from persistworld_env.evaluation.schema import Checker, SchemaError, load_document


def _rates(values: Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or len(arr) < 2:
        raise ValueError(f"{name} must be a 1-D sequence of at least 2 success rates, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return arr


def mmrv(model: Sequence[float], real: Sequence[float]) -> float:
    """Mean maximum rank violation of the model's success rates against the real ones (see module docstring)."""
    r, v = _rates(model, "model"), _rates(real, "real")
    if r.shape != v.shape:
        raise ValueError(f"model and real need one rate per policy, got {len(r)} and {len(v)}")
    violated = (r[:, None] > r[None, :]) != (v[:, None] > v[None, :])
    return float(np.mean(np.max(np.abs(v[:, None] - v[None, :]) * violated, axis=1)))


def pearson_r(model: Sequence[float], real: Sequence[float]) -> float:
    """Pearson correlation of the model's and the real success rates (NaN if either is constant)."""
    from scipy.stats import pearsonr

    r, v = _rates(model, "model"), _rates(real, "real")
    if r.shape != v.shape:
        raise ValueError(f"model and real need one rate per policy, got {len(r)} and {len(v)}")
    if np.ptp(r) == 0 or np.ptp(v) == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(pearsonr(r, v).statistic)


def _interval(value: float, draws: np.ndarray, confidence: float) -> dict[str, float | int | None]:
    finite = draws[np.isfinite(draws)]
    alpha = (1 - confidence) / 2
    as_json = lambda x: None if not np.isfinite(x) else float(x)  # noqa: E731
    if len(finite) == 0:
        return {"value": as_json(value), "ci_low": None, "ci_high": None, "valid_draws": 0}
    return {"value": as_json(value), "ci_low": float(np.quantile(finite, alpha)),
            "ci_high": float(np.quantile(finite, 1 - alpha)), "valid_draws": int(len(finite))}


def agreement(model_success: np.ndarray, real_success: np.ndarray, bootstrap: int = 1000,
              confidence: float = 0.95, seed: int = 0) -> dict[str, dict]:
    """Pearson r and MMRV of per-seed outcomes, with bootstrap intervals over the seeds.

    Args:
        model_success, real_success: (policies, seeds) outcomes in {0, 1} (or success fractions),
            column ``s`` of both from the same reset seed.
    Returns:
        ``{"pearson": {...}, "mmrv": {...}}``, each ``{"value", "ci_low", "ci_high", "valid_draws"}``
        (``None`` where undefined).
    """
    m = np.asarray(model_success, dtype=np.float64)
    v = np.asarray(real_success, dtype=np.float64)
    if m.ndim != 2 or m.shape != v.shape:
        raise ValueError(f"expected two (policies, seeds) arrays of one shape, got {m.shape} and {v.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    seeds = m.shape[1]
    pearson_draws, mmrv_draws = np.full(bootstrap, np.nan), np.full(bootstrap, np.nan)
    for b in range(bootstrap):
        idx = rng.integers(0, seeds, seeds)
        rm, rv = m[:, idx].mean(1), v[:, idx].mean(1)
        pearson_draws[b], mmrv_draws[b] = pearson_r(rm, rv), mmrv(rm, rv)
    rm, rv = m.mean(1), v.mean(1)
    return {"pearson": _interval(pearson_r(rm, rv), pearson_draws, confidence),
            "mmrv": _interval(mmrv(rm, rv), mmrv_draws, confidence)}


# -- policy_eval.json --------------------------------------------------------------------------------
POLICY_EVAL_SCHEMA_VERSION = 1


class PolicyEvalSchemaError(SchemaError):
    """A ``policy_eval.json`` document does not follow the schema (the message names the bad field)."""


def success_rates(success: Mapping[str, Sequence[bool]]) -> dict[str, float]:
    """Policy -> fraction of successful episodes."""
    return {p: float(np.mean(np.asarray(v, dtype=np.float64))) for p, v in success.items()}


def build_policy_eval_document(policies: Sequence[Mapping[str, Any]], seeds: Sequence[int],
                               real_success: Mapping[str, Sequence[bool]], models: Mapping[str, Mapping[str, Any]],
                               *, max_steps: int, task: str | None = None, seed: int = 0, command: str = "",
                               real_source: str = "MiniDROID-Sim-v0 task predicate",
                               model_source: str = "learned success detector (info['success'])",
                               bootstrap: int = 1000, confidence: float = 0.95) -> dict:
    """The ``policy_eval.json`` document::

        schema_version, kind, command, seed, seeds [S], max_steps, task, bootstrap, confidence,
        policies: [{name, kind, config}],
        real: {env, success_source, success: {policy: [S bools]}, rate: {policy: float}},
        models: {name: {path, success_source, success: {...}, rate: {...},
                        pearson: {value, ci_low, ci_high, valid_draws}, mmrv: {...}}}

    ``pearson`` and ``mmrv`` compare each model's rates with the real ones (:func:`agreement`).
    """
    names = [p["name"] for p in policies]
    real_matrix = np.array([[bool(x) for x in real_success[p]] for p in names])
    doc: dict[str, Any] = {
        "schema_version": POLICY_EVAL_SCHEMA_VERSION, "kind": "persistworld-policy-eval", "command": command,
        "seed": int(seed), "seeds": [int(s) for s in seeds], "max_steps": int(max_steps), "task": task,
        "bootstrap": int(bootstrap), "confidence": confidence, "policies": [dict(p) for p in policies],
        "real": {"env": "MiniDROID-Sim-v0", "success_source": real_source,
                 "success": {p: [bool(x) for x in real_success[p]] for p in names},
                 "rate": success_rates({p: real_success[p] for p in names})},
        "models": {},
    }
    for name, entry in models.items():
        success = {p: [bool(x) for x in entry["success"][p]] for p in names}
        model_matrix = np.array([success[p] for p in names])
        doc["models"][name] = {"path": str(entry.get("path", "")), "success_source": model_source,
                               "success": success, "rate": success_rates(success),
                               **agreement(model_matrix, real_matrix, bootstrap, confidence, seed)}
    return doc


_check = Checker("policy_eval.json", PolicyEvalSchemaError)


def _check_outcomes(block: Mapping[str, Any], names: list[str], n_seeds: int, path: str) -> None:
    success = _check.expect(block, "success", dict, path)
    rate = _check.expect(block, "rate", dict, path)
    if set(success) != set(names) or set(rate) != set(names):
        _check.fail(f"{path}.success", f"expected outcomes of the policies {names}, got {sorted(success)}")
    for p in names:
        outcomes = success[p]
        if not isinstance(outcomes, list) or len(outcomes) != n_seeds or not all(isinstance(x, bool) for x in outcomes):
            _check.fail(f"{path}.success.{p}", f"expected {n_seeds} booleans (one per seed)")
        value = _check.expect(rate, p, float, f"{path}.rate")
        if abs(value - float(np.mean(outcomes))) > 1e-9:
            _check.fail(f"{path}.rate.{p}", f"{value} is not the fraction of successes {np.mean(outcomes)}")


def _check_interval(block: Mapping[str, Any], key: str, low: float, high: float, path: str) -> None:
    stat = _check.expect(block, key, dict, path)
    where = f"{path}.{key}"
    values = []
    for k in ("value", "ci_low", "ci_high"):
        if k not in stat:
            _check.fail(f"{where}.{k}", "missing")
        if stat[k] is not None:
            values.append(_check.expect(stat, k, float, where))
            if not low - 1e-9 <= stat[k] <= high + 1e-9:
                _check.fail(f"{where}.{k}", f"must lie in [{low}, {high}], got {stat[k]}")
    if stat["ci_low"] is not None and stat["ci_high"] is not None and stat["ci_low"] > stat["ci_high"]:
        _check.fail(where, f"empty interval [{stat['ci_low']}, {stat['ci_high']}]")


def validate_policy_eval(doc: Mapping[str, Any]) -> None:
    """Check a ``policy_eval.json`` document; raise :class:`PolicyEvalSchemaError` naming the bad field."""
    if _check.expect(doc, "schema_version", int) != POLICY_EVAL_SCHEMA_VERSION:
        _check.fail("schema_version", f"expected {POLICY_EVAL_SCHEMA_VERSION}, got {doc['schema_version']}")
    seeds = _check.expect(doc, "seeds", list)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        _check.fail("seeds", "expected a non-empty list of integer reset seeds")
    if _check.expect(doc, "max_steps", int) < 1:
        _check.fail("max_steps", "must be >= 1")
    policies = _check.expect(doc, "policies", list)
    names = [_check.expect(p, "name", str, f"policies[{i}]") for i, p in enumerate(policies)]
    for i, p in enumerate(policies):
        _check.expect(p, "kind", str, f"policies[{i}]")
    if len(names) < 2 or len(set(names)) != len(names):
        _check.fail("policies", f"expected at least 2 uniquely named policies, got {names}")
    real = _check.expect(doc, "real", dict)
    _check_outcomes(real, names, len(seeds), "real")
    models = _check.expect(doc, "models", dict)
    for name, entry in models.items():
        path = f"models.{name}"
        _check.expect(entry, "path", str, path)
        _check_outcomes(entry, names, len(seeds), path)
        _check_interval(entry, "pearson", -1.0, 1.0, path)
        _check_interval(entry, "mmrv", 0.0, 1.0, path)


def load_policy_eval(path: str | os.PathLike) -> dict:
    """Read and validate ``policy_eval.json`` (a file, or the folder holding it)."""
    return load_document(path, "policy_eval.json", validate_policy_eval, "persistworld policy-eval")
