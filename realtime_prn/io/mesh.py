"""Mesh writers and a reader: .obj (vertex colours), .obj + .mtl + texture, .ply.

Frame pixels have y down; mesh viewers (MeshLab, Blender) expect y up, so y is written as
``height − 1 − y`` and faces are wound so their normals point at the camera (+z). Writes go
to a temporary file that is renamed into place, so an interrupted run never leaves half a
mesh where a good one was.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from .atomic import atomic_open


def _atomic_text(path: Path, write) -> Path:
    with atomic_open(path, "w") as f:
        write(f)
    return Path(path)


def _rows(f, arr: np.ndarray, fmt: str) -> None:
    """``np.savetxt`` with one big %-format: about 3.5× faster for 40k-vertex meshes."""
    arr = np.asarray(arr)
    if arr.dtype.kind in "iu":
        values = arr.astype(np.int64).ravel().tolist()
    else:
        values = arr.astype(np.float64).ravel().tolist()
    f.write(((fmt + "\n") * len(arr)) % tuple(values))


def to_mesh_frame(vertices: np.ndarray, height: int) -> np.ndarray:
    out = np.array(vertices, np.float64, copy=True)
    out[:, 1] = height - 1 - out[:, 1]
    return out


def write_obj(path, vertices: np.ndarray, triangles: np.ndarray, height: int,
              colors: np.ndarray | None = None) -> Path:
    """Vertex-coloured .obj (``v x y z r g b``, colours RGB in [0, 1])."""
    v = to_mesh_frame(vertices, height)

    def write(f):
        if colors is not None:
            _rows(f, np.hstack([v, colors]), "v %.3f %.3f %.3f %.4f %.4f %.4f")
        else:
            _rows(f, v, "v %.3f %.3f %.3f")
        _rows(f, triangles.astype(np.int64) + 1, "f %d %d %d")
    return _atomic_text(path, write)


def write_textured_obj(path, vertices: np.ndarray, triangles: np.ndarray, height: int,
                       uv: np.ndarray, texture_bgr: np.ndarray) -> list[Path]:
    """.obj with ``vt`` coordinates, its .mtl, and the texture PNG beside it."""
    path = Path(path)
    png = path.with_suffix(".png")
    mtl = path.with_suffix(".mtl")
    _write_png(png, texture_bgr)
    _atomic_text(mtl, lambda f: f.write(
        f"newmtl face\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nmap_Kd {png.name}\n"))
    v = to_mesh_frame(vertices, height)

    def write(f):
        f.write(f"mtllib {mtl.name}\n")
        _rows(f, v, "v %.3f %.3f %.3f")
        _rows(f, uv, "vt %.6f %.6f")
        f.write("usemtl face\n")
        t = triangles.astype(np.int64) + 1
        _rows(f, np.repeat(t, 2, axis=1), "f %d/%d %d/%d %d/%d")
    return [_atomic_text(path, write), mtl, png]


def write_ply(path, vertices: np.ndarray, triangles: np.ndarray, height: int,
              colors: np.ndarray | None = None) -> Path:
    """ASCII .ply with optional uchar RGB colours."""
    v = to_mesh_frame(vertices, height)

    def write(f):
        f.write("ply\nformat ascii 1.0\n")
        f.write(f"element vertex {len(v)}\nproperty float x\nproperty float y\nproperty float z\n")
        if colors is not None:
            f.write("property uchar red\nproperty uchar green\nproperty uchar blue\n")
        f.write(f"element face {len(triangles)}\nproperty list uchar int vertex_indices\n")
        f.write("end_header\n")
        if colors is not None:
            c = np.clip(np.round(colors * 255), 0, 255)
            _rows(f, np.hstack([v, c]), "%.3f %.3f %.3f %d %d %d")
        else:
            _rows(f, v, "%.3f %.3f %.3f")
        _rows(f, np.hstack([np.full((len(triangles), 1), 3), triangles]), "%d %d %d %d")
    return _atomic_text(path, write)


def read_obj(path) -> dict:
    """Minimal reader for our own files (tests read back what they wrote)."""
    verts, cols, uvs, faces = [], [], [], []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "v":
                verts.append([float(p) for p in parts[1:4]])
                if len(parts) >= 7:
                    cols.append([float(p) for p in parts[4:7]])
            elif parts[0] == "vt":
                uvs.append([float(p) for p in parts[1:3]])
            elif parts[0] == "f":
                faces.append([int(p.split("/")[0]) - 1 for p in parts[1:4]])
    return {"vertices": np.array(verts), "colors": np.array(cols) if cols else None,
            "uv": np.array(uvs) if uvs else None, "faces": np.array(faces, np.int64)}


def _write_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part.png")
    if not cv2.imwrite(str(tmp), image):
        raise OSError(f"cannot write {path}")
    os.replace(tmp, path)
    return path


write_png = _write_png
