"""The accuracy guard: quantised vs fp32 on held-out samples, by task metrics and token agreement.

Both bundles generate greedily on the same samples through tiercel.runtime; answers are parsed with each
task's spec and scored against the references (tiercel.tasks metrics), and the 14-task average of headlines
(tiercel.tasks.average_headline, tasks with a nan headline left out) is compared. The drop is relative:
(fp32 - quantised) / fp32, 0 when fp32 scores 0. Token agreement is the fraction of positions where the two
generations hold the same token, over the longer of the two, averaged over samples.

The decision uses an upper confidence bound of the drop, not the point value: a paired bootstrap resamples the
val samples (within each task, so every task keeps its weight), scores both generations on the same resample
and takes the `confidence` quantile of the resampled drops. Why: a small model's per-task metrics move in
steps of one sample, so the point drop on a few hundred val samples says little. Measured on the 0.8M-parameter
synthetic student (benchmarks/quantize_cpu.py): int8-static's point drop on 224 val samples was -3.1% (better
than fp32) while 600 test records showed +10.3%; its token agreement (0.89 val, 0.88 test) was the stable
signal. The paired bound sees it: samples whose generations differ widen the resampled drops, identical ones
contribute nothing. `confidence=0` decides on the point drop alone. Each draw's headlines come from per-sample
statistics made once (tiercel.tasks.metrics.resample: IoUs, masks, n-gram tables), not from scoring the draw
again, so the bootstrap costs a few scorings (benchmarks/results/guard_cost.md) rather than `rounds` of them.

A per-task floor (`max_task_drop`) refuses a bundle that loses one task while the average holds: a task fails
when even the low end of its own paired-bootstrap drop is over the limit, i.e. the loss is resolved, not just
possible. The low end, not the high one as for the average, because a task's interval on a few hundred val
samples is several points wide (benchmarks/results/quant_paired_finish.md: 2-15 points on 1,200 test records
per task), so demanding that its top be within 1% would refuse nearly every bundle. Its level is 1 - confidence
shared over the tasks checked (Bonferroni), so a bundle whose every task is within the limit is refused with
probability at most 1 - confidence; with 2,000 rounds and 14 tasks that level falls between the 15th and 16th
smallest resampled drops (at 200, between the 2nd and 3rd, where it landed was mostly luck). It is not met exactly on
small samples. Simulated for an accuracy task with no true loss (benchmarks/results/guard_floor_methods.md,
level 0.1 / 14 = 0.0071, 1% floor), one task is refused 0.3-2.2x as often as the level says at 8-256 val samples
(0.93x on average over the cases tried; 1.56x at 200 rounds), and 3-8x at 4 samples (guard_floor_sim.md), so
tasks with fewer than MIN_TASK_SAMPLES are not checked. BCa was no better; a sign-flip test held the level but
missed most losses under 64 samples.
Tasks at fp32 0 have no relative drop and are not checked either; without the bootstrap (`confidence=0`) no task
is.

Knows nothing about how a bundle was quantised; bundle.py decides what to exclude when the guard fails.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from tiercel.errors import TiercelError
from tiercel.progress import track

LOW_AGREEMENT = 0.9  # a pass below this token agreement comes with a caution (see `caution`)
MIN_TASK_SAMPLES = 8  # val samples a task needs before the per-task floor checks it (module docstring)


def caution(verdict) -> str | None:
    """A one-line caution for a pass at low token agreement, where the val sample decides little.

    Measured on the synthetic student (benchmarks/results/quantize_cpu_runs/2026-11-27_student_absmax7.json, int4
    still on the absmax / 7 grid): the one pass that test contradicted (int4 block 32: val drop -2.8%, bound 2.7%,
    test +7.39%) had agreement 0.84; the passes that held on test had 0.90-0.99, before and after the grid fix
    (benchmarks/results/quantize_student_cpu.json). A warning, not a rule: the threshold rests on that one miss.
    """
    if verdict is None or not verdict.passed or verdict.token_agreement >= LOW_AGREEMENT:
        return None
    return (f"passed at token agreement {verdict.token_agreement:.3f} (< {LOW_AGREEMENT}): many answers changed, so "
            f"{verdict.samples} val samples decide little; consider a larger --n-val or --confidence, or --min-agreement")


def bound_missed_alone(drop: float, bound: float | None, agreement: float, max_drop: float, min_agreement: float, *,
                       task_misses) -> bool:
    """The point drop within max_drop, its upper bound over it, the agreement met and no task's loss resolved: what
    more val samples can change."""
    return not task_misses and bound is not None and drop <= max_drop < bound and agreement >= min_agreement


def bound_hint(attempts: list[dict], max_drop: float, min_agreement: float, samples: int) -> str:
    """'; attempt N's point drop ... was within max drop, its bound ... was not: ...' when some attempt failed only on
    the bootstrap bound (what more val samples can change), else ''. `attempts`: Verdict.to_dict() rows."""
    for i, a in enumerate(attempts, 1):
        bound = a.get("drop_bound")
        if bound_missed_alone(a.get("drop", math.inf), bound, a.get("token_agreement", 0.0), max_drop, min_agreement,
                              task_misses=a.get("task_misses", ())):
            return (f"; attempt {i}'s point drop {a['drop']:.2%} was within max drop, its {a['confidence']:.0%} bound "
                    f"{bound:.2%} was not: more val samples narrow the bound (--n-val, {samples} now; or --n-val-max)")
    return ""


class GuardError(TiercelError):
    """The quantised bundle stays below the accuracy floor even with the most sensitive layers kept back.
    `attempts`: each attempt's record (what was kept back, Verdict.to_dict()), as the manifest would have held."""

    def __init__(self, message: str, attempts: list[dict] | None = None):
        super().__init__(message)
        self.attempts = attempts or []


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
    drop_bound: float | None = None  # the `confidence` quantile of the bootstrapped drop (None: point drop decides)
    confidence: float = 0.0
    max_task_drop: float | None = None  # the per-task floor checked (None: none)
    task_misses: list[str] = field(default_factory=list)  # tasks whose drop is resolved over max_task_drop

    def to_dict(self) -> dict:
        return asdict(self)

    def misses(self, max_drop: float, min_agreement: float) -> str:
        """Which floor a failed comparison missed, in words: the drop (or only its upper bound), the token agreement,
        or both."""
        out = []
        if self.drop > max_drop:
            out.append(f"drop over the limit (max drop {max_drop:.2%})")
        elif self.drop_bound is not None and self.drop_bound > max_drop:
            out.append(f"drop within max drop {max_drop:.2%}, its {self.confidence:.0%} upper bound "
                       f"{self.drop_bound:.2%} over it (more val samples narrow the bound)")
        if self.token_agreement < min_agreement:
            out.append(f"token agreement under --min-agreement {min_agreement:.3f}")
        if self.task_misses:
            out.append(self.task_line())
        return " and ".join(out)

    def task_line(self) -> str:
        """'a task's drop over max task drop X (TAG at least Y, ...)' for the tasks whose loss is resolved."""
        lost = ", ".join(f"{t} at least {self.per_task[t]['drop_low']:.1%}" for t in self.task_misses)
        return f"a task's drop over max task drop {self.max_task_drop:.2%} ({lost})"

    def bound_missed_alone(self, max_drop: float, min_agreement: float) -> bool:
        """Only the average's upper bound missed: what a larger val sample can change (a task's resolved loss is not)."""
        return bound_missed_alone(self.drop, self.drop_bound, self.token_agreement, max_drop, min_agreement,
                                  task_misses=self.task_misses)

    def line(self) -> str:
        bound = f", {self.confidence:.0%} upper bound {self.drop_bound:.2%}" if self.drop_bound is not None else ""
        return (f"token agreement {self.token_agreement:.3f}, 14-task average {self.quantized_average:.4f} vs fp32 "
                f"{self.fp32_average:.4f} (drop {self.drop:.2%}{bound})")


