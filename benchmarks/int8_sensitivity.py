"""Why is one checkpoint more sensitive to int8 than another? Simulated int8 on teacher-forced answers, per layer.

For each checkpoint, the first --n val records of each task go through the training code's data path
(tiercel.distill.data) and forward (tiercel.distill.objective.run_model), teacher-forced, in fp32. Then:

- per layer (every nn.Linear and nn.Conv2d): the input's absmax and RMS over those records, and their ratio (the
  crest factor: how far the largest value sits above the typical one, which is what a per-tensor int8 scale
  spends its 255 levels on);
- all layers at once (but those given with --keep), each input rounded to symmetric per-tensor int8 at its calibrated absmax (the scale a
  MinMax calibration gives) and each weight to symmetric per-output-channel int8: the share of answer tokens
  whose argmax changes against fp32 (teacher-forced, so every position sees the reference prefix), over all
  tasks and per task;
- one layer at a time rounded the same way: the same flip share, which ranks the layers;
- `--blocked LAYER`: that layer rounded as onnxruntime's MatMulNBits 8-bit (int8-weight-only, accuracy level 4)
  rounds it instead: weights in symmetric int8 blocks of 128 along the input dimension of each output row, and
  the input rounded at run time per row and block of 128 at its own absmax (no calibrated scale).

This is a simulation in torch, not the onnxruntime or OpenVINO graphs: those quantize the exported graph (uint8
asymmetric activations on onnxruntime, attention matmuls included on some schemes), so the numbers compare
checkpoints with each other, not with a bundle's score.

    python benchmarks/int8_sensitivity.py --checkpoint before=DIR --checkpoint after=DIR \
        --data val.json --root DATA_DIR [--n 32] [--out benchmarks/results/int8_sensitivity.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from image_use import commit, machine, write_result  # noqa: E402


def fake_int8(x, absmax):
    """x rounded to symmetric int8 with scale absmax / 127 (absmax a scalar or a per-row column), clipped."""
    import torch

    scale = torch.clamp(absmax, min=1e-12) / 127
    return torch.clamp(torch.round(x / scale), -127, 127) * scale


def fake_blocked(x, block: int = 128):
    """x rounded to symmetric int8 in blocks of `block` along its last dimension, each at its own absmax."""
    import torch

    k = x.shape[-1]
    pad = (-k) % block
    blocks = torch.nn.functional.pad(x, (0, pad)).reshape(*x.shape[:-1], -1, block)
    rounded = fake_int8(blocks, blocks.abs().amax(-1, keepdim=True))
    return rounded.reshape(*x.shape[:-1], -1)[..., :k]


def layers(model) -> dict:
    import torch

    return {n: m for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}


def batches(data, n: int, batch_size: int):
    from tiercel import tasks as T

    for tag in T.TAGS:
        pool = data.by_task.get(tag, [])[:n]
        for start in range(0, len(pool), batch_size):
            yield tag, pool[start : start + batch_size]


def forward_all(model, data, batch_list, spec, margins: list | None = None):
    """[(tag, argmax at each answer position)] per record of a teacher-forced pass over the batches; with
    `margins`, each answer position's top-1 minus top-2 logit is appended to it."""
    import torch

    from tiercel.distill.data import collate
    from tiercel.distill.objective import run_model

    out = []
    with torch.no_grad():
        for tag, idx in batch_list:
            b = collate(data, idx, {"m": spec}, data.tok.eos_id)
            logits = run_model(model, b["m"], b["decoder_input_ids"]).logits
            top = logits.argmax(-1)
            keep = b["labels"] != -100
            out += [(tag, top[i][keep[i]]) for i in range(len(idx))]
            if margins is not None:
                two = logits[keep].topk(2, dim=-1).values
                margins += (two[:, 0] - two[:, 1]).tolist()
    return out


def margin_summary(margins: list[float]) -> dict:
    """Median and quartiles of the top-1 minus top-2 logit, and the share of positions under 0.5 and 1.0."""
    import numpy as np

    m = np.asarray(margins)
    return {"median": float(np.median(m)), "q25": float(np.quantile(m, 0.25)), "q75": float(np.quantile(m, 0.75)),
            "under_0.5": float((m < 0.5).mean()), "under_1": float((m < 1.0).mean())}


def moved(ref, got) -> list[tuple[str, int, int]]:
    """Per record: (tag, answer tokens whose argmax moved, answer tokens)."""
    return [(tag, int((a != b).sum()), a.numel()) for (tag, a), (_, b) in zip(ref, got)]


