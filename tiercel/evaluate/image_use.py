"""Does a model read its image? Teacher-forced answer loss with the true images against other images.

For each task, the first `n` records of a Falcon_SFT file (file order, so runs are comparable) go through the
training code's own data path (tiercel.distill.data: SFTData, collate, model_input) and forward
(tiercel.distill.objective.run_model) in eval mode, three times per batch:

- `true`: each record with its own image;
- `permuted`: the batch's images rolled by one record, so every record gets another record's image;
- `blank`: every pixel the normalisation mean (pixel_values all zero).

`loss` is the mean cross-entropy per answer token; `coord_loss` the same over coordinate tokens (`<0>`..`<1000>`)
only, where a localisation task's information sits; `first_coord_loss` over each answer's first coordinate, which
no earlier answer token gives away. `loss_gap_permuted` = loss_permuted - loss_true: about 0 when the answer does
not depend on the image, clearly > 0 when it does. The spread of the image features across the records of a batch
(per token position: std over records, and mean pairwise cosine distance of the flattened features) is
measured after the vision tower and after the projector: both about 0 when the features collapsed to a constant.

Imports torch; knows nothing about checkpoints on disk (the caller loads one) or about generation.
"""

from __future__ import annotations

from collections import defaultdict

from tiercel import tasks as T

CASES = ("true", "permuted", "blank")
LOSSES = ("loss", "coord_loss", "first_coord_loss")


def coordinate_ids(tokenizer) -> list[int]:
    """Ids of the single-token coordinates `<0>`..`<1000>` in `tokenizer` (empty if it splits them)."""
    from tiercel.runtime.tokenizer import coordinate_tokens

    ids = (tokenizer.tok.token_to_id(t) for t in coordinate_tokens())
    return sorted(i for i in ids if i is not None)


def spread(features) -> dict[str, float]:
    """How much [B, N, D] features differ between the B records (0 when every record gets the same features).

    std: per (token, dim), the std over records, averaged; rel_std: std / the features' RMS over everything;
    cosine: mean pairwise cosine distance (1 - cos) between the records' flattened features.
    """
    import torch

    f = features.detach().float()
    flat = f.flatten(1)
    std = float(f.std(0, unbiased=False).mean())
    rms = float(f.pow(2).mean().sqrt())
    unit = torch.nn.functional.normalize(flat, dim=1)
    cos = unit @ unit.T
    b = flat.shape[0]
    pairs = (cos.sum() - cos.diagonal().sum()) / max(b * (b - 1), 1)
    return {"std": std, "rel_std": std / max(rms, 1e-12), "cosine": float(1 - pairs)}


def _token_losses(logits, labels, coord_ids) -> dict:
    """Sums and counts of the batch's CE over answer tokens, coordinate tokens, and each answer's first
    coordinate token (which earlier tokens cannot give away)."""
    import torch

    from tiercel.distill.data import IGNORE

    mask = labels != IGNORE
    ce = torch.nn.functional.cross_entropy(
        logits.float().flatten(0, 1), labels.clamp(min=0).flatten(), reduction="none"
    ).view(labels.shape)
    coord = mask & torch.isin(labels, coord_ids)
    first = coord & (coord.cumsum(1) == 1)
    return {
        "loss": (float(ce[mask].sum()), int(mask.sum())),
        "coord_loss": (float(ce[coord].sum()), int(coord.sum())),
        "first_coord_loss": (float(ce[first].sum()), int(first.sum())),
    }


def _batches(data, tags, n: int, batch_size: int):
    """(tag, indices) batches: the first `n` records of each task in file order."""
    for tag in tags:
        pool = data.by_task.get(tag, [])[:n]
        for start in range(0, len(pool), batch_size):
            chunk = pool[start : start + batch_size]
            if len(chunk) >= 2:  # a permutation needs two records
                yield tag, chunk


def probe(model, tokenizer, data, tags=None, n: int = 64, batch_size: int = 8, mean=None, std=None) -> dict:
    """Image-use numbers per task of `model` on `data` (a tiercel.distill.data.SFTData).

    Returns {"per_task": {tag: {...}}, "overall": {...}} with, per task: records; for each of loss, coord_loss
    and first_coord_loss its token count (`loss_tokens`), its value per case (`loss_true`, `loss_permuted`,
    `loss_blank`) and the gaps (`loss_gap_permuted`, `loss_gap_blank`: case minus true); `swapped`, the share of
    permuted rows whose image files differ from their own; `vision_spread` and `image_spread` (see `spread`,
    averaged over batches). A model in train mode is put back in train mode.
    """
    import torch

    from tiercel.distill.data import collate, model_input
    from tiercel.distill.objective import run_model

    tags = [t for t in (tags or T.TAGS) if t in data.by_task]
    spec = model_input(model, mean, std)
    coord_ids = torch.tensor(coordinate_ids(tokenizer), dtype=torch.long)
    device = next(model.parameters()).device
    sums = defaultdict(lambda: defaultdict(float))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for tag, idx in _batches(data, tags, n, batch_size):
                _probe_batch(model, data, tag, idx, spec, coord_ids.to(device), device, sums[tag], collate, run_model)
    finally:
        model.train(was_training)
    per_task = {tag: _summarise(s) for tag, s in sums.items()}
    overall = _summarise({k: sum(s[k] for s in sums.values()) for k in set().union(*sums.values())}) if sums else {}
    return {"per_task": per_task, "overall": overall}


