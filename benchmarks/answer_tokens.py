"""Issue #22's candidate causes that the data alone settles: answer lengths, cuts, token shares, samples seen.

For a synthetic benchmark folder (generated here with the demo's settings, or given with --data) and a tokenizer
trained on it the way the pipeline trains the demo teacher's (tiercel.runtime.tokenizer.train_bpe with the
grammar tokens added whole), per task: mean answer tokens, the share of answers longer than
--max-answer-tokens (cut in training), each task's share of the answer tokens of a batch drawn uniformly over
tasks (what the token-averaged loss weighs), the training samples the task gets in --steps x --batch, and
whether every coordinate bin in the answers is one token.

    python benchmarks/answer_tokens.py                       # the demo: 2,000 records, 128 px, 1,500 x 8, cut at 48
    python benchmarks/answer_tokens.py --data benchmarks/work/fidelity/data --max-answer-tokens 96 \\
        --steps 20000 --batch 16 --out benchmarks/results/answer_tokens_fidelity.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]

from tiercel import tasks as T  # noqa: E402
from tiercel.data.sft import iter_records  # noqa: E402
from tiercel.runtime.tokenizer import train_bpe  # noqa: E402


def measure(data: Path, vocab_size: int, max_answer: int, steps: int, batch: int) -> dict:
    train = [r for r in iter_records(data / "train.json") if r.tag in T.TAGS]
    tok = train_bpe((t for r in train for t in (r.prompt, r.answer)), vocab_size=vocab_size)
    lengths: dict[str, list[int]] = {}
    bins = split_bins = 0
    for r in train:
        ids = tok.encode(r.answer)
        lengths.setdefault(r.tag, []).append(len(ids) + 2)  # + <s> and </s>, as the labels hold them
        for m in re.finditer(r"<\d+>", r.answer):
            bins += 1
            split_bins += len(tok.encode(m.group())) != 1
    # the trainer draws tasks uniformly (data.task_weights all 1), so each task's share of a batch's answer tokens
    # is its mean (cut) length over the sum of the tasks' mean lengths
    cut_means = {t: statistics.mean(min(n, max_answer + 2) for n in v) for t, v in lengths.items()}
    total = sum(cut_means.values())
    per_task = {
        t: {
            "records": len(v),
            "mean_answer_tokens": statistics.mean(v),
            "max_answer_tokens": max(v),
            "cut_share": sum(n > max_answer + 2 for n in v) / len(v),
            "token_share": cut_means[t] / total,
            "samples_seen": steps * batch / len(lengths),
        }
        for t, v in sorted(lengths.items(), key=lambda kv: T.TAGS.index(kv[0]))
    }
    return {"per_task": per_task, "coordinate_bins": bins, "bins_split_into_several_tokens": split_bins,
            "tokenizer_size": len(tok)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="a synthetic benchmark folder; default: generate the demo's")
    ap.add_argument("--vocab-size", type=int, default=800, help="learned BPE vocabulary (the demo's: 800)")
    ap.add_argument("--max-answer-tokens", type=int, default=48)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "answer_tokens_demo.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            from tiercel.data.synth import generate

            data = Path(tmp) / "data"
            generate(data, n=2000, size=128, seed=0, workers=1)  # tiercel/recipes/demo.yaml pipeline.synth
        result = {
            "command": "python benchmarks/answer_tokens.py " + " ".join(sys.argv[1:]),
            "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip(),
            "data": str(args.data) if args.data else "generated: n 2000, size 128, seed 0 (the demo's)",
            "settings": {"vocab_size": args.vocab_size, "max_answer_tokens": args.max_answer_tokens, "steps": args.steps,
                         "batch": args.batch},
            **measure(data, args.vocab_size, args.max_answer_tokens, args.steps, args.batch),
        }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print("| task | mean answer tokens | cut | share of answer tokens | samples seen |")
    print("|---|---|---|---|---|")
    for t, v in result["per_task"].items():
        print(f"| {t} | {v['mean_answer_tokens']:.1f} | {100 * v['cut_share']:.0f}% | {100 * v['token_share']:.1f}% | "
              f"{v['samples_seen']:.0f} |")
    print(f"coordinate bins: {result['coordinate_bins']}, split into several tokens: {result['bins_split_into_several_tokens']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
