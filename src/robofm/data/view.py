"""Look at one episode: a PNG contact sheet with its instruction and action plots, or an mp4."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robofm.data.episode import EpisodeSource
from robofm.data.video import VideoEncoder

SHEET_FRAMES = 8  # frames per camera on the contact sheet


def contact_sheet(source: EpisodeSource, i: int, out: Path) -> Path:
    """PNG: SHEET_FRAMES evenly spaced frames per camera, then every action dimension vs time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = source.episode(i)
    steps = np.linspace(0, ep.length - 1, min(SHEET_FRAMES, ep.length)).round().astype(int)
    cams = list(source.cameras)
    rows = len(cams) + 1
    fig = plt.figure(figsize=(2 * len(steps), 2 * len(cams) + 3))
    grid = fig.add_gridspec(rows, len(steps), height_ratios=[1] * len(cams) + [1.5])
    for r, cam in enumerate(cams):
        frames = source.frames(i, cam, steps)
        for c, (step, img) in enumerate(zip(steps, frames, strict=True)):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{cam} t={ep.timestamps[step]:.2f}s", fontsize=7)
    ax = fig.add_subplot(grid[rows - 1, :])
    names = getattr(source.action_space, "names", None) or [
        f"a{d}" for d in range(ep.actions.shape[1])
    ]
    for d in range(ep.actions.shape[1]):
        ax.plot(ep.timestamps, ep.actions[:, d], label=names[d])
    ax.set_xlabel("time (s)")
    ax.set_ylabel("action (robot units)")
    ax.legend(fontsize=7, ncol=min(8, len(names)))
    fig.suptitle(f"{source.name} episode {ep.index}: {ep.task!r}", fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def episode_video(source: EpisodeSource, i: int, out: Path) -> Path:
    """mp4 of all cameras side by side at the dataset's fps, instruction drawn on top."""
    from PIL import Image, ImageDraw

    ep = source.episode(i)
    steps = np.arange(ep.length)
    frames = np.concatenate([source.frames(i, cam, steps) for cam in source.cameras], axis=2)
    banner = 14
    h, w = frames.shape[1] + banner, frames.shape[2]
    enc = VideoEncoder(out, source.fps, w + w % 2, h + h % 2)
    for frame in frames:
        canvas = Image.new("RGB", (w + w % 2, h + h % 2))
        canvas.paste(Image.fromarray(frame), (0, banner))
        ImageDraw.Draw(canvas).text((2, 1), ep.task[: w // 6], fill=(255, 255, 255))
        enc.write(np.asarray(canvas)[None])
    enc.close()
    return out