def flips(rows) -> tuple[float, dict[str, float]]:
    """Share of answer tokens whose argmax moved, overall and per task, from `moved` rows."""
    per = defaultdict(lambda: [0, 0])
    for tag, m, n in rows:
        per[tag][0] += m
        per[tag][1] += n
    return sum(r[1] for r in rows) / sum(r[2] for r in rows), {t: m / n for t, (m, n) in per.items()}


def paired_difference(a: list, b: list, rounds: int = 1000, seed: int = 0) -> dict:
    """Flip share of b minus a's on the same records, with a 95% percentile interval over resampled records."""
    import numpy as np

    ma, na = np.array([r[1] for r in a]), np.array([r[2] for r in a])
    mb, nb = np.array([r[1] for r in b]), np.array([r[2] for r in b])
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(rounds):
        k = rng.integers(0, len(ma), len(ma))
        diffs.append(mb[k].sum() / nb[k].sum() - ma[k].sum() / na[k].sum())
    return {"difference": float(mb.sum() / nb.sum() - ma.sum() / na.sum()),
            "ci95": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))], "rounds": rounds}


def analyse(path: str, data_file: Path, root: Path, n: int, batch_size: int, per_layer: bool = True,
            keep: tuple[str, ...] = (), blocked: tuple[str, ...] = ()) -> dict:
    import torch

    from tiercel.distill.data import SFTData, model_input
    from tiercel.models import load_checkpoint

    ckpt = load_checkpoint(path)
    model = ckpt.model.eval()
    data = SFTData(data_file, root, ckpt.tokenizer, max_answer_tokens=256)
    spec = model_input(model, ckpt.mean, ckpt.std)
    batch_list = list(batches(data, n, batch_size))
    mods = layers(model)

    stats = {name: {"absmax": 0.0, "sq": 0.0, "count": 0} for name in mods}

    def record(name):
        def hook(_m, args):
            x = args[0].detach().float()
            s = stats[name]
            s["absmax"] = max(s["absmax"], float(x.abs().max()))
            s["sq"] += float((x * x).sum())
            s["count"] += x.numel()
        return hook

    handles = [m.register_forward_pre_hook(record(name)) for name, m in mods.items()]
    margins: list[float] = []
    ref = forward_all(model, data, batch_list, spec, margins)
    for h in handles:
        h.remove()

    originals = {name: m.weight.detach().clone() for name, m in mods.items()}

    def quantize(names):
        """Round the inputs and weights of `names`; returns the hook handles (weights are put back by `restore`)."""
        hs = []
        for name in names:
            m = mods[name]
            w = originals[name]
            if name in blocked:  # MatMulNBits 8-bit: weight blocks along the input, inputs per row block at run time
                m.weight.data.copy_(fake_blocked(w))
                hs.append(m.register_forward_pre_hook(lambda _m, args: (fake_blocked(args[0]), *args[1:])))
                continue
            rows = w.reshape(w.shape[0], -1).abs().amax(1).reshape(-1, *([1] * (w.dim() - 1)))
            m.weight.data.copy_(fake_int8(w, rows))
            absmax = torch.tensor(stats[name]["absmax"])
            hs.append(m.register_forward_pre_hook(lambda _m, args, a=absmax: (fake_int8(args[0], a), *args[1:])))
        return hs

    def restore(names, hs):
        for h in hs:
            h.remove()
        for name in names:
            mods[name].weight.data.copy_(originals[name])

    for option, names in (("--keep", keep), ("--blocked", blocked)):
        unknown = [k for k in names if k not in mods]
        if unknown:
            sys.exit(f"{option} {unknown[0]}: no such layer in {path}; layers are nn.Linear / nn.Conv2d module names")
        if option == "--blocked" and any(not isinstance(mods[k], torch.nn.Linear) for k in names):
            sys.exit(f"--blocked: only nn.Linear layers (MatMulNBits is a MatMul); got {', '.join(names)}")
    rounded = [name for name in mods if name not in keep]
    hs = quantize(rounded)
    rows = moved(ref, forward_all(model, data, batch_list, spec))
    every, every_task = flips(rows)
    restore(rounded, hs)
    layers_out = {}
    for name in (mods if per_layer else ()):
        hs = quantize([name])
        share, _ = flips(moved(ref, forward_all(model, data, batch_list, spec)))
        restore([name], hs)
        s = stats[name]
        rms = (s["sq"] / s["count"]) ** 0.5 if s["count"] else float("nan")
        w = originals[name]
        layers_out[name] = {"flips": share, "input_absmax": s["absmax"], "input_rms": rms,
                           "input_crest": s["absmax"] / rms if rms else float("nan"),
                           "weight_crest": float(w.abs().max() / w.pow(2).mean().sqrt())}
    return {"path": str(path), "records": len(ref), "answer_tokens": sum(a.numel() for _, a in ref),
            "tied_lm_head": model.lm_head.weight is model.get_input_embeddings().weight,
            "fp32_margin": margin_summary(margins), "kept_in_fp32": list(keep), "blocked": list(blocked),
            "flips_all_layers": every, "flips_all_layers_per_task": every_task, "per_layer": layers_out,
            "per_record": rows}


