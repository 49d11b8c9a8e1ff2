"""Evolutionary search over per-layer (or per-block) choices under a parameter budget.

The algorithm of the paper's release (after AutoFormer): a random first population; then, each
generation, the top-k candidates seen so far breed by mutation (each layer's each key re-drawn
with a probability) and uniform crossover, and random candidates refill the population. As in
the release, a candidate is scored once (it keeps a visited set too). Unlike it, every draw is
bounded (its random refill loops until the population is full, forever under a budget no
subnet meets, or once the space is exhausted), an infeasible budget fails at once, and a random
draw outside the budget is repaired by re-drawing single choices (the release draws again
until one fits). What a layer chooses is keyed (GLoRA's tensors A..E, NOAH's prompt, lora and
adapter sizes): the search sees only the keys, their choices and each choice's parameters.

Two ways to score a generation faster, neither of which changes the search's course:
- Sharding: under torchrun each of N ranks scores every N-th candidate and the ranks gather the
  scores. Every rank breeds from the same records with the same RNG, so all propose the same
  candidates, and the records equal those of one process.
- Early stopping (exact): a candidate is scored against a floor, the accuracy of the k-th best
  candidate so far (k = parents), and stops once even every remaining image right would leave it
  below. Its recorded accuracy is then that bound: above its true accuracy, below the floor.
  Why nothing changes: the floor is the k-th best of a growing set, so it never falls; the k
  records above it outrank a stopped candidate for good (strictly: ties at the floor are scored
  to the end). So a stopped candidate is never a parent, the best, or among the ranking's top k,
  and every record that could be is scored in full, as in exhaustive scoring. The floor is fixed
  at the start of each generation from earlier records, so a candidate's score never depends on
  which rank scored it or in what order.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Optional

from glora.errors import UserError
from glora.io import tuples

Key = tuple  # one tuple of choices per layer (in its keys' order), in layer order: hashable and ordered


@dataclass(frozen=True)
class LayerSlot:
    """What the search needs of one layer or block: each key's choices and their parameter counts."""

    costs: Mapping  # key -> {choice: parameters}

    @property
    def keys(self) -> tuple:
        return tuple(self.costs)

    @property
    def choices(self) -> dict:
        return {k: list(c) for k, c in self.costs.items()}

    def cost(self, key, choice) -> int:
        return self.costs[key][choice]


def layer_slots(model, family=None) -> dict[str, LayerSlot]:
    """The search's view of a model's adapted layers, by qualified name (default family: GLoRA)."""
    if family is None:
        from glora.family import get_family

        family = get_family("glora")()
    return {n: LayerSlot(costs) for n, costs in family.slots(model).items()}


