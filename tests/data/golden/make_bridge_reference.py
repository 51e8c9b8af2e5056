"""Write bridge_tfds_reference.json: what `tensorflow_datasets` reads from the bridge fixture.

Run once, by hand, in an environment with TensorFlow (not in CI; robofm is not needed):

    python -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install tensorflow-cpu tensorflow-datasets pillow
    /tmp/tfvenv/bin/python tests/data/golden/make_bridge_reference.py [FIXTURES_DIR]

For every episode of both splits it records the step count, the instructions, SHA-256 digests
of the float32 arrays (little-endian, C order) plus the first action and state in full, the
small per-step fields, the episode metadata and, per camera:
- `image_frame_means`: the mean of each frame as TFDS decodes it (TF's default fast IDCT);
- `image_sha256_accurate_idct`: the digest of all T frames decoded by TF with
  `dct_method="INTEGER_ACCURATE"`, the IDCT that Pillow uses, so a correct reader matches it
  bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

HERE = Path(__file__).resolve().parent
CAMERAS = ("image_0", "image_1", "image_2", "image_3")


def digest(x: np.ndarray, dtype: str) -> str:
    return hashlib.sha256(np.ascontiguousarray(x, dtype=dtype).tobytes()).hexdigest()


def dumps(out: dict) -> str:
    """JSON with one episode per line: compact, and diffs stay readable."""
    head = {k: v for k, v in out.items() if k != "splits"}
    parts = [json.dumps(head)[:-1] + ', "splits": {']
    for n, (split, episodes) in enumerate(out["splits"].items()):
        body = ",\n".join(json.dumps(ep) for ep in episodes)
        parts.append(
            f"{json.dumps(split)}: [\n{body}\n]" + ("," if n + 1 < len(out["splits"]) else "")
        )
    return "\n".join(parts) + "}}\n"


def main() -> None:
    fixtures = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[3] / "shared" / "fixtures"
    root = fixtures / "rlds" / "bridge_dataset" / "1.0.0"
    builder = tfds.builder_from_directory(str(root))
    out: dict = {
        "tensorflow": tf.__version__,
        "tensorflow_datasets": tfds.__version__,
        "dataset": str(root.relative_to(fixtures)),
        "splits": {},
    }
    skip_images = {"steps": {"observation": {c: tfds.decode.SkipDecoding() for c in CAMERAS}}}
    for split in ("train", "val"):
        # Each episode twice: decoded as TFDS does, and with the JPEG bytes left undecoded.
        decoded = tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
        undecoded = tfds.as_numpy(
            builder.as_dataset(split=split, shuffle_files=False, decoders=skip_images)
        )
        episodes = []
        for ep, ep_raw in zip(decoded, undecoded, strict=True):
            steps = list(ep["steps"])
            steps_raw = list(ep_raw["steps"])
            actions = np.stack([s["action"] for s in steps])  # (T, 7)
            states = np.stack([s["observation"]["state"] for s in steps])  # (T, 7)
            embed = np.stack([s["language_embedding"] for s in steps])  # (T, 512)
            record = {
                "length": len(steps),
                "instructions": [s["language_instruction"].decode() for s in steps],
                "actions_sha256": digest(actions, "<f4"),
                "states_sha256": digest(states, "<f4"),
                "language_embedding_sha256": digest(embed, "<f4"),
                "action_first": [float(v) for v in actions[0]],
                "state_first": [float(v) for v in states[0]],
                **{
                    k: [s[k].item() for s in steps]
                    for k in ("reward", "discount", "is_first", "is_last", "is_terminal")
                },
                "episode_metadata": {
                    k: (v.decode() if isinstance(v, bytes) else v.item())
                    for k, v in ep["episode_metadata"].items()
                },
                "image_frame_means": {},
                "image_sha256_accurate_idct": {},
            }
            for cam in CAMERAS:
                frames = np.stack([s["observation"][cam] for s in steps])  # (T, 64, 64, 3)
                record["image_frame_means"][cam] = [round(float(f.mean()), 4) for f in frames]
                accurate = np.stack(
                    [
                        tf.io.decode_jpeg(
                            s["observation"][cam], channels=3, dct_method="INTEGER_ACCURATE"
                        ).numpy()
                        for s in steps_raw
                    ]
                )
                record["image_sha256_accurate_idct"][cam] = digest(accurate, "u1")
            episodes.append(record)
        out["splits"][split] = episodes
    path = HERE / "bridge_tfds_reference.json"
    path.write_text(dumps(out))
    print(f"wrote {path}: {[len(v) for v in out['splits'].values()]} episodes")


if __name__ == "__main__":
    main()
