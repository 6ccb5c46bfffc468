#!/usr/bin/env python
"""End-to-end video figures for the real-time pipeline, against an official-style path, in one run.

    python tools/pipeline_benchmark.py                       # liveportrait_d6, fp32, 300 frames
    python tools/pipeline_benchmark.py --precision int8 --soak 3000
    python tools/pipeline_benchmark.py --video clip.mp4 --frames 0   # whole video

Printed, never asserted (this machine is shared and noisy; the ratio is measured in the same
process, on the same frames, minutes apart at most):

* **pipeline**: ``video.pipeline`` headless — threaded capture, tracking (detector every 10
  frames), cv2 crop, ONNX Runtime, pose from all vertices, annotated mp4 + JSONL written.
* **official-style**: what PRN's demo does per image, applied to each frame: detect every
  frame, ``skimage.transform.estimate_transform`` + ``warp`` crop of the whole frame
  converted to float64, the TensorFlow engine, the numpy restore and pose of PRNet's
  ``api.py`` / ``estimate_pose.py`` (canonical vertices loaded from disk each call, as there),
  ``get_colors``, ``plot_kpt`` / ``plot_pose_box`` drawing loops, then the same mp4 + JSONL.
  The detector is the pipeline's (BlazeFace) so the ratio measures structure, not detectors;
  ``--official-detector dlib`` uses the official one. The network is the built-in model in
  TensorFlow (``Options(engine='tensorflow')``); ``--official-net resfcn256`` times PRN's own
  architecture (random weights: speed only — the official checkpoint is not on this machine).
* **jitter**: mean frame-to-frame landmark displacement / face size on the stillest 30-frame
  stretch (``smoothing.still_segment``), without and with ``--smooth``; plus the mean offset
  smoothing introduces over the whole clip (its cost: lag while moving).
* **soak** (``--soak N``): the video looped to N frames; RSS at the start and the end.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

DEFAULT_VIDEO = "liveportrait_d6.mp4"  # 480×480, 1008 frames, one face: the fps clip


def default_video() -> Path:
    from realtime_prn.paths import data_root
    return data_root() / "eval" / "videos" / DEFAULT_VIDEO


def rss_mb() -> float:
    """Resident memory of this process (Linux /proc; no psutil needed)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class LoopSource:
    """A video file played in a loop up to ``total`` frames (for the soak run)."""

    live = False

    def __init__(self, path: Path, total: int):
        self.path, self.total = Path(path), total
        self.cap = cv2.VideoCapture(str(path))
        self.fps = self.cap.get(cv2.CAP_PROP_FPS) or 25.0
        self.frame_count = total
        self.name = self.path.name
        self.stem = self.path.stem + "_loop"
        self.n = 0

    def read(self):
        if self.n >= self.total:
            return None
        ok, frame = self.cap.read()
        if not ok:
            self.cap.release()
            self.cap = cv2.VideoCapture(str(self.path))
            ok, frame = self.cap.read()
            if not ok:
                return None
        self.n += 1
        return frame

    def release(self):
        self.cap.release()


def _recon(engine: str, precision: str, weights=None, detector: str = "blazeface", threads=None):
    from realtime_prn import FaceReconstructor, Options
    return FaceReconstructor(Options(engine=engine, precision=precision, weights=weights,
                                     detector=detector, threads=threads))


def _landmarks_of(jsonl: Path, n: int) -> np.ndarray:
    """T×68×2 landmarks of face id 0 (NaN where absent) from a records file."""
    out = np.full((n, 68, 2), np.nan)
    for line in jsonl.read_text().splitlines():
        rec = json.loads(line)
        for f in rec["faces"]:
            if f["id"] == 0 and rec["frame"] < n:
                out[rec["frame"]] = np.asarray(f["landmarks"])[:, :2]
    return out


# -- the official-style path ----------------------------------------------------------------------
_END_LIST = np.array([17, 22, 27, 42, 48, 31, 36, 68], dtype=np.int32) - 1


def _official_plot_kpt(image, kpt):
    """PRNet utils/cv_plot.py ``plot_kpt``: a Python loop over the 68 points."""
    image = image.copy()
    kpt = np.round(kpt).astype(np.int32)
    for i in range(kpt.shape[0]):
        st = kpt[i, :2]
        image = cv2.circle(image, (int(st[0]), int(st[1])), 1, (0, 0, 255), 2)
        if i in _END_LIST:
            continue
        ed = kpt[i + 1, :2]
        image = cv2.line(image, (int(st[0]), int(st[1])), (int(ed[0]), int(ed[1])), (255, 255, 255), 1)
    return image


