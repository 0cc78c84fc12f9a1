"""Comparing models episode by episode: paired wins with a sign test, Bradley-Terry / Elo ratings.

**Paired comparison.** On each held-out episode model A either beats model B on a metric (higher PSNR
or SSIM, lower LPIPS), loses, or ties exactly. Ties are dropped (the classic sign test); with ``w`` wins
and ``l`` losses, ``n = w + l``, the win rate is ``w / n`` and the p-value is the two-sided exact
binomial test of ``w`` successes in ``n`` trials at probability 1/2 (``scipy.stats.binomtest``). With
no decisive episode (``n = 0``) the win rate is 0.5 and p = 1.

**Bradley-Terry.** Each model ``i`` has a strength ``p_i``, and ``P(i beats j) = p_i / (p_i + p_j)``.
Given a win matrix ``W`` (``W[i, j]`` = wins of ``i`` over ``j``, a tie counting half to each), the
maximum-likelihood strengths are found by the MM iteration of Hunter (2004)::

    p_i <- W_i / sum_{j != i} N_ij / (p_i + p_j),   W_i = sum_j W[i, j],  N_ij = W[i, j] + W[j, i]

renormalised to a geometric mean of 1 after every step. A model that wins (or loses) every game has no
finite maximum-likelihood strength, so ``prior`` virtual games (default 0.5 won each way per pair) are
added; ``prior=0`` gives the plain MLE when it exists. **Elo** is the same model on the chess scale:
``rating = 1000 + 400 log10(p_i)``, so a 400-point gap means 10:1 odds.

**Bootstrap.** Episodes are the independent units: intervals resample episodes with replacement and
refit, and report percentile intervals.
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np

ELO_BASE = 1000.0
ELO_SCALE = 400.0


@dataclass(frozen=True)
class SignTest:
    """Outcome of a paired comparison of A against B."""

    wins: int  # episodes where A is better
    losses: int  # episodes where B is better
    ties: int
    n: int  # decisive episodes, wins + losses
    win_rate: float  # wins / n (0.5 when n == 0)
    p_value: float  # two-sided sign test

    def to_dict(self) -> dict:
        return asdict(self)


def sign_test_p_value(wins: int, losses: int) -> float:
    """Two-sided exact binomial (sign) test p-value of ``wins`` against ``losses`` at probability 1/2."""
    from scipy.stats import binomtest

    wins, losses = int(wins), int(losses)
    if wins < 0 or losses < 0:
        raise ValueError(f"wins and losses must be >= 0, got {wins} and {losses}")
    if wins + losses == 0:
        return 1.0
    return float(binomtest(wins, wins + losses, 0.5, alternative="two-sided").pvalue)


def paired_comparison(a: Sequence[float], b: Sequence[float], higher_is_better: bool = True) -> SignTest:
    """Per-episode comparison of scores ``a`` and ``b`` (same episodes, same order)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"expected two 1-D arrays of per-episode scores of one length, got {a.shape} and {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("per-episode scores must be finite")
    better = a > b if higher_is_better else a < b
    worse = a < b if higher_is_better else a > b
    wins, losses = int(better.sum()), int(worse.sum())
    n = wins + losses
    return SignTest(wins=wins, losses=losses, ties=int(len(a) - n), n=n,
                    win_rate=wins / n if n else 0.5, p_value=sign_test_p_value(wins, losses))


