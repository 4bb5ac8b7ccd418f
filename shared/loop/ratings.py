"""Bradley-Terry pool ratings over every recorded game, on the Elo scale, with 95% intervals.

Model: P(i beats j) = sigmoid(theta_i - theta_j), Elo = 400 * theta / ln 10 (equivalently
gamma_i / (gamma_i + gamma_j) with Elo = 400 * log10 gamma). A draw counts as half a win for each
side, as in lc0's match Elo and minigo's fit; the Davidson ties model would only change the draw
likelihood, not what the ratings mean, and half-wins keep the fit a plain logistic regression.

Prior: one virtual draw is added to every pair of players that played each other. That makes
the MLE exist for players with only wins or only losses (a 10-0 record reads as 10.5-0.5, about
+530 Elo) while pulling only along edges that have real games: a virtual draw against the
anchor instead would drag every strong generation towards it with a force that grows along a
chain of generations rated against their neighbours.

The anchor's theta is fixed at 0. Intervals are elo +/- 1.96*sd, sd from the inverse of the observed
information (the negative Hessian of the log-posterior at its maximum) with the anchor's row and
column removed. Players not connected to the anchor through real games are rated relative to
their own component (centred on mean 0), flagged `connected=False`, with an infinite interval.

Games of P > 2 players come as pairwise counts, `pairs_per_game` = P - 1 pairs a game
(docs/evaluation-nplayer.md). Each pair weighs 1 / pairs_per_game, so a game is one unit of
evidence like a two-player game: the fit is the same, the intervals honest, `games` real games.

Results come from the bus, so `fit` trusts none of them: a result with equal or empty names, a
count that is negative, not an integer or absurdly large is dropped with a warning naming the
field (`PairResult.problem`), and the pool keeps at most MAX_PLAYERS players (those with the most
games), so no node can make the fit raise or outgrow memory.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import msgspec
import numpy as np
import numpy.typing as npt

from shared.runtime.once import Warn

Matrix = npt.NDArray[np.float64]
log = logging.getLogger("conclave.ratings")

ELO_PER_NAT = 400.0 / math.log(10.0)
_Z95 = 1.959963984540054
_VIRTUAL_DRAWS = 1.0
_MAX_ITERATIONS = 100
_TOLERANCE = 1e-10
MAX_GAMES = 10**9  # per count of one result: far above any match, small enough for floats
MAX_PAIRS_PER_GAME = 3  # four players
MAX_PLAYERS = 1000  # the dense fit is O(players^2) memory and O(players^3) time per step


class PairResult(msgspec.Struct, frozen=True, kw_only=True):
    """Games between players `a` and `b`: a's wins, draws, b's wins (pairs, for more players).

    Built from bus data without checks; `fit` drops a result whose `problem` is not None.
    """

    a: str
    b: str
    wins_a: int
    draws: int
    wins_b: int
    pairs_per_game: int = 1

    def problem(self) -> str | None:
        """Why the fit cannot use this result, naming the field; None if it can."""
        for name in ("a", "b"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                return f"PairResult.{name} must be a non-empty string, got {_shown(value)}"
        if self.a == self.b:
            return f"PairResult.b must differ from a ({_shown(self.a)})"
        for name in ("wins_a", "draws", "wins_b"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                return f"PairResult.{name} must be an integer, got {_shown(value)}"
            if not 0 <= value <= MAX_GAMES:
                return f"PairResult.{name} must be in [0, {MAX_GAMES}], got {value}"
        k = self.pairs_per_game
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_PAIRS_PER_GAME:
            return (
                f"PairResult.pairs_per_game must be in [1, {MAX_PAIRS_PER_GAME}], got {_shown(k)}"
            )
        return None

    @property
    def weight(self) -> float:
        """What one pair counts for: 1 / pairs_per_game, a game's pairs being one game."""
        return 1.0 / self.pairs_per_game


class Rating(msgspec.Struct, frozen=True, kw_only=True):
    """Elo relative to the anchor, its 95% interval [lo, hi], and real games played."""

    elo: float
    lo: float
    hi: float
    games: int
    connected: bool = True


@dataclass(frozen=True)
class _Tally:
    players: list[str]
    score: Matrix  # score[i, j]: i's wins + draws/2 against j
    games: Matrix  # games[i, j]: games between i and j


def fit(
    results: Iterable[PairResult], anchor: str = "random", *, warn: Warn | None = None
) -> dict[str, Rating]:
    """Posterior-mode Bradley-Terry ratings of every player in `results`, plus the anchor at 0.

    Results dropped (unusable, or beyond MAX_PLAYERS) are told to `warn` (default: logged);
    a caller that re-fits the same pool passes a `WarnOnce`."""
    if not anchor:
        raise ValueError("anchor must be non-empty")
    warn = _log_warning if warn is None else warn
    tally = _tally(_bounded(_usable(results, warn), anchor, warn), anchor)
    ratings: dict[str, Rating] = {}
    for component in _components(tally.games):
        ratings.update(_fit_component(tally, component, anchor))
    return {name: ratings[name] for name in tally.players}