def _official_plot_pose_box(image, camera_matrix, kpt, color=(0, 255, 0), line_width=2):
    """PRNet ``plot_pose_box``: a 3D box projected with the affine camera."""
    image = image.copy()
    point_3d = []
    rear_size, rear_depth, front_size, front_depth = 90, 0, 105, 110
    point_3d += [(-rear_size, -rear_size, rear_depth), (-rear_size, rear_size, rear_depth),
                 (rear_size, rear_size, rear_depth), (rear_size, -rear_size, rear_depth),
                 (-rear_size, -rear_size, rear_depth)]
    point_3d += [(-front_size, -front_size, front_depth), (-front_size, front_size, front_depth),
                 (front_size, front_size, front_depth), (front_size, -front_size, front_depth),
                 (-front_size, -front_size, front_depth)]
    point_3d = np.array(point_3d, dtype=float).reshape(-1, 3)
    point_3d_homo = np.hstack((point_3d, np.ones([point_3d.shape[0], 1])))
    point_2d = point_3d_homo.dot(camera_matrix.T)[:, :2]
    point_2d[:, :2] = point_2d[:, :2] - np.mean(point_2d[:4, :2], 0) + np.mean(kpt[:27, :2], 0)
    point_2d = np.int32(point_2d.reshape(-1, 2))
    cv2.polylines(image, [point_2d], True, color, line_width, cv2.LINE_AA)
    for a, b in ((1, 6), (2, 7), (3, 8)):
        cv2.line(image, tuple(int(v) for v in point_2d[a]), tuple(int(v) for v in point_2d[b]),
                 color, line_width, cv2.LINE_AA)
    return image


def _official_pose(vertices, canonical_path: Path):
    """PRNet utils/estimate_pose.py: similarity by SVD, ``P2sRt``, ``matrix2angle``."""
    canonical = np.load(canonical_path)  # the official code loads it on every call
    p0 = np.copy(vertices).T
    p1 = np.copy(canonical).T
    t0 = -np.mean(p0, axis=1).reshape(3, 1)
    t1 = -np.mean(p1, axis=1).reshape(3, 1)
    t_final = t1 - t0
    p0c, p1c = p0 + t0, p1 + t1
    u, _, v = np.linalg.svd(p0c.dot(p1c.T))
    r = u.dot(v)
    if np.linalg.det(r) < 0:
        r[:, 2] *= -1
    rms0 = np.sqrt(np.mean(np.linalg.norm(p0c, axis=0) ** 2))
    s = rms0 / np.sqrt(np.mean(np.linalg.norm(p1c, axis=0) ** 2))
    p = np.c_[s * np.eye(3).dot(r), t_final]
    r1, r2 = p[0:1, :3], p[1:2, :3]
    r1, r2 = r1 / np.linalg.norm(r1), r2 / np.linalg.norm(r2)
    rot = np.concatenate((r1, r2, np.cross(r1, r2)), 0)
    x = np.arcsin(np.clip(rot[2, 0], -1, 1))
    y = np.arctan2(rot[2, 1] / np.cos(x), rot[2, 2] / np.cos(x))
    z = np.arctan2(rot[1, 0] / np.cos(x), rot[0, 0] / np.cos(x))
    return p, (x, y, z)