class CandidateSpace:
    """Subnets as keys, with their parameter counts, budget checks and the breeding moves."""

    @classmethod
    def from_model(cls, model, budget_m, max_tries: int = 1000, family=None) -> "CandidateSpace":
        """The candidates of a model's adapted layers within `budget_m` = [min, max] millions."""
        lo, hi = budget_m
        return cls(layer_slots(model, family), (round(lo * 1e6), round(hi * 1e6)), max_tries)

    def __init__(self, slots: dict[str, LayerSlot], budget: tuple[int, int], max_tries: int = 1000):
        self.names = list(slots)
        self.slots = [slots[n] for n in self.names]
        self.lo, self.hi = budget
        self.max_tries = max_tries
        smallest = sum(min(s.costs[k].values()) for s in self.slots for k in s.keys)
        largest = sum(max(s.costs[k].values()) for s in self.slots for k in s.keys)
        if self.lo > self.hi or self.hi < smallest or self.lo > largest:
            raise UserError(
                f"search.budget [{self.lo / 1e6:g}, {self.hi / 1e6:g}]M is infeasible: subnets of this model "
                f"have between {smallest / 1e6:g}M ({smallest}) and {largest / 1e6:g}M ({largest}) adapter "
                "parameters; choose [min, max] in millions within that range"
            )

    def params(self, key: Key) -> int:
        return sum(s.cost(k, c) for s, cfg in zip(self.slots, key) for k, c in zip(s.keys, cfg))

    def fits(self, key: Key) -> bool:
        return self.lo <= self.params(key) <= self.hi

    def subnet(self, key: Key) -> dict:
        return {n: dict(zip(s.keys, cfg)) for n, s, cfg in zip(self.names, self.slots, key)}

    def key(self, subnet: dict) -> Key:
        return tuple(tuple(subnet[n][k] for k in s.keys) for n, s in zip(self.names, self.slots))

    # --------------------------------------------------------------------------------- moves

    def sample(self, rng: random.Random) -> Key:
        """A uniform random subnet, repaired into the budget by re-drawing single choices."""
        genes = [[rng.choice(s.choices[k]) for k in s.keys] for s in self.slots]
        total = sum(s.cost(k, c) for s, g in zip(self.slots, genes) for k, c in zip(s.keys, g))
        # Each step moves one gene towards the window; a start far from it may need every gene moved.
        for _ in range(self.max_tries + 4 * sum(len(s.keys) for s in self.slots)):
            if self.lo <= total <= self.hi:
                return tuple(tuple(g) for g in genes)
            shrink = total > self.hi
            # Any (layer, key) that can move towards the budget; re-draw it among such choices.
            moves = [(i, j, c) for i, (s, g) in enumerate(zip(self.slots, genes)) for j, k in enumerate(s.keys)
                     for c in s.choices[k]
                     if (s.cost(k, c) < s.cost(k, g[j])) == shrink and s.cost(k, c) != s.cost(k, g[j])]
            i, j, c = rng.choice(moves)
            k = self.slots[i].keys[j]
            total += self.slots[i].cost(k, c) - self.slots[i].cost(k, genes[i][j])
            genes[i][j] = c
        raise UserError(f"could not draw a subnet within search.budget [{self.lo / 1e6:g}, {self.hi / 1e6:g}]M "
                        f"in {self.max_tries} steps: the window is too narrow for this model; widen it")

    def mutate(self, key: Key, prob: float, rng: random.Random) -> Key:
        """Re-draw each layer's each key with probability `prob`."""
        return tuple(
            tuple(rng.choice(s.choices[k]) if rng.random() < prob else c for k, c in zip(s.keys, cfg))
            for s, cfg in zip(self.slots, key)
        )

    def crossover(self, a: Key, b: Key, rng: random.Random) -> Key:
        """Uniform crossover: each layer's each key from either parent."""
        return tuple(tuple(x if rng.random() < 0.5 else y for x, y in zip(ca, cb)) for ca, cb in zip(a, b))


@dataclass
class Record:
    key: Key
    params: int
    acc1: float  # top-1 in percent; for a pruned candidate an upper bound, below the parents'
    generation: int
    pruned: bool = False  # scoring stopped early (see the module docstring)
    images: Optional[int] = None  # validation images forwarded to score it

    def log_line(self) -> dict:
        """The record as a line of candidates.jsonl."""
        return {"generation": self.generation, "acc1": self.acc1, "pruned": self.pruned, "images": self.images,
                "params": self.params, "layers": [",".join(map(str, c)) for c in self.key]}