def run_samples(model, samples, max_new_tokens: int = 64) -> list[list[int]]:
    """Greedy token ids of `model` (a tiercel.runtime Model) for each sample."""
    from tiercel.quantize.calibrate import generate

    ids = []
    with track("guard", len(samples), "samples") as bar:
        for s in samples:
            ids.append(generate(model, s, max_new_tokens=max_new_tokens))
            bar.advance(1)
    return ids


def agreement(a: list[int], b: list[int]) -> float:
    n = max(len(a), len(b))
    return 1.0 if n == 0 else sum(x == y for x, y in zip(a, b)) / n


def parsed(tokenizer, samples, ids, dialect: str = "falcon") -> dict[str, tuple[list, list, list]]:
    """{tag: (predictions, references, image sizes)} of generations `ids`, parsed with each task's spec."""
    from tiercel import tasks

    by_tag: dict[str, tuple[list, list, list]] = {}
    for s, seq in zip(samples, ids):
        spec = tasks.get(s.tag)
        preds, refs, sizes = by_tag.setdefault(s.tag, ([], [], []))
        preds.append(spec.parse(tokenizer.decode(seq), image_size=s.size, dialect=dialect))
        refs.append(spec.parse(s.answer, image_size=s.size, dialect=dialect))
        sizes.append(s.size)
    return by_tag


def _headline(tag: str, preds, refs, sizes) -> float:
    from tiercel import tasks

    spec = tasks.get(tag)
    return float(spec.metric(preds, refs, sizes)[spec.headline])


def headlines(tokenizer, samples, ids, dialect: str = "falcon") -> dict[str, float]:
    """{tag: headline metric} of generations `ids` against the samples' reference answers."""
    return {tag: _headline(tag, *v) for tag, v in parsed(tokenizer, samples, ids, dialect).items()}