def run_official_style(video: Path, frames: int, out_dir: Path, detector: str = "blazeface",
                       net: str = "mb05uv", log=print) -> dict:
    """PRN's per-image demo applied frame by frame, sequentially (see the module docstring)."""
    from skimage.transform import estimate_transform, warp

    from realtime_prn.assets import load_assets
    from realtime_prn.detectors import create_detector
    from realtime_prn.engines.tensorflow import TensorFlowEngine
    from realtime_prn.paths import data_file
    from realtime_prn.video.records import JsonlWriter

    if net == "resfcn256":
        from realtime_prn.network.resfcn256 import build_resfcn256
        engine = TensorFlowEngine(build_resfcn256(), max_batch=1)
    else:
        engine = _recon("tensorflow", "fp32").engine
    det = create_detector(detector)
    assets = load_assets()
    canonical_path = data_file("prn", "canonical_vertices.npy")
    face_ind, kpt_ind = assets.face_ind, assets.kpt_ind
    dst = np.array([[0, 0], [0, 255], [255, 0]])
    cap = cv2.VideoCapture(str(video))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    writer = None
    records = JsonlWriter(out_dir / "official.jsonl")
    stages: dict[str, list[float]] = {k: [] for k in
                                      ("decode", "detect", "crop", "engine", "post", "render", "encode")}
    engine.infer(np.zeros((1, 256, 256, 3), np.float32))  # graph trace, not timed
    t_start = time.perf_counter()
    n = 0
    out_times = []
    while frames <= 0 or n < frames:
        t0 = time.perf_counter()
        ok, frame = cap.read()
        if not ok:
            break
        image = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)  # the demo reads RGB (skimage.io.imread)
        t1 = time.perf_counter()
        found = det.detect(frame)
        t2 = time.perf_counter()
        faces = []
        if found:
            left, top, right, bottom = (float(v) for v in found[0].box[:4])
            old_size = (right - left + bottom - top) / 2
            center = np.array([right - (right - left) / 2.0, bottom - (bottom - top) / 2.0 + old_size * 0.14])
            size = int(old_size * 1.58)
            src = np.array([[center[0] - size / 2, center[1] - size / 2],
                            [center[0] - size / 2, center[1] + size / 2],
                            [center[0] + size / 2, center[1] - size / 2]])
            tform = estimate_transform("similarity", src, dst)
            img = image / 255.0
            cropped = warp(img, tform.inverse, output_shape=(256, 256))
            t3 = time.perf_counter()
            cropped_pos = engine.infer(cropped[np.newaxis].astype(np.float32))[0]
            t4 = time.perf_counter()
            cropped_vertices = np.reshape(cropped_pos, [-1, 3]).T
            z = cropped_vertices[2, :].copy() / tform.params[0, 0]
            cropped_vertices[2, :] = 1
            vertices = np.dot(np.linalg.inv(tform.params), cropped_vertices)
            vertices = np.vstack((vertices[:2, :], z))
            pos = np.reshape(vertices.T, [256, 256, 3])
            kpt = pos[kpt_ind[1, :], kpt_ind[0, :], :]
            all_vertices = np.reshape(pos, [256 ** 2, -1])
            verts = all_vertices[face_ind, :]
            h, w = image.shape[:2]
            vv = verts.copy()
            vv[:, 0] = np.minimum(np.maximum(vv[:, 0], 0), w - 1)
            vv[:, 1] = np.minimum(np.maximum(vv[:, 1], 0), h - 1)
            ind = np.round(vv).astype(np.int32)
            _colors = image[ind[:, 1], ind[:, 0], :]
            camera_matrix, pose = _official_pose(verts, canonical_path)
            faces.append((found[0].box, kpt, camera_matrix, pose))
            t5 = time.perf_counter()
        else:
            t3 = t4 = t5 = t2
        shown = frame
        for _box, kpt, cam, _pose in faces:
            shown = _official_plot_kpt(shown, kpt)
            shown = _official_plot_pose_box(shown, cam, kpt)
        t6 = time.perf_counter()
        if writer is None:
            hh, ww = shown.shape[:2]
            writer = cv2.VideoWriter(str(out_dir / "official.mp4"), cv2.VideoWriter_fourcc(*"mp4v"),
                                     fps, (ww, hh))
        writer.write(shown)
        records.f.write(json.dumps({
            "frame": n, "time": round(n / fps, 4),
            "faces": [{"box": [round(float(v), 2) for v in b[:4]], "landmarks": np.round(k, 2).tolist(),
                       "pose": [float(np.degrees(a)) for a in p]} for b, k, _c, p in faces]}) + "\n")
        t7 = time.perf_counter()
        for k, v in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6)):
            stages[k].append(v)
        n += 1
        out_times.append(t7)
    cap.release()
    records.close()
    if writer is not None:
        writer.release()
    elapsed = time.perf_counter() - t_start
    return {"frames": n, "elapsed_s": elapsed, "mean_fps": n / elapsed if elapsed else 0.0,
            "median_fps": 1.0 / statistics.median(np.diff([t_start] + out_times)) if n else 0.0,
            "stage_ms": {k: statistics.median(v) * 1000 for k, v in stages.items() if v},
            "detector": detector, "net": net}


