"""``python -m realtime_prn swap`` and ``python -m realtime_prn edit``: the CLI of ``realtime_prn.swap``.

Thin, like the batch CLI: parse, check what the user handed in, call ``realtime_prn.swap``,
write one file, print one line. Every user mistake (missing file, no face in the source or
the target photo, a texture or mask that cannot be a UV map, an output name that does not fit
the input) ends in one ``error:`` line and a non-zero exit, never a traceback.

    python -m realtime_prn swap --source a.jpg --target b.jpg -o out.png
    python -m realtime_prn swap --source a.jpg --target clip.mp4 -o out.mp4
    python -m realtime_prn edit photo.jpg --mode eyes --source other.jpg -o out.png
    python -m realtime_prn edit photo.jpg --mode mask --mask region.png --source tex.png -o out.png
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".m4v"}
UV_SIDES = {128, 256, 512, 1024, 2048}


def _target_index(value: str) -> int | str:
    if value in ("largest", "all"):
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'largest', 'all' or a face number from the left (0, 1, …), got {value!r}"
        ) from None


def _common(p: argparse.ArgumentParser) -> None:
    from .cli import add_model_args

    p.add_argument("-o", "--output", required=True,
                   help="output file (.png/.jpg for a photo, .mp4/.avi/.mkv for a video) or a "
                        "folder (created; <name>_swap.png / _swap.mp4 / _<mode>.png inside)")
    p.add_argument("--blend", default="poisson", choices=["poisson", "alpha"],
                   help="poisson: cv2.seamlessClone like PRNet's demo (default); alpha: feathered "
                        "edge with colour matching (faster)")
    p.add_argument("--target-index", type=_target_index, default="largest",
                   help="which face of the target: 'largest' (default), 'all' (photos), or a number "
                        "counting faces from the left, 0 first")
    p.add_argument("--texture-size", type=int, default=None,
                   help="UV texture size (default 256, or a given texture's own size)")
    p.add_argument("--backend", default="numba", choices=["numba", "vispy"],
                   help="renderer: numba z-buffer (default) or OpenGL through vispy (EGL)")
    p.add_argument("--save-texture", default=None,
                   help="also write the UV texture used (BGRA .png, alpha = valid texels)")
    add_model_args(p)


def build_swap_parser(p: argparse.ArgumentParser) -> None:
    """Flags of ``swap`` (used by ``realtime_prn.cli`` and by :func:`main`)."""
    p.add_argument("--source", required=True, help="photo whose (largest) face is put on the target")
    p.add_argument("--target", required=True, help="photo or video whose face is replaced")
    _common(p)
    v = p.add_argument_group("video")
    v.add_argument("--no-stabilise", action="store_true",
                   help="swap every frame on its own (no geometry or tint smoothing)")
    v.add_argument("--no-annotate", action="store_true",
                   help="no status label on the frames: frames without a face are then written "
                        "unchanged (bit-exact with .avi/.mkv, which are lossless)")
    v.add_argument("--max-frames", type=int, default=None, help="stop after N frames")
    v.add_argument("--detect-every", type=int, default=1,
                   help="run the detector every N frames (default 1: every frame, so a cut or a "
                        "frame without the face is never given one; larger is faster)")


def build_edit_parser(p: argparse.ArgumentParser) -> None:
    """Flags of ``edit``."""
    p.add_argument("image", help="the photo to edit")
    p.add_argument("--mode", required=True, choices=["eyes", "mouth", "face", "mask"],
                   help="UV region to replace: PRN's eye region, the lips, the whole face, or --mask")
    p.add_argument("--source", default=None,
                   help="where the new region comes from: a photo (its largest face) or a UV "
                        "texture .png; default PRN's mean-face texture (uv_face.png)")
    p.add_argument("--source-kind", default="auto", choices=["auto", "photo", "texture"],
                   help="auto: a square image with a power-of-two side (128…2048) is a texture, "
                        "anything else a photo")
    p.add_argument("--mask", default=None,
                   help="UV region mask (.png, non-zero = edit; square, resized to the texture "
                        "size): the region for --mode mask, a further limit for the other modes")
    _common(p)


def _out_file(out: Path, stem: str, default_suffix: str, allowed: set[str], what: str) -> Path:
    suffix = out.suffix.lower()
    if suffix in allowed:
        out.parent.mkdir(parents=True, exist_ok=True)
        return out
    if suffix and not out.is_dir():
        raise ValueError(f"output {out} does not fit a {what}: give a "
                         f"{'/'.join(sorted(allowed))} file or a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out / f"{stem}{default_suffix}"


def _write_image(path: Path, image) -> None:
    import cv2
    ok = cv2.imwrite(str(path), image)
    if not ok:
        raise ValueError(f"cannot write {path} (unsupported suffix or unwritable folder)")


def _write_texture(path: str | None, tex) -> None:
    if not path:
        return
    import cv2
    import numpy as np
    bgra = np.dstack([tex.texture, tex.visibility.astype(np.uint8) * 255])
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise ValueError(f"--save-texture wants a .png (it keeps the alpha), got {p}")
    p.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(p), bgra):
        raise ValueError(f"cannot write {p}")
    print(f"texture: {p}")


def _recon(args):
    from .api import FaceReconstructor
    from .cli import options_from_args
    return FaceReconstructor(options_from_args(args))


def _size(args, default: int = 256) -> int:
    size = args.texture_size or default
    if not 16 <= size <= 4096:
        raise ValueError(f"--texture-size must be between 16 and 4096, got {size}")
    return size


def _faces_for(recon, image, index, what: str) -> list:
    from .errors import NoFaceError
    from .swap import select_faces
    faces = recon.reconstruct(image)
    if not faces:
        raise NoFaceError(f"no face found in the {what}")
    return select_faces(faces, index)


def run_swap(args) -> int:
    from .image import IMAGE_SUFFIXES, read_image
    from .swap import SwapSource, face_texture, largest_face, swap_faces, swap_video

    src_path, tgt_path = Path(args.source), Path(args.target)
    for p, what in ((src_path, "source"), (tgt_path, "target")):
        if not p.is_file():
            raise FileNotFoundError(f"{what} not found: {p}")
    is_video = tgt_path.suffix.lower() in VIDEO_SUFFIXES
    size = _size(args)
    recon = _recon(args)
    src_face = largest_face(read_image(src_path), recon, f"source photo {src_path}")
    source = SwapSource(face_texture(src_face, size), src_face.assets)
    _write_texture(args.save_texture, source.texture_for(None))
    t0 = time.perf_counter()
    if is_video:
        out = _out_file(Path(args.output), f"{tgt_path.stem}_swap", ".mp4", VIDEO_SUFFIXES,
                        "video target")
        index = args.target_index
        if index == "all":
            raise ValueError("--target-index all is for photos; a video swaps one face "
                             "(largest, or a number from the left)")
        summary = swap_video(source, tgt_path, out, target_index=None if index == "largest" else index,
                             blend=args.blend, stabilise=not args.no_stabilise, size=size,
                             reconstructor=recon, max_frames=args.max_frames,
                             annotate=not args.no_annotate, detect_every=args.detect_every,
                             backend=args.backend)
        print(summary.line())
        if summary.no_face:
            shown = ", ".join(map(str, summary.no_face_frames[:10]))
            more = " …" if summary.no_face > 10 else ""
            print(f"frames without a target face (passed through): {shown}{more}")
        print(f"wrote {out} in {time.perf_counter() - t0:.1f} s")
        if summary.swapped == 0:
            from .errors import NoFaceError
            raise NoFaceError(f"no face found in any frame of {tgt_path} (video written unchanged)")
        return 0
    out = _out_file(Path(args.output), f"{tgt_path.stem}_swap", ".png", IMAGE_SUFFIXES,
                    "photo target")
    image = read_image(tgt_path)
    targets = _faces_for(recon, image, args.target_index, f"target photo {tgt_path}")
    result = image
    for face in targets:
        result = swap_faces(src_face, face, args.blend, image=result, source=source,
                            backend=args.backend).image
    _write_image(out, result)
    print(f"swapped {len(targets)} face(s): wrote {out} in {time.perf_counter() - t0:.1f} s")
    return 0


def _source_kind(path: Path, kind: str) -> str:
    if kind != "auto":
        return kind
    from .image import read_image
    img = read_image(path)
    h, w = img.shape[:2]
    if h == w and h in UV_SIDES:
        print(f"note: treating {path.name} as a UV texture ({w}×{h}); pass --source-kind photo "
              f"if it is a photo", file=sys.stderr)
        return "texture"
    return "photo"


def _uv_side(path: Path, what: str) -> int:
    import cv2
    import numpy as np
    data = np.fromfile(str(path), np.uint8) if path.is_file() else np.zeros(0, np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise ValueError(f"cannot read the {what} {path}")
    h, w = img.shape[:2]
    if h != w:
        raise ValueError(f"the {what} {path} is {w}×{h}: a UV {what} must be square "
                         f"(square ones of another size are resized)")
    return h


def run_edit(args) -> int:
    from .image import IMAGE_SUFFIXES, read_image
    from .paths import data_file
    from .swap import edit_image, edit_texture, largest_face

    img_path = Path(args.image)
    if not img_path.is_file():
        raise FileNotFoundError(f"image not found: {img_path}")
    if args.source is None:
        src_path, kind = data_file("prn", "uv_face.png", override=args.data), "texture"
        print(f"note: no --source, using PRN's mean-face texture {src_path.name}", file=sys.stderr)
    else:
        src_path = Path(args.source)
        if not src_path.is_file():
            raise FileNotFoundError(f"source not found: {src_path}")
        kind = _source_kind(src_path, args.source_kind)
    mask_path = Path(args.mask) if args.mask else None
    if mask_path is not None and not mask_path.is_file():
        raise FileNotFoundError(f"mask not found: {mask_path}")
    if args.mode == "mask" and mask_path is None:
        raise ValueError("--mode mask needs --mask (a square UV mask .png)")
    default = _uv_side(src_path, "texture") if kind == "texture" else 256
    size = _size(args, default if 16 <= default <= 4096 else 256)
    if kind == "texture":
        side = _uv_side(src_path, "texture")
        if side != size:
            print(f"note: texture {src_path.name} ({side}×{side}) resized to {size}×{size}",
                  file=sys.stderr)
    if mask_path is not None:
        side = _uv_side(mask_path, "mask")
        if side != size:
            print(f"note: mask {mask_path.name} ({side}×{side}) resized to {size}×{size}",
                  file=sys.stderr)
    recon = _recon(args)
    image = read_image(img_path)
    targets = _faces_for(recon, image, args.target_index, f"image {img_path}")
    src_kw: dict = {}
    if kind == "texture":
        src_kw["source_texture"] = src_path
    else:
        src_kw["source_face"] = largest_face(read_image(src_path), recon, f"source photo {src_path}")
    out = _out_file(Path(args.output), f"{img_path.stem}_{args.mode}", ".png", IMAGE_SUFFIXES,
                    "photo")
    t0 = time.perf_counter()
    result = image
    changed = 0
    for face in targets:
        edit = edit_texture(face, args.mode, mask=mask_path, size=size, data_root=args.data,
                            **src_kw)
        if len(targets) == 1:
            _write_texture(args.save_texture, edit)
        res = edit_image(face, edit, args.blend, image=result, backend=args.backend)
        result = res.image
        changed += int(res.mask.sum())
    _write_image(out, result)
    print(f"edited {args.mode} of {len(targets)} face(s) ({changed} px): wrote {out} in "
          f"{time.perf_counter() - t0:.1f} s")
    return 0


def run(args) -> int:
    """Dispatch for ``realtime_prn.cli`` (``args.command`` is ``swap`` or ``edit``)."""
    return run_swap(args) if args.command == "swap" else run_edit(args)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry: ``python -m realtime_prn.swap_cli swap|edit …``."""
    parser = argparse.ArgumentParser(prog="python -m realtime_prn",
                                     description="Face swap and UV texture editing (PRN).")
    sub = parser.add_subparsers(dest="command", required=True)
    build_swap_parser(sub.add_parser("swap", help="put a photo's face on a photo or video"))
    build_edit_parser(sub.add_parser("edit", help="replace a UV region of a photo's face"))
    args = parser.parse_args(argv)
    from .errors import run_cli
    return run_cli(lambda: run(args), interrupted="interrupted; the video written so far is kept")


if __name__ == "__main__":
    sys.exit(main())
