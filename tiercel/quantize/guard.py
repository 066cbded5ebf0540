"""The accuracy guard: quantised vs fp32 on held-out samples, by task metrics and token agreement.

Both bundles generate greedily on the same samples through tiercel.runtime; answers are parsed with each
task's spec and scored against the references (tiercel.tasks metrics), and the 14-task average of headlines
(tiercel.tasks.average_headline, tasks with a nan headline left out) is compared. The drop is relative:
(fp32 - quantised) / fp32, 0 when fp32 scores 0. Token agreement is the fraction of positions where the two
generations hold the same token, over the longer of the two, averaged over samples.

Knows nothing about how a bundle was quantised; bundle.py decides what to exclude when the guard fails.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from tiercel.errors import TiercelError


class GuardError(TiercelError):
    """The quantised bundle stays below the accuracy floor even with the most sensitive layers kept in fp32."""


@dataclass
class Verdict:
    """One comparison of a quantised bundle with fp32."""

    token_agreement: float
    fp32_average: float
    quantized_average: float
    drop: float
    per_task: dict = field(default_factory=dict)  # tag -> {"fp32": headline, "quantized": headline, "delta": q - f}
    samples: int = 0
    passed: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return (f"token agreement {self.token_agreement:.3f}, 14-task average {self.quantized_average:.4f} vs fp32 "
                f"{self.fp32_average:.4f} (drop {self.drop:.2%})")


def run_samples(model, samples, max_new_tokens: int = 64) -> list[list[int]]:
    """Greedy token ids of `model` (a tiercel.runtime Model) for each sample."""
    from tiercel.quantize.calibrate import generate

    return [generate(model, s, max_new_tokens=max_new_tokens) for s in samples]


def agreement(a: list[int], b: list[int]) -> float:
    n = max(len(a), len(b))
    return 1.0 if n == 0 else sum(x == y for x, y in zip(a, b)) / n


def headlines(tokenizer, samples, ids, dialect: str = "falcon") -> dict[str, float]:
    """{tag: headline metric} of generations `ids` against the samples' reference answers."""
    from tiercel import tasks

    by_tag: dict[str, tuple[list, list, list]] = {}
    for s, seq in zip(samples, ids):
        spec = tasks.get(s.tag)
        preds, refs, sizes = by_tag.setdefault(s.tag, ([], [], []))
        preds.append(spec.parse(tokenizer.decode(seq), image_size=s.size, dialect=dialect))
        refs.append(spec.parse(s.answer, image_size=s.size, dialect=dialect))
        sizes.append(s.size)
    return {tag: float(tasks.get(tag).metric(*v)[tasks.get(tag).headline]) for tag, v in by_tag.items()}


def compare(tokenizer, samples, ref_ids, q_ids, max_drop: float, min_agreement: float = 0.0,
            dialect: str = "falcon", ref_scores: dict | None = None) -> Verdict:
    """Score both generations and decide whether the quantised one holds within `max_drop`."""
    ref = ref_scores if ref_scores is not None else headlines(tokenizer, samples, ref_ids, dialect)
    got = headlines(tokenizer, samples, q_ids, dialect)
    tags = [t for t in ref if not (math.isnan(ref[t]) or math.isnan(got[t]))]
    f32 = sum(ref[t] for t in tags) / len(tags) if tags else 0.0
    q = sum(got[t] for t in tags) / len(tags) if tags else 0.0
    drop = (f32 - q) / f32 if f32 > 0 else 0.0
    agree = sum(agreement(a, b) for a, b in zip(ref_ids, q_ids)) / max(len(q_ids), 1)
    per_task = {t: {"fp32": ref[t], "quantized": got[t], "delta": got[t] - ref[t]} for t in ref}
    return Verdict(agree, f32, q, drop, per_task, len(samples), drop <= max_drop and agree >= min_agreement)
