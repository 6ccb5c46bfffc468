"""Open training pipeline: teacher labels (labels), augmentation (augment), the light student (student).

The loop is ``trainer.py``, the per-model data ``datasets.py``, the CLI ``tools/train.py``.
Nothing here is imported by the inference path.
"""
