"""A built-in household environment: ALFWorld-like tasks that need nothing installed.

A house has receptacles (tables, shelves, a fridge, a sink, ...) with objects on or in them. A task
asks for one object, possibly cleaned, cooled or heated first, to be put in or on a target, e.g.
"put a clean mug in the cabinet". The agent moves between receptacles and acts on what is there:

    look | inventory | go to R | open R | close R | take O from R | put O in/on R
    clean O with sink | cool O with fridge | heat O with microwave

Every task is generated from (family, variation) alone, so it is the same on every machine. The
seen (training) and unseen (held-out) splits use disjoint (object, target) pairs, so no unseen
task appears among the seen ones, as ALFWorld's unseen split holds out what training never showed.
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass, field

from cola_lightning.envs.base import Environment, Observation, StepResult, register

OBJECTS = ("mug", "apple", "plate", "book", "tomato", "cup", "bowl", "egg", "potato", "spoon")
RECEPTACLES = ("countertop", "table", "shelf", "desk", "drawer", "cabinet", "fridge", "microwave")
OPENABLE = ("drawer", "cabinet", "fridge", "microwave")
APPLIANCES = {"clean": "sink", "cool": "fridge", "heat": "microwave"}
# family -> the treatment the object needs before it is put away (None: just move it)
FAMILIES = {"place": None, "clean_place": "clean", "cool_place": "cool", "heat_place": "heat"}
ADJECTIVE = {"clean": "clean", "cool": "cool", "heat": "hot"}
TARGETS = ("countertop", "table", "shelf", "desk", "drawer", "cabinet")
UNSEEN_OFFSET = 10_000  # unseen variation ids start here, so the two splits never share an id
SPLIT_SIZES = {"seen": 200, "unseen": 50}


def is_unseen_pair(obj: str, target: str) -> bool:
    """One fifth of the (object, target) pairs, fixed by a hash, are held out as unseen."""
    return zlib.crc32(f"{obj}->{target}".encode()) % 5 == 0


@dataclass
class Task:
    """One generated task: where everything starts and what has to be done."""

    family: str
    variation: int
    obj: str
    target: str
    placement: dict[str, str]  # object -> receptacle it starts in or on

    @property
    def treatment(self) -> str | None:
        return FAMILIES[self.family]

    @property
    def goal(self) -> str:
        adjective = f"{ADJECTIVE[self.treatment]} " if self.treatment else ""
        return f"put a {adjective}{self.obj} {preposition(self.target)} the {self.target}."


def preposition(receptacle: str) -> str:
    return "in" if receptacle in OPENABLE else "on"


def start_receptacles(target: str) -> list[str]:
    """Where a task's object can start: not in or on its target, not in an appliance."""
    return [r for r in RECEPTACLES if r != target and r not in APPLIANCES.values()]


def generate_task(family: str, variation: int) -> Task:
    """The task (family, variation): the same on every call and every machine."""
    unseen = variation >= UNSEEN_OFFSET
    pairs = [(o, t) for o in OBJECTS for t in TARGETS if is_unseen_pair(o, t) == unseen]
    rng = random.Random(f"household:{family}:{variation}")
    obj, target = rng.choice(pairs)
    others = rng.sample([o for o in OBJECTS if o != obj], rng.randint(2, 4))
    placement = {o: rng.choice(RECEPTACLES) for o in others}
    placement[obj] = rng.choice(start_receptacles(target))
    return Task(family, variation, obj, target, placement)


@dataclass
class _State:
    location: str | None = None
    holding: str | None = None
    placement: dict[str, str] = field(default_factory=dict)
    opened: set[str] = field(default_factory=set)
    treated: dict[str, set[str]] = field(default_factory=dict)


