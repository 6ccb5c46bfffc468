#!/usr/bin/env python
"""Face-swap costs per frame, printed (never asserted): medians over runs on a real video frame.

    python tools/swap_benchmark.py                    # stage costs, numba vs vispy render
    python tools/swap_benchmark.py --flicker 90       # + flicker with/without stabilisation
    python tools/benchmark.py --swap                  # the same, from the main benchmark

Stages: texture extraction (UV texture + visibility of the source, and the source's one-off
preparation), completion of the source texture for one target (mirror/seam handling), the
render (numba z-buffer + cv2.remap, and OpenGL through vispy offscreen where EGL works),
blending (full-resolution seamlessClone as in PRNet's demo, the video path's half-resolution
solve with per-vertex temporal smoothing, feathered alpha), and a whole photo-style swap.
The machine is shared and noisy, so every figure is a median and the numba/vispy pair is
measured in the same run.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("EGL_PLATFORM", "surfaceless")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from benchmark import timeit  # noqa: E402  (one timing rule for every benchmark)


def _frame(video: Path, index: int) -> np.ndarray:
    cap = cv2.VideoCapture(str(video))
    cap.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, frame = cap.read()
    cap.release()
    if not ok:
        raise SystemExit(f"cannot read frame {index} of {video}")
    return frame


def bench_stages(args) -> dict[str, float]:
    from realtime_prn import swap as S
    from realtime_prn.api import FaceReconstructor, Options
    from realtime_prn.image import read_image

    recon = FaceReconstructor(Options(threads=args.threads))
    frame = _frame(Path(args.video), args.frame)
    target = S.largest_face(frame, recon, "video frame")
    source = S.largest_face(read_image(args.source), recon, "source photo")
    size = args.texture_size
    prepared = S.SwapSource(S.face_texture(source, size), source.assets)
    region = S.swap_region(source.assets, prepared)
    tex = prepared.texture_for(target)
    vis = region & tex.visibility
    rendered = S.render_local(target, tex.texture, vis)
    h, w = frame.shape[:2]
    box = target.box
    print(f"\n== swap stages on {Path(args.video).name} frame {args.frame} ({w}x{h}, face "
          f"~{box[2] - box[0]:.0f} px, texture {size}), median ms over {args.runs} runs ==")

    def fresh_texture():
        f = type(source)(position_map=source.position_map, image=source.image, assets=source.assets)
        return S.face_texture(f, size)

    def fresh_target():
        return type(target)(position_map=target.position_map, image=frame, assets=target.assets)

    def swap_once():
        return S.swap_faces(source, fresh_target(), "poisson", source=prepared)

    corr = S._Correction()
    rows = [
        ("texture extraction (source: UV texture + visibility)", fresh_texture),
        ("source preparation (once per source)", lambda: S.SwapSource(S.face_texture(source, size),
                                                                       source.assets)),
        ("texture completion for a target", lambda: prepared.texture_for(target)),
        ("render numba (z-buffer UV + cv2.remap)", lambda: S.render_local(target, tex.texture, vis,
                                                                            "numba")),
        ("render+complete (render_swap, one raster)", lambda: S.render_swap(target, prepared,
                                                                              region)),
        ("blend poisson (full res, PRNet's seamlessClone)",
         lambda: S.blend_rendered(frame, rendered, "poisson")),
        ("blend poisson half res + temporal (video)",
         lambda: corr.apply(frame, rendered, target.vertices, target.triangles, 0)),
        ("blend alpha (feather + colour match)",
         lambda: S.blend_rendered(frame, rendered, "alpha", color_match=True)),
        ("photo swap total (fresh target geometry)", swap_once),
    ]
    results: dict[str, float] = {}
    for name, fn in rows:
        ms = timeit(fn, args.runs) * 1000
        results[name] = ms
        print(f"{name:52s} {ms:8.2f}", flush=True)
    if not args.no_vispy:
        try:
            gl = S.GLTextureRenderer()
            a = S.render_local(target, tex.texture, vis, "vispy", gl)
            ms_gl = timeit(lambda: S.render_local(target, tex.texture, vis, "vispy", gl), args.runs) * 1000
            ms_nb = timeit(lambda: S.render_local(target, tex.texture, vis, "numba"), args.runs) * 1000
            _, ma = a.full()
            ib, mb = rendered.full()
            ia, _ = a.full()
            both = ma & mb
            iou = both.sum() / max((ma | mb).sum(), 1)
            diff = np.abs(ia.astype(np.int16) - ib)[both].mean() if both.any() else float("nan")
            results["render vispy"] = ms_gl
            print(f"{'render vispy (EGL offscreen, same texture)':52s} {ms_gl:8.2f}"
                  f"   (numba again: {ms_nb:.2f}; ratio {ms_gl / ms_nb:.2f}; mask IoU {iou:.4f}, "
                  f"mean |Δ| {diff:.2f} levels)")
            gl.close()
        except Exception as exc:  # no EGL here: say so, the numba path is the default anyway
            print(f"  (vispy render skipped: {str(exc).splitlines()[0]})")
    return results


def bench_flicker(args) -> None:
    from realtime_prn import swap as S
    from realtime_prn.api import FaceReconstructor, Options

    recon = FaceReconstructor(Options(threads=args.threads))
    variants = [("none (every frame on its own)", dict(stabilise=False)),
                ("geometry only (One Euro)", dict(smooth_geometry=True, smooth_tint=False)),
                ("tint only (per-vertex Poisson EMA)", dict(smooth_geometry=False, smooth_tint=True)),
                ("both (default)", dict(stabilise=True))]
    print(f"\n== flicker on {Path(args.video).name}, first {args.flicker} frames, source "
          f"{Path(args.source).name} ==")
    print(f"{'stabilisation':38s} {'surface Δ':>10s} {'input Δ':>8s} {'2nd-diff':>9s} "
          f"{'mask IoU':>9s} {'jitter':>7s} {'ms/frame':>9s}")
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        for label, kw in variants:
            s = S.swap_video(args.source, args.video, Path(tmp) / "out.avi", reconstructor=recon,
                             max_frames=args.flicker, progress=False, **kw)
            f = s.flicker
            print(f"{label:38s} {f.surface_change:10.2f} {f.surface_change_in:8.2f} "
                  f"{f.accel_ratio:9.3f} {f.mask_iou:9.4f} {f.mask_jitter:7.4f} "
                  f"{s.stage_ms.get('total', float('nan')):9.1f}", flush=True)
    print("surface Δ: mean |colour change| per frame at the rendered vertices (levels; the "
          "source texture is fixed, so lower = steadier); 2nd-diff: output/input second "
          "temporal difference in the mask; jitter: fraction of the mask toggling per frame")


def main(argv: list[str] | None = None) -> int:
    from realtime_prn.paths import data_root

    shared = data_root() / "eval"
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", default=str(shared / "videos" / "sadtalker_WDA_AlexandriaOcasioCortez_000.mp4"))
    p.add_argument("--frame", type=int, default=30, help="frame index for the stage costs")
    p.add_argument("--source", default=str(shared / "images" / "prnet_trump.jpg"))
    p.add_argument("--texture-size", type=int, default=256)
    p.add_argument("--runs", type=int, default=9, help="timed runs per figure (median)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-vispy", action="store_true", help="skip the OpenGL render")
    p.add_argument("--flicker", type=int, default=0, metavar="N",
                   help="also swap the first N frames with each stabilisation variant")
    args = p.parse_args(argv)
    for path in (args.video, args.source):
        if not Path(path).is_file():
            print(f"error: not found: {path}", file=sys.stderr)
            return 2
    bench_stages(args)
    if args.flicker:
        bench_flicker(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
