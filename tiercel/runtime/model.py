"""A loaded bundle: image + task in, typed result in pixel coordinates out.

    m = tiercel.runtime.load("bundle/", backend="onnxruntime")
    r = m.run(image, task="REG_DET_HBB", text="airplane")
    rs = m.run_all(image, ["IMG_CAP", "IMG_CLS"])                 # one vision pass, prompts batched
    rs = m.run_all(before, ["IMG_CAP", "PIX_CHG"], image2=after)  # PIX_CHG joins the batch
    rs = m.run_batch([{"image": a, "task": "IMG_CAP"}, {"image": b, "task": "REG_VG", "text": "ship"}])  # many images
    s = m.run_scene("scene.tif", "REG_DET_HBB", text="ship")      # tiled, merged (tiercel.runtime.scene)

Pipeline: preprocess -> vision_encoder -> embed_tokens(prompt) with the image features in the `<image>` slots
-> encoder_model -> decoder with KV cache (generate.py) -> tokenizer -> tiercel.tasks parser. Knows nothing
about torch; the graphs are opened through backends.py.

Profiling: set `model.timer` to an object whose `stage(name)` returns a context manager (see
tiercel.runtime.profile.timing) and every stage is timed: preprocess, vision_encoder, embed_tokens,
text_encoder, generate (containing first_token and each decode_token), postprocess. With no timer a stage
costs one attribute check and a shared null context.

Two decoders serve generate.py. KVDecoder keeps the KV cache as numpy arrays (each step's present.* come back
to the host and go in again): the fastest on a CPU. BoundKVDecoder keeps it where the graphs run, through the
sessions' run_bound/to_device/take_rows (backends.py): on a GPU only the token ids go up and the logits come
down per step. Model uses BoundKVDecoder when `io_binding` is set (tiercel.runtime.load turns it on by default
for GPU devices); on a CPU it runs the same code with host OrtValues, which is how it is tested.

Cross-attention KV: a bundle whose manifest says `cross_kv: per_item` (export writes that) takes the encoder
output, its mask and the cross-attention KV once per item, shared by the item's beams, so beam search gives the
decoder one copy of them per prompt; a `per_row` bundle (older exports) gets them repeated once per beam.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np

from tiercel import tasks
from tiercel.errors import ConfigError, TaskError
from tiercel.runtime.generate import GenerationConfig, generate
from tiercel.runtime.preprocess import preprocess, to_rgb_array

_UNTIMED = nullcontext()
VISION_CHUNK = 8  # run_batch: images per vision encoder call (bounds its activations' memory)


def _untimed(name: str):
    return _UNTIMED


class KVDecoder:
    """The decoder graph(s) plus the KV cache of one generation; `step` and `reorder` serve generate.py.
    `step` takes one new token per row ([N]: logits [N, V] after it) or several ([N, t]: logits [N, t, V] after
    each; `multi_token` says whether the graphs can)."""

    multi_token = False

    def __init__(self, sessions: dict, merged: bool, layers: int, embed, enc_hidden: np.ndarray, enc_mask: np.ndarray,
                 stage=_untimed):
        self.sessions, self.merged, self.layers, self.embed = sessions, merged, layers, embed
        self.enc_hidden, self.enc_mask = enc_hidden, enc_mask
        self.cache: dict[str, np.ndarray] | None = None
        self.stage = stage

    def _past(self) -> dict:
        return {f"past_key_values.{k[len('present.'):]}": v for k, v in self.cache.items()}

    def step(self, tokens: np.ndarray) -> np.ndarray:
        with self.stage("first_token" if self.cache is None else "decode_token"):
            logits = self._step(tokens)
        return logits[:, -1, :] if tokens.ndim == 1 else logits

    def _step(self, tokens: np.ndarray) -> np.ndarray:
        embeds = self.embed(tokens.reshape(len(tokens), -1).astype(np.int64))  # [N] or [N, t] new tokens
        feeds = {"inputs_embeds": embeds, "encoder_attention_mask": self.enc_mask}
        if self.merged:
            past = self._past() if self.cache is not None else self._empty_past(embeds.shape[0])
            feeds.update(encoder_hidden_states=self.enc_hidden, use_cache_branch=np.array([self.cache is not None]), **past)
            out = self.sessions["decoder_model_merged"].run(feeds)
        elif self.cache is None:
            out = self.sessions["decoder_model"].run({**feeds, "encoder_hidden_states": self.enc_hidden})
        else:
            out = self.sessions["decoder_with_past_model"].run({**feeds, **self._past()})
        presents = {k: v for k, v in out.items() if k.startswith("present.")}
        self.cache = presents if self.cache is None else {**self.cache, **presents}
        return out["logits"]

    def _empty_past(self, rows: int) -> dict:
        """The merged graph's first-step past: self-attention per row, cross-attention per encoder row (item)."""
        d, heads = self.enc_hidden.shape[-1], self._heads
        empty = {"decoder": np.zeros((rows, heads, 0, d // heads), np.float32),
                 "encoder": np.zeros((self.enc_mask.shape[0], heads, 0, d // heads), np.float32)}
        return {f"past_key_values.{i}.{w}.{kv}": empty[w] for i in range(self.layers) for w in ("decoder", "encoder") for kv in ("key", "value")}

    def reorder(self, rows: np.ndarray) -> None:
        # Cross-attention KV is the same for every beam of an item, and beams never move between items.
        self.cache = {k: (v[rows] if ".decoder." in k else v) for k, v in self.cache.items()}

    def keep_rows(self, rows: np.ndarray) -> None:
        """Keep only `rows` of the batch (greedy drops finished rows): every cache entry, encoder states, mask.
        Greedy has one beam, so an item is a row whichever cross_kv the graphs use."""
        self.cache = {k: v[rows] for k, v in self.cache.items()}
        self.enc_hidden, self.enc_mask = self.enc_hidden[rows], self.enc_mask[rows]


class BoundKVDecoder(KVDecoder):
    """KVDecoder whose KV cache and token embeddings stay on the sessions' device between steps.

    The encoder mask (and, for the merged graph, the encoder output) is uploaded once; the cross-attention
    KV is computed by the first step and reused as it is. Per step only the token ids go to the device and
    the logits [N, V] come back. Beam search's reorder gathers the self-attention KV through the host
    (take_rows: copy down, index, copy up), once per step; a device-side gather would need a graph for it.
    """

    def __init__(self, sessions: dict, merged: bool, layers: int, heads: int, enc_hidden: np.ndarray,
                 enc_mask: np.ndarray, stage=_untimed):
        super().__init__(sessions, merged, layers, None, enc_hidden, enc_mask, stage)
        self._heads = heads
        self.embeds = sessions["embed_tokens"]
        self._upload()

    def _upload(self) -> None:
        """Put the encoder mask (and, for the merged graph, the encoder output) on the device."""
        first = self.sessions["decoder_model_merged" if self.merged else "decoder_model"]
        self.mask = first.to_device(self.enc_mask, "encoder_attention_mask")
        self.hidden = first.to_device(self.enc_hidden, "encoder_hidden_states") if self.merged else self.enc_hidden

    def _step(self, tokens: np.ndarray) -> np.ndarray:
        embeds = self.embeds.run_bound({"input_ids": tokens.reshape(len(tokens), -1).astype(np.int64)}, keep={"inputs_embeds"})
        feeds = {"inputs_embeds": embeds["inputs_embeds"], "encoder_attention_mask": self.mask}
        if self.merged:
            name = "decoder_model_merged"
            past = self._past() if self.cache is not None else self._empty_past(tokens.shape[0])
            feeds.update(encoder_hidden_states=self.hidden, use_cache_branch=np.array([self.cache is not None]), **past)
        elif self.cache is None:
            name, feeds["encoder_hidden_states"] = "decoder_model", self.hidden
        else:
            name = "decoder_with_past_model"
            feeds.update(self._past())
        session = self.sessions[name]
        out = session.run_bound(feeds, keep={n for n in session.output_names if n.startswith("present.")})
        presents = {k: v for k, v in out.items() if k.startswith("present.")}
        self.cache = presents if self.cache is None else {**self.cache, **presents}
        return out["logits"]

    def reorder(self, rows: np.ndarray) -> None:
        session = self.sessions["decoder_model_merged" if self.merged else "decoder_with_past_model"]
        self.cache = {k: (session.take_rows(v, rows) if ".decoder." in k else v) for k, v in self.cache.items()}

    def keep_rows(self, rows: np.ndarray) -> None:
        """Keep only `rows`: the cache through the host (take_rows), the encoder mask/states uploaded again."""
        session = self.sessions["decoder_model_merged" if self.merged else "decoder_with_past_model"]
        self.cache = {k: session.take_rows(v, rows) for k, v in self.cache.items()}
        self.enc_hidden, self.enc_mask = self.enc_hidden[rows], self.enc_mask[rows]
        self._upload()


class Model:
    """A bundle opened on one backend. Use `tiercel.runtime.load` to make one."""

    timer = None  # profiling hook: anything with stage(name) -> context manager; None runs untimed
    io_binding = False  # BoundKVDecoder (KV cache stays on the sessions' device) instead of KVDecoder

    def __init__(self, bundle, sessions: dict, tokenizer, backend: str, device: str, io_binding: bool = False):
        self.bundle, self.sessions, self.tokenizer = bundle, sessions, tokenizer
        self.backend, self.device, self.io_binding = backend, device, io_binding
        man = bundle.manifest
        self.shape = man.model  # manifest.ModelEntry
        self.pre = man.preprocessing  # manifest.Preprocessing
        self.dialect = man.dialect
        self.generation = man.generation_config()
        self.merged = man.decoder == "merged"
        self.per_item = man.cross_kv == "per_item"  # encoder inputs and cross-attention KV once per item
        # the decoder graphs take several new tokens per call (jump-forward); TensorRT engines are built for one,
        # and int8-dynamic graphs scale their activations per call (two tokens in one call round differently).
        # OpenVINO's int8-weight-only IR is int8-dynamic's (same compression, same CPU-plugin activation
        # handling), so it decodes one token per step too; onnxruntime's MatMulNBits rounds each row alone.
        step_graph = "decoder_model_merged" if self.merged else "decoder_with_past_model"
        precision = bundle.entries(backend)[step_graph].precision if backend in ("onnxruntime", "openvino") else None
        per_call = {"int8-dynamic"} | ({"int8-weight-only"} if backend == "openvino" else set())
        self.multi_token = (precision is not None and device.lower() != "tensorrt" and precision not in per_call)

    # ---- limits: the position tables of the text encoder and the decoder ---------------------------------
    @property
    def max_positions(self) -> int:
        return self.shape.max_positions

    def check_prompt_lengths(self, n_img: int, ids: list[list[int]]) -> None:
        """ConfigError when image tokens + a prompt do not fit the text encoder's positions (past them,
        onnxruntime and torch raise from an index and OpenVINO returns garbage)."""
        longest = max(len(i) for i in ids)
        if longest > self.max_positions:
            raise ConfigError(f"prompt: {n_img} image tokens + {longest - n_img} prompt tokens are more than this "
                              f"model's {self.max_positions} text positions; shorten the prompt (--text) to "
                              f"{self.max_positions - n_img} tokens or less")

    def check_new_tokens(self, cfg: GenerationConfig, option: str = "--max-new-tokens") -> None:
        """ConfigError when max_new_tokens is more than the decoder's positions; `option` is the command's
        name for the setting (tiercel profile calls it --new-tokens)."""
        if cfg.max_new_tokens > self.max_positions:
            raise ConfigError(f"max_new_tokens: {cfg.max_new_tokens} is more than this model's "
                              f"{self.max_positions} decoder positions; use {self.max_positions} or less ({option})")

    # ---- stages -------------------------------------------------------------------------------------------
    def _stage(self, name: str):
        return _UNTIMED if self.timer is None else self.timer.stage(name)

    def pixel_values(self, image) -> np.ndarray:
        return preprocess(to_rgb_array(image), self.pre.size, self.pre.mean, self.pre.std)

    def preprocess_images(self, images: list[np.ndarray]):
        """RGB uint8 arrays -> pixel_values [len(images), 3, S, S] for image_features: numpy here; a torch
        predictor on a GPU gives the same values as a device tensor (tiercel.models.device_preprocess)."""
        return np.concatenate([preprocess(x, self.pre.size, self.pre.mean, self.pre.std) for x in images])

    def image_features(self, pixel_values: np.ndarray) -> np.ndarray:
        with self._stage("vision_encoder"):
            return self.sessions["vision_encoder"].run({"pixel_values": pixel_values})["image_features"]

    def concat_features(self, chunks: list):
        """image_features of several calls as one batch."""
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    def embed(self, ids: np.ndarray) -> np.ndarray:
        return self.sessions["embed_tokens"].run({"input_ids": ids})["inputs_embeds"]

    def encode(self, features: np.ndarray, prompts: list[str], rows: list[int] | None = None):
        """Image features [1 or B, N, D] + prompts -> (encoder hidden [B, T, D], mask [B, T]); right-padded.
        `rows`: the row of `features` each prompt reads (run_all: several prompts share one image's features)."""
        n_img = features.shape[1]
        ids = [self.tokenizer.prompt_ids(p, n_img) for p in prompts]
        self.check_prompt_lengths(n_img, ids)
        width = max(len(i) for i in ids)
        batch = np.full((len(ids), width), self.tokenizer.pad_id, np.int64)
        mask = np.zeros((len(ids), width), np.int64)
        for row, seq in enumerate(ids):
            batch[row, : len(seq)], mask[row, : len(seq)] = seq, 1
        with self._stage("embed_tokens"):
            embeds = self.embed(batch)
            if rows is None:
                embeds[:, :n_img] = features  # the processor puts the image tokens first
            else:  # copied row by row: no [B, N, D] gathered copy first
                for i, r in enumerate(rows):
                    embeds[i, :n_img] = features[r]
        with self._stage("text_encoder"):
            hidden = self.sessions["encoder_model"].run({"inputs_embeds": embeds, "attention_mask": mask})["last_hidden_state"]
        return hidden, mask

    def constraint(self, tasks_: list[str] | None, cfg: GenerationConfig, constrained: bool = True):
        """The grammar constraint of a batch, one automaton per prompt's task (tiercel.runtime.constrain); None
        when `constrained` is off or no tasks are given."""
        if not constrained or tasks_ is None:
            return None
        from tiercel.runtime.constrain import Constraint, for_answer

        return Constraint([for_answer(self.tokenizer, tasks.get(t).answer, self.dialect) for t in tasks_], cfg)

    def generate_ids(self, features: np.ndarray, prompts: list[str], rows: list[int] | None = None,
                     tasks_: list[str] | None = None, constrained: bool = True, **overrides) -> list[list[int]]:
        """Generated token ids per prompt (after the decoder start, up to and including eos). `rows`: the row of
        `features` each prompt reads (default: row i, or row 0 for all when features has one row). `tasks_`: each
        prompt's task tag; with `constrained` (the default) every answer follows its task's grammar
        (tiercel.runtime.constrain). Without tasks nothing is constrained."""
        cfg = self.generation.with_overrides(**overrides)
        constraint = self.constraint(tasks_, cfg, constrained)
        self.check_new_tokens(cfg)
        hidden, mask = self.encode(features, prompts, rows)
        if cfg.num_beams > 1 and not self.per_item:  # per-row graphs: one copy per beam
            hidden, mask = np.repeat(hidden, cfg.num_beams, 0), np.repeat(mask, cfg.num_beams, 0)
        stage = _untimed if self.timer is None else self.timer.stage
        layers, heads = self.shape.decoder_layers, self.shape.attention_heads
        if self.io_binding:
            decoder = BoundKVDecoder(self.sessions, self.merged, layers, heads, hidden, mask, stage)
        else:
            decoder = KVDecoder(self.sessions, self.merged, layers, self.embed, hidden, mask, stage)
            decoder._heads = heads
        decoder.multi_token = self.multi_token
        with self._stage("generate"):
            return generate(decoder, len(prompts), cfg, constraint)

    # ---- tasks --------------------------------------------------------------------------------------------
    def _inputs(self, spec, image, image2):
        if spec.n_images == 2:
            if image2 is None:
                raise TaskError(f"{spec.tag}: needs two images (before and after); pass image2 / --image2")
            before, after = to_rgb_array(image), to_rgb_array(image2)
            h, w = before.shape[:2]
            return tasks.tile_change_pair(before, after), (w, h)
        if image2 is not None:
            raise TaskError(f"{spec.tag}: takes one image (got two); only PIX_CHG takes image2")
        rgb = to_rgb_array(image)
        return rgb, (rgb.shape[1], rgb.shape[0])

    def run(self, image, task: str, text: str | None = None, region=None, image2=None, **generation) -> tasks.Result:
        """Run one task on an image (path, PIL image or array); the result is in the image's pixels.
        `generation`: overrides of the bundle's settings, and `constrained=False` to decode without the grammar."""
        spec = tasks.get(task)
        with self._stage("preprocess"):
            rgb, size = self._inputs(spec, image, image2)
            prompt = spec.prompt(text=text, region=region, image_size=size, dialect=self.dialect)
            pixels = self.preprocess_images([rgb])
        ids = self.generate_ids(self.image_features(pixels), [prompt], tasks_=[spec.tag], **generation)[0]
        with self._stage("postprocess"):
            return spec.parse(self.tokenizer.decode(ids), image_size=size, dialect=self.dialect)

    def run_all(self, image, tasks_: list[str] | None = None, texts: dict | None = None, regions: dict | None = None,
                image2=None, **generation) -> dict[str, tasks.Result]:
        """Several tasks on one image: one vision pass, all prompts in one batch.

        Args:
            tasks_: tags to run; by default every task whose inputs are given: text/region for the tasks that
                need them, and image2 for PIX_CHG.
            texts, regions: {tag: text} and {tag: region in pixels} for the tasks that need them.
            image2: the "after" image of PIX_CHG (image is "before"). The tiled pair goes through the vision
                encoder in the same call as `image` (batch 2), and PIX_CHG's prompt joins the batch.
        """
        texts, regions = texts or {}, regions or {}
        if tasks_ is None:
            tasks_ = [t for t in tasks.TAGS if (tasks.get(t).n_images == 1 or image2 is not None)
                      and (not tasks.get(t).needs_text or t in texts) and (not tasks.get(t).needs_region or t in regions)]
        specs = [tasks.get(t) for t in tasks_]
        pairs = [s for s in specs if s.n_images != 1]
        if pairs and image2 is None:
            raise TaskError(f"{pairs[0].tag}: needs two images (before and after); pass image2 / --image2")
        if image2 is not None and not pairs:
            raise TaskError(f"image2 is only for PIX_CHG, which is not among the tasks ({', '.join(tasks_)}); add it or drop image2")
        with self._stage("preprocess"):
            rgb = to_rgb_array(image)
            size = (rgb.shape[1], rgb.shape[0])
            prompts = [s.prompt(text=texts.get(s.tag), region=regions.get(s.tag), image_size=size, dialect=self.dialect)
                       for s in specs]
            images = [rgb] + ([self._inputs(pairs[0], rgb, image2)[0]] if pairs else [])  # image read once
            pixels = self.preprocess_images(images)
        features = self.image_features(pixels)
        # prompt i reads the features of its own image: the scene (0) or the tiled pair (1)
        rows = [int(s.n_images != 1) for s in specs] if pairs else None
        ids = self.generate_ids(features, prompts, rows=rows, tasks_=[s.tag for s in specs], **generation)
        with self._stage("postprocess"):
            return {s.tag: s.parse(self.tokenizer.decode(i), image_size=size, dialect=self.dialect) for s, i in zip(specs, ids)}

    def run_batch(self, items: list[dict], **generation) -> list[tasks.Result]:
        """Tasks on several images in one batch: each distinct image through the vision encoder once (VISION_CHUNK
        images a call), every prompt decoded together, each reading its own image's features.

        `items`: dicts with "image" and "task", and "text", "region" and "image2" (PIX_CHG's after image) where the
        task takes them. The same image object in several items is encoded once. Results in the items' order, each
        in its own image's pixels, the same as `run` on each item alone, except on int8-dynamic graphs, whose
        activation scale spans the batch (docs/quantize.md).
        """
        if not items:
            return []
        specs, prompts, sizes, rows, images, seen = [], [], [], [], [], {}
        with self._stage("preprocess"):
            for i, item in enumerate(items):
                unknown = sorted(set(item) - {"image", "task", "text", "region", "image2"})
                if unknown or "image" not in item or "task" not in item:
                    raise TaskError(f"run_batch: item {i} needs 'image' and 'task' (and only text, region, image2 "
                                    f"besides); got {', '.join(sorted(item))}")
                spec = tasks.get(item["task"])
                key = (id(item["image"]), id(item.get("image2")), spec.n_images)
                if key not in seen:
                    rgb, size = self._inputs(spec, item["image"], item.get("image2"))
                    seen[key] = (len(images), size)
                    images.append(rgb)
                row, size = seen[key]
                specs.append(spec), rows.append(row), sizes.append(size)
                prompts.append(spec.prompt(text=item.get("text"), region=item.get("region"), image_size=size,
                                           dialect=self.dialect))
        features = self.concat_features([self.image_features(self.preprocess_images(images[i:i + VISION_CHUNK]))
                                         for i in range(0, len(images), VISION_CHUNK)])
        ids = self.generate_ids(features, prompts, rows=rows, tasks_=[s.tag for s in specs], **generation)
        with self._stage("postprocess"):
            return [s.parse(self.tokenizer.decode(i), image_size=size, dialect=self.dialect)
                    for s, i, size in zip(specs, ids, sizes)]

    def run_scene(self, source, task: str, text: str | None = None, region=None, tile: int = 768, overlap: int = 128,
                  batch: int = 4, bands=None, scale=None, source2=None, **generation):
        """Run a task on a scene of any size, tiled (tiercel.runtime.scene.run_scene): -> SceneResult whose
        `result` is in scene pixels, merged across tile borders, and whose `tiles` hold each tile's answer."""
        from tiercel.runtime.scene import run_scene

        return run_scene(self, source, task, text=text, region=region, tile=tile, overlap=overlap, batch=batch,
                         bands=bands, scale=scale, source2=source2, **generation)
