"""Open training pipeline: teacher labels (labels), augmentation (augment), the light student (student).

The loop itself is ``tools/train.py``. Nothing here is imported by the inference path.
"""