@register("household")
class HouseholdEnvironment(Environment):
    """The built-in household tasks (see the module docstring).

    Args:
        max_steps: the episode ends after this many actions (ALFWorld uses 50).
        gold: how the gold plans find the object. ``direct`` (default, as ALFWorld's expert): the
            planner knows where it is and goes there; an agent, which cannot see it from the start,
            can only guess, so imitating these plans succeeds at about the guessing rate (1 in 5).
            ``search``: the plan uses only what the agent sees: it visits the receptacles an
            object can start in (not the target, not the appliances), in a fixed order, opening
            closed ones, until the object is in view. At most 13 actions instead of 7.
    """

    def __init__(self, max_steps: int = 30, gold: str = "direct") -> None:
        if gold not in ("direct", "search"):
            raise ValueError(f"Unknown gold plan {gold!r}; use 'direct' or 'search'.")
        self.max_steps, self.gold = max_steps, gold
        self.task: Task | None = None
        self.state = _State()
        self.steps = 0

    def task_names(self) -> list[str]:
        return list(FAMILIES)

    def variations(self, task: str, split: str) -> list[int]:
        self.check_task(task)
        self.check_split(split)
        start = UNSEEN_OFFSET if split == "unseen" else 0
        return list(range(start, start + SPLIT_SIZES[split]))

    def reset(self, task: str, variation: int) -> Observation:
        self.check_task(task)
        self.task = generate_task(task, variation)
        self.state = _State(placement=dict(self.task.placement))
        self.steps = 0
        places = ", ".join(f"a {r}" for r in (*RECEPTACLES, "sink"))
        return self._observe(f"You are in a house. Looking around you see {places}.")

    def step(self, action: str) -> StepResult:
        if self.task is None:
            raise RuntimeError("Call reset(task, variation) before step().")
        self.steps += 1
        before = self.score()
        feedback = self._act(" ".join(action.lower().strip().rstrip(".").split()))
        invalid = feedback is None
        done = self.score() == 1.0 or self.steps >= self.max_steps
        observation = self._observe("Nothing happens." if invalid else feedback)
        info = {"invalid": invalid, "score": self.score(), "steps": self.steps}
        return StepResult(observation, self.score() - before, done, info)

    def score(self) -> float:
        task, state = self.task, self.state
        placed = state.placement.get(task.obj) == task.target
        treated = task.treatment is None or task.treatment in state.treated.get(task.obj, set())
        return 1.0 if placed and treated else 0.0

    def gold_actions(self) -> list[str]:
        task = self.task
        start = task.placement[task.obj]
        visits = [start]
        if self.gold == "search":
            candidates = start_receptacles(task.target)
            visits = candidates[: candidates.index(start) + 1]
        actions = []
        for receptacle in visits:
            actions.append(f"go to {receptacle}")
            if receptacle in OPENABLE:
                actions.append(f"open {receptacle}")
        actions.append(f"take {task.obj} from {start}")
        if task.treatment:
            appliance = APPLIANCES[task.treatment]
            actions += [f"go to {appliance}", f"{task.treatment} {task.obj} with {appliance}"]
        actions.append(f"go to {task.target}")
        if task.target in OPENABLE:
            actions.append(f"open {task.target}")
        actions.append(f"put {task.obj} {preposition(task.target)} {task.target}")
        return actions

    def valid_actions(self) -> list[str]:
        """Every action that would change something or tell something now."""
        state = self.state
        actions = ["look", "inventory"]
        actions += [f"go to {r}" for r in (*RECEPTACLES, "sink") if r != state.location]
        here = state.location
        if here in OPENABLE:
            actions.append(f"{'close' if here in state.opened else 'open'} {here}")
        if state.holding is None and self._reachable(here):
            actions += [f"take {o} from {here}" for o in self._objects_at(here)]
        if state.holding is not None and self._reachable(here) and here != "sink":
            actions.append(f"put {state.holding} {preposition(here)} {here}")
        for treatment, appliance in APPLIANCES.items():
            if state.holding is not None and here == appliance:
                actions.append(f"{treatment} {state.holding} with {appliance}")
        return actions

    def _observe(self, text: str) -> Observation:
        return Observation(text, f"Your task is to: {self.task.goal}", self.valid_actions())

    def _objects_at(self, receptacle: str | None) -> list[str]:
        return sorted(o for o, r in self.state.placement.items() if r == receptacle)

    def _reachable(self, receptacle: str | None) -> bool:
        return receptacle is not None and (
            receptacle not in OPENABLE or receptacle in self.state.opened
        )

    def _describe(self, receptacle: str) -> str:
        if not self._reachable(receptacle):
            return f"The {receptacle} is closed."
        things = self._objects_at(receptacle)
        listed = ", ".join(f"a {o}" for o in things) if things else "nothing"
        return f"{preposition(receptacle).capitalize()} the {receptacle} you see {listed}."

    def _act(self, action: str) -> str | None:
        """The feedback for a valid action (after carrying it out), or None for an invalid one."""
        if action not in self.valid_actions():
            return None
        state = self.state
        if action == "look":
            return self._describe(state.location) if state.location else "You are in the house."
        if action == "inventory":
            return f"You are carrying: {f'a {state.holding}' if state.holding else 'nothing'}."
        verb, rest = action.split(" ", 1)
        if verb == "go":
            state.location = rest[len("to ") :]
            return f"You arrive at the {state.location}. " + self._describe(state.location)
        if verb in ("open", "close"):
            (state.opened.add if verb == "open" else state.opened.discard)(rest)
            return f"You {verb} the {rest}. " + (self._describe(rest) if verb == "open" else "")
        if verb == "take":
            obj = re.match(r"(\w+) from", rest).group(1)
            state.holding = obj
            del state.placement[obj]
            return f"You pick up the {obj} from the {state.location}."
        if verb == "put":
            obj = state.holding
            state.placement[obj], state.holding = state.location, None
            return f"You put the {obj} {preposition(state.location)} the {state.location}."
        obj = state.holding
        state.treated.setdefault(obj, set()).add(verb)
        return f"You {verb} the {obj} using the {state.location}."
