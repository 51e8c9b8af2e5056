"""Object vocabulary of the tabletop benchmark: shapes, colours, receptacles, and the words
that name them, split into what training may see and what is held out.

The splits are fixed here, in code, so that "novel" means the same thing in every run:

- `train`: objects are TRAIN_SHAPES x TRAIN_COLORS minus HELD_OUT_COMBOS; instructions use
  TRAIN_WORDS and the train templates in `robofm.sim.tasks`.
- `novel_object`: the object the instruction is about is a held-out shape-colour combination,
  a novel colour on a train shape, or a novel shape (capsule) in a train colour. Distractors
  stay in-distribution, so failure is about the new object, not a new scene. (One exception:
  in the `ground` family the look-alike shares the target's shape, so a capsule target comes
  with a capsule look-alike in another colour.)
- `novel_instruction`: train objects, but synonyms and phrasings never used in training.
- `novel_scene`: train objects and phrasings with extra distractors, other lighting and other
  table textures.
"""

from __future__ import annotations

from dataclasses import dataclass

# RGBA in [0, 1]. Names are the words used in train instructions.
COLORS: dict[str, tuple[float, float, float, float]] = {
    "red": (0.85, 0.12, 0.10, 1.0),
    "green": (0.15, 0.70, 0.20, 1.0),
    "blue": (0.12, 0.30, 0.85, 1.0),
    "yellow": (0.92, 0.82, 0.10, 1.0),
    "purple": (0.55, 0.18, 0.70, 1.0),
    "orange": (0.95, 0.50, 0.08, 1.0),
}
TRAIN_COLORS = ("red", "green", "blue", "yellow")
NOVEL_COLORS = ("purple", "orange")

SHAPES = ("cube", "cylinder", "sphere", "capsule")
TRAIN_SHAPES = ("cube", "cylinder", "sphere")
NOVEL_SHAPES = ("capsule",)
STACKABLE = ("cube", "cylinder")  # flat-topped shapes something can rest on
PUSHABLE = ("cube", "cylinder")  # shapes that slide rather than roll

# Shape-colour pairs never seen in training; each colour and shape alone is seen.
HELD_OUT_COMBOS = frozenset({("red", "sphere"), ("blue", "cube"), ("green", "cylinder")})

RECEPTACLES = ("plate", "bowl", "pad")
RECEPTACLE_COLORS = ("red", "green", "blue", "yellow")

# Half-height of each shape resting upright (m): centre height above the table at rest.
HALF_HEIGHT = {"cube": 0.02, "cylinder": 0.02, "sphere": 0.02, "capsule": 0.03}

# Word substitutions used only by the novel_instruction split. Keys are train words.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("crimson", "scarlet"),
    "green": ("emerald", "lime"),
    "blue": ("azure", "navy"),
    "yellow": ("golden", "lemon"),
    "cube": ("block", "box"),
    "cylinder": ("can", "tube"),
    "sphere": ("ball", "orb"),
    "plate": ("dish", "saucer"),
    "bowl": ("basin",),
    "pad": ("mat", "square"),
}
NOVEL_WORDS = frozenset(w for ws in SYNONYMS.values() for w in ws)


@dataclass(frozen=True)
class ObjectSpec:
    """One graspable object: a shape in a colour."""

    shape: str  # one of SHAPES
    color: str  # one of COLORS

    @property
    def name(self) -> str:
        """Train-vocabulary description, e.g. "red cube"."""
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class ReceptacleSpec:
    """A place objects go: a plate, a bowl or a flat coloured pad."""

    kind: str  # one of RECEPTACLES
    color: str  # one of RECEPTACLE_COLORS

    @property
    def name(self) -> str:
        """Train-vocabulary description, e.g. "blue plate"."""
        return f"{self.color} {self.kind}"


def is_novel(obj: ObjectSpec) -> bool:
    """True if `obj` is never shown in the train split."""
    return (
        obj.shape in NOVEL_SHAPES
        or obj.color in NOVEL_COLORS
        or (obj.color, obj.shape) in HELD_OUT_COMBOS
    )


def train_objects(shapes: tuple[str, ...] = TRAIN_SHAPES) -> list[ObjectSpec]:
    """Every object the train split may show, restricted to `shapes`."""
    return [
        ObjectSpec(s, c)
        for s in shapes
        if s in TRAIN_SHAPES
        for c in TRAIN_COLORS
        if (c, s) not in HELD_OUT_COMBOS
    ]


def novel_objects(shapes: tuple[str, ...] = SHAPES) -> list[ObjectSpec]:
    """Every held-out object, restricted to `shapes` (novel shapes count only if listed)."""
    out = [ObjectSpec(s, c) for (c, s) in sorted(HELD_OUT_COMBOS) if s in shapes]
    out += [ObjectSpec(s, c) for s in TRAIN_SHAPES if s in shapes for c in NOVEL_COLORS]
    out += [ObjectSpec(s, c) for s in NOVEL_SHAPES if s in shapes for c in TRAIN_COLORS]
    return out
