"""Per-face output files: which kinds to write and how they are named (one module per kind
lives in ``io``; this decides names and asks each writer)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from .face import Face
from .io import mesh, records

KINDS = ("obj", "textured_obj", "ply", "npz", "mat", "kpt", "pose", "depth", "texture", "mask")


@dataclass
class OutputKinds:
    obj: bool = False
    textured_obj: bool = False
    ply: bool = False
    npz: bool = False
    mat: bool = False
    kpt: bool = False
    pose: bool = False
    depth: bool = False
    texture: bool = False
    mask: bool = False
    texture_size: int = 256

    def any(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self) if f.name != "texture_size")


def uv_coordinates(face: Face) -> np.ndarray:
    """Per-vertex texture coordinates (u right, v up): the centre of each vertex's texel,
    since texel (x, y) of :meth:`Face.texture` is sampled at position-map pixel (x, y)."""
    ind = face.assets.face_ind
    return np.stack([(ind % 256 + 0.5) / 256.0, 1.0 - (ind // 256 + 0.5) / 256.0], 1)


def write_face(face: Face, stem: Path, kinds: OutputKinds) -> list[Path]:
    """Write the chosen kinds as ``<stem>.<ext>`` / ``<stem>_<kind>.<ext>``; returns paths."""
    h = face.image.shape[0]
    out: list[Path] = []
    stem = Path(stem)
    if kinds.obj:
        out.append(mesh.write_obj(stem.with_suffix(".obj"), face.vertices, face.triangles, h,
                                  face.colors))
    if kinds.textured_obj:
        tex = face.texture(kinds.texture_size)
        out += mesh.write_textured_obj(stem.with_name(stem.name + "_textured.obj"), face.vertices,
                                       face.triangles, h, uv_coordinates(face), tex)
    if kinds.ply:
        out.append(mesh.write_ply(stem.with_suffix(".ply"), face.vertices, face.triangles, h,
                                  face.colors))
    arrays = None
    if kinds.npz or kinds.mat:
        arrays = dict(position_map=face.position_map, landmarks=face.landmarks,
                      vertices=face.vertices, colors=face.colors,
                      triangles=face.triangles, pose_angles=face.pose.angles,
                      rotation=face.pose.rotation, translation=face.pose.translation,
                      scale=face.pose.scale, camera_matrix=face.camera_matrix)
    if kinds.npz:
        out.append(records.write_npz(stem.with_suffix(".npz"), **arrays))
    if kinds.mat:
        out.append(records.write_mat(stem.with_suffix(".mat"), **arrays))
    if kinds.kpt:
        out.append(records.write_landmarks(stem.with_name(stem.name + "_kpt.txt"), face.landmarks))
    if kinds.pose:
        p = face.pose
        out.append(records.write_pose(stem.with_name(stem.name + "_pose.txt"), p.angles,
                                      p.rotation, p.translation, p.scale))
    if kinds.depth:
        out.append(records.write_depth_png(stem.with_name(stem.name + "_depth.png"),
                                           face.depth_image()))
    if kinds.texture:
        out.append(mesh.write_png(stem.with_name(stem.name + "_texture.png"),
                                  face.texture(kinds.texture_size)))
    if kinds.mask:
        vis = face.texture_visibility(kinds.texture_size)
        out.append(mesh.write_png(stem.with_name(stem.name + "_texture_mask.png"),
                                  vis.astype(np.uint8) * 255))
    return out