def episode_outcomes(scores: np.ndarray) -> np.ndarray:
    """Per-episode win counts (E, M, M) from scores (M, E, K) oriented so higher is better.

    Entry ``[e, i, j]`` counts the K comparisons of episode ``e`` that model ``i`` wins against ``j``;
    an exact tie counts 1/2 to each.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 3:
        raise ValueError(f"scores must have shape (models, episodes, comparisons), got {s.shape}")
    diff = s[:, None] - s[None]  # (M, M, E, K)
    wins = (diff > 0).sum(-1) + 0.5 * (diff == 0).sum(-1)
    m = s.shape[0]
    wins[np.arange(m), np.arange(m)] = 0.0
    return np.moveaxis(wins, 2, 0)


def bradley_terry(wins: np.ndarray, prior: float = 0.5, max_iter: int = 10_000, tol: float = 1e-10) -> np.ndarray:
    """Log-strengths (mean 0) of the Bradley-Terry model fitted to a win matrix (see module docstring).

    Args:
        wins: (M, M) non-negative; ``wins[i, j]`` = games ``i`` won against ``j`` (diagonal ignored).
        prior: virtual games won each way by every pair (keeps strengths finite).
    """
    w = np.array(wins, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"wins must be a square matrix, got shape {w.shape}")
    if np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError("wins must be finite and non-negative")
    if prior < 0:
        raise ValueError(f"prior must be >= 0, got {prior}")
    m = w.shape[0]
    if m == 1:
        return np.zeros(1)
    off = ~np.eye(m, dtype=bool)
    w = np.where(off, w + prior, 0.0)
    total_wins, games = w.sum(1), w + w.T
    if np.any(total_wins <= 0) or np.any((w.sum(0) <= 0)):
        raise ValueError("every model needs at least one win and one loss for a finite Bradley-Terry fit; "
                         "use prior > 0")
    p = np.ones(m)
    for _ in range(max_iter):
        denom = np.where(off, games / (p[:, None] + p[None, :]), 0.0).sum(1)
        new = total_wins / denom
        new /= np.exp(np.log(new).mean())
        if np.max(np.abs(np.log(new) - np.log(p))) < tol:
            p = new
            break
        p = new
    return np.log(p)


def elo_from_strengths(log_strengths: np.ndarray) -> np.ndarray:
    """Bradley-Terry log-strengths on the Elo scale (mean 1000, 400 points = odds of 10)."""
    theta = np.asarray(log_strengths, dtype=np.float64)
    return ELO_BASE + ELO_SCALE * (theta - theta.mean()) / np.log(10.0)


def elo_ratings(scores: Mapping[str, np.ndarray], bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0,
                prior: float = 0.5) -> dict[str, dict[str, float]]:
    """Elo ratings of models from per-episode scores, with bootstrap intervals over episodes.

    Args:
        scores: model name -> (E, K) scores, higher is better (negate LPIPS-like metrics), the same E
            episodes in the same order for every model; each of the K columns is one game per pair.
        bootstrap: resamples of the episodes (0: no intervals, they equal the point estimate).
    Returns:
        name -> ``{"elo", "ci_low", "ci_high", "log_strength"}``.
    """
    names = list(scores)
    if not names:
        raise ValueError("no models to rate")
    arrays = [np.asarray(scores[n], dtype=np.float64) for n in names]
    arrays = [a[:, None] if a.ndim == 1 else a for a in arrays]
    if any(a.shape != arrays[0].shape or a.ndim != 2 for a in arrays):
        raise ValueError(f"every model needs scores of one shape (episodes, comparisons), got "
                         f"{[a.shape for a in arrays]}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    per_episode = episode_outcomes(np.stack(arrays))  # (E, M, M)
    theta = bradley_terry(per_episode.sum(0), prior)
    elo = elo_from_strengths(theta)
    low, high = elo.copy(), elo.copy()
    if bootstrap > 0 and len(names) > 1:
        rng = np.random.default_rng(seed)
        e = per_episode.shape[0]
        draws = np.empty((bootstrap, len(names)))
        for b in range(bootstrap):
            counts = np.bincount(rng.integers(0, e, e), minlength=e).astype(np.float64)
            draws[b] = elo_from_strengths(bradley_terry(np.tensordot(counts, per_episode, axes=1), prior))
        alpha = (1 - confidence) / 2
        low, high = np.quantile(draws, alpha, axis=0), np.quantile(draws, 1 - alpha, axis=0)
    return {n: {"elo": float(elo[i]), "ci_low": float(low[i]), "ci_high": float(high[i]),
                "log_strength": float(theta[i] - theta.mean())} for i, n in enumerate(names)}


def model_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """Unordered pairs of models in listing order: (A, B) with A listed before B."""
    return list(itertools.combinations(names, 2))