def expected_score(a: Rating, b: Rating) -> float:
    """Expected score of a against b, sigmoid((elo_a - elo_b) / ELO_PER_NAT)."""
    return _sigmoid((a.elo - b.elo) / ELO_PER_NAT)


def pairing_uncertainty(
    ratings: Mapping[str, Rating], candidates: Iterable[str], *, count: int | None = None
) -> list[tuple[str, str]]:
    """Disjoint pairs of `candidates` whose next game most reduces rating uncertainty, best first.

    A game's Fisher information about theta_a - theta_b is I = p(1 - p); with
    V = Var theta_a + Var theta_b (read off the intervals, treating the two as independent) it
    cuts the variance of the difference by V^2 I / (1 + V I). Unrated and disconnected players
    (V = inf) come first; their Elo is taken to be the strongest connected candidate's (a new
    generation is most often near the best), so they meet the opponents nearest that first.
    Pairs are taken greedily, each player at most once, up to `count` (default: half the
    candidates).
    """
    if count is not None and count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    names = sorted(set(candidates))
    scored = sorted(_pair_scores(ratings, names))
    limit = len(names) // 2 if count is None else count
    chosen: list[tuple[str, str]] = []
    used: set[str] = set()
    for _, _, a, b in scored:
        if len(chosen) >= limit:
            break
        if a not in used and b not in used:
            chosen.append((a, b))
            used.update((a, b))
    return chosen


def _pair_scores(
    ratings: Mapping[str, Rating], names: list[str]
) -> list[tuple[float, float, str, str]]:
    """(-variance reduction, -information, a, b) for every pair: ascending order is best first."""
    known = [ratings[n] for n in names if n in ratings and math.isfinite(_variance(ratings[n]))]
    guess = max((r.elo for r in known), default=0.0)
    scored = []
    for a, b in itertools.combinations(names, 2):
        ra, rb = _placed(ratings.get(a), guess), _placed(ratings.get(b), guess)
        info = expected_score(ra, rb) * expected_score(rb, ra)
        var = _variance(ra) + _variance(rb)
        gain = math.inf if math.isinf(var) else var * var * info / (1.0 + var * info)
        scored.append((-gain, -info, a, b))
    return scored


def _usable(results: Iterable[PairResult], warn: Warn) -> list[PairResult]:
    """The results the fit can use; each dropped one is told to `warn` with the field at fault."""
    kept = []
    for r in results:
        problem = r.problem()
        if problem is None:
            kept.append(r)
        else:
            warn(f"rating pool: result dropped: {problem}")
    return kept


def _bounded(rows: list[PairResult], anchor: str, warn: Warn) -> list[PairResult]:
    """`rows` among the anchor and the MAX_PLAYERS - 1 players with the most games (ties by
    name); results of other players are dropped."""
    played: dict[str, float] = {}
    for r in rows:
        n = (r.wins_a + r.draws + r.wins_b) * r.weight
        played[r.a] = played.get(r.a, 0) + n
        played[r.b] = played.get(r.b, 0) + n
    if len(played.keys() | {anchor}) <= MAX_PLAYERS:
        return rows
    others = sorted(played.keys() - {anchor}, key=lambda name: (-played[name], name))
    kept = {anchor, *others[: MAX_PLAYERS - 1]}
    warn(
        f"rating pool: {len(others) + 1} players, over {MAX_PLAYERS}: "
        f"the results of the {len(others) + 1 - len(kept)} with the fewest games are dropped"
    )
    return [r for r in rows if r.a in kept and r.b in kept]


def _log_warning(text: str) -> None:
    log.warning("%s", text)


