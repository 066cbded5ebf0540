"""The runtime's image preprocessing run on the model's GPU, with Pillow's bytes.

A Florence-2 image is resized to a square (Pillow bicubic on uint8) and normalised on the host; for PIX_CHG the
tiled 2H x 2W pair is resized too. On a fast GPU that host work is the largest stage of the 14 tasks on one
image (32 ms of 73 on an H200's host, benchmarks/results/gpu_nvidia_h200.json), and on a Jetson-class device
the CPU is the slow part. Here the uint8 image goes up as it is (a quarter of the float32 bytes) and both steps
run on the device:

- resize: Pillow's own algorithm in integers (tiercel.runtime.preprocess.pillow_taps: its fixed-point taps,
  its pass order), so the bytes are Pillow's, not an approximation of them (torch's antialiased bicubic is
  not bit-identical, and a Florence-2 model was trained on Pillow's). The installed Pillow is checked against
  on seeded noise: each side length's taps once, the order of the passes once per process (`agrees`); a shape
  that does not give Pillow's bytes is resized on the host by Pillow instead (logged once). A coefficient that
  a Pillow build rounds one unit differently (a build with fused multiply-adds could) moves a pixel only where
  the sum lands within 255 / 2**22 of a rounding edge, which noise rarely shows, and which changes that pixel
  by one level.
- normalise: the runtime's per-channel lookup table (256 float32 values per channel), gathered on the device,
  so the float32 values are the host's bits.

Written here rather than taken from a library because no GPU library reproduces Pillow's bytes (torchvision's
and kornia's bicubic differ by a level in places). Knows nothing about models: it takes RGB uint8 arrays and
gives pixel_values on a torch device.
"""

from __future__ import annotations

import functools
import logging
import warnings

import numpy as np

from tiercel.runtime.preprocess import PRECISION_BITS, _lookup, pillow_pass_order, pillow_taps

_log = logging.getLogger(__name__)


class DevicePreprocessor:
    """RGB uint8 HxWx3 arrays -> pixel_values [B, 3, size, size] float32 on `device`, equal to the runtime's
    numpy `preprocess` of each image (Pillow resize + normalisation) bit for bit."""

    def __init__(self, device: str, size: int, mean, std):
        import torch

        self.torch, self.device, self.size = torch, device, size
        self.lut = torch.from_numpy(_lookup(tuple(float(m) for m in mean), tuple(float(s) for s in std))).to(device)
        self.host_shapes: set = set()  # (height, width) resized by Pillow on the host: see `agrees`

    def __call__(self, images: list[np.ndarray]):
        return self.torch.cat([self.one(rgb) for rgb in images])

    def one(self, rgb: np.ndarray):
        """One HxWx3 uint8 image -> [1, 3, size, size] float32 on the device."""
        height, width = rgb.shape[:2]
        if (height, width) != (self.size, self.size) and not self.agrees(height, width):
            from tiercel.runtime.preprocess import resize_square

            rgb = resize_square(rgb, self.size)
        return self.normalize(self.resize(self._upload(rgb)))[None]

    def _upload(self, rgb: np.ndarray):
        """HxWx3 uint8 -> [3, H, W] uint8 on the device. A read-only array (a decoded PIL image) is not copied
        first: nothing here writes to the tensor (torch would warn that it could)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            return self.torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device).permute(2, 0, 1)

    def resize(self, x):
        """[3, H, W] uint8 (device) -> [3, size, size] uint8, Pillow's passes in Pillow's order."""
        _, height, width = x.shape
        passes = pillow_pass_order(height, width, self.size)
        if not passes:
            return x
        y = x.to(self.torch.int32)
        for name in passes:
            axis, n = (2, y.shape[2]) if name == "horizontal" else (1, y.shape[1])
            y = self._pass(y, *self._taps(n), axis)
        return y.to(self.torch.uint8)

    @functools.lru_cache(maxsize=256)  # noqa: B019 - one preprocessor per model
    def _taps(self, n: int):
        index, weight = pillow_taps(n, self.size)
        return self.torch.from_numpy(index).to(self.device), self.torch.from_numpy(weight).to(self.device)

    def _pass(self, y, index, weight, axis: int):
        """One Pillow pass along `axis` in int32, as its C loop: 2**21 + sum of value * weight, >> 22, clamped."""
        shape = [1, 1, 1]
        shape[axis] = index.shape[0]
        acc = None
        for k in range(index.shape[1]):
            term = y.index_select(axis, index[:, k]) * weight[:, k].view(shape)
            acc = term if acc is None else acc.add_(term)
        return acc.add_(1 << (PRECISION_BITS - 1)).bitwise_right_shift_(PRECISION_BITS).clamp_(0, 255)

    def normalize(self, x):
        """[3, S, S] uint8 -> float32 through the host's lookup table (the same float32 values)."""
        return self.torch.stack([self.lut[c][x[c].long()] for c in range(x.shape[0])])

    def agrees(self, height: int, width: int) -> bool:
        """Whether this shape's device resize gives Pillow's bytes (else it is resized on the host, logged once).

        Checked by parts, on seeded noise, so that a dataset of many image sizes pays little: the taps of each
        side's length (a strip 8 samples wide, where Pillow runs that one pass only), once per length, and the
        order of the two passes, once per process (`_order_agrees`)."""
        passes = pillow_pass_order(height, width, self.size)
        lengths = {"horizontal": width, "vertical": height}
        ok = all(self._taps_agree(name, lengths[name]) for name in passes) and (len(passes) < 2 or self._order_agrees())
        if not ok and (height, width) not in self.host_shapes:
            self.host_shapes.add((height, width))
            _log.warning("%dx%d -> %d: the device resize differs from Pillow here; this shape is resized on the host",
                         height, width, self.size)
        return ok

    @functools.lru_cache(maxsize=256)  # noqa: B019
    def _taps_agree(self, name: str, n: int) -> bool:
        """One pass over `n` samples on an 8-sample strip of noise = Pillow's resize of that strip."""
        from PIL import Image

        axis, shape, out = (2, (8, n, 3), (self.size, 8)) if name == "horizontal" else (1, (n, 8, 3), (8, self.size))
        noise = np.random.default_rng(n).integers(0, 256, shape, dtype=np.uint8)
        want = np.asarray(Image.fromarray(noise).resize(out, Image.BICUBIC))
        got = self._pass(self._upload(noise).to(self.torch.int32), *self._taps(n), axis)
        return np.array_equal(want, got.to(self.torch.uint8).permute(1, 2, 0).cpu().numpy())

    @functools.lru_cache(maxsize=1)  # noqa: B019
    def _order_agrees(self) -> bool:
        """Pillow's pass order (pillow_pass_order) on two shapes that take both passes, one in each order."""
        from PIL import Image

        s, extra = self.size, max(self.size // 4, 1)
        for height, width in ((3 * s, s + extra), (s + extra, 3 * s)):  # vertical first, horizontal first
            noise = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
            want = np.asarray(Image.fromarray(noise).resize((s, s), Image.BICUBIC))
            if not np.array_equal(want, self.resize(self._upload(noise)).permute(1, 2, 0).cpu().numpy()):
                return False
        return True