def _probe_batch(model, data, tag, idx, spec, coord_ids, device, acc, collate, run_model) -> None:
    import torch

    from tiercel.distill.data import to_device

    batch = to_device(collate(data, idx, {"m": spec}, data.tok.eos_id), str(device))
    inputs, dec, labels = batch["m"], batch["decoder_input_ids"], batch["labels"]
    roll = torch.roll(torch.arange(len(idx)), 1).tolist()
    pixels = {
        "true": inputs["pixel_values"],
        "permuted": inputs["pixel_values"][roll],
        "blank": torch.zeros_like(inputs["pixel_values"]),
    }
    for case, pv in pixels.items():
        out = run_model(model, {**inputs, "pixel_values": pv}, dec)
        for name, (total, count) in _token_losses(out.logits, labels, coord_ids).items():
            acc[f"{name}_{case}"] += total
            acc[f"{name}_count"] = count  # the same for every case
    for name in LOSSES:
        acc[f"{name}_tokens"] += acc.pop(f"{name}_count")
    acc["records"] += len(idx)
    paths = [tuple(data.records[i].images) for i in idx]
    acc["swapped"] += sum(paths[r] != paths[k] for k, r in enumerate(roll))
    feats = model.model.get_image_features(inputs["pixel_values"])
    for where, f in (("vision", feats.last_hidden_state.flatten(2).transpose(1, 2)), ("image", feats.pooler_output)):
        for k, v in spread(f).items():
            acc[f"{where}_{k}"] += v * len(idx)  # weighted by records, divided back in _summarise


def _summarise(s: dict) -> dict:
    records = s["records"]
    out = {"records": int(records)}
    for name in LOSSES:
        n = s[f"{name}_tokens"]
        out[f"{name}_tokens"] = int(n)
        for case in CASES:
            out[f"{name}_{case}"] = s[f"{name}_{case}"] / n if n else float("nan")
        for case in CASES[1:]:
            out[f"{name}_gap_{case}"] = out[f"{name}_{case}"] - out[f"{name}_true"]
    out["swapped"] = s["swapped"] / records if records else float("nan")
    for where in ("vision", "image"):
        out[f"{where}_spread"] = {
            k: s[f"{where}_{k}"] / records if records else float("nan") for k in ("std", "rel_std", "cosine")
        }
    return out


IMAGE_GAP_WARN = 0.01  # nats per answer token: every model found ignoring its images measured 0.000 (docs/fidelity.md)


def probe_records(ckpt, data_file, root, tags=None, n: int = 64, batch_size: int = 8) -> dict:
    """`probe` of a loaded checkpoint (tiercel.models.load_checkpoint) on the first `n` records of each task of a
    Falcon_SFT file, images relative to `root`."""
    from tiercel.distill.data import SFTData

    data = SFTData(data_file, root, ckpt.tokenizer, max_answer_tokens=256)
    return probe(ckpt.model, ckpt.tokenizer, data, tags, n=n, batch_size=batch_size, mean=ckpt.mean, std=ckpt.std)


def image_check(ckpt, data_files, root, n: int = 16, batch_size: int = 8) -> dict:
    """Whether a loaded checkpoint's answers depend on their images: the probe's permuted gap over the first `n`
    records of every task, in the first of `data_files` where some task has two records to swap images between.
    The pipeline runs it on the teacher it trains (docs/recipes.md, the teacher check). `warning` is None, or a
    sentence fragment saying the answers do not depend on the image; `gap_permuted` is None when no file has
    such a task."""
    for data_file in data_files:
        result = probe_records(ckpt, data_file, root, n=n, batch_size=batch_size)
        gap = result["overall"].get("loss_gap_permuted")
        if gap is not None:
            break
    per_task = {tag: p["loss_gap_permuted"] for tag, p in result["per_task"].items()}
    return {"data": str(data_file), "records_per_task": n, "gap_permuted": gap, "per_task": per_task,
            "warning": image_warning(gap, n)}


def image_warning(gap: float | None, n: int) -> str | None:
    """The image check's warning for an overall permuted gap (nats per answer token), or None."""
    if gap is None or gap != gap or gap >= IMAGE_GAP_WARN:
        return None
    return (f"answers barely depend on the image: with the images swapped between records the answer loss rises by "
            f"{gap:+.4f} nats/token ({n} records per task; under {IMAGE_GAP_WARN} means the image is ignored)")
