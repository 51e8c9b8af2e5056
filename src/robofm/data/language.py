"""Instruction paraphrasing and augmentation (`robofm data paraphrase`).

A VLA fine-tuned on 50-500 demonstrations that all say "pick up the red block" learns the
template, not the task: a new phrasing at test time drops success. This module rewrites
instructions with rule-based, meaning-preserving edits so every task is phrased several ways:

- verb synonyms from `VERB_SYNONYMS` ("pick up" / "grab" / "grasp" / "lift" / "take");
- object and colour synonyms, only those listed in `OBJECT_SYNONYMS` / `COLOUR_SYNONYMS`
  (spelling variants and unambiguous swaps). Every other word, in particular object and colour
  words, is kept exactly, so a paraphrase never changes *which* object is meant;
- dropping the article "the" (`OPTIONAL_WORDS`), as in telegraphic commands ("put corn in pot");
- a politeness / framing template from `PHRASE_BANK` ("please {x}", "can you {x}?", "now {x}");
- capitalisation and a final period.

The same tables define `task_key`, the canonical form the data-quality report groups
instructions by, so every paraphrase of an instruction falls in the same task as the original.
Everything is deterministic for a given seed (no Python `hash`, which is salted per process).
"""

from __future__ import annotations

import functools
import random
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence

# canonical verb phrase -> interchangeable forms (the canonical one first); used both ways.
VERB_SYNONYMS: dict[str, tuple[str, ...]] = {
    "pick up": ("pick up", "grab", "grasp", "lift", "take"),
    "put": ("put", "place", "set", "move"),
    "push": ("push", "slide", "shove", "nudge"),
    "open": ("open", "pull open"),
    "close": ("close", "shut"),
    "turn on": ("turn on", "switch on"),
    "turn off": ("turn off", "switch off"),
    "stack": ("stack", "pile"),
}
# forms recognised as a verb group but never produced (too terse or too colloquial).
VERB_ALIASES: dict[str, str] = {"pick": "pick up", "grab hold of": "pick up"}
# safe object swaps: both words name the same thing in robot-manipulation scenes.
OBJECT_SYNONYMS: dict[str, tuple[str, ...]] = {
    "block": ("block", "cube"),
    "faucet": ("faucet", "tap"),
}
# colour spelling variants only: a different hue would be a different object.
COLOUR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "gray": ("gray", "grey"),
}
# words a phrasing may drop without changing the meaning.
OPTIONAL_WORDS: tuple[str, ...] = ("the",)
# framing templates; "{x}" is the core command. The first entry is the bare command.
PHRASE_BANK: tuple[str, ...] = (
    "{x}",
    "please {x}",
    "{x}, please",
    "can you {x}?",
    "could you {x}?",
    "now {x}",
    "{x} now",
    "I want you to {x}",
    "your task is to {x}",
    "go ahead and {x}",
    "try to {x}",
)
# extra canonicalisation for grouping only (never used to generate text).
_KEY_ALIASES: dict[str, str] = {"into": "in", "inside": "in", "onto": "on", "a": "", "an": ""}

_WORD = re.compile(r"[\w']+")


def normalize_instruction(text: str) -> str:
    """Lowercase, drop punctuation and collapse whitespace: the identity of a *phrasing*.

    "Pick up the block." and "pick up  the block" are the same phrasing.
    """
    return " ".join(_WORD.findall(text.lower()))


def _lookup(extra: Mapping[str, Sequence[str]] | None = None) -> dict[tuple[str, ...], str]:
    """Token sequence -> canonical phrase for every verb/object/colour form."""
    table: dict[tuple[str, ...], str] = {}
    for group in (VERB_SYNONYMS, OBJECT_SYNONYMS, COLOUR_SYNONYMS, _groups(extra)):
        for canon, forms in group.items():
            for form in (canon, *forms):
                table[tuple(form.split())] = canon
    for alias, canon in VERB_ALIASES.items():
        table[tuple(alias.split())] = canon
    return table


def _groups(extra: Mapping[str, Sequence[str]] | None) -> dict[str, tuple[str, ...]]:
    """User synonym entries {"mug": ["cup"]} as canonical -> forms (canonical first)."""
    if not extra:
        return {}
    return {
        normalize_instruction(k): tuple(
            dict.fromkeys([normalize_instruction(k)] + [normalize_instruction(v) for v in vs])
        )
        for k, vs in extra.items()
    }


@functools.cache
def _template_affixes() -> tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]:
    """(prefix tokens, suffix tokens) of every non-trivial PHRASE_BANK template."""
    out = []
    for template in PHRASE_BANK:
        pre, post = template.split("{x}")
        pre_t, post_t = tuple(_WORD.findall(pre.lower())), tuple(_WORD.findall(post.lower()))
        if pre_t or post_t:
            out.append((pre_t, post_t))
    return tuple(out)


def _strip_templates(tokens: list[str]) -> list[str]:
    """Remove framing ("please", "can you", "now", ...) from both ends, repeatedly."""
    changed = True
    while changed and tokens:
        changed = False
        for pre, post in _template_affixes():
            n_pre, n_post = len(pre), len(post)
            if len(tokens) <= n_pre + n_post:
                continue
            if tuple(tokens[:n_pre]) == pre and tuple(tokens[len(tokens) - n_post :]) == post:
                tokens = tokens[n_pre : len(tokens) - n_post]
                changed = True
    return tokens


