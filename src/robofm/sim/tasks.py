"""Task families of the tabletop benchmark: what a scene holds, what the instruction says,
and how to phrase it, per split. Success checks live in `robofm.sim.env` (physics state).

Families (`TASKS`, the one registry):
- `lift`: "pick up the red cube"; success when the object is 5 cm above the table.
- `pick_place`: "put the red cube on the blue plate"; success when it rests on/in the goal.
- `push`: "push the green cylinder to the yellow pad"; success when its centre is on the pad.
- `stack`: "stack the red cube on the yellow cylinder"; success when it rests on the other.
- `ground`: attribute grounding, "pick up the cylinder that is not green"; lift the object the
  description singles out, among look-alikes that share its shape or colour.

A `TaskSpec` is everything that defines one episode. `sample_task(family, split, rng)` draws
one deterministically from a `numpy.random.Generator`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robofm.errors import ConfigError
from robofm.sim.objects import (
    PUSHABLE,
    RECEPTACLE_COLORS,
    SHAPES,
    STACKABLE,
    SYNONYMS,
    TRAIN_COLORS,
    ObjectSpec,
    ReceptacleSpec,
    novel_objects,
    train_objects,
)
from robofm.sim.scene import MAX_OBJECTS, TABLE_MATERIALS

SPLITS = ("train", "novel_object", "novel_instruction", "novel_scene")

# Instruction templates. {obj}: the object description; {goal}: receptacle or base object.
TRAIN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "lift": ("pick up the {obj}", "lift the {obj}", "pick the {obj} up"),
    "pick_place": ("put the {obj} on the {goal}", "place the {obj} on the {goal}"),
    "push": ("push the {obj} to the {goal}", "slide the {obj} onto the {goal}"),
    "stack": ("stack the {obj} on the {goal}", "put the {obj} on top of the {goal}"),
    "ground": ("pick up the {obj}", "lift the {obj}"),
}
NOVEL_TEMPLATES: dict[str, tuple[str, ...]] = {
    "lift": ("grab the {obj}", "raise the {obj} off the table", "could you hoist the {obj}"),
    "pick_place": ("set the {obj} down on the {goal}", "transfer the {obj} onto the {goal}"),
    "push": ("shove the {obj} over to the {goal}", "nudge the {obj} onto the {goal}"),
    "stack": ("place the {obj} atop the {goal}", "pile the {obj} onto the {goal}"),
    "ground": ("grab the {obj}", "raise the {obj} off the table"),
}
BOWL_TEMPLATES = ("put the {obj} in the {goal}", "drop the {obj} into the {goal}")
NOVEL_BOWL_TEMPLATES = ("deposit the {obj} inside the {goal}",)
NEGATION_TRAIN = "{shape} that is not {color}"
NEGATION_NOVEL = "{shape} which isn't {color}"


@dataclass(frozen=True)
class TaskSpec:
    """One episode's task. Object 0 is the one the instruction is about."""

    family: str  # a key of TASKS
    split: str  # one of SPLITS
    objects: tuple[ObjectSpec, ...]  # object slots in use, target first
    object_xy: tuple[tuple[float, float], ...]  # (x, y) start of each object, m
    receptacles: tuple[ReceptacleSpec, ...]  # receptacle slots in use
    receptacle_xy: tuple[tuple[float, float], ...]  # (x, y) of each receptacle, m
    goal: int  # pick_place/push: receptacle index; stack: object index of the base; else -1
    instruction: str  # what the policy is told
    hand_xyz: tuple[float, float, float]  # hand start (fingertip height as z), m
    table_material: str = "table_wood"  # one of scene.TABLE_MATERIALS
    light_diffuse: float = 0.55  # key light intensity
    light_dir: tuple[float, float, float] = (0.25, 0.3, -1.0)  # key light direction

    @property
    def target(self) -> ObjectSpec:
        """The object the instruction is about."""
        return self.objects[0]


@dataclass(frozen=True)
class TaskFamily:
    """A registry entry: how to draw a scene and how long an episode may run."""

    name: str
    max_steps: int  # episode limit at 10 Hz
    target_shapes: tuple[str, ...]  # shapes the target may have
    needs: str  # "none", "receptacle" (goal receptacle), "pad" or "base" (object to stack on)
    summary: str  # one line for listings


