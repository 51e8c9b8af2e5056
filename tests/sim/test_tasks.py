"""Split membership and instruction wording of the task sampler, over many seeds.

No physics here: `sample_task` is pure numpy, so hundreds of seeds per family are cheap.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from robofm.errors import ConfigError
from robofm.sim import objects
from robofm.sim.scene import TABLE_MATERIALS
from robofm.sim.tasks import (
    BOWL_TEMPLATES,
    NEGATION_NOVEL,
    NEGATION_TRAIN,
    NOVEL_BOWL_TEMPLATES,
    NOVEL_TEMPLATES,
    SPLITS,
    TASKS,
    TRAIN_TEMPLATES,
    TaskSpec,
    sample_task,
)

N_SEEDS = 200
DEFAULT_TABLE = TABLE_MATERIALS[0]
FAMILIES = list(TASKS)
# novel word -> the train word it replaces
UNSYNONYM = {w: train for train, ws in objects.SYNONYMS.items() for w in ws}


def _specs(family: str, split: str, n: int = N_SEEDS) -> list[TaskSpec]:
    return [sample_task(family, split, np.random.default_rng(s)) for s in range(n)]


def _pattern(template: str) -> re.Pattern:
    """A template as a full-match regex; {obj} and {goal} match any non-empty text."""
    parts = re.split(r"\{obj\}|\{goal\}", template)
    return re.compile("(.+)".join(re.escape(p) for p in parts))


def _matches(text: str, templates) -> bool:
    return any(_pattern(t).fullmatch(text) for t in templates)


TRAIN_FORMS = [t for ts in TRAIN_TEMPLATES.values() for t in ts] + list(BOWL_TEMPLATES)


def _words(text: str) -> set[str]:
    return set(text.split())


def _family_templates(spec: TaskSpec, novel: bool) -> tuple[str, ...]:
    table = NOVEL_TEMPLATES if novel else TRAIN_TEMPLATES
    if spec.receptacles and spec.receptacles[spec.goal].kind == "bowl":
        return NOVEL_BOWL_TEMPLATES if novel else BOWL_TEMPLATES
    return table[spec.family]


def _check_refers_to_target(spec: TaskSpec, text: str) -> None:
    """`text` (in train words) names the target (and the goal) unambiguously."""
    target = spec.target
    if spec.family == "ground":
        negated = spec.objects[1].color
        assert f"the {target.shape} that is not {negated}" in text, text
        # the description singles out exactly one object in the scene: the target
        fits = [o for o in spec.objects if o.shape == target.shape and o.color != negated]
        assert fits == [target], (text, spec.objects)
        alike = spec.objects[1]
        assert alike.shape == target.shape and alike.color != target.color
        return
    assert f"the {target.name}" in text, text
    names = [o.name for o in spec.objects]
    assert len(set(names)) == len(names), names  # no distractor looks like the target
    if spec.family in ("pick_place", "push"):
        assert f"the {spec.receptacles[spec.goal].name}" in text, text
    if spec.family == "stack":
        base = spec.objects[spec.goal]
        assert spec.goal == 1 and f"the {base.name}" in text, text
        assert base.shape in objects.STACKABLE and base.color != target.color


@pytest.mark.parametrize("family", FAMILIES)
def test_train_split_never_shows_a_novel_object_or_word(family):
    for spec in _specs(family, "train"):
        assert spec.split == "train" and spec.family == family
        novel = [o for o in spec.objects if objects.is_novel(o)]
        assert not novel, (spec.instruction, novel)
        assert not _words(spec.instruction) & objects.NOVEL_WORDS, spec.instruction
        assert _matches(spec.instruction, _family_templates(spec, novel=False)), spec.instruction
        assert spec.table_material == DEFAULT_TABLE
        assert spec.target.shape in TASKS[family].target_shapes
        _check_refers_to_target(spec, spec.instruction)


@pytest.mark.parametrize("family", FAMILIES)
def test_novel_object_targets_are_novel_and_worded_like_train(family):
    targets = set()
    for spec in _specs(family, "novel_object"):
        assert objects.is_novel(spec.target), spec.target
        assert spec.target.shape in TASKS[family].target_shapes
        targets.add(spec.target)
        # in ground, the look-alike (object 1) shares the target's shape, so a novel shape
        # brings a novel look-alike; every other distractor stays in-distribution
        first_distractor = 2 if family == "ground" else 1
        assert not any(objects.is_novel(o) for o in spec.objects[first_distractor:]), spec.objects
        assert not _words(spec.instruction) & objects.NOVEL_WORDS, spec.instruction
        assert _matches(spec.instruction, _family_templates(spec, novel=False)), spec.instruction
        assert spec.table_material == DEFAULT_TABLE
        _check_refers_to_target(spec, spec.instruction)
    # every kind of held-out object is drawn: held-out combos, novel colours, novel shapes
    allowed = set(objects.novel_objects(TASKS[family].target_shapes))
    assert targets <= allowed
    assert any((o.color, o.shape) in objects.HELD_OUT_COMBOS for o in targets)
    assert any(o.color in objects.NOVEL_COLORS for o in targets)
    if "capsule" in TASKS[family].target_shapes:
        assert any(o.shape in objects.NOVEL_SHAPES for o in targets)


@pytest.mark.parametrize("family", FAMILIES)
def test_novel_instructions_use_new_words_and_phrasings_only(family):
    train_texts = {s.instruction for s in _specs(family, "train")}
    for spec in _specs(family, "novel_instruction"):
        text = spec.instruction
        assert not any(objects.is_novel(o) for o in spec.objects), spec.objects
        assert _words(text) & objects.NOVEL_WORDS, text
        assert _matches(text, _family_templates(spec, novel=True)), text
        assert not _matches(text, TRAIN_FORMS), text  # no train phrasing of any family
        assert text not in train_texts
        if family == "ground":
            assert "which isn't" in text, text
        # mapped back to train words, it still names the same target and goal
        restored = " ".join(UNSYNONYM.get(w, w) for w in text.split())
        restored = restored.replace("which isn't", "that is not")
        _check_refers_to_target(spec, restored)
        assert spec.table_material == DEFAULT_TABLE


@pytest.mark.parametrize("family", FAMILIES)
def test_novel_scene_changes_the_scene_not_the_words(family):
    train = _specs(family, "train")
    novel = _specs(family, "novel_scene")
    for spec in novel:
        assert spec.table_material in TABLE_MATERIALS[1:], spec.table_material
        assert not any(objects.is_novel(o) for o in spec.objects), spec.objects
        assert not _words(spec.instruction) & objects.NOVEL_WORDS, spec.instruction
        assert _matches(spec.instruction, _family_templates(spec, novel=False))
        _check_refers_to_target(spec, spec.instruction)
    assert len({s.table_material for s in novel}) == len(TABLE_MATERIALS) - 1
    assert len({s.light_diffuse for s in novel}) > 1  # lighting varies too
    assert {s.light_diffuse for s in train} == {TaskSpec.light_diffuse}
    mean_train = np.mean([len(s.objects) for s in train])
    mean_novel = np.mean([len(s.objects) for s in novel])
    assert mean_novel >= mean_train + 1.0, (mean_train, mean_novel)


def test_negation_templates_differ_between_splits():
    assert NEGATION_TRAIN != NEGATION_NOVEL
    assert "that is not" in NEGATION_TRAIN and "which isn't" in NEGATION_NOVEL


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("family", FAMILIES)
def test_layouts_are_physically_sensible(family, split):
    """Objects sit apart on the table; placement goals do not start out solved."""
    for spec in _specs(family, split, 50):
        xy = np.asarray(spec.object_xy)
        assert xy.shape == (len(spec.objects), 2)
        assert len(spec.receptacle_xy) == len(spec.receptacles)
        assert np.abs(xy).max() <= 0.16 + 1e-9
        gaps = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
        gaps[np.diag_indices(len(xy))] = np.inf
        assert gaps.min() >= 0.07 - 1e-9, (spec, gaps.min())
        if spec.receptacles:
            goal = np.asarray(spec.receptacle_xy[spec.goal])
            assert np.hypot(*(xy[0] - goal)) > 0.075  # outside the plate, bowl or pad
        if family in ("lift", "ground"):
            assert spec.goal == -1 and not spec.receptacles
        if family in ("pick_place", "push"):
            assert 0 <= spec.goal < len(spec.receptacles) == 2
            kinds = {"push": {"pad"}, "pick_place": {"plate", "bowl"}}[family]
            assert {r.kind for r in spec.receptacles} <= kinds
            assert spec.receptacles[0].color != spec.receptacles[1].color


@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_is_deterministic_per_seed(family):
    for split in SPLITS:
        a = [sample_task(family, split, np.random.default_rng(s)) for s in range(20)]
        b = [sample_task(family, split, np.random.default_rng(s)) for s in range(20)]
        assert a == b
        assert len(set(a)) == 20  # different seeds, different episodes


def test_unknown_family_or_split_lists_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        sample_task("juggle", "train", np.random.default_rng(0))
    assert "juggle" in str(e.value) and all(t in str(e.value) for t in TASKS)
    with pytest.raises(ConfigError) as e:
        sample_task("lift", "test", np.random.default_rng(0))
    assert "'test'" in str(e.value) and all(s in str(e.value) for s in SPLITS)
