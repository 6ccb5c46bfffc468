"""Download the shared data on a machine with internet, verified by sha256.

Nothing in the project downloads at run time or in tests; this command exists so that a
new machine can rebuild ``../shared`` (or any folder named by ``REALTIME_PRN_DATA``) from
the public sources the files were copied from, byte for byte.
"""
from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

from .paths import data_root, sha256_file

_PRN = "https://raw.githubusercontent.com/YadiraF/PRNet/fc12fe5e1f1462bdea52409b213d0cf1c8cf6c5b/Data"
_3DDFA = "https://raw.githubusercontent.com/cleardusk/3DDFA/3545f355bfc71e5748fa915b13932958363135d7"
_V2 = "https://raw.githubusercontent.com/cleardusk/3DDFA_V2/1b6c67601abffc1e9f248b291708aef0e43b55ae"
_TAPPAS = ("https://raw.githubusercontent.com/hailo-ai/tappas/6454e9b271191c752535e0eca9c4792180810eee/"
           "core/hailo/libs/postprocesses/post_processes_data")

# (destination relative to the data root, url, sha256)
MANIFEST = [
    ("prn/canonical_vertices.npy", f"{_PRN}/uv-data/canonical_vertices.npy",
     "724ceae7e9be10a86670159f3cdc4a4abd5bd8d3c29a475c17115b6ada55112c"),
    ("prn/face_ind.txt", f"{_PRN}/uv-data/face_ind.txt",
     "86a7ce5131d3c827c368fd3c1236ded6b5d80802f1abd5cf98940ba0595ab231"),
    ("prn/uv_kpt_ind.txt", f"{_PRN}/uv-data/uv_kpt_ind.txt",
     "158f329a0e5518b7553195cf2373f91b9ada697b6071cdafb52b573d488a1c60"),
    ("prn/uv_face_mask.png", f"{_PRN}/uv-data/uv_face_mask.png",
     "66e0c5e555619d708202639058adbeece545b67fef52a22eabd46cc71494a6c6"),
    ("prn/uv_weight_mask.png", f"{_PRN}/uv-data/uv_weight_mask.png",
     "a97882fbac6920ad08c6e314ea327db2b0a7d7fbf6a6a56be5e696b66fde0ae7"),
    ("prn/uv_face_eyes.png", f"{_PRN}/uv-data/uv_face_eyes.png",
     "46398c6222361c49c348dfb4ce9750dfe19a4a9c86540577190471fb1341f14c"),
    ("prn/256_256_resfcn256_weight.index", f"{_PRN}/net-data/256_256_resfcn256_weight.index",
     "cb88192fcf744b8e26d1ea6a2681cd90f102a2d977ab1bac3026bdf4ce785744"),
    ("prn/mmod_human_face_detector.dat", f"{_PRN}/net-data/mmod_human_face_detector.dat",
     "be467b1a76f482693de3b0f6a1ff91d092319be71523d4d4b0628f6a53fcb87a"),
    ("train/bfm_3ddfa/Model_PAF.pkl", f"{_3DDFA}/train.configs/Model_PAF.pkl",
     "418713edd25e6c5938cb49e989ff8461d59a6c8bbe5aba3a643e9e77f9bc5e4d"),
    ("train/bfm_3ddfa/u_shp.npy", f"{_3DDFA}/train.configs/u_shp.npy",
     "8a3b8b5ba3b0526ce3ddd3e287b26e0192c150e477767f374a6e333a365ff7dd"),
    ("train/bfm_3ddfa/u_exp.npy", f"{_3DDFA}/train.configs/u_exp.npy",
     "69049fb360bfff61090f7705ba510ed9bd817da871edbaa69e2fed7df624cf19"),
    ("train/bfm_3ddfa/keypoints_sim.npy", f"{_3DDFA}/train.configs/keypoints_sim.npy",
     "065053f041b03ed32e36641d26fcd9aefef36f6c518899091cdc6038a6246c13"),
    ("train/tddfa_v2/BFM_UV.mat", f"{_V2}/configs/BFM_UV.mat",
     "60be915f601563e274d9737abd54c6b925e8e737fa1c89d3cd64933315629ce1"),
    ("train/tddfa_v2/param_mean_std_62d_120x120.pkl", f"{_V2}/configs/param_mean_std_62d_120x120.pkl",
     "090d7150f77cb66c29ddae21e4508fbde59123dcd1dea7facc24a7ed06d1c795"),
    ("train/tddfa_v2/mb05_120x120.pth", f"{_V2}/weights/mb05_120x120.pth",
     "f93ed7f1c4c0382b16d7c18480a5f67473c1917a47475a9823924f38aeb27280"),
    ("train/tddfa_v2_sparse68/w_shp_base.npy", f"{_TAPPAS}/w_shp_base.npy",
     "31d9905c170c3e6c52fb6e69d28baa75b6c7d2f92fcb30bf43644a9b1f2fdb7a"),
    ("train/tddfa_v2_sparse68/w_exp_base.npy", f"{_TAPPAS}/w_exp_base.npy",
     "7defe7289a9672d242a3b2a4201d7210a44c22eb4c1ac66807f6fb81a82b787c"),
]
# The official checkpoint lives on Google Drive (PRNet README); its .data is 160,290,984 bytes.
# Its integrity is checked through the .index above, which holds a CRC32C of every tensor that
# TensorFlow verifies on load.
OFFICIAL_DATA = ("prn/256_256_resfcn256_weight.data-00000-of-00001",
                 "https://drive.google.com/uc?export=download&id=1UoE-XuW1SDLUjZmJPkIZ1MLxvQFgmTFH",
                 None)


sha256 = sha256_file


def fetch(dest=None, official: bool = False) -> int:
    root = Path(dest) if dest else data_root()
    items = MANIFEST + ([OFFICIAL_DATA] if official else [])
    for rel, url, digest in items:
        target = root / rel
        if target.exists() and (digest is None or sha256(target) == digest):
            print(f"ok       {rel}")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        print(f"fetching {rel} ...", flush=True)
        try:
            urllib.request.urlretrieve(url, tmp)
        except OSError as exc:
            print(f"error: cannot download {url}: {exc}", file=sys.stderr)
            return 2
        if digest is not None and sha256(tmp) != digest:
            tmp.unlink()
            print(f"error: {rel} does not match its sha256 (expected {digest[:16]}…)", file=sys.stderr)
            return 2
        tmp.replace(target)
    print("the MediaPipe BlazeFace model is taken from the mediapipe==0.10.21 wheel by "
          "`python -m realtime_prn setup` (PyPI)")
    return 0