# -- the benchmark ---------------------------------------------------------------------------------
def run_pipeline_benchmark(video: str | os.PathLike | None = None, precision: str = "fp32", *,
                           frames: int = 300, engine: str = "onnxruntime", weights=None,
                           detector: str = "blazeface", threads: int | None = None,
                           detect_every: int = 10, overlap: bool = True, view3d: bool = False,
                           official: bool = True, official_frames: int | None = None,
                           official_detector: str | None = None, official_net: str = "mb05uv",
                           jitter: bool = True, soak_frames: int = 0, log=print) -> dict:
    """Figures for ``video`` (default eval/videos/liveportrait_d6.mp4); see the module docstring.

    ``frames``: frames for the pipeline and (unless ``official_frames``) the official-style
    path; 0 = the whole video. Returns a dict (also what ``main`` prints as JSON).
    """
    from realtime_prn.video.pipeline import Pipeline, PipelineConfig
    from realtime_prn.video.smoothing import landmark_jitter, still_segment

    video = Path(video) if video else default_video()
    if not video.is_file():
        raise FileNotFoundError(f"video not found: {video}")
    cap = cv2.VideoCapture(str(video))
    info = {"video": video.name, "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            "video_frames": int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), "precision": precision,
            "engine": engine, "cpus": os.cpu_count(), "detect_every": detect_every,
            "overlap": overlap, "view3d": view3d}
    cap.release()
    n = frames if frames > 0 else info["video_frames"]
    recon = _recon(engine, precision, weights, detector, threads)
    result: dict = {"info": info}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # warm-up: engine sessions and numba kernels compile/trace before timing
        Pipeline(recon, PipelineConfig(source=video, output=None, max_frames=5, progress=False),
                 log=lambda m: None).run()
        log(f"pipeline: {video.name}, {n} frames, {engine} {precision} ...")
        s = Pipeline(recon, PipelineConfig(source=video, output=tmp / "pipe", max_frames=n,
                                           detect_every=detect_every, overlap=overlap,
                                           view3d=view3d, progress=False),
                     log=lambda m: None).run()
        result["pipeline"] = {"frames": s.frames, "faces": s.faces, "elapsed_s": s.elapsed_s,
                              "mean_fps": s.mean_fps, "median_fps": s.median_fps,
                              "stage_ms": s.stage_ms, "detector_runs": s.detector_runs}
        if official:
            m = official_frames or n
            log(f"official-style: {m} frames, tensorflow ({official_net}), detect every frame ...")
            o = run_official_style(video, m, tmp, detector=official_detector or detector,
                                   net=official_net, log=log)
            result["official"] = o
            # Same frames for the ratio: the pipeline's mean fps over its own run of n frames.
            result["ratio_mean_fps"] = s.mean_fps / o["mean_fps"] if o["mean_fps"] else None
        if jitter:
            log("jitter: without and with smoothing ...")
            lms = {}
            for smooth in (False, True):
                d = tmp / f"j{int(smooth)}"
                Pipeline(recon, PipelineConfig(source=video, output=d, max_frames=n, smooth=smooth,
                                               annotated_video=False, progress=False),
                         log=lambda m: None).run()
                lms[smooth] = _landmarks_of(d / f"{video.stem}.jsonl", n)
            ok = ~np.isnan(lms[False]).any(axis=(1, 2)) & ~np.isnan(lms[True]).any(axis=(1, 2))
            idx = np.flatnonzero(ok)
            # longest run of frames with the face present, so the stretch has no gaps
            runs = np.split(idx, np.flatnonzero(np.diff(idx) != 1) + 1) if len(idx) else []
            longest = max(runs, key=len) if runs else np.array([], int)
            if len(longest) >= 12:
                raw, sm = lms[False][longest], lms[True][longest]
                a, b = still_segment(raw, length=min(30, len(longest) - 10))
                from realtime_prn.video.smoothing import face_size
                off = np.linalg.norm(sm - raw, axis=-1).mean(-1) / face_size(raw)
                result["jitter"] = {
                    "segment": [int(longest[a]), int(longest[b - 1])],
                    "raw": landmark_jitter(raw[a:b]), "smoothed": landmark_jitter(sm[a:b]),
                    "raw_whole_clip": landmark_jitter(raw), "smoothed_whole_clip": landmark_jitter(sm),
                    "smoothing_mean_offset": float(off.mean()),
                    "smoothing_p95_offset": float(np.percentile(off, 95)),
                }
                j = result["jitter"]
                j["reduction"] = 1 - j["smoothed"] / j["raw"] if j["raw"] else None
        if soak_frames:
            log(f"soak: {soak_frames} frames (video looped) ...")
            import gc
            gc.collect()
            rss0 = rss_mb()
            marks: list[float] = []

            class _Tap:
                def __init__(self, src):
                    self.src = src
                    self.live, self.fps, self.frame_count = False, src.fps, src.frame_count
                    self.name, self.stem = src.name, src.stem

                def read(self):
                    if self.src.n % 500 == 0:
                        marks.append(rss_mb())
                    return self.src.read()

                def release(self):
                    self.src.release()

            s2 = Pipeline(recon, PipelineConfig(source=_Tap(LoopSource(video, soak_frames)),
                                                output=tmp / "soak", progress=False),
                          log=lambda m: None).run()
            gc.collect()
            result["soak"] = {"frames": s2.frames, "rss_start_mb": rss0, "rss_end_mb": rss_mb(),
                              "rss_every_500_mb": [round(x, 1) for x in marks],
                              "mean_fps": s2.mean_fps}
    return result