def _shown(value: object) -> str:
    """A value for a log line, cut short: it may be anything a node wrote."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _tally(rows: list[PairResult], anchor: str) -> _Tally:
    players = sorted({anchor, *(r.a for r in rows), *(r.b for r in rows)})
    index = {name: i for i, name in enumerate(players)}
    score = np.zeros((len(players), len(players)))
    games = np.zeros_like(score)
    for r in rows:
        i, j = index[r.a], index[r.b]
        # A weight of 1 multiplies exactly, so two-player fits stay bit-identical.
        score[i, j] += (r.wins_a + r.draws / 2.0) * r.weight
        score[j, i] += (r.wins_b + r.draws / 2.0) * r.weight
        n = (r.wins_a + r.draws + r.wins_b) * r.weight
        games[i, j] += n
        games[j, i] += n
    return _Tally(players, score, games)


def _components(games: Matrix) -> list[list[int]]:
    """Connected components of the graph of pairs with at least one game."""
    unseen = set(range(len(games)))
    components = []
    while unseen:
        stack = [min(unseen)]
        unseen.discard(stack[0])
        component = []
        while stack:
            i = stack.pop()
            component.append(i)
            for j in np.flatnonzero(games[i] > 0).tolist():
                if j in unseen:
                    unseen.discard(j)
                    stack.append(j)
        components.append(sorted(component))
    return components


def _fit_component(tally: _Tally, component: list[int], anchor: str) -> dict[str, Rating]:
    names = [tally.players[i] for i in component]
    games = tally.games[np.ix_(component, component)]
    played = (games > 0).astype(np.float64)
    score = tally.score[np.ix_(component, component)] + _VIRTUAL_DRAWS / 2.0 * played
    total = games + _VIRTUAL_DRAWS * played
    connected = anchor in names
    ref = names.index(anchor) if connected else 0
    theta = _newton(score, total, ref)
    sd = np.full(len(names), math.inf)
    if connected:
        sd = _standard_errors(theta, total, ref)
    else:
        theta = theta - theta.mean()
    counts = games.sum(axis=1)  # pairs weighed 1 / pairs_per_game: whole games up to rounding
    return {
        name: _rating(float(theta[k]), float(sd[k]), round(float(counts[k])), connected)
        for k, name in enumerate(names)
    }


def _rating(theta: float, sd: float, games: int, connected: bool) -> Rating:
    elo, half = theta * ELO_PER_NAT, _Z95 * sd * ELO_PER_NAT
    return Rating(elo=elo, lo=elo - half, hi=elo + half, games=games, connected=connected)


def _newton(score: Matrix, games: Matrix, ref: int) -> Matrix:
    """Maximise the log-likelihood with theta[ref] = 0 by Newton steps with backtracking."""
    free = np.arange(len(score)) != ref
    theta = np.zeros(len(score))
    current = _log_likelihood(theta, score)
    for _ in range(_MAX_ITERATIONS):
        p = _sigmoid_matrix(theta)
        gradient = (score - games * p).sum(axis=1)
        info = _information(p, games)
        step = np.zeros_like(theta)
        try:
            step[free] = np.linalg.solve(info[np.ix_(free, free)], gradient[free])
        except np.linalg.LinAlgError:  # no information left to step by: keep the best so far
            break
        step, current = _backtrack(theta, step, score, current)
        theta = theta + step
        if float(np.max(np.abs(step), initial=0.0)) < _TOLERANCE:
            break
    return theta


def _backtrack(theta: Matrix, step: Matrix, score: Matrix, current: float) -> tuple[Matrix, float]:
    """Halve `step` until the log-likelihood does not drop (the log-likelihood is concave)."""
    for _ in range(30):
        trial = _log_likelihood(theta + step, score)
        if trial >= current - 1e-12:
            return step, trial
        step = step / 2.0
    return np.zeros_like(step), current


def _standard_errors(theta: Matrix, games: Matrix, ref: int) -> Matrix:
    """sd of each theta from the inverse information with the reference removed (0 for it)."""
    free = np.arange(len(theta)) != ref
    info = _information(_sigmoid_matrix(theta), games)
    sd = np.zeros_like(theta)
    if free.any():
        try:
            covariance = np.linalg.inv(info[np.ix_(free, free)])
        except np.linalg.LinAlgError:
            sd[free] = math.inf  # no information: unbounded intervals rather than an error
            return sd
        sd[free] = np.sqrt(np.maximum(np.diag(covariance), 0.0))
    return sd


def _information(p: Matrix, games: Matrix) -> Matrix:
    """Negative Hessian of the log-likelihood: the Laplacian of weights n_ij*p_ij*(1 - p_ij)."""
    weights = games * p * (1.0 - p)
    return np.diag(weights.sum(axis=1)) - weights


def _log_likelihood(theta: Matrix, score: Matrix) -> float:
    diff = theta[:, None] - theta[None, :]
    return float(-(score * np.logaddexp(0.0, -diff)).sum())


def _sigmoid_matrix(theta: Matrix) -> Matrix:
    diff = theta[:, None] - theta[None, :]
    return np.exp(-np.logaddexp(0.0, -diff))


def _sigmoid(x: float) -> float:
    return math.exp(-float(np.logaddexp(0.0, -x)))


def _placed(r: Rating | None, guess: float) -> Rating:
    """`r`, or an unknown rating at Elo `guess` if `r` is missing or has an infinite interval."""
    if r is not None and math.isfinite(_variance(r)):
        return r
    return Rating(
        elo=guess, lo=-math.inf, hi=math.inf, games=0 if r is None else r.games, connected=False
    )


def _variance(r: Rating) -> float:
    """Var theta in nats^2, from the half-width of the 95% interval."""
    if not (math.isfinite(r.lo) and math.isfinite(r.hi)) or not r.connected:
        return math.inf
    return ((r.hi - r.lo) / (2.0 * _Z95 * ELO_PER_NAT)) ** 2