TASKS: dict[str, TaskFamily] = {
    "lift": TaskFamily("lift", 50, SHAPES, "none", "pick up an object"),
    "pick_place": TaskFamily(
        "pick_place", 90, SHAPES, "receptacle", "put an object on/in a plate or bowl"
    ),
    "push": TaskFamily("push", 90, PUSHABLE, "pad", "push an object onto a coloured pad"),
    "stack": TaskFamily("stack", 90, STACKABLE, "base", "stack an object on another"),
    "ground": TaskFamily(
        "ground", 50, SHAPES, "none", "pick up the one object a description singles out"
    ),
}


def get_family(name: str) -> TaskFamily:
    """The family called `name`; an unknown name raises `ConfigError` listing the valid ones."""
    if name not in TASKS:
        raise ConfigError(f"unknown task '{name}'; valid tasks: {', '.join(TASKS)}")
    return TASKS[name]


def check_split(split: str) -> str:
    """`split` itself, or `ConfigError` listing the valid splits."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split '{split}'; valid splits: {', '.join(SPLITS)}")
    return split


def _pick(rng: np.random.Generator, items: list | tuple):
    return items[int(rng.integers(len(items)))]


def _positions(
    rng: np.random.Generator, n: int, half: float, min_dist: float, avoid: list[tuple]
) -> list[tuple[float, float]] | None:
    """`n` points in [-half, half]^2, each `min_dist` from the others and from `avoid`;
    None if rejection sampling finds no such layout."""
    out: list[tuple[float, float]] = []
    for _ in range(2000):
        if len(out) == n:
            return out
        p = (float(rng.uniform(-half, half)), float(rng.uniform(-half, half)))
        if all(np.hypot(p[0] - q[0], p[1] - q[1]) >= d for q, d in avoid) and all(
            np.hypot(p[0] - q[0], p[1] - q[1]) >= min_dist for q in out
        ):
            out.append(p)
    return None


def _words(text: str, rng: np.random.Generator, novel: bool) -> str:
    """Swap each train word that has synonyms for one of them (novel_instruction only)."""
    if not novel:
        return text
    return " ".join(_pick(rng, SYNONYMS[w]) if w in SYNONYMS else w for w in text.split())


def _distractors(
    rng: np.random.Generator, n: int, taken: list[ObjectSpec], pool: list[ObjectSpec]
) -> list[ObjectSpec]:
    """`n` pool objects distinct from `taken` in (shape, colour)."""
    free = [o for o in pool if o not in taken]
    idx = rng.permutation(len(free))[:n]
    return [free[int(i)] for i in idx]


def sample_task(family: str, split: str, rng: np.random.Generator) -> TaskSpec:
    """Draw one episode of `family` for `split`; deterministic given `rng`'s state."""
    fam = get_family(family)
    check_split(split)
    novel_words = split == "novel_instruction"
    pool = train_objects()
    shapes = fam.target_shapes
    if split == "novel_object":
        target = _pick(rng, novel_objects(shapes))
    else:
        target = _pick(rng, train_objects(shapes))
    objects = [target]
    receptacles: list[ReceptacleSpec] = []
    goal = -1
    obj_text = target.name
    if fam.needs == "base":
        bases = [o for o in train_objects(STACKABLE) if o.color != target.color]
        objects.append(_pick(rng, bases))
        goal = 1
    elif fam.needs in ("receptacle", "pad"):
        kinds = ("pad",) if fam.needs == "pad" else ("plate", "bowl")
        colors = list(rng.permutation(RECEPTACLE_COLORS)[:2])
        receptacles = [ReceptacleSpec(_pick(rng, kinds), str(c)) for c in colors]
        goal = 0
    if family == "ground":
        objects, obj_text = _grounding_scene(rng, target, pool, novel_words)
        pool = [o for o in pool if o.shape != target.shape]  # keep the phrase unambiguous
    n_distract = int(rng.integers(1, 3)) + (2 if split == "novel_scene" else 0)
    n_distract = min(n_distract, MAX_OBJECTS - len(objects))
    objects += _distractors(rng, n_distract, objects, pool)

    for _ in range(100):  # redraw the receptacles when they leave no room for the objects
        rec_xy = _positions(rng, len(receptacles), 0.13, 0.17, [])
        if rec_xy is None:
            continue
        # Open fingers reach ~5.7 cm from the hand centre: keep neighbours (and bowl walls)
        # far enough that a straight descent onto the target never lands a finger on them.
        keep_out = [
            (p, 0.125 if r.kind == "bowl" else 0.1)
            for p, r in zip(rec_xy, receptacles, strict=True)
        ]
        obj_xy = _positions(rng, len(objects), 0.14, 0.08, keep_out)
        if obj_xy is not None:
            break
    else:
        raise RuntimeError(f"{family}/{split}: could not lay out {len(objects)} objects")
    if family == "push":
        obj_xy = _push_layout(rng, obj_xy, rec_xy)

    templates = NOVEL_TEMPLATES if novel_words else TRAIN_TEMPLATES
    choices = templates[family]
    goal_text = ""
    if fam.needs in ("receptacle", "pad"):
        goal_text = receptacles[goal].name
        if receptacles[goal].kind == "bowl":
            choices = NOVEL_BOWL_TEMPLATES if novel_words else BOWL_TEMPLATES
    elif fam.needs == "base":
        goal_text = objects[goal].name
    text = _pick(rng, choices).format(
        obj=_words(obj_text, rng, novel_words), goal=_words(goal_text, rng, novel_words)
    )
    hand = (
        float(rng.uniform(-0.04, 0.04)),
        float(rng.uniform(-0.06, 0.0)),
        float(rng.uniform(0.14, 0.18)),
    )
    scene: dict = {}
    if split == "novel_scene":
        scene = {
            "table_material": _pick(rng, TABLE_MATERIALS[1:]),
            "light_diffuse": float(rng.uniform(0.25, 0.9)),
            "light_dir": (float(rng.uniform(-0.6, 0.6)), float(rng.uniform(-0.6, 0.6)), -1.0),
        }
    return TaskSpec(
        family=family,
        split=split,
        objects=tuple(objects),
        object_xy=tuple(obj_xy),
        receptacles=tuple(receptacles),
        receptacle_xy=tuple(rec_xy),
        goal=goal,
        instruction=text,
        hand_xyz=hand,
        **scene,
    )


