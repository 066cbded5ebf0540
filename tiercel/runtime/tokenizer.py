"""Tokenizers for Florence-2 / Falcon checkpoints and tiercel's own small demo tokenizer. No torch.

Wraps the `tokenizers` library (the Rust tokenizer behind transformers' fast tokenizers), which reads a
checkpoint's tokenizer.json directly, so the runtime needs no transformers. It knows the token layout
Florence-2 expects: BART specials `<s> <pad> </s> <unk>` at ids 0..3 and an `<image>` placeholder that the
native processor repeats once per image token before `<s> prompt </s>`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from tiercel.errors import TokenizerError
from tiercel.fileio import read_json_object

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")
IMAGE_TOKEN = "<image>"
STRUCTURE_TOKENS = ("<box>", "</box>", "<quad>", "</quad>", "<poly>", "</poly>", "<sep>")
N_COORD_TOKENS = 1001  # <0>..<1000>: Falcon bins are 0..999, and one published prompt holds <1000>
_GRAMMAR_RE = re.compile(r"<(?:loc_)?\d+>|</?(?:box|quad|poly)>|<sep>")


def coordinate_tokens() -> list[str]:
    """Falcon's coordinate tokens `<0>` .. `<1000>`."""
    return [f"<{i}>" for i in range(N_COORD_TOKENS)]


class TextTokenizer:
    """A `tokenizers.Tokenizer` plus the ids Florence-2 needs (bos, eos, pad, image)."""

    def __init__(self, tokenizer, source: str = "<memory>"):
        self.tok = tokenizer
        self.source = source
        ids = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise TokenizerError(f"{source}: tokenizer lacks the special token {missing[0]}; it is not a Florence-2/BART tokenizer")
        self.bos_id, self.pad_id, self.eos_id, self.unk_id = (ids[t] for t in SPECIAL_TOKENS)

    @classmethod
    def from_dir(cls, path: str | Path) -> TextTokenizer:
        """Read tokenizer.json from `path` (a file or a directory), or vocab.json + merges.txt (byte-level BPE)."""
        from tokenizers import Tokenizer

        path = Path(path)
        file = path if path.is_file() else path / "tokenizer.json"
        if file.is_file():
            try:
                return cls(Tokenizer.from_file(str(file)), str(file))
            except Exception as err:  # tokenizers raises plain Exceptions on bad JSON
                raise TokenizerError(f"{file}: cannot be read as a tokenizer ({str(err).splitlines()[0]})") from err
        if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            return cls(_bart_from_vocab_merges(path), str(path / "vocab.json"))
        raise TokenizerError(f"{path}: no tokenizer.json (or vocab.json + merges.txt); copy the checkpoint's tokenizer files there")

    @property
    def image_id(self) -> int:
        i = self.tok.token_to_id(IMAGE_TOKEN)
        if i is None:
            raise TokenizerError(f"{self.source}: tokenizer has no {IMAGE_TOKEN} token; load it with tiercel.models.load_checkpoint or run `tiercel convert`, which add it")
        return i

    def ensure_image_token(self) -> bool:
        """Add `<image>` as a special token when missing. Returns True when it was added."""
        from tokenizers import AddedToken

        if self.tok.token_to_id(IMAGE_TOKEN) is not None:
            return False
        self.tok.add_special_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)])
        return True

    def __len__(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` without any special tokens."""
        return self.tok.encode(text, add_special_tokens=False).ids

    def lengths(self, texts: list[str]) -> list[int]:
        """Token counts of `texts` (no special tokens), encoded in one batch by the Rust tokenizer."""
        return [len(e.ids) for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, dropping special tokens (`<s>`, `</s>`, `<pad>`, `<image>`) and keeping grammar tokens."""
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def prompt_ids(self, prompt: str, n_image_tokens: int) -> list[int]:
        """Encoder input as the native processor builds it: `<image>` x n, then `<s> prompt </s>`."""
        return [self.image_id] * n_image_tokens + [self.bos_id, *self.encode(prompt), self.eos_id]

    def grammar_report(self) -> dict:
        """Which Falcon grammar strings are single tokens in this vocabulary (FALCON.md leaves it unverified)."""
        vocab = self.tok.get_vocab(with_added_tokens=True)
        coords = coordinate_tokens()
        return {
            "structure_single": [t for t in STRUCTURE_TOKENS if t in vocab],
            "structure_split": [t for t in STRUCTURE_TOKENS if t not in vocab],
            "coordinates_single": sum(t in vocab for t in coords),
            "florence_loc_tokens": sum(f"<loc_{i}>" in vocab for i in range(1000)),
        }

    def save(self, path: str | Path) -> Path:
        """Write tokenizer.json into directory `path`."""
        out = Path(path) / "tokenizer.json"
        self.tok.save(str(out))
        return out


def _bart_from_vocab_merges(path: Path):
    """A BART byte-level BPE tokenizer from vocab.json + merges.txt (older checkpoints ship only these)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    try:
        bpe = models.BPE.from_file(str(path / "vocab.json"), str(path / "merges.txt"))
    except Exception as err:
        raise TokenizerError(f"{path}/vocab.json: cannot be read with merges.txt ({str(err).splitlines()[0]})") from err
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    added = path / "added_tokens.json"
    if added.is_file():
        extra = read_json_object(added, TokenizerError)
        if not all(isinstance(i, int) for i in extra.values()):
            raise TokenizerError(f"{added}: must map each added token to its id (a whole number)")
        tok.add_tokens(sorted(extra, key=extra.get))
    return tok


def train_bpe(corpus: Iterable[str], vocab_size: int = 3000, min_frequency: int = 2) -> TextTokenizer:
    """Train a small byte-level BPE tokenizer in Falcon's token layout.

    BART specials take ids 0..3; the Falcon grammar (`<0>`..`<1000>`, `<box>` ... `<sep>`) is added as single
    tokens and stripped from the training text so no merges are wasted on it; `<image>` comes last.
    `vocab_size` counts the learned BPE vocabulary only; the final size is len(result).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((_GRAMMAR_RE.sub(" ", text) for text in corpus), trainer=trainer)
    tok.add_tokens([AddedToken(t, normalized=False) for t in (*STRUCTURE_TOKENS, *coordinate_tokens())])
    tok.add_special_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)])
    return TextTokenizer(tok, "<trained>")
