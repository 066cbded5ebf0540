"""Difficulty knobs of the synthetic benchmark, in one place.

The defaults aim at a benchmark a small student learns well above chance without saturating:

- Appearance: `color_jitter` moves every instance's colour away from its named colour; `noise` adds
  per-pixel sensor noise; `blur` softens edges (small vehicles lose their windows); `haze` and
  `brightness` vary the whole frame, so absolute colour is never a perfect cue.
- Geometry: `scale` multiplies every class's size range; `scale_spread` widens it, making classes overlap
  in size (a large vehicle against a small pool or building).
- Clutter: `density` multiplies object priors (more, smaller gaps, longer answers); `max_per_class`
  caps answers' length; `trees` multiplies distractor tree clusters, which look like nothing annotated
  but break up the ground; `decor` toggles markings (runway lines, parking stalls).
- Change pairs: `max_removed` / `max_added` bound how many objects change between the two frames.
- Curriculum: `grid` > 0 puts every object's centre on the centre of a cell of a grid x grid lattice, so
  objects take few positions (docs/fidelity.md: a model learns to read positions from such scenes first).
  Not a difficulty setting of the benchmark: the default (0) places objects anywhere.

Raising `noise`, `blur`, `color_jitter`, `scale_spread` and `density` makes every task harder; the
defaults are what `tiercel data synth` writes and what meta.json records.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Knobs:
    """How hard the generated scenes are (see the module docstring for what each knob does)."""

    color_jitter: float = 22.0  # max per-channel shift of an instance's colour (0..255)
    noise: float = 6.0  # std of per-pixel Gaussian noise (0..255)
    blur: float = 0.6  # Gaussian blur radius at 256 px (scales with the image)
    haze: float = 0.12  # max blend towards a pale haze colour
    brightness: float = 0.12  # max relative brightness change of a frame
    scale: float = 1.0  # multiplies every object size range
    scale_spread: float = 1.0  # >1 widens size ranges around their middle
    density: float = 1.0  # multiplies object priors
    max_per_class: int = 12
    trees: float = 1.0  # multiplies tree-cluster priors
    decor: bool = True
    max_removed: int = 2
    max_added: int = 2
    grid: int = 0  # > 0: object centres snap to the cell centres of a grid x grid lattice (curriculum data)

    def to_dict(self) -> dict:
        return asdict(self)
