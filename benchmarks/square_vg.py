"""The sanity experiment of docs/fidelity.md: can the demo teacher's shape learn to find one bright square?

Two parts, both on benchmarks/square_data.py's data (REG_VG, 128 px) and scored the same way at each checkpoint:
REG_VG Acc@0.5 and mean IoU of greedy answers on the first --n-test test records (tiercel.evaluate), and the
image-use probe (tiercel.evaluate.image_use) on the first --n-probe val records.

  score RUN_DIR      score the checkpoints of a finished `tiercel distill benchmarks/recipes/square_vg.yaml` run
  train NAME         a plain torch loop on the same model, data path (SFTData, TaskSampler, collate, run_model),
                     optimiser and schedule as the trainer, with a learning-rate multiplier for the vision tower and
                     projector (--vision-lr-mult 0 freezes them at their random initialisation); logs the gradient
                     norm per module group. --phases trains on other data sets in turn (a coarse-to-fine
                     curriculum) while scoring stays on --data; --coarse-targets keeps the images and rounds the
                     answers' coordinate bins to a few levels per axis instead (a curriculum on the targets);
                     --soft-sigma adds a soft-label term that gives the coordinate tokens an order (a Gaussian over
                     neighbouring bins)

    python benchmarks/square_vg.py score benchmarks/work/square/run --out benchmarks/results/square_vg_distill.json
    python benchmarks/square_vg.py train frozen --vision-lr-mult 0 --steps 2000 --out benchmarks/results/square_vg_frozen.json
    python benchmarks/square_vg.py train curriculum --steps 3000 --out benchmarks/results/square_vg_curriculum.json \
        --phases benchmarks/work/square_grid4/data:500,benchmarks/work/square_grid16/data:700
    python benchmarks/square_vg.py train coarse --steps 3000 --coarse-targets 4:500,16:700 \
        --out benchmarks/results/square_vg_coarse_targets.json
    python benchmarks/square_vg.py train soft --steps 3000 --soft-sigma 25 --out benchmarks/results/square_vg_soft.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from image_use import commit, machine, write_result  # noqa: E402

DATA = Path("benchmarks/work/square/data")
SHAPE = dict(
    vision_dims=[16, 32, 64, 128],
    vision_heads=[1, 2, 2, 4],
    vision_groups=[1, 2, 2, 4],
    d_model=128,
    ffn_dim=512,
    image_size=128,
)  # tiercel/recipes/demo.yaml pipeline.train_teacher, on preset tiny
GROUPS = {
    "vision": "model.vision_tower.",
    "projector": "model.multi_modal_projector.",
    "encoder": "model.language_model.encoder.",
    "decoder": "model.language_model.decoder.",
    "embeddings": "model.language_model.shared.",
}


def score(model, tokenizer, data_dir: Path, n_test: int, n_probe: int) -> dict:
    """REG_VG Acc@0.5 / mean IoU (greedy, first n_test test records) and the probe (first n_probe val records)."""
    from tiercel.distill.data import SFTData
    from tiercel.evaluate import evaluate
    from tiercel.evaluate.image_use import probe
    from tiercel.models.predict import TorchPredictor

    was_training = model.training
    gen = {"num_beams": 1, "max_new_tokens": 12}
    report = evaluate(TorchPredictor(model, tokenizer), data_dir / "test.json", data_dir, ["REG_VG"], n_test, gen)
    vg = report.per_task["REG_VG"]
    val = SFTData(data_dir / "val.json", data_dir, tokenizer)
    p = probe(model, tokenizer, val, ["REG_VG"], n=n_probe)["per_task"]["REG_VG"]
    model.train(was_training)
    return {
        "acc50": vg["acc50"],
        "mean_iou": vg["mean_iou"],
        "test_records": report.counts["REG_VG"],
        "probe": p,
    }


def short(step, s: dict) -> str:
    p = s["probe"]
    return (
        f"step {step:>5} acc50 {s['acc50']:.3f} iou {s['mean_iou']:.3f} | val loss {p['loss_true']:.3f} gap perm "
        f"{p['loss_gap_permuted']:+.3f} first-coord gap {p['first_coord_loss_gap_permuted']:+.3f} | image spread "
        f"cos {p['image_spread']['cosine']:.4f} rel_std {p['image_spread']['rel_std']:.4f}"
    )


def score_run(run_dir: Path, args) -> dict:
    """Score every checkpoint of a `tiercel distill` run (its metrics.jsonl is kept alongside)."""
    from tiercel.models import load_checkpoint

    out = {"run": str(run_dir), "checkpoints": []}
    for ckpt_dir in sorted((run_dir / "checkpoints").glob("step_*")):
        step = int(ckpt_dir.name.split("_")[1])
        if args.every and step % args.every:
            continue
        ckpt = load_checkpoint(ckpt_dir)
        s = {"step": step, **score(ckpt.model, ckpt.tokenizer, args.data, args.n_test, args.n_probe)}
        out["checkpoints"].append(s)
        print(short(step, s), flush=True)
    log = run_dir / "metrics.jsonl"
    out["metrics"] = [json.loads(x) for x in log.read_text().splitlines()] if log.is_file() else []
    return out


def grad_norms(model) -> dict:
    """L2 norm of the gradient per module group (GROUPS)."""
    sq = dict.fromkeys(GROUPS, 0.0)
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        group = next((g for g, prefix in GROUPS.items() if name.startswith(prefix)), None)
        if group:
            sq[group] += float(p.grad.detach().pow(2).sum())
    return {g: v**0.5 for g, v in sq.items()}


def optimizer(model, lr: float, vision_mult: float, weight_decay: float):
    """The trainer's AdamW (no decay on norms, biases, position tables) with vision + projector at lr x mult."""
    import torch

    groups = {}
    for name, p in model.named_parameters():
        vision = name.startswith((GROUPS["vision"], GROUPS["projector"]))
        if vision and vision_mult == 0:
            p.requires_grad_(False)
            continue
        decay = not (p.ndim < 2 or "norm" in name or "embed_positions" in name)
        groups.setdefault((vision, decay), []).append(p)
    params = [
        {"params": ps, "lr": lr * (vision_mult if v else 1.0), "weight_decay": weight_decay if d else 0.0}
        for (v, d), ps in groups.items()
    ]
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), eps=1e-6)