def _parse(tokens: list[str], table: dict[tuple[str, ...], str]) -> list[tuple[str, str]]:
    """Split tokens into ("syn", canonical) slots and ("word", token) pieces, longest match
    first, so "pick up" wins over "pick"."""
    max_len = max(len(k) for k in table)
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(tokens):
        for n in range(min(max_len, len(tokens) - i), 0, -1):
            canon = table.get(tuple(tokens[i : i + n]))
            if canon is not None:
                out.append(("syn", canon))
                i += n
                break
        else:
            out.append(("word", tokens[i]))
            i += 1
    return out


def task_key(instruction: str, synonyms: Mapping[str, Sequence[str]] | None = None) -> str:
    """Canonical form of an instruction: what it asks, independent of phrasing.

    Framing templates are stripped, synonyms mapped to their canonical form, articles dropped
    and "into"/"onto" read as "in"/"on". Every `paraphrase` of an instruction has the same key,
    so the quality report can count phrasings per task.
    """
    tokens = _strip_templates(_WORD.findall(instruction.lower()))
    words = []
    for kind, value in _parse(tokens, _lookup(synonyms)) if tokens else []:
        if kind == "word":
            value = _KEY_ALIASES.get(value, value)
            if value in OPTIONAL_WORDS:
                continue
        if value:
            words.append(value)
    return " ".join(words)


def _forms(extra: Mapping[str, Sequence[str]] | None) -> dict[str, tuple[str, ...]]:
    return {**VERB_SYNONYMS, **OBJECT_SYNONYMS, **COLOUR_SYNONYMS, **_groups(extra)}


def _render(
    slots: list[tuple[str, str]],
    forms: dict[str, tuple[str, ...]],
    rng: random.Random,
) -> str:
    """One random phrasing of parsed `slots`."""
    drop_optional = rng.random() < 0.3
    words = []
    for kind, value in slots:
        if kind == "syn":
            words.append(rng.choice(forms.get(value, (value,))))
        elif not (drop_optional and value in OPTIONAL_WORDS):
            words.append(value)
    core = " ".join(words) or " ".join(v for _, v in slots)
    text = rng.choice(PHRASE_BANK).format(x=core)
    if rng.random() < 0.5:
        text = text[0].upper() + text[1:]
    if not text.endswith("?") and rng.random() < 0.4:
        text += "."
    return text


def paraphrase(
    instruction: str,
    n: int,
    seed: int = 0,
    *,
    synonyms: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """Up to `n` distinct rephrasings of `instruction`, deterministic for (`instruction`, `seed`).

    Distinct means different after `normalize_instruction` (case and punctuation alone do not
    make a new phrasing), and none equals the original. Fewer than `n` come back when the
    tables allow fewer; a blank instruction gives []. Words not in a synonym table (objects,
    colours, places, numbers) are kept verbatim. `synonyms` adds entries such as
    `{"mug": ["cup"]}` for words known to be safe to swap in one's own scenes.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    tokens = _strip_templates(_WORD.findall(instruction.lower()))
    if not tokens or n == 0:
        return []
    slots = _parse(tokens, _lookup(synonyms))
    forms = _forms(synonyms)
    rng = random.Random(f"{seed}\x00{instruction}")  # str seeds hash with SHA-512: stable
    seen = {normalize_instruction(instruction)}
    out: list[str] = []
    for _ in range(40 * n + 200):
        text = _render(slots, forms, rng)
        key = normalize_instruction(text)
        if key and key not in seen:
            seen.add(key)
            out.append(text)
            if len(out) == n:
                break
    return out


def diversify_tasks(
    instructions: Sequence[str],
    seed: int = 0,
    keep_original_frac: float = 0.25,
    *,
    max_variants: int = 8,
    synonyms: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """Assign varied phrasings to episodes: one output instruction per input instruction.

    Episodes sharing an exact instruction form a group of m episodes. About
    `keep_original_frac * m` of them keep the original text; the rest get up to
    `max_variants` paraphrases in equal shares, placed at seeded random positions. The most
    common phrasing of a group then covers roughly max(keep_original_frac, 1 / variants) of it.
    Blank instructions are returned unchanged (there is nothing to rephrase).
    """
    if not 0.0 <= keep_original_frac <= 1.0:
        raise ValueError(f"keep_original_frac must be in [0, 1], got {keep_original_frac}")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, text in enumerate(instructions):
        groups[text].append(i)
    out = list(instructions)
    for text, idx in groups.items():
        m = len(idx)
        n_keep = round(keep_original_frac * m)
        if keep_original_frac > 0:
            n_keep = max(1, n_keep)
        pool = paraphrase(text, min(max_variants, m - n_keep), seed, synonyms=synonyms)
        if not pool:
            continue
        assigned = [text] * n_keep + [pool[j % len(pool)] for j in range(m - n_keep)]
        random.Random(f"{seed}\x01{text}").shuffle(assigned)
        for i, new in zip(idx, assigned, strict=True):
            out[i] = new
    return out