def group(name: str) -> str:
    for key, label in (("vision", "vision"), ("image_projection", "projector"), ("encoder", "encoder"),
                       ("decoder", "decoder"), ("lm_head", "lm_head")):
        if key in name:
            return label
    return "other"


def summary(result: dict) -> str:
    """Markdown: the all-layer flip share per checkpoint, then per layer group the summed single-layer flips and the
    largest input crest factor, then the top layers."""
    names = list(result["checkpoints"])
    rows = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    rows.append("| answer tokens flipped, every layer int8 | " + " | ".join(
        f"{result['checkpoints'][c]['flips_all_layers']:.2%}" for c in names) + " |")
    rows.append("| the same, minus the first checkpoint's [95% interval over records] | - | " + " | ".join(
        "{difference:+.2%} [{0:+.2%}, {1:+.2%}]".format(*d["ci95"], **d)
        for d in (result["checkpoints"][c]["against_first"] for c in names[1:])) + " |")
    rows.append("| fp32 top-1 minus top-2 logit: median / share under 1 | " + " | ".join(
        "{median:.2f} / {under_1:.1%}".format(**result["checkpoints"][c]["fp32_margin"])
        if "fp32_margin" in result["checkpoints"][c] else "-" for c in names) + " |")  # runs before it was measured
    tags = list(result["checkpoints"][names[0]]["flips_all_layers_per_task"])
    for t in tags:
        rows.append(f"| {t} | " + " | ".join(
            f"{result['checkpoints'][c]['flips_all_layers_per_task'][t]:.2%}" for c in names) + " |")
    groups = sorted({group(n) for c in names for n in result["checkpoints"][c]["per_layer"]})
    for g in groups:  # none without the one-layer pass
        cells = []
        for c in names:
            ls = [v for n, v in result["checkpoints"][c]["per_layer"].items() if group(n) == g]
            cells.append(f"{sum(v['flips'] for v in ls):.2%} / crest {max(v['input_crest'] for v in ls):.0f}")
        rows.append(f"| {g}: summed one-layer flips / largest input crest | " + " | ".join(cells) + " |")
    out = ["\n".join(rows), ""]
    for c in names:
        per = result["checkpoints"][c]["per_layer"]
        if not per:
            continue
        top = sorted(per, key=lambda n: -per[n]["flips"])[:8]
        out.append(f"Top layers, {c}:\n")
        out.append("| layer | flips alone | input crest | input absmax | weight crest |\n|---|---|---|---|---|")
        out += [f"| {n} | {per[n]['flips']:.2%} | {per[n]['input_crest']:.1f} | {per[n]['input_absmax']:.2f} | "
                f"{per[n]['weight_crest']:.1f} |" for n in top]
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", action="append", required=True, help="NAME=DIR, once per checkpoint")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--n", type=int, default=32, help="records per task (the first in file order)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-layers", action="store_true", help="skip the one-layer-at-a-time pass (the slow part)")
    ap.add_argument("--keep", action="append", default=[], help="a layer left in fp32 in the every-layer pass")
    ap.add_argument("--blocked", action="append", default=[],
                    help="a layer rounded as MatMulNBits 8-bit instead (weight and input blocks of 128)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "int8_sensitivity.json")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result = {"command": "python benchmarks/int8_sensitivity.py " + " ".join(sys.argv[1:]), "commit": commit(),
              "machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "n": args.n, "checkpoints": {}}
    for item in args.checkpoint:
        name, _, path = item.partition("=")
        if not path:
            sys.exit(f"--checkpoint {item}: give NAME=DIR")
        t0 = time.perf_counter()
        result["checkpoints"][name] = analyse(path, args.data, args.root, args.n, args.batch_size,
                                                   per_layer=not args.no_layers, keep=tuple(args.keep),
                                                   blocked=tuple(args.blocked))
        result["checkpoints"][name]["seconds"] = time.perf_counter() - t0
        print(f"{name}: every layer int8 flips {result['checkpoints'][name]['flips_all_layers']:.2%} of answer tokens",
              flush=True)
    names = list(result["checkpoints"])
    for name in names[1:]:  # each against the first, on the same records
        result["checkpoints"][name]["against_first"] = paired_difference(
            result["checkpoints"][names[0]]["per_record"], result["checkpoints"][name]["per_record"])
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write_result(args.out, result)
    print(summary(result))


if __name__ == "__main__":
    main()