def parse_phases(spec: str, data: Path, steps: int) -> list[tuple[Path, int]]:
    """'DIR:STEPS,DIR:STEPS' -> [(dir, end_step), ...], ending with (data, steps) for the remaining steps."""
    phases, end = [], 0
    for part in filter(None, spec.split(",")):
        path, n = part.rsplit(":", 1)
        end += int(n)
        phases.append((Path(path), end))
    if end >= steps:
        raise SystemExit(f"--phases: the phases take {end} steps, which leaves none of --steps {steps} for --data")
    return [*phases, (data, steps)]


def parse_coarse(spec: str, steps: int) -> list[tuple[int, int]]:
    """'LEVELS:STEPS,...' -> [(levels, end_step), ...], ending with (0, steps): exact bins for the rest."""
    phases, end = [], 0
    for part in filter(None, spec.split(",")):
        levels, n = (int(v) for v in part.split(":"))
        end += n
        phases.append((levels, end))
    if end >= steps:
        raise SystemExit(f"--coarse-targets: the phases take {end} steps, which leaves none of --steps {steps}")
    return [*phases, (0, steps)]


def coarse_bin(k: int, levels: int) -> int:
    """The centre of bin k's interval when 0..999 is cut into `levels` equal ones (4 levels: 125, 375, 625, 875)."""
    width = 1000 / levels
    return min(999, round((k // width + 0.5) * width))


def coarse_table(coord0: int, vocab: int, levels: int):
    """Token-id lookup that maps each coordinate token `<k>` to `<coarse_bin(k)>` (0 levels: exact); every other
    id maps to itself."""
    import torch

    table = torch.arange(vocab)
    if levels:
        table[coord0 : coord0 + 1000] = coord0 + torch.tensor([coarse_bin(k, levels) for k in range(1000)])
    return table


def coarsen(batch: dict, table) -> None:
    """Round the coordinate tokens of the answers (labels and the decoder inputs, which are them shifted) in place."""
    for key in ("labels", "decoder_input_ids"):
        ids = batch[key]
        keep = ids >= 0  # -100 is padding in the labels
        ids[keep] = table[ids[keep]]


def coarse_copy(data_dir: Path, levels: int) -> Path:
    """val.json and test.json of `data_dir` with the answers' bins rounded by coarse_bin, next to a link to
    its images, so a coarse phase can be scored on the targets it trained on."""
    import dataclasses
    import re

    from tiercel.data.sft import iter_records, write_records

    out = Path("benchmarks/work/square_coarse") / f"levels{levels}"
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "images").exists():
        (out / "images").symlink_to((data_dir / "images").resolve())
    for split in ("val", "test"):
        records = [
            dataclasses.replace(r, answer=re.sub(r"<(\d+)>", lambda m: f"<{coarse_bin(int(m[1]), levels)}>", r.answer))
            for r in iter_records(data_dir / f"{split}.json")
        ]
        write_records(out / f"{split}.json", records)
    return out


def soft_coord_loss(logits, labels, coord0: int, sigma: float):
    """Cross-entropy against a Gaussian (std `sigma` bins, cut at 3 sigma) over the coordinate bins around each
    coordinate label; 0 when no label is a coordinate. Bins are the 1000 token ids from coord0."""
    import torch

    k = labels - coord0
    mask = (k >= 0) & (k < 1000)
    if not mask.any():
        return logits.sum() * 0.0
    bins = torch.arange(1000, device=logits.device, dtype=torch.float32)
    dist = bins[None, :] - k[mask].float()[:, None]
    target = torch.where(dist.abs() <= 3 * sigma, torch.exp(-0.5 * (dist / sigma) ** 2), torch.zeros_like(dist))
    target = target / target.sum(-1, keepdim=True)
    logp = torch.log_softmax(logits[mask].float(), -1)[:, coord0 : coord0 + 1000]
    return -(target * logp).sum(-1).mean()


def box_cover(data, indices, image_size: int, n_patches: int, objects: dict | None = None, sub: int = 1,
              labels: dict | None = None):
    """Per record, the share of each cell of a grid sqrt(n_patches) * sub cells a side covered by the record's
    answer boxes, or with `objects` ({image: boxes}) by all the image's objects, or with `labels` (labels.json of
    benchmarks/synth_vg_data.py) by the objects of each class and colour, one channel each: a dense target (--aux).
    Shaped (records, n_patches, sub * sub * channels): for each image token (row-major), its sub x sub block of
    cells."""
    import math

    import numpy as np
    import torch

    from tiercel import tasks as T

    side = math.isqrt(n_patches)
    n = side * sub
    channels = len(labels["channels"]) if labels else 1
    edges = np.arange(n + 1) * (image_size / n)
    lo, hi = edges[:-1], edges[1:]
    out = np.zeros((len(indices), n, n, channels))
    for row, i in enumerate(indices):
        record = data.records[int(i)]
        if labels is not None:
            items = [(tuple(o[:2]), o[2:]) for o in labels["objects"][record.images[0]]]
        elif objects is not None:
            items = [((0,), box) for box in objects[record.images[0]]]
        else:
            items = [((0,), box) for box in T.get("REG_VG").parse(record.answer, image_size=(image_size, image_size)).boxes]
        for chans, (x1, y1, x2, y2) in items:
            w = np.clip(np.minimum(x2, hi) - np.maximum(x1, lo), 0, None)
            h = np.clip(np.minimum(y2, hi) - np.maximum(y1, lo), 0, None)
            for c in chans:
                out[row, :, :, c] += np.outer(h, w) / (image_size / n) ** 2
    out = np.minimum(out, 1.0).reshape(len(indices), side, sub, side, sub, channels).transpose(0, 1, 3, 2, 4, 5)
    return torch.from_numpy(out.reshape(len(indices), n_patches, sub * sub * channels)).float()


def parse_aux(specs: list[str], legacy_weight: float, legacy_target: str) -> list[tuple[str, str, float, int, str]]:
    """--aux ON:TARGET:WEIGHT[:SUB[:FORM]] -> [(on, target, weight, sub, form)]; --aux-box-weight W is
    image:TARGET:W:1:bce. FORM bce: each cell's cover on its own; softmax: the cover normalised over the image's
    cells, against a softmax over them (which cells hold it)."""
    out = [("image", legacy_target, legacy_weight, 1, "bce")] if legacy_weight else []
    for spec in specs:
        parts = spec.split(":") + ["1", "bce"][len(spec.split(":")) - 3 :]
        if len(parts) != 5 or parts[0] not in ("image", "encoder") or parts[1] not in ("box", "objects", "labels") \
                or parts[4] not in ("bce", "softmax"):
            raise SystemExit(f"--aux {spec}: expected ON:TARGET:WEIGHT[:SUB[:FORM]], ON image|encoder, "
                             "TARGET box|objects|labels, FORM bce|softmax")
        out.append((parts[0], parts[1], float(parts[2]), int(parts[3]), parts[4]))
    return out


def cover_loss(logits, target, form: str):
    """The dense term: BCE per cell, or (softmax) cross-entropy of a softmax over all of an image's cells against
    its cover normalised to sum 1 (records with no cover count 0)."""
    import torch

    if form == "bce":
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    flat, t = logits.flatten(1), target.flatten(1)
    mass = t.sum(1, keepdim=True)
    keep = mass.squeeze(1) > 0
    p = t[keep] / mass[keep]
    return -(p * torch.log_softmax(flat[keep], -1)).sum(-1).mean() if keep.any() else flat.sum() * 0.0


def train(args) -> dict:
    """The plain loop; returns its log and the scores at each checkpoint."""
    import torch

    from tiercel.distill.data import SFTData, TaskSampler, collate, model_input
    from tiercel.distill.losses import ce_loss
    from tiercel.distill.objective import run_model
    from tiercel.distill.trainer import lr_lambda
    from tiercel.models import build
    from tiercel.models.coords import init_coordinates
    from tiercel.runtime.tokenizer import train_bpe

    tok_data = SFTData(args.data / "train.json", args.data, None)
    tok = train_bpe((t for r in tok_data.records for t in (r.prompt, r.answer)), vocab_size=400)
    torch.manual_seed(args.seed)
    model = build("tiny", seed=args.seed, vocab_size=len(tok), image_token_id=tok.image_id, **SHAPE).train()
    spec = model_input(model)
    phases = parse_phases(args.phases, args.data, args.steps)
    coarse = parse_coarse(args.coarse_targets, args.steps)
    coord_ids = [tok.tok.token_to_id(f"<{k}>") for k in range(1000)]
    coord0 = coord_ids[0]
    assert coord_ids == list(range(coord0, coord0 + 1000)), "coordinate tokens are not contiguous ids"
    init_coordinates(model, tok, args.coord_init)
    opt = optimizer(model, args.lr, args.vision_lr_mult, args.weight_decay)
    aux, heads, objects, labels = parse_aux(args.aux, args.aux_box_weight, args.aux_target), [], {}, {}
    for folder, _ in phases:  # each phase's folder holds objects.json and labels.json (synth_vg_data.py)
        if any(a[1] == "objects" for a in aux):
            objects[folder] = json.loads((folder / "objects.json").read_text())
        if any(a[1] == "labels" for a in aux):
            labels[folder] = json.loads((folder / "labels.json").read_text())
    for _, target, _, sub, _ in aux:  # one linear head per term: an image token (or the encoder there) -> its cells
        channels = len(next(iter(labels.values()))["channels"]) if target == "labels" else 1
        heads.append(torch.nn.Linear(model.config.text_config.d_model, sub * sub * channels))
        opt.add_param_group({"params": heads[-1].parameters(), "lr": args.lr, "weight_decay": 0.0})
    sched_cfg = argparse.Namespace(warmup_steps=args.warmup, steps=args.steps, min_lr_ratio=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(sched_cfg))
    log, scores, t0, samples = [], [], time.perf_counter(), 0
    s = {"step": 0, **score(model, tok, args.data, args.n_test, args.n_probe)}
    scores.append(s)
    print(short(0, s), flush=True)
    phase_end, coarse_end = -1, -1
    for step in range(args.steps):
        if step > coarse_end:  # next target phase: its rounding table
            levels, coarse_end = next((lv, e) for lv, e in coarse if e > step)
            table = coarse_table(coord0, len(tok), levels)
            coarse_end -= 1
            if args.coarse_targets:
                print(f"step {step}: targets at {levels or 'exact'} levels per axis until step {coarse_end + 1}", flush=True)
        if step > phase_end:  # next phase: its data, its own sampler
            phase_data, phase_end = next((d, e) for d, e in phases if e > step)
            data = SFTData(phase_data / "train.json", phase_data, tok, max_answer_tokens=48)
            sampler = TaskSampler(data.by_task, {}, args.seed)
            phase_end -= 1
            print(f"step {step}: training on {phase_data} until step {phase_end + 1}", flush=True)
        batch = collate(data, sampler.draw(step, 0, args.batch_size), {"s": spec}, tok.eos_id)
        if levels:
            coarsen(batch, table)
        out = run_model(model, batch["s"], batch["decoder_input_ids"])
        logits = out.logits
        loss = ce_loss(logits, batch["labels"])
        aux_terms = {"ce": float(loss)}
        for (on, target_kind, weight, sub, form), head in zip(aux, heads):
            n_img = out.image.shape[1]
            if on == "image":
                tokens = out.image[:, 1:, :]  # Florence's image tokens: the mean first, then the grid
            else:  # the text encoder's output at the image slots, after it has read the prompt
                slots = batch["s"]["input_ids"] == model.config.image_token_id
                tokens = out.encoder[slots].view(len(out.image), n_img, -1)[:, 1:, :]
            target = box_cover(data, batch["indices"], spec.image_size, n_img - 1,
                               objects.get(phase_data) if target_kind == "objects" else None, sub,
                               labels.get(phase_data) if target_kind == "labels" else None)
            term = cover_loss(head(tokens), target, form)
            aux_terms[f"{on}:{target_kind}"] = float(term)
            loss = loss + weight * term
        if args.soft_sigma:
            loss = loss + args.soft_weight * soft_coord_loss(logits, batch["labels"], coord0, args.soft_sigma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norms = grad_norms(model)
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        sched.step()
        samples += args.batch_size
        done = step + 1
        if done % 50 == 0:
            log.append(
                {
                    "step": done,
                    "loss": float(loss),
                    "terms": aux_terms,
                    "grad_norm": norms,
                    "samples_per_s": samples / (time.perf_counter() - t0),
                }
            )
        if done % args.every == 0 or done == args.steps or step in (phase_end, coarse_end):
            train_s = time.perf_counter() - t0
            s = {"step": done, "train_seconds": train_s, "phase_data": str(phase_data), "target_levels": levels,
                 **score(model, tok, args.data, args.n_test, args.n_probe)}  # fmt: skip
            if step == coarse_end and levels:
                own = score(model, tok, coarse_copy(args.data, levels), args.n_test, args.n_probe)
                s["on_coarse_targets"] = own
                print(short(done, own), f"(on {levels}-level targets)", flush=True)
            if step == phase_end and phase_data != args.data:
                own = score(model, tok, phase_data, args.n_test, args.n_probe)
                s["on_phase_data"] = own
                print(short(done, own), "(on the phase's own data)", flush=True)
            scores.append(s)
            print(
                short(done, s),
                f"| train loss {float(loss):.3f} {json.dumps({k: round(v, 3) for k, v in aux_terms.items()})} grads {json.dumps({k: round(v, 4) for k, v in norms.items()})}",
                flush=True,
            )
            t0 += time.perf_counter() - t0 - train_s  # scoring time is not training time
    return {"variant": vars(args) | {"data": str(args.data), "out": str(args.out)}, "checkpoints": scores, "log": log}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sc = sub.add_parser("score", help="score a tiercel distill run's checkpoints")
    sc.add_argument("run_dir", type=Path)
    tr = sub.add_parser("train", help="train with a plain torch loop and score as it goes")
    tr.add_argument("name")
    tr.add_argument("--steps", type=int, default=2000)
    tr.add_argument("--lr", type=float, default=1e-3)
    tr.add_argument("--warmup", type=int, default=300)
    tr.add_argument("--vision-lr-mult", type=float, default=1.0, help="0 freezes vision tower and projector")
    tr.add_argument("--weight-decay", type=float, default=0.01)
    tr.add_argument("--batch-size", type=int, default=8)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--phases", default="", help="DIR:STEPS,... trained on in turn before --data (a curriculum)")
    tr.add_argument("--coarse-targets", default="", help="LEVELS:STEPS,... answer bins rounded per phase, then exact")
    tr.add_argument("--soft-sigma", type=float, default=0.0, help="std in bins of the soft coordinate term (0: off)")
    tr.add_argument("--soft-weight", type=float, default=1.0, help="weight of the soft term added to the CE")
    tr.add_argument("--aux-box-weight", type=float, default=0.0,
                    help="weight of a per-patch loss: a linear head on the image tokens predicts the answer box's cover")
    tr.add_argument("--aux-target", choices=("box", "objects"), default="box",
                    help="what the per-patch loss predicts: the answer box, or every object (DATA/objects.json)")
    tr.add_argument("--aux", action="append", default=[], metavar="ON:TARGET:WEIGHT[:SUB[:FORM]]",
                    help="a per-patch loss: a linear head on the image tokens (image) or on the text encoder's output "
                         "at the image slots (encoder) predicts the answer box's (box) or every object's (objects) "
                         "cover of each of an image token's SUB x SUB cells, per cell (FORM bce) or as a softmax over the "
                         "image's cells (softmax); repeatable")
    tr.add_argument("--coord-init", choices=("random", "sinusoid"), default="random",
                    help="initial embeddings of <0>..<999>: the model's random init, or a smooth code of k")
    for p in (sc, tr):
        p.add_argument("--data", type=Path, default=DATA)
        p.add_argument("--every", type=int, default=500, help="score every this many steps")
        p.add_argument("--n-test", type=int, default=64)
        p.add_argument("--n-probe", type=int, default=64)
        p.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    result = {
        "command": "python benchmarks/square_vg.py " + " ".join(sys.argv[1:]),
        "commit": commit(),
        "machine": machine(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    result.update(score_run(args.run_dir, args) if args.cmd == "score" else train(args))
    write_result(args.out, result)


if __name__ == "__main__":
    main()
