"""tiercel.data: Falcon_SFT reading, writing and validation, image loading, and the synthetic benchmark.

    from tiercel.data import iter_records, load_image, validate
    for record in iter_records("train.json"):          # streams; never loads the whole file
        image = load_image(record.image_paths(root)[0], record.crop)
    report = validate("train.json", root)               # every bad record + per-task counts

numpy and PIL only. This package knows nothing about models or tokenizers; task prompts and answer
grammar come from tiercel.tasks. The synthetic generator lives in tiercel.data.synth (imported on use).
"""

from tiercel.data.images import image_size, load_image
from tiercel.data.sft import Record, iter_records, write_records
from tiercel.data.validate import Report, validate

__all__ = ["Record", "Report", "image_size", "iter_records", "load_image", "validate", "write_records"]
