"""Video files through the batch CLI: the real-time pipeline in headless file mode.

``python -m realtime_prn run video.mp4`` and ``run_live.py --no-display`` share one code path
(``video.pipeline``), so the batch CLI gets tracking, the threaded capture and the same JSONL
records: every frame in order, one line per processed frame, ``<stem>.jsonl`` and
``<stem>_annotated.mp4`` in the output folder.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import VideoError
from ..outputs import OutputKinds
from .pipeline import Pipeline, PipelineConfig


def process_video(recon, path: Path, out: Path, kinds: OutputKinds, overlay: bool = True,
                  every: int = 1, per_frame_files: bool = False, stats=None,
                  detect_every: int = 10, smooth: bool = False, max_frames: int | None = None,
                  progress: bool = True) -> dict:
    """Every ``every``-th frame of ``path`` → ``out``; returns the pipeline's summary as a dict.

    A file that ends early (truncated, unreadable frame) keeps what was written and raises
    ``VideoError`` with the reason, so the CLI prints one ``error:`` line.
    """
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"video not found: {path}")
    cfg = PipelineConfig(source=path, output=out, stem=path.stem, annotated_video=overlay,
                         every=every, per_frame=kinds if per_frame_files and kinds.any() else None,
                         detect_every=detect_every, smooth=smooth, max_frames=max_frames,
                         progress=progress, display=False)
    pipe = Pipeline(recon, cfg, log=lambda msg: None)
    summary = pipe.run()
    if stats is not None:
        stats.inputs += summary.frames
        stats.faces += summary.faces
        stats.files += summary.per_frame_files + len(summary.files)
        for k, v in pipe.timings.items():
            if v:
                stats.stage.setdefault(k, []).extend(x * 1000 for x in v)
    if summary.frames == 0 and not summary.interrupted:
        raise VideoError(f"no decodable frame in {path}")
    if summary.error:
        raise VideoError(f"{summary.end_reason} (outputs so far were kept)")
    if summary.interrupted:
        raise KeyboardInterrupt
    return {"frames": summary.frames, **summary.as_dict()}
