"""Render a synthetic scene to pixels: textured ground, markings, shadows, objects, trees, camera effects.

Ground textures depend only on the scene's texture seed, so the two frames of a change pair share their
ground exactly; each frame then gets its own sensor noise and a slightly different exposure and haze.
This module draws what layout.py decided; it adds nothing that ground truth would need to know about
(details such as windows, court lines or wakes stay inside or next to their object).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tiercel.data.synth import geometry as G
from tiercel.data.synth.catalog import GROUNDS
from tiercel.data.synth.knobs import Knobs
from tiercel.data.synth.layout import Obj, Scene

# How tall each shape stands, as a fraction of its length: sets the length of its shadow.
HEIGHT = {"airplane": 0.08, "ship": 0.12, "tank": 0.35, "vehicle": 0.18, "building": 0.3, "building_l": 0.3,
          "court": 0.0, "pool": 0.0}
MARKING_RGB = (226, 224, 212)
_GROUND_LIST = list(GROUNDS.values())


def render(scene: Scene, knobs: Knobs, frame: int = 0, ground: Image.Image | None = None) -> np.ndarray:
    """The scene as an HxWx3 uint8 image. `frame` 1 is the 'after' image of a change pair.

    `ground` is the scene's ground layer (`ground_layer(scene)`), when already drawn for the other frame.
    """
    im = _shadows(ground if ground is not None else ground_layer(scene), scene)
    draw = ImageDraw.Draw(im)
    for obj in scene.objects:
        _draw_object(draw, obj)
    _draw_trees(draw, scene)
    return _camera(im, scene, knobs, frame)


def render_pair(before: Scene, after: Scene, knobs: Knobs) -> tuple[np.ndarray, np.ndarray]:
    """Both frames of a change pair; they share their ground layer, drawn once."""
    ground = ground_layer(before)
    return render(before, knobs, 0, ground), render(after, knobs, 1, ground)


def ground_layer(scene: Scene) -> Image.Image:
    """Textured ground with markings: everything under objects, identical for both frames of a pair."""
    return _markings(Image.fromarray(_ground(scene)), scene)


def _ground(scene: Scene) -> np.ndarray:
    """Textured ground: per region a tinted base colour x (1 + blotches + grain), crop rows on fields."""
    size, region_map = scene.size, scene.region_map
    grounds = [_GROUND_LIST[g] for g in scene.ground_lut]
    rng = np.random.default_rng([scene.texture_seed, 99])
    # Mostly a brightness change per region, a little colour: two fields of one crop never look alike.
    tint = rng.uniform(0.92, 1.08, size=(len(grounds), 1)) * rng.uniform(0.97, 1.03, size=(len(grounds), 3))
    rgb = (np.array([g.rgb for g in grounds]) * tint).astype(np.float32)
    patchy = np.array([g.patchy for g in grounds], dtype=np.float32)[region_map]
    grain = np.array([g.grain for g in grounds], dtype=np.float32)[region_map]
    noise = np.random.default_rng([scene.texture_seed, 98]).standard_normal((size, size), dtype=np.float32)
    light = 1 + grain * noise
    for gid in np.unique(scene.ground_lut):  # blotches differ per ground type, so borders show
        mask = (scene.ground_lut == gid)[region_map]
        light[mask] += patchy[mask] * _blotches(size, scene.texture_seed, int(gid))[mask]
    for i, region in enumerate(scene.regions, start=1):
        amplitude = GROUNDS[region.ground].stripes
        if amplitude:
            ys, xs = np.nonzero(region_map == i)
            period = max(3.0, 5.0 * size / 256)
            phase = (xs * np.cos(region.angle) + ys * np.sin(region.angle)) * (2 * np.pi / period)
            light[ys, xs] += amplitude * np.sin(phase).astype(np.float32)
    out = rgb[region_map] * light[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


def _blotches(size: int, seed: int, gid: int) -> np.ndarray:
    """Large and medium smooth noise (about 0.7 std) for one ground type."""
    rng = np.random.default_rng([seed, gid])
    return _smooth_noise(rng, 5, size) + 0.5 * _smooth_noise(rng, 17, size)


def _smooth_noise(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    coarse = Image.fromarray(rng.standard_normal((cells, cells)).astype(np.float32), mode="F")
    return np.asarray(coarse.resize((size, size), Image.BICUBIC), dtype=np.float32) * 0.7


def _markings(im: Image.Image, scene: Scene) -> Image.Image:
    """Paint marking lines, but only on the ground they belong to (the runway, the lot's asphalt)."""
    if not scene.lines:
        return im
    mask = Image.new("L", im.size, 0)
    draw = ImageDraw.Draw(mask)
    for p, q, width in scene.lines:
        draw.line([p, q], fill=255, width=max(1, round(width)))
    on = np.asarray(mask) > 0
    on &= scene.region_map == _marked_region(scene)
    img = np.asarray(im).copy()
    img[on] = (img[on] * 0.3 + np.array(MARKING_RGB) * 0.7).astype(np.uint8)
    return Image.fromarray(img)


def _marked_region(scene: Scene) -> int:
    """Region index the markings belong to: the runway when there is one, else the base ground."""
    for i, region in enumerate(scene.regions, start=1):
        if region.name == "runway":
            return i
    return 0


def _shadows(im: Image.Image, scene: Scene) -> Image.Image:
    mask = Image.new("L", im.size, 0)
    draw = ImageDraw.Draw(mask)
    sx, sy = scene.sun
    for obj in scene.objects:
        h = HEIGHT[obj.shape] * obj.length
        if h > 0:
            draw.polygon([(x + sx * h, y + sy * h) for x, y in obj.outline], fill=255)
    for x, y, r in scene.trees:
        draw.ellipse([x - r + sx * r, y - r + sy * r, x + r + sx * r, y + r + sy * r], fill=255)
    dark = np.asarray(im, dtype=np.float32) * 0.55
    return Image.composite(Image.fromarray(dark.astype(np.uint8)), im, mask)


def _shade(rgb, factor: float) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, c * factor))) for c in rgb)


