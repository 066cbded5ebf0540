"""tiercel.evaluate: per-task metrics of a bundle or a checkpoint on Falcon_SFT data, and qualitative PNGs.

    from tiercel.evaluate import evaluate, open_predictor, write_examples
    report = evaluate(open_predictor("bundle/"), "test.json", tasks=["IMG_CLS"], limit=200)
    report.per_task["IMG_CLS"]["accuracy"], report.average

`evaluate` takes any object with the runtime's run/run_batch API (tiercel.runtime.Model, or
tiercel.models.predict.TorchPredictor for a PyTorch model, e.g. during distillation). Importing this package
loads neither torch nor a backend.
"""

from tiercel.evaluate.core import EvalReport, Sample, check_protocols, check_tasks, evaluate, open_predictor
from tiercel.evaluate.examples import write_examples

__all__ = ["EvalReport", "Sample", "check_protocols", "check_tasks", "evaluate", "open_predictor", "write_examples"]
