#!/usr/bin/env bash
# Train the synthetic-benchmark student that reads its images, in two stages, then score it on the test split.
#   stage 1 (benchmarks/recipes/synth_student_stage1.yaml): IMG_CLS only, 1,000 steps -> benchmarks/work/reader/stage1/student
#   stage 2 (benchmarks/recipes/synth_student.yaml): all 14 tasks from stage 1's student -> benchmarks/work/reader/student
# Needs the synthetic data and the teacher's tokenizer under benchmarks/work/distill_synth (made by
# `.venv/bin/python benchmarks/distill_synth.py`). Run from anywhere; about 9 minutes on one CPU thread.
set -euo pipefail
cd "$(dirname "$0")/.."
for f in benchmarks/work/distill_synth/data/train.json benchmarks/work/distill_synth/teacher/tokenizer.json; do
  [[ -f $f ]] || { echo "missing $f; run: .venv/bin/python benchmarks/distill_synth.py" >&2; exit 1; }
done
# a fresh run each time: the trainer refuses an out directory that holds an earlier run's checkpoints
rm -rf benchmarks/work/reader/stage1 benchmarks/work/reader/checkpoints benchmarks/work/reader/student
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
.venv/bin/tiercel distill train benchmarks/recipes/synth_student_stage1.yaml --quiet
.venv/bin/tiercel distill train benchmarks/recipes/synth_student.yaml --quiet
.venv/bin/tiercel eval benchmarks/work/reader/student --data benchmarks/work/distill_synth/data/test.json --num-beams 1 \
  --json benchmarks/work/reader/test_eval.json
