"""Video files through the batch CLI: every frame in order → JSONL records + annotated mp4."""
from __future__ import annotations

import time
from pathlib import Path

import cv2

from ..errors import VideoError
from ..outputs import OutputKinds, write_face
from ..render.overlay import draw_face, draw_text
from .records import JsonlWriter


def open_video(path: Path) -> tuple[cv2.VideoCapture, float, int]:
    if not Path(path).is_file():
        raise VideoError(f"video not found: {path}")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise VideoError(f"cannot open video (corrupt or unsupported codec): {path}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    return cap, fps, n


def process_video(recon, path: Path, out: Path, kinds: OutputKinds, overlay: bool = True,
                  every: int = 1, per_frame_files: bool = False, stats=None) -> dict:
    from tqdm import tqdm

    cap, fps, n = open_video(path)
    ok, frame = cap.read()
    if not ok:
        raise VideoError(f"no decodable frame in {path}")
    writer = None
    if overlay:
        h, w = frame.shape[:2]
        mp4 = out / f"{path.stem}_annotated.mp4"
        writer = cv2.VideoWriter(str(mp4.with_suffix(".part.mp4")), cv2.VideoWriter_fourcc(*"mp4v"),
                                 fps / every, (w, h))
    records = JsonlWriter(out / f"{path.stem}.jsonl")
    index = 0
    bar = tqdm(total=n or None, desc=path.name, unit="frame")
    try:
        while ok:
            if index % every == 0:
                t0 = time.perf_counter()
                faces = recon.reconstruct(frame)
                for i, face in enumerate(faces):
                    face.detection.track_id = i
                records.write(index, index / fps, faces)
                if stats is not None:
                    stats.inputs += 1
                    stats.faces += len(faces)
                if per_frame_files and kinds.any():
                    for i, face in enumerate(faces):
                        written = write_face(face, out / f"{path.stem}_{index:06d}_{i}", kinds)
                        if stats is not None:
                            stats.files += len(written)
                if writer is not None:
                    for face in faces:
                        draw_face(frame, face)
                    ms = (time.perf_counter() - t0) * 1000
                    draw_text(frame, [f"frame {index}  faces {len(faces)}  {ms:.0f} ms"])
                    writer.write(frame)
                if stats is not None:
                    recon.timings["total"] = time.perf_counter() - t0
                    stats.add(recon.timings)
            bar.update(1)
            index += 1
            ok, frame = cap.read()
    finally:
        bar.close()
        cap.release()
        records.close()
        if writer is not None:
            writer.release()
            mp4.with_suffix(".part.mp4").replace(mp4)
    if stats is not None:
        stats.files += 1 + (writer is not None)
    return {"frames": index}