def bootstrap_drops(ref: dict, got: dict, same: dict, rounds: int = 2000, seed: int = 0,
                    whole: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Relative drops of the task average, and of each task, over `rounds` paired resamples.

    ref, got: parsed() of the fp32 and quantised generations; same: {tag: bool array, generations identical}.
    Each round draws, per task, as many samples as it has with replacement, and scores both sides on them
    (once when every drawn pair is identical). Tasks whose headline is nan on a resample sit that round out;
    a task's own drop is nan in a round where its fp32 headline is 0 or nan. Headlines with a per-sample form
    (tiercel.tasks.metrics.resample) are scored from statistics made once; `whole=True` scores every draw with
    the task's metric instead (the same numbers up to float rounding, slower: the reference the fast path is
    tested and benchmarked against).
    """
    rng = np.random.default_rng(seed)
    drops = np.zeros(rounds)
    per_task = {tag: np.full(rounds, np.nan) for tag in ref}
    from tiercel.tasks.metrics.resample import scorer

    scorers = {tag: (scorer(tag, preds, refs, sizes, whole), scorer(tag, got[tag][0], refs, sizes, whole))
               for tag, (preds, refs, sizes) in ref.items()}
    for r in range(rounds):
        f_sum = q_sum = 0.0
        for tag, (_, refs, _) in ref.items():
            pick = rng.integers(0, len(refs), len(refs))
            f = scorers[tag][0](pick)
            q = f if same[tag][pick].all() else scorers[tag][1](pick)
            if not (math.isnan(f) or math.isnan(q)):
                f_sum, q_sum = f_sum + f, q_sum + q
                if f > 0:
                    per_task[tag][r] = (f - q) / f
        drops[r] = (f_sum - q_sum) / f_sum if f_sum > 0 else 0.0
    return drops, per_task


def compare(tokenizer, samples, ref_ids, q_ids, max_drop: float, min_agreement: float = 0.0,
            dialect: str = "falcon", ref_scores: dict | None = None, confidence: float = 0.9,
            rounds: int = 2000, max_task_drop: float | None = None) -> Verdict:
    """Score both generations and decide whether the quantised one holds within `max_drop`.

    With confidence > 0 the `confidence` quantile of the paired-bootstrap drop must be within `max_drop`
    (see the module docstring); with 0 the point drop must. With `max_task_drop` (and confidence > 0) no task's
    drop may be resolved over it: per_task[tag]["drop_low"] is the low end of the task's bootstrapped drop.
    """
    ref_parsed = parsed(tokenizer, samples, ref_ids, dialect)
    got_parsed = parsed(tokenizer, samples, q_ids, dialect)
    ref = ref_scores if ref_scores is not None else {t: _headline(t, *v) for t, v in ref_parsed.items()}
    got = {t: _headline(t, *v) for t, v in got_parsed.items()}
    tags = [t for t in ref if not (math.isnan(ref[t]) or math.isnan(got[t]))]
    f32 = sum(ref[t] for t in tags) / len(tags) if tags else 0.0
    q = sum(got[t] for t in tags) / len(tags) if tags else 0.0
    drop = (f32 - q) / f32 if f32 > 0 else 0.0
    agree = sum(agreement(a, b) for a, b in zip(ref_ids, q_ids)) / max(len(q_ids), 1)
    per_task = {t: {"fp32": ref[t], "quantized": got[t], "delta": got[t] - ref[t]} for t in ref}
    bound, task_misses = None, []
    if confidence > 0 and tags:
        same_by_tag: dict[str, list[bool]] = {}
        for s, a, b in zip(samples, ref_ids, q_ids):
            same_by_tag.setdefault(s.tag, []).append(list(a) == list(b))
        kept = {t: ref_parsed[t] for t in tags}
        drops, task_drops = bootstrap_drops(kept, got_parsed, {t: np.array(v) for t, v in same_by_tag.items()}, rounds)
        bound = float(np.quantile(drops, confidence))
        if max_task_drop is not None:
            checked = [t for t in tags if ref[t] > 0 and len(ref_parsed[t][0]) >= MIN_TASK_SAMPLES
                       and not np.isnan(task_drops[t]).all()]
            level = (1 - confidence) / max(len(checked), 1)  # shared over the tasks (Bonferroni)
            for t in checked:
                per_task[t]["drop"] = (ref[t] - got[t]) / ref[t]
                per_task[t]["drop_low"] = float(np.nanquantile(task_drops[t], level))
            task_misses = [t for t in checked if per_task[t]["drop_low"] > max_task_drop]
    decisive = drop if bound is None else max(drop, bound)
    holds = decisive <= max_drop and agree >= min_agreement and not task_misses
    return Verdict(agree, f32, q, drop, per_task, len(samples), holds, bound, confidence,
                   max_task_drop if confidence > 0 else None, task_misses)