def _grounding_scene(
    rng: np.random.Generator, target: ObjectSpec, pool: list[ObjectSpec], novel_words: bool
) -> tuple[list[ObjectSpec], str]:
    """A look-alike of the target (same shape, another colour) and the phrase that tells them
    apart: "cylinder that is not green" negates the look-alike's colour."""
    alike = [o for o in pool if o.shape == target.shape and o.color != target.color]
    if not alike:  # a novel shape: its look-alike is the same shape in a train colour
        alike = [ObjectSpec(target.shape, c) for c in TRAIN_COLORS if c != target.color]
    other = _pick(rng, alike)
    template = NEGATION_NOVEL if novel_words else NEGATION_TRAIN
    return [target, other], template.format(shape=target.shape, color=other.color)


def _push_layout(
    rng: np.random.Generator, obj_xy: list[tuple[float, float]], rec_xy: list[tuple]
) -> list[tuple[float, float]]:
    """Keep the pushed object 8-16 cm from its pad so a push, not a reach, solves it."""
    gx, gy = rec_xy[0]
    for _ in range(500):
        a = rng.uniform(0, 2 * np.pi)
        r = rng.uniform(0.08, 0.16)
        p = (float(gx + r * np.cos(a)), float(gy + r * np.sin(a)))
        if max(abs(p[0]), abs(p[1])) > 0.16:
            continue
        others = obj_xy[1:] + [tuple(q) for q in rec_xy[1:]]
        if all(np.hypot(p[0] - q[0], p[1] - q[1]) >= 0.09 for q in others):
            return [p, *obj_xy[1:]]
    return obj_xy
