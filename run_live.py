#!/usr/bin/env python
"""Real-time dense 3D faces from a webcam, a video file, a stream or an image folder.

Thin: parse flags → ``realtime_prn.video.pipeline``. Examples::

    python run_live.py                                   # webcam 0 in a window
    python run_live.py --source clip.mp4 --no-display --output out/ --view3d
    python run_live.py --source rtsp://host/stream --smooth --detect-every 5
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from realtime_prn.cli import add_model_args

    p = argparse.ArgumentParser(
        prog="run_live.py",
        description="Track faces and reconstruct their dense 3D shape (PRN position maps) in real "
                    "time: capture → detect/track → crop → engine → pose/depth → window and/or "
                    "annotated video + per-frame JSONL records.",
        epilog="Keys in the window: q/Esc quit, space pause, l landmarks, m mesh points, a axes, "
               "b boxes, v 3D view, o 3D beside/over, s smoothing. Ctrl-C stops cleanly; "
               "records written so far are kept. Headless 3D needs EGL (Debian: libegl1 "
               "libegl-mesa0 libgl1-mesa-dri libgl1).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s = p.add_argument_group("source")
    s.add_argument("--source", default="0",
                   help="camera index (0), video file, rtsp/http URL, or folder of images. Live "
                        "sources drop stale frames to keep latency low; files and folders are "
                        "processed frame by frame, none dropped")
    s.add_argument("--max-frames", type=int, default=None, help="stop after N frames")
    add_model_args(p)
    t = p.add_argument_group("tracking")
    t.add_argument("--detect-every", type=int, default=10,
                   help="run the face detector every N frames (and whenever a face is lost); "
                        "between detections each face is cropped from its previous landmarks. "
                        "1 = detect every frame")
    t.add_argument("--smooth", action="store_true",
                   help="One Euro filter on each face's landmarks, vertices and pose (less jitter)")
    o = p.add_argument_group("display and outputs")
    o.add_argument("--no-display", action="store_true",
                   help="headless: no window (needed on machines without a display)")
    o.add_argument("--view3d", nargs="?", const="beside", default=None, choices=["beside", "over"],
                   help="render the shaded 3D mesh with pose axes (vispy; EGL offscreen when "
                        "headless), beside or over the 2D view")
    o.add_argument("--view3d-angle", type=float, default=0.0,
                   help="turn the 3D mesh by this many degrees about its vertical axis")
    o.add_argument("--depth", action="store_true",
                   help="also show a depth view (numba z-buffer) beside the 2D view")
    o.add_argument("--output", default=None,
                   help="folder for <name>_annotated.mp4 and <name>.jsonl (one line per frame: "
                        "index, time, face id, box, 68 landmarks, pose angles, translation)")
    o.add_argument("--per-frame", default=None,
                   help="also write per-face files for every frame, e.g. obj,npz "
                        "(kinds: obj, ply, npz, mat, kpt, pose, depth, texture, mask)")
    o.add_argument("--no-video", action="store_true", help="with --output: records only, no mp4")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    o.add_argument("--sequential", action="store_true",
                   help="run inference and outputs in one thread (for timing comparisons)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from realtime_prn.errors import run_cli
    from realtime_prn.render.view3d import View3DUnavailable

    return run_cli(lambda: run(args), interrupted="interrupted", extra=(View3DUnavailable,))


def run(args) -> int:
    from realtime_prn import FaceReconstructor
    from realtime_prn.cli import options_from_args
    from realtime_prn.video.frame_outputs import parse_per_frame
    from realtime_prn.video.pipeline import Pipeline, PipelineConfig

    if args.detect_every < 1:
        raise ValueError(f"--detect-every must be at least 1, got {args.detect_every}")
    if args.max_frames is not None and args.max_frames < 1:
        raise ValueError(f"--max-frames must be at least 1, got {args.max_frames}")
    per_frame = parse_per_frame(args.per_frame)
    if per_frame is not None and args.output is None:
        raise ValueError("--per-frame needs --output DIR")
    if args.no_display and args.output is None:
        print("note: --no-display without --output writes nothing; printing timings only",
              file=sys.stderr)
    if not args.no_display:
        from realtime_prn.render.view3d import use_backend
        use_backend(display=True)  # fail in one line before loading any model
    from realtime_prn.video.capture import open_source
    source = open_source(args.source)  # a bad source fails here, before any model loads
    cfg = PipelineConfig(
        source=source, output=args.output, detect_every=args.detect_every, smooth=args.smooth,
        display=not args.no_display, view3d=args.view3d is not None,
        view3d_mode=args.view3d or "beside", view3d_angle=args.view3d_angle,
        depth_view=args.depth, annotated_video=not args.no_video, per_frame=per_frame,
        max_frames=args.max_frames, progress=not args.no_progress, overlap=not args.sequential,
        max_faces=args.max_faces)
    try:
        recon = FaceReconstructor(options_from_args(args))
    except BaseException:
        source.release()
        raise
    summary = Pipeline(recon, cfg).run()
    print(summary.line(), file=sys.stderr)
    for f in summary.files:
        print(f"wrote {f}", file=sys.stderr)
    if summary.per_frame_files:
        print(f"wrote {summary.per_frame_files} per-frame file(s) to {args.output}", file=sys.stderr)
    if summary.interrupted:
        return 130
    return 1 if summary.error else 0


if __name__ == "__main__":
    sys.exit(main())
