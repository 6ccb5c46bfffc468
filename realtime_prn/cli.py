"""The batch CLI: an image, a folder of images or a video file → per-face outputs.

Thin: parse flags, hand inputs to :class:`FaceReconstructor`, write the chosen kinds, print
a summary. User mistakes end with one ``error:`` line and a non-zero exit.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from .outputs import KINDS, OutputKinds
from .weights import DEFAULT_WEIGHTS

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}


def add_model_args(p: argparse.ArgumentParser) -> None:
    from .api import Options

    g = p.add_argument_group("model")
    g.add_argument("--engine", default="onnxruntime",
                   help="onnxruntime (CPU default; CUDA if onnxruntime-gpu is installed), "
                        "tensorflow (reference) or tensorrt (NVIDIA GPUs)")
    g.add_argument("--weights", default=None,
                   help="'uvreg' (this project's trained model), 'mb05uv' (3DDFA_V2's regressor + UV "
                        "basis), an official PRN checkpoint prefix, a uvreg .npz or an .onnx file; "
                        f"env REALTIME_PRN_WEIGHTS; default {DEFAULT_WEIGHTS}")
    g.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"],
                   help="fp32; int8 (onnxruntime/tensorrt, quantized once and cached); fp16 (tensorrt)")
    g.add_argument("--detector", default="blazeface",
                   help="blazeface (default), haar, scrfd (needs --detector-model), dlib")
    g.add_argument("--detector-model", default=None, help="a detector model file (SCRFD .onnx)")
    g.add_argument("--tiles", action="store_true",
                   help="blazeface: also search overlapping tiles (group photos with small faces)")
    g.add_argument("--flip", action="store_true",
                   help="test-time flip averaging: each face and its mirror image through the engine, "
                        "the two position maps averaged (lower landmark error, twice the engine time)")
    g.add_argument("--refine", type=int, default=Options().refine, metavar="N",
                   help="re-crop each detected face from the landmarks just found and run the engine "
                        "again, N times (default %(default)s; 0 = the detector box's crop only; "
                        "videos track faces from landmarks anyway)")
    g.add_argument("--max-faces", type=int, default=0, help="keep the N largest faces (0 = all)")
    g.add_argument("--threads", type=int, default=None, help="engine threads (default: all cores)")
    g.add_argument("--data", default=None, help="shared data folder (env REALTIME_PRN_DATA)")


def options_from_args(args):
    from .api import Options
    det_opts = {"model_path": args.detector_model} if args.detector_model else {}
    if getattr(args, "tiles", False):
        det_opts["tiles"] = True
    return Options(engine=args.engine, weights=args.weights, precision=args.precision,
                   detector=args.detector, detector_options=det_opts, max_faces=args.max_faces,
                   threads=args.threads, data_root=args.data, flip=args.flip,
                   refine=args.refine)


def build_run_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="an image, a folder of images, or a video file")
    p.add_argument("-o", "--output", default="out", help="output folder (created; files in it "
                   "are replaced only when the same name is written again)")
    add_model_args(p)
    g = p.add_argument_group("outputs (as the official demo's --is* flags; default: --kpt --pose --obj)")
    g.add_argument("--obj", action="store_true", help="mesh with vertex colours (.obj)")
    g.add_argument("--textured-obj", action="store_true", help=".obj + .mtl + texture .png")
    g.add_argument("--ply", action="store_true", help="mesh with vertex colours (.ply)")
    g.add_argument("--npz", action="store_true", help="all arrays (.npz)")
    g.add_argument("--mat", action="store_true", help="all arrays (.mat, like the original)")
    g.add_argument("--kpt", action="store_true", help="68 3D landmarks (_kpt.txt)")
    g.add_argument("--pose", action="store_true", help="head pose (_pose.txt)")
    g.add_argument("--depth", action="store_true", help="depth image (_depth.png)")
    g.add_argument("--texture", action="store_true", help="UV texture (_texture.png)")
    g.add_argument("--mask", action="store_true", help="UV visibility mask (_texture_mask.png)")
    g.add_argument("--texture-size", type=int, default=256, help="UV texture size (default 256)")
    g.add_argument("--overlay", action="store_true",
                   help="annotated image (_overlay.jpg); for videos an annotated .mp4")
    g.add_argument("--all", action="store_true", help="every output kind")
    v = p.add_argument_group("video")
    v.add_argument("--every", type=int, default=1, help="process every N-th video frame")
    v.add_argument("--per-frame-files", action="store_true",
                   help="for videos, also write the chosen per-face files for every frame")


def _kinds(args) -> OutputKinds:
    k = OutputKinds(texture_size=args.texture_size,
                    **{n: bool(args.all or getattr(args, n)) for n in KINDS})
    if not k.any() and not args.overlay:
        k.kpt = k.pose = k.obj = True
    return k


class Stats:
    def __init__(self):
        self.stage: dict[str, list[float]] = {}
        self.faces = 0
        self.inputs = 0
        self.no_face: list[str] = []
        self.files = 0

    def add(self, timings: dict[str, float]):
        for k, v in timings.items():
            self.stage.setdefault(k, []).append(v * 1000)

    def summary(self, elapsed: float) -> str:
        parts = ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in self.stage.items() if v)
        return (f"{self.inputs} input(s), {self.faces} face(s), {self.files} file(s) written in "
                f"{elapsed:.1f} s; median ms per input: {parts}")


def _run_images(recon, images, out: Path, kinds: OutputKinds, overlay: bool, stats: Stats):
    import cv2
    from tqdm import tqdm

    from .image import ImageError, read_image
    from .outputs import write_face
    from .render.overlay import draw_face

    for path in tqdm(images, desc="images", unit="img", disable=len(images) < 2):
        try:
            frame = read_image(path)
        except ImageError as exc:
            if len(images) == 1:
                raise
            print(f"warning: {exc}", file=sys.stderr)
            continue
        stats.inputs += 1
        faces = recon.reconstruct(frame)
        t0 = time.perf_counter()
        if not faces:
            stats.no_face.append(path.name)
            print(f"warning: no face found in {path}", file=sys.stderr)
        for i, face in enumerate(faces):
            stats.files += len(write_face(face, out / f"{path.stem}_{i}", kinds))
        if overlay and faces:
            img = frame.copy()
            for face in faces:
                draw_face(img, face)
            cv2.imwrite(str(out / f"{path.stem}_overlay.jpg"), img)
            stats.files += 1
        stats.faces += len(faces)
        recon.timings["outputs"] = time.perf_counter() - t0
        stats.add(recon.timings)


def _run_video(recon, path: Path, out: Path, kinds: OutputKinds, args, stats: Stats):
    from .video.batch import process_video
    process_video(recon, path, out, kinds, overlay=True,
                  every=args.every, per_frame_files=args.per_frame_files, stats=stats)


def run(args) -> int:
    from .api import FaceReconstructor
    from .errors import NoFaceError
    from .image import IMAGE_SUFFIXES, list_images

    src = Path(args.input)
    if not src.exists():
        raise FileNotFoundError(f"input not found: {src}")
    if src.is_dir():
        images = list_images(src)
        if not images:
            raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {src}")
        mode = "images"
    elif src.suffix.lower() in VIDEO_SUFFIXES:
        mode = "video"
    else:
        images = [src]
        mode = "images"
    kinds = _kinds(args)
    recon = FaceReconstructor(options_from_args(args))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    stats = Stats()
    t0 = time.perf_counter()
    if mode == "video":
        _run_video(recon, src, out, kinds, args, stats)
    else:
        _run_images(recon, images, out, kinds, args.overlay, stats)
    print(stats.summary(time.perf_counter() - t0))
    (out / "summary.json").write_text(json.dumps({
        "inputs": stats.inputs, "faces": stats.faces, "files": stats.files,
        "no_face": stats.no_face,
        "median_ms": {k: statistics.median(v) for k, v in stats.stage.items() if v}}, indent=1))
    if stats.faces == 0:
        raise NoFaceError(f"no face found in {src}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m realtime_prn",
        description="Dense 3D faces (PRN position maps) from images, folders and videos.")
    sub = parser.add_subparsers(dest="command", required=True)
    build_run_parser(sub.add_parser("run", help="reconstruct faces in an image, folder or video",
                                    description="Reconstruct every face and write the chosen outputs."))
    s = sub.add_parser("setup", help="build the models this machine needs (offline, once)")
    s.add_argument("--data", default=None, help="shared data folder (env REALTIME_PRN_DATA)")
    f = sub.add_parser("fetch", help="download the data/weights (needs internet; checks sha256)")
    f.add_argument("--official", action="store_true", help="also the official PRN checkpoint")
    f.add_argument("--dest", default=None, help="where to put the files (default: ../shared)")
    from .swap_cli import build_edit_parser, build_swap_parser
    build_swap_parser(sub.add_parser("swap", help="put a photo's face on a photo or a video",
                                     description="Face swap: the source photo's face on the target's."))
    build_edit_parser(sub.add_parser("edit", help="replace a UV region (eyes, mouth, face, mask) of a face",
                                     description="Texture editing in PRN's UV space."))
    args = parser.parse_args(argv)

    from .errors import run_cli

    def dispatch() -> int:
        if args.command == "run":
            return run(args)
        if args.command == "setup":
            from .setup_models import setup
            return setup(args.data)
        if args.command == "fetch":
            from .fetch import fetch
            return fetch(args.dest, official=args.official)
        from .swap_cli import run as run_swap_cli
        return run_swap_cli(args)

    return run_cli(dispatch)
