#!/usr/bin/env python
"""Is model B really better than model A on AFLW2000-3D? Paired bootstrap over two evaluations.

Why a tool: a release is shipped only if it beats the current one on AFLW2000-3D, and
consecutive releases differ by a few hundredths of a percent — about the figures' own sampling
noise. This reads the ``per_image.csv`` both runs of ``tools/evaluate_aflw2000.py`` wrote and
prints B − A per crop and metric (the 2D NME also per yaw bin) with a bootstrap interval (paired:
the same images on both sides; stratified by yaw bin: the headline bin mean weighs the bins
equally). A negative difference whose interval stays below 0 means B's errors are lower beyond
resampling noise.
Images either side missed (detector crop) are left out of both; the rotation error, like the
evaluation's pose figures, counts FSA-Net's images only (every GT angle within ±99°).

    python tools/compare_evals.py out/eval/v10 out/eval/v12      # folders or per_image.csv files
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evaluate_aflw2000 import PER_IMAGE_COLUMNS, UserError  # noqa: E402  (this folder)

from realtime_prn.errors import OneLineArgumentParser  # noqa: E402
from realtime_prn.evaluation import fsanet_mask, paired_bootstrap  # noqa: E402

# column, label, scale to the printed unit, statistics shown
METRICS = (
    ("nme2d", "2D NME %", 100.0, ("bin_mean", "all", "bins")),
    ("nme3d", "3D NME %", 100.0, ("bin_mean",)),
    ("rotation_error", "rotation error deg", 1.0, ("all",)),
)
BIN_NAMES = ("[0,30]", "(30,60]", "(60,90]")
GT_POSE = ("pitch_gt", "yaw_gt_mat", "roll_gt")
COLUMNS = {"file", "crop", "yaw_gt", *GT_POSE, *(m[0] for m in METRICS)}
assert COLUMNS <= set(PER_IMAGE_COLUMNS)


def read_per_image(path: Path) -> dict[str, dict[str, dict[str, float]]]:
    """{crop: {file: {column: value}}} of one evaluation's per_image.csv (a folder finds its file)."""
    f = path / "per_image.csv" if path.is_dir() else path
    if not f.is_file():
        raise UserError(f"{f} not found (run tools/evaluate_aflw2000.py --out {path} first)")
    with open(f, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = COLUMNS - set(reader.fieldnames or ())
        if missing:
            raise UserError(f"{f} is not an evaluate_aflw2000.py per_image.csv "
                            f"(no {', '.join(sorted(missing))})")
        out: dict[str, dict[str, dict[str, float]]] = {}
        try:
            for row in reader:
                out.setdefault(row["crop"], {})[row["file"]] = {
                    k: float(row[k]) for k in COLUMNS - {"file", "crop"}}
        except ValueError as e:
            raise UserError(f"{f} line {reader.line_num}: {e}") from None
    return out


def compare(a: dict, b: dict, crops: list[str], resamples: int, level: float) -> list[str]:
    """Markdown rows: crop, metric, statistic, A, B, B − A, interval, share of images B does better."""
    pct = f"{100 * level:g} %"
    lines = [f"| crop | metric | A | B | B − A | {pct} interval | images B better | n |",
             "|---|---|---|---|---|---|---|---|"]
    for crop in crops:
        if crop not in a or crop not in b:
            raise UserError(f"crop '{crop}' is not in both files (A has {sorted(a)}, B has {sorted(b)})")
        files = sorted(set(a[crop]) & set(b[crop]))
        if not files:
            raise UserError(f"crop '{crop}': the two files share no image")
        yaw = np.array([a[crop][f]["yaw_gt"] for f in files])
        # pose figures on FSA-Net's images only, as evaluate_aflw2000.py reports them
        fsanet = fsanet_mask(np.array([[a[crop][f][k] for k in GT_POSE] for f in files]))
        for col, label, scale, stats in METRICS:
            va = np.array([a[crop][f][col] for f in files])
            vb = np.array([b[crop][f][col] for f in files])
            if col == "rotation_error":
                va[~fsanet] = vb[~fsanet] = np.nan
            try:
                r = paired_bootstrap(va, vb, yaw, resamples=resamples, level=level)
            except ValueError as e:
                raise UserError(f"crop '{crop}', {col}: {e}") from None
            rows = [(f"{label}, {'bin mean' if s == 'bin_mean' else 'all'}", r[s], r["b_better"], r["n"])
                    for s in stats if s != "bins"]
            if "bins" in stats:  # each yaw bin alone: a gain on one can hide a loss on another
                rows += [(f"{label}, {name}", x, x["b_better"], x["n"])
                         for name, x in zip(BIN_NAMES, r["bins"], strict=True)]
            for name, x, better, n in rows:
                lines.append(
                    f"| {crop} | {name} | {scale * x['a']:.3f} | {scale * x['b']:.3f} | "
                    f"{scale * x['diff']:+.3f} | {scale * x['low']:+.3f} … {scale * x['high']:+.3f} | "
                    f"{100 * better:.1f} % | {n} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = OneLineArgumentParser(description=__doc__.split("\n\n")[0],
                              epilog="A and B: evaluate_aflw2000.py --out folders (or their per_image.csv).")
    p.add_argument("a", type=Path, help="the reference (e.g. the current release)")
    p.add_argument("b", type=Path, help="the candidate")
    p.add_argument("--crop", choices=("gt", "detector", "both"), default="both",
                   help="which crop's rows to compare (default both; a file holding one crop needs it named)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap draws (default 2000)")
    p.add_argument("--level", type=float, default=0.95, help="interval coverage (default 0.95)")
    args = p.parse_args(argv)
    if args.resamples < 1:
        p.error("--resamples must be at least 1")
    if not 0 < args.level < 1:
        p.error("--level must be between 0 and 1")
    try:
        a, b = read_per_image(args.a), read_per_image(args.b)
        crops = ["gt", "detector"] if args.crop == "both" else [args.crop]
        print("\n".join(compare(a, b, crops, args.resamples, args.level)))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