class EvolutionSearch:
    """Runs the generations; `state()`/`load_state()` make it resumable at generation boundaries.

    `score(subnet, floor)` returns a search.score.Score (acc1, pruned, seen) and may stop once
    the accuracy cannot reach `floor`. Rank `rank` of `world_size` scores its share of each
    generation; `gather(scores)` returns every rank's list, in rank order (one process: [scores]).
    """

    def __init__(self, space: CandidateSpace, score: Callable[[dict, float], object], *, generations: int,
                 population: int, parents: int, mutations: int, mutation_prob: float, crossovers: int,
                 seed: int = 0, early_stop: bool = False, rank: int = 0, world_size: int = 1,
                 gather: Callable[[list], list[list]] = lambda scores: [scores]):
        self.space, self.score = space, score
        self.generations, self.population, self.parents = generations, population, parents
        self.mutations, self.mutation_prob, self.crossovers = mutations, mutation_prob, crossovers
        self.early_stop = early_stop
        self.rank, self.world_size, self.gather = rank, world_size, gather
        self.rng = random.Random(seed)
        self.records: dict[Key, Record] = {}
        self.generation = 0  # generations completed

    # --------------------------------------------------------------------------------- breeding

    def ranked(self, keys: Optional[Iterable[Key]] = None) -> list[Record]:
        """Best first: higher accuracy, then fewer parameters (pruned ones rank below the top k)."""
        recs = self.records.values() if keys is None else [self.records[k] for k in keys]
        return sorted(recs, key=lambda r: (-r.acc1, r.params, r.key))

    def _new(self, make: Callable[[], Key], count: int, taken: set) -> list[Key]:
        """Up to `count` unseen in-budget keys from `make`, giving up after a bounded number of tries."""
        out = []
        for _ in range(count * self.space.max_tries if count else 0):
            if len(out) == count:
                break
            key = make()
            if key not in self.records and key not in taken and self.space.fits(key):
                out.append(key)
                taken.add(key)
        return out

    def next_population(self) -> list[Key]:
        taken: set = set()
        keys: list[Key] = []
        if self.records:
            top = [r.key for r in self.ranked()[: self.parents]]
            keys += self._new(lambda: self.space.mutate(self.rng.choice(top), self.mutation_prob, self.rng),
                              self.mutations, taken)
            keys += self._new(lambda: self.space.crossover(self.rng.choice(top), self.rng.choice(top), self.rng),
                              self.crossovers, taken)
        keys += self._new(lambda: self.space.sample(self.rng), self.population - len(keys), taken)
        return keys

    def floor(self) -> float:
        """The accuracy a new candidate must reach to matter: the k-th best so far (k = parents);
        0 (never stop) without early stopping or while fewer than k candidates are scored."""
        if not self.early_stop or self.parents < 1 or len(self.records) < self.parents:
            return 0.0
        return self.ranked()[self.parents - 1].acc1

    def step(self) -> list[Record]:
        """Breed, score (this rank's share) and record one generation; returns its records."""
        keys = self.next_population()
        if not keys:
            raise UserError("the search space within search.budget is exhausted: every subnet has been scored")
        floor = self.floor()
        mine = [self.score(self.space.subnet(k), floor) for k in keys[self.rank::self.world_size]]
        shares = self.gather(mine)
        for i, key in enumerate(keys):
            s = shares[i % self.world_size][i // self.world_size]
            self.records[key] = Record(key, self.space.params(key), float(s.acc1), self.generation, s.pruned,
                                       s.seen)
        self.generation += 1
        return [self.records[k] for k in keys]

    def best(self) -> Record:
        return self.ranked()[0]

    def scalars(self, records: list[Record]) -> dict[str, float]:
        """A generation's curves: the best so far, the mean of its fully scored candidates, and
        the scoring work (images forwarded, candidates stopped early)."""
        best, full = self.best(), [r.acc1 for r in records if not r.pruned]
        out = {"search/best_acc1": best.acc1, "search/params_M": best.params / 1e6,
               "search/images": sum(r.images or 0 for r in records), "search/pruned": sum(r.pruned for r in records)}
        if full:
            out["search/mean_acc1"] = sum(full) / len(full)
        return out

    # --------------------------------------------------------------------------------- resume

    def state(self) -> dict:
        return {
            "generation": self.generation,
            "rng": self.rng.getstate(),
            "records": [{"key": [list(c) for c in r.key], "params": r.params, "acc1": r.acc1,
                         "generation": r.generation, "pruned": r.pruned, "images": r.images}
                        for r in self.records.values()],
        }

    def load_state(self, state: dict) -> None:
        self.generation = int(state["generation"])
        self.rng.setstate(tuples(state["rng"]))
        self.records = {}
        for r in state["records"]:
            key = tuples(r["key"])
            self.records[key] = Record(key, int(r["params"]), float(r["acc1"]), int(r["generation"]),
                                       bool(r.get("pruned", False)), r.get("images"))
