"""Does the mesh follow the face? Per video: detection on every frame, the chosen weights on every
face, and how often the 68 landmarks sit inside the detector's box.

Why: issue 5's check for trained weights ("landmarks within the face box on every frame with a
detection"), measured rather than eyeballed, plus a contact sheet of overlay frames to look at.
A face passes when its landmark centroid is inside the box and >= 90 % of its landmarks are inside
the box grown by 20 % per side (BlazeFace's box stops at the brows and inside the jaw line).

    python tools/check_videos.py --weights uvreg [--weights mb05uv] [--out out/videos]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def face_follows_box(landmarks: np.ndarray, box: np.ndarray, grow: float = 0.2, share: float = 0.9) -> bool:
    """Centroid inside the box and ``share`` of the points inside the box grown by ``grow`` per side."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    c = landmarks[:, :2].mean(axis=0)
    if not (x0 <= c[0] <= x1 and y0 <= c[1] <= y1):
        return False
    gx, gy = grow * (x1 - x0), grow * (y1 - y0)
    inside = ((landmarks[:, 0] >= x0 - gx) & (landmarks[:, 0] <= x1 + gx)
              & (landmarks[:, 1] >= y0 - gy) & (landmarks[:, 1] <= y1 + gy))
    return bool(inside.mean() >= share)


def check_video(path: Path, rec: object, sheet_frames: int = 6) -> tuple[dict, list[np.ndarray]]:
    import cv2
    from tqdm import tqdm

    from realtime_prn.render.overlay import draw_box, draw_face

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise OSError(f"cannot open video {path}")
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    keep = set(np.linspace(0, max(0, total - 1), sheet_frames).astype(int).tolist())
    frames = with_det = faces = passed = 0
    bad: list[int] = []
    sheet = []
    for i in tqdm(range(total), desc=path.name, mininterval=5):
        ok, frame = cap.read()
        if not ok:
            break
        frames += 1
        dets = rec.detect(frame)
        if not dets:
            continue
        with_det += 1
        result = rec.reconstruct_detections(frame, dets)
        frame_ok = True
        for f, d in zip(result, dets):
            faces += 1
            good = face_follows_box(f.landmarks, np.asarray(d.box))
            passed += good
            frame_ok &= good
        if not frame_ok:
            bad.append(i)
        if i in keep:
            img = frame.copy()
            for f, d in zip(result, dets):
                draw_box(img, d.box)
                draw_face(img, f)
            sheet.append(cv2.resize(img, (320, int(320 * img.shape[0] / img.shape[1]))))
    cap.release()
    return ({"video": path.name, "frames": frames, "frames_with_detection": with_det, "faces": faces,
             "faces_following": passed, "frames_failing": len(bad), "first_failing": bad[:10]}, sheet)


def main(argv: list[str] | None = None) -> int:
    from realtime_prn.errors import run_cli

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", action="append", default=None, help="weights to check (repeatable)")
    p.add_argument("--videos", default=None, help="folder of videos (default shared eval/videos)")
    p.add_argument("--out", default="out/videos", help="where results.json and contact sheets go")
    p.add_argument("--flip", action="store_true", help="test-time flip averaging (Options.flip)")
    args = p.parse_args(argv)
    return run_cli(lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    import cv2

    from realtime_prn import FaceReconstructor, Options
    from realtime_prn.paths import data_file

    folder = Path(args.videos) if args.videos else data_file("eval", "videos", "README.md").parent
    videos = sorted(folder.glob("*.mp4"))
    if not videos:
        raise FileNotFoundError(f"no .mp4 videos in {folder}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for weights in args.weights or ["uvreg"]:
        rec = FaceReconstructor(Options(weights=weights, flip=args.flip))
        rows = []
        for v in videos:
            row, sheet = check_video(v, rec)
            rows.append(row)
            print(json.dumps({"weights": weights, **row}), flush=True)
            if sheet:  # frames of one video share a size; pad the last row with black
                sheet += [np.zeros_like(sheet[0])] * (-len(sheet) % 3)
                grid = np.vstack([np.hstack(sheet[i : i + 3]) for i in range(0, len(sheet), 3)])
                cv2.imwrite(str(out / f"{weights}{'_flip' if args.flip else ''}_{v.stem}.png"), grid)
        results[weights] = rows
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