def _local(obj: Obj, unit_points) -> list[tuple[float, float]]:
    """Points given in the object's unit frame, placed like the object."""
    pts = G.place(np.array(unit_points, dtype=float), obj.cx, obj.cy, obj.length, obj.width, obj.angle)
    return [tuple(p) for p in pts]


def _draw_object(draw: ImageDraw.ImageDraw, obj: Obj) -> None:
    outline = [tuple(p) for p in obj.outline]
    dark, light = _shade(obj.rgb, 0.7), _shade(obj.rgb, 1.25)
    draw.polygon(outline, fill=obj.rgb, outline=dark)
    if obj.shape == "airplane":
        draw.line(_local(obj, [(0.45, 0), (-0.45, 0)]), fill=light, width=1)
    elif obj.shape == "ship":
        deck = light if sum(obj.rgb) < 400 else dark
        draw.polygon(_local(obj, [(-0.42, -0.3), (-0.1, -0.3), (-0.1, 0.3), (-0.42, 0.3)]), fill=deck)
    elif obj.shape == "tank":
        r = 0.5 * obj.length
        draw.ellipse([obj.cx - 0.72 * r, obj.cy - 0.72 * r, obj.cx + 0.72 * r, obj.cy + 0.72 * r], outline=dark)
        draw.ellipse([obj.cx - 0.12 * r, obj.cy - 0.12 * r, obj.cx + 0.12 * r, obj.cy + 0.12 * r], fill=dark)
    elif obj.shape == "vehicle":
        glass = (40, 48, 58)
        draw.polygon(_local(obj, [(0.1, -0.38), (0.28, -0.38), (0.28, 0.38), (0.1, 0.38)]), fill=glass)
        draw.polygon(_local(obj, [(-0.38, -0.34), (-0.28, -0.34), (-0.28, 0.34), (-0.38, 0.34)]), fill=glass)
    elif obj.shape == "building":
        draw.line(_local(obj, [(0.5, 0), (-0.5, 0)]), fill=dark, width=1)
    elif obj.shape == "court":
        draw.polygon(_local(obj, [(-0.42, -0.4), (0.42, -0.4), (0.42, 0.4), (-0.42, 0.4)]), outline=MARKING_RGB)
        draw.line(_local(obj, [(0, -0.5), (0, 0.5)]), fill=MARKING_RGB, width=1)
    elif obj.shape == "pool":
        draw.polygon(_local(obj, [(p[0] * 0.8, p[1] * 0.8) for p in G.UNIT_SHAPES["pool"]]), outline=light)


def _draw_trees(draw: ImageDraw.ImageDraw, scene: Scene) -> None:
    rng = np.random.default_rng([scene.texture_seed, 7])
    for x, y, r in scene.trees:
        g = int(rng.uniform(60, 100))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(int(g * 0.45), g, int(g * 0.4)))
        h, hx, hy = r * 0.45, x - 0.4 * r * scene.sun[0], y - 0.4 * r * scene.sun[1]  # lit side faces the sun
        draw.ellipse([hx - h, hy - h, hx + h, hy + h], fill=(int(g * 0.6), g + 22, int(g * 0.5)))


def _camera(im: Image.Image, scene: Scene, knobs: Knobs, frame: int) -> np.ndarray:
    """Blur, exposure, haze and sensor noise. Frame 1 differs from frame 0 only a little in exposure."""
    base = np.random.default_rng([scene.texture_seed, 1000])
    gain, haze = 1 + base.uniform(-knobs.brightness, knobs.brightness), base.uniform(0, knobs.haze)
    rng = np.random.default_rng([scene.texture_seed, 2000 + frame])
    if frame:
        gain, haze = gain * (1 + rng.uniform(-0.03, 0.03)), min(1.0, max(0.0, haze + rng.uniform(-0.03, 0.03)))
    if knobs.blur > 0:
        im = im.filter(ImageFilter.GaussianBlur(knobs.blur * scene.size / 256))
    img = rng.standard_normal((scene.size, scene.size, 3), dtype=np.float32)
    img *= np.float32(knobs.noise)
    img += np.float32(haze * 205 + 0.5)  # + 0.5: the uint8 cast below then rounds
    img += np.asarray(im, dtype=np.float32) * np.float32(gain * (1 - haze))
    return np.clip(img, 0, 255, out=img).astype(np.uint8)