def format_report(r: dict) -> str:
    i = r["info"]
    lines = [f"video {i['video']} {i['width']}x{i['height']}, {i['cpus']} CPU(s), engine {i['engine']} "
             f"{i['precision']}, detect every {i['detect_every']}"]
    p = r["pipeline"]
    st = lambda d: ", ".join(f"{k} {v:.1f}" for k, v in d.items())  # noqa: E731
    lines.append(f"pipeline:       {p['frames']} frames, {p['mean_fps']:.1f} fps mean, "
                 f"{p['median_fps']:.1f} fps median; median ms: {st(p['stage_ms'])}")
    if "official" in r:
        o = r["official"]
        lines.append(f"official-style: {o['frames']} frames, {o['mean_fps']:.1f} fps mean, "
                     f"{o['median_fps']:.1f} fps median ({o['net']} in TF, {o['detector']} every "
                     f"frame); median ms: {st(o['stage_ms'])}")
        lines.append(f"ratio (pipeline / official-style, mean fps): {r['ratio_mean_fps']:.1f}x")
    if "jitter" in r:
        j = r["jitter"]
        lines.append(f"jitter (mean landmark step / face size, stillest 30 frames {j['segment']}): "
                     f"raw {j['raw'] * 100:.3f}%, smoothed {j['smoothed'] * 100:.3f}% "
                     f"({j['reduction'] * 100:.0f}% less); whole clip raw {j['raw_whole_clip'] * 100:.3f}% "
                     f"smoothed {j['smoothed_whole_clip'] * 100:.3f}%; smoothing offset mean "
                     f"{j['smoothing_mean_offset'] * 100:.2f}% p95 {j['smoothing_p95_offset'] * 100:.2f}%")
    if "soak" in r:
        k = r["soak"]
        lines.append(f"soak: {k['frames']} frames at {k['mean_fps']:.1f} fps, RSS {k['rss_start_mb']:.0f} MB "
                     f"→ {k['rss_end_mb']:.0f} MB (every 500: {k['rss_every_500_mb']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", default=None, help=f"a video (default eval/videos/{DEFAULT_VIDEO})")
    p.add_argument("--precision", default="fp32", choices=["fp32", "int8", "fp16"])
    p.add_argument("--engine", default="onnxruntime")
    p.add_argument("--frames", type=int, default=300, help="frames to time (0 = whole video)")
    p.add_argument("--official-frames", type=int, default=None)
    p.add_argument("--official-detector", default=None, help="e.g. dlib (the official detector)")
    p.add_argument("--official-net", default="mb05uv", choices=["mb05uv", "resfcn256"])
    p.add_argument("--no-official", action="store_true")
    p.add_argument("--no-jitter", action="store_true")
    p.add_argument("--soak", type=int, default=0, help="also loop the video to N frames and report RSS")
    p.add_argument("--detect-every", type=int, default=10)
    p.add_argument("--sequential", action="store_true", help="pipeline without the inference thread")
    p.add_argument("--view3d", action="store_true", help="include the offscreen 3D view")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args(argv)
    from realtime_prn.errors import user_errors
    try:
        r = run_pipeline_benchmark(args.video, args.precision, frames=args.frames, engine=args.engine,
                                   threads=args.threads, detect_every=args.detect_every,
                                   overlap=not args.sequential, view3d=args.view3d,
                                   official=not args.no_official, official_frames=args.official_frames,
                                   official_detector=args.official_detector,
                                   official_net=args.official_net, jitter=not args.no_jitter,
                                   soak_frames=args.soak,
                                   log=lambda m: print(m, file=sys.stderr, flush=True))
    except user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(r))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
