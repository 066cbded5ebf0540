"""Grammar-constrained decoding: a token-level automaton per answer kind that masks the logits at every step.

    automaton = for_answer(tokenizer, "box", "falcon")         # cached per tokenizer, answer kind and dialect
    c = Constraint([automaton, None], cfg)                     # one automaton (or None: free) per batch item
    ids = generate(decoder, 2, cfg, constraint=c)              # greedy or beam search, masked each step

Model.run / run_all / generate_ids build the Constraint from each row's task (`constrained=True` by default,
`constrained=False` turns it off). The grammar per answer kind (tiercel.tasks.answers), over the bundle's
tokens, `ws` being any token that decodes to whitespace only:

    box   ws* (<box> BIN BIN BIN BIN </box> ws*)*         REG_DET_HBB, REG_VG; no object: the empty answer
    quad  ws* (<quad> BIN x 8 </quad> ws*)*                REG_DET_OBB
    poly  ws* (<poly> PART (<sep> PART)* </poly> ws*)*    PIX_SEG, PIX_CHG; PART: an even count >= 6 of BIN
    count ws* DIGITS ws*, 1..9 digits                      IMG_CT (what write_count produces)
    text  at least one token with visible text, then any  the label and caption tasks: never empty

BIN is a coordinate token of the bundle's dialect, `<0>`..`<1000>` (falcon) or `<loc_0>`..`<loc_1000>`
(florence); `ws` a token of spaces, tabs and newlines only. No grammar takes a special token (`<s>`, `<pad>`,
`<unk>`, `<image>`) after the forced `<s>`: decoding drops them from the text, so they would parse, but a
run of them is how a BART decoder degenerates, and no answer needs one. A structure string (`<box>`, `</poly>`, `<sep>`, a bin) that the tokenizer holds as one token is that
token; one it splits is its canonical encoding, token by token. Every answer the grammar accepts parses with no
warnings, and every answer the writers produce is accepted. Outside the grammar, though they parse cleanly:
whitespace inside a structure (Falcon's own evaluation drops such a box), class names or other text between
structures (the reader warns), counts as words or with signs or commas (Falcon scores counts by exact string,
"three" is not "3"), special tokens inside the answer, whitespace other than spaces, tabs and newlines. So greedy
decoding is token-identical to unconstrained decoding wherever the unconstrained answer is in the grammar (the
mask never touches the argmax; the budget rule never binds on an answer that closed in time). Beam search is too
whenever the competing beams were in the grammar as well; masking a competitor can let another hypothesis in.

Where the mask applies, in transformers' LogitsProcessor order: after no-repeat n-gram, and the forced bos /
forced eos steps are left alone (a LogitsProcessor passed to transformers' `generate` runs after its forced
bos/eos processors, and doing nothing at those steps gives the same scores as running before them). Where the
n-gram ban would leave a row none of the tokens its grammar allows, the ban is lifted for that row.

Budget: with `max_new_tokens` T, the token chosen at position p (1-based) must leave an answer that can still
close: the shortest completion from the next state (eos counted) fits in T - p. So every answer ends by eos in
an accepting state (a box list closes its last box in time) rather than being cut mid-structure. Only when T is
too small for even the shortest answer (e.g. 2: bos, eos for a count) is the answer cut, and the parser says so.

Jump-forward: where the grammar allows exactly one token (`</box>` after the 4th bin, `</quad>` after the 8th,
the later tokens of a structure string the tokenizer splits) the mask leaves that token alone, so greedy and beam
search take it whatever the logits are (`Constraint.single` counts those row-steps). Greedy on a decoder that
takes several new tokens per call (`multi_token`: the exported decoder_with_past graphs on onnxruntime and
OpenVINO; not TensorRT engines, whose profiles are built for one token) appends such a token without a decoder
step of its own: the next call feeds both tokens and reads the logits after the second (`Constraint.jumped`
counts them). A batch jumps only when every unfinished row has its token. The eos that would only cut an open
structure back is not counted as a choice there: a model that would have stopped just before `</box>` gets the
`</box>` (what the cut-back would have written) and may go on, so tokens stay identical wherever the answer
parses unconstrained, as above; beam search runs one token per step, as before.

Ending inside a structure: in the box, quad and poly grammars eos is allowed in every state, and an answer that
takes it inside a structure is cut back to the last point where that structure could close, and closed
(`Constraint.rollback`, which `generate` applies), as the parser would read it: `<box><1><2><3><4></box><box><5>`
+ eos becomes `<box><1><2><3><4></box>` + eos; a polygon part of 17 values keeps 16 and gets its `</poly>`. A model trained on
answers cut at a token limit learns to stop inside a polygon; forbidding that eos made it write coordinates it
would not have written until the budget closed the structure (on the fidelity teacher, PIX_SEG fell from 0.366
unconstrained to 0.337 constrained, 20 test records, 3 beams), and beam search could prefer the empty answer to
such a run. With the cut-back the answer is what the parser would have kept of the unconstrained one, without
its warnings. The budget rule still keeps a proper close within reach, so eos stays a choice, not a necessity.

Why not a library (checked on PyPI, 2026): xgrammar requires torch, transformers and triton; lm-format-enforcer
reads transformers' tokenizers and walks a Python character trie per step; outlines-core and llguidance are
torch-free Rust with numpy masks, but their aarch64 wheels lag the x86 ones (0.2.3 and 1.6.0 against 0.2.14
and 1.9.1), they know nothing of the remaining token budget (closing a structure before max_new_tokens needs the
shortest completion from each state), and this grammar is regular with a dozen states. So: numpy, this module.

Knows nothing about graphs, images or torch; reads only the tokenizer's strings and the tasks' dialects.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass, field

import numpy as np

from tiercel.errors import TokenizerError
from tiercel.runtime.generate import GenerationConfig, forced_token
from tiercel.tasks import grammar
from tiercel.tasks.answers import MAX_COUNT_DIGITS

DONE = -1  # the state after eos, or after a token the grammar did not allow (forced): nothing is masked
# answer kind (tiercel.tasks.answers.ANSWERS) -> grammar
GRAMMARS = {"label": "text", "caption": "text", "count": "count", "box": "box", "quad": "quad", "poly": "poly"}
_BIG = 10**9
_WS = frozenset(" \t\n\r")  # whitespace the grammars allow (str.isspace also takes \x1c-\x1f and others)


@dataclass
class Vocab:
    """What the automata need of a tokenizer: each id's text, which ids are special, eos."""

    strings: list[str]
    special: np.ndarray  # bool [V]
    eos: int
    encode: object = field(repr=False)

    @classmethod
    def of(cls, tokenizer) -> Vocab:
        n = len(tokenizer)
        strings = tokenizer.tok.decode_batch([[i] for i in range(n)], skip_special_tokens=False)
        special = np.zeros(n, bool)
        for i, added in tokenizer.tok.get_added_tokens_decoder().items():
            special[i] = added.special
        special[[tokenizer.bos_id, tokenizer.pad_id, tokenizer.eos_id, tokenizer.unk_id]] = True
        return cls(strings, special, tokenizer.eos_id, tokenizer.encode)

    def ids(self, predicate) -> np.ndarray:
        """The non-special tokens whose text satisfies `predicate`."""
        return np.array([i for i, s in enumerate(self.strings) if not self.special[i] and predicate(s)], np.int64)

    def whitespace(self) -> np.ndarray:
        return self.ids(lambda s: s != "" and set(s) <= _WS)

    def spelling(self, text: str) -> tuple[int, ...]:
        """The tokens of one grammar string: its own token when it has one, else its canonical encoding."""
        seq = tuple(self.encode(text))
        if not seq or any(self.special[i] for i in seq) or "".join(self.strings[i] for i in seq) != text:
            raise TokenizerError(f"tokenizer cannot spell {text!r} (decodes to "
                                 f"{''.join(self.strings[i] for i in seq)!r}); constrained decoding needs it: "
                                 "turn it off (constrained=False, --no-constrained) or add the token")
        return seq


class Automaton:
    """States with sparse token transitions; eos is allowed exactly in accepting states."""

    def __init__(self, name: str, vocab_size: int, eos: int, eos_anywhere: bool = False):
        self.name, self.vocab_size, self.eos, self.eos_anywhere = name, vocab_size, eos, eos_anywhere
        self.trans: list[dict[int, int]] = []
        self.accepting: list[bool] = []
        self._prefix: dict[tuple, int] = {}
        self._masks: dict[tuple[int, int, int], np.ndarray] = {}
        self._only: dict[tuple[int, int, int], int] = {}
        self.dist: np.ndarray | None = None
        self.close: dict[int, tuple[int, ...]] = {}  # state -> the tokens that close its structure (rollback)
        self.start = 0

    def state(self, accepting: bool = False) -> int:
        self.trans.append({})
        self.accepting.append(accepting)
        return len(self.trans) - 1

    def edge(self, q: int, ids, to: int) -> None:
        """Every token of `ids` leads from q to `to`."""
        for i in np.asarray(ids, np.int64).tolist():
            if self.trans[q].get(i, to) != to:
                raise TokenizerError(f"{self.name} grammar: token {i} leads two ways; the tokenizer's grammar tokens overlap")
            self.trans[q][i] = to

    def spell(self, q: int, seq: tuple[int, ...], to: int) -> None:
        """The token sequence `seq` leads from q to `to` (intermediate states shared between sequences)."""
        for k, tok in enumerate(seq[:-1]):
            key = (q, seq[: k + 1])
            if key not in self._prefix:
                self._prefix[key] = self.state()
                self.edge(q if k == 0 else self._prefix[(q, seq[:k])], [tok], self._prefix[key])
        self.edge(q if len(seq) == 1 else self._prefix[(q, seq[:-1])], [seq[-1]], to)

    def finish(self) -> Automaton:
        """Shortest completion per state (tokens to the end, eos counted): the budget rule reads it."""
        dist = np.where(self.accepting, 1, _BIG).astype(np.int64)
        for _ in range(len(self.trans)):
            new = dist.copy()
            for q, t in enumerate(self.trans):
                if t:
                    new[q] = min(new[q], 1 + min(dist[to] for to in set(t.values())))
            if (new == dist).all():
                break
            dist = new
        self.dist = dist
        # a state can leave exactly one token under some budget when one token alone leads nearest to the end
        # (`</box>` after the 4th bin); the text and count grammars have none, so jump-forward skips their rows
        self.forcible = False
        for t in self.trans:
            if t:
                d = dist[np.fromiter(t.values(), np.int64, len(t))]
                if np.count_nonzero(d == d.min()) == 1:
                    self.forcible = True
                    break
        return self

    def step(self, q: int, token: int) -> int:
        if q == DONE or token == self.eos:
            return DONE
        return self.trans[q].get(int(token), DONE)

    def _budget(self, remaining: int) -> int:
        """`remaining` capped where no state needs more (masks and their caches are keyed by it)."""
        return min(remaining, int(self.dist.max()))

    def only(self, q: int, remaining: int, width: int) -> int:
        """The one token state q allows with `remaining` tokens left, not counting an eos that would only cut an
        open structure back; -1 where it allows more (or none)."""
        key = (q, self._budget(remaining), width)
        if key not in self._only:
            m = self.mask(q, remaining, width)
            ids = np.flatnonzero(m)
            if ids.size > 1 and m[self.eos] and not self.accepting[q]:
                ids = ids[ids != self.eos]
            self._only[key] = int(ids[0]) if ids.size == 1 else -1
        return self._only[key]

    def mask(self, q: int, remaining: int, width: int) -> np.ndarray:
        """Bool [width]: the tokens allowed in state q with `remaining` tokens left after this one."""
        budget = self._budget(remaining)
        key = (q, budget, width)
        if key not in self._masks:
            m = np.zeros(width, bool)
            ok = [i for i, to in self.trans[q].items() if self.dist[to] <= budget and i < width]
            m[ok] = True
            m[self.eos] = self.accepting[q] or (self.eos_anywhere and bool(ok))
            self._masks[key] = m
        return self._masks[key]


def _structures(vocab: Vocab, kind: str, dialect: str) -> Automaton:
    d = grammar.get_dialect(dialect)
    opening, closing = next((o, c) for k, o, c in d.wrappers if k == kind)
    a = Automaton(f"{dialect} {kind}", len(vocab.strings), vocab.eos, eos_anywhere=True)
    between = a.state(accepting=True)
    a.edge(between, vocab.whitespace(), between)
    first = a.state()
    a.spell(between, vocab.spelling(opening), first)
    bins = [vocab.spelling(d.write(b)) for b in range(grammar.N_BINS + 1)]
    n = grammar.STRUCTURES[kind]
    values = [first] + [a.state() for _ in range(n or 7)]
    for here, nxt in zip(values, values[1:] + ([] if n else [values[6]])):
        for seq in bins:
            a.spell(here, seq, nxt)
    close_from = values[n] if n else values[6]  # a poly part: an even count of at least 6 values
    a.spell(close_from, vocab.spelling(closing), between)
    a.close[close_from] = vocab.spelling(closing)
    if not n:
        a.spell(close_from, vocab.spelling(d.sep), first)
    return a.finish()


def _count(vocab: Vocab) -> Automaton:
    a = Automaton("count", len(vocab.strings), vocab.eos)
    ws = vocab.whitespace()
    start, digits, tail = a.state(), [a.state(accepting=True) for _ in range(MAX_COUNT_DIGITS)], a.state(accepting=True)
    a.edge(start, ws, start)
    for n in range(1, MAX_COUNT_DIGITS + 1):
        lead = vocab.ids(lambda s, n=n: re.fullmatch(rf"[ \t\n\r]*\d{{{n}}}", s) is not None)
        a.edge(start, lead, digits[n - 1])
        run = vocab.ids(lambda s, n=n: re.fullmatch(rf"\d{{{n}}}", s) is not None)
        for have in range(1, MAX_COUNT_DIGITS + 1 - n):
            a.edge(digits[have - 1], run, digits[have + n - 1])
    for q in (*digits, tail):
        a.edge(q, ws, tail)
    return a.finish()


def _text(vocab: Vocab) -> Automaton:
    a = Automaton("text", len(vocab.strings), vocab.eos)
    empty, written = a.state(), a.state(accepting=True)
    a.edge(empty, vocab.ids(lambda s: s.strip() == ""), empty)
    a.edge(empty, vocab.ids(lambda s: s.strip() != ""), written)
    a.edge(written, vocab.ids(lambda s: True), written)
    return a.finish()


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def for_answer(tokenizer, answer: str, dialect: str = "falcon") -> Automaton:
    """The automaton of an answer kind ("box", "count", "label", ...) over `tokenizer`, cached per tokenizer."""
    cache = _CACHE.setdefault(tokenizer, {})
    name = GRAMMARS[answer]
    key = (name, dialect if name in ("box", "quad", "poly") else None)
    if key not in cache:
        vocab = cache.get("vocab") or cache.setdefault("vocab", Vocab.of(tokenizer))
        cache[key] = {"text": _text, "count": _count}[name](vocab) if name in ("text", "count") else \
            _structures(vocab, name, dialect)
    return cache[key]


class Constraint:
    """Per-row automaton states through one generate call; `allowed` is the mask generate.process applies.

    Rows are found by their token prefix (item, ids so far), so greedy's dropped rows and beam search's
    reordering need no bookkeeping here: each step looks up the previous step's states and takes one token.
    """

    def __init__(self, automata: list[Automaton | None], cfg: GenerationConfig):
        self.automata, self.cfg = automata, cfg
        self._memo: dict[tuple[int, bytes], int] = {}
        self.single = 0  # row-steps where the grammar allowed exactly one token
        self.masked = 0  # row-steps the grammar masked
        self.jumped = 0  # row-tokens appended by jump-forward, without a decoder step of their own

    def _walk(self, a: Automaton, seq: np.ndarray) -> int:
        q = a.start
        for p, tok in enumerate(seq[1:].tolist(), 1):
            if p == 1 and self.cfg.forced_bos_token_id is not None:
                continue  # the forced <s> is no part of the answer
            q = a.step(q, tok)
        return q

    def states(self, seqs: np.ndarray, items) -> list[int]:
        memo, states = {}, []
        skip_first = seqs.shape[1] == 2 and self.cfg.forced_bos_token_id is not None
        for seq, item in zip(seqs, items):
            a = self.automata[item]
            if a is None:
                states.append(DONE)
                continue
            key = (int(item), seq.tobytes())
            q = memo.get(key, self._memo.get(key))  # the same prefix asked again (jump-forward's check step)
            if q is None:
                prev = self._memo.get((int(item), seq[:-1].tobytes()))
                if prev is None or seqs.shape[1] < 2:
                    q = self._walk(a, seq)
                else:
                    q = prev if skip_first else a.step(prev, int(seq[-1]))
                memo[key] = q
            states.append(q)
        self._memo = memo
        return states

    def allowed(self, seqs: np.ndarray, items, width: int) -> np.ndarray | None:
        """Bool [N, width] of the tokens each row may take next (rows of `seqs` [N, cur_len] are of batch items
        `items`), or None at a forced step (bos / eos). A row whose grammar is done, or whose budget is too
        small for any answer, is left unmasked."""
        cur_len = seqs.shape[1]
        states = self.states(seqs, items)
        if forced_token(cur_len, self.cfg) is not None:
            return None
        remaining = self._remaining(cur_len)
        out = np.ones((len(states), width), bool)
        self.cutback = np.zeros(len(states), bool)  # rows whose eos is allowed only as a cut-back (see rollback)
        for row, (q, item) in enumerate(zip(states, items)):
            if q == DONE:
                continue
            a = self.automata[item]
            m = a.mask(q, remaining, width)
            n = np.count_nonzero(m)
            if n:
                out[row] = m
                self.masked += 1
                self.cutback[row] = m[a.eos] and not a.accepting[q]
                self.single += int(n - self.cutback[row] == 1)  # a cut-back eos is no choice
        return out

    def _remaining(self, cur_len: int) -> int:
        """Tokens left after the one chosen with `cur_len` tokens so far (a forced eos takes no budget of its own)."""
        return self.cfg.max_new_tokens - cur_len + (self.cfg.forced_eos_token_id is None)

    def forced(self, seqs: np.ndarray, items, width: int, live: np.ndarray) -> np.ndarray | None:
        """The token each row's grammar leaves it next, for jump-forward (generate.greedy): [N] ids, or None
        unless every `live` row (bool [N]) has exactly one, not counting an eos that would only cut an open
        structure back (at a closing tag), and the next step is not a forced bos / eos. Rows not live get -1.
        Counts nothing; the states it walks to are the next step's starting point."""
        cur_len = seqs.shape[1]
        if forced_token(cur_len, self.cfg) is not None:
            return None
        if any(self.automata[items[row]] is None or not self.automata[items[row]].forcible for row in np.flatnonzero(live)):
            return None
        states = self.states(seqs, items)
        remaining = self._remaining(cur_len)
        out = np.full(len(states), -1, np.int64)
        for row in np.flatnonzero(live):
            q = states[row]
            token = -1 if q == DONE else self.automata[items[row]].only(q, remaining, width)
            if token < 0:
                return None
            out[row] = token
        return out

    def rollback(self, answers: list[list[int]]) -> list[list[int]]:
        """Each item's answer (ids after the decoder start) where it ended inside a structure: cut back to the last
        point where the structure could close, closed, eos appended, as the parser reads it (a polygon part of 17
        values keeps 16 and closes; a quad of 5 values is dropped): `<box><1><2><3><4></box><box><5>` + eos gives
        `<box><1><2><3><4></box>` + eos. Other answers as they are."""
        out = []
        for item, ids in enumerate(answers):
            a = self.automata[item]
            if a is None or not a.eos_anywhere:
                out.append(ids)
                continue
            skip = self.cfg.forced_bos_token_id is not None
            q, cut = a.start, (int(skip), ())  # the start state accepts: keep the forced bos at least
            for p, tok in enumerate(ids[1:] if skip else ids, 1 if skip else 0):
                if tok == a.eos:
                    break
                q = a.step(q, tok)
                if q == DONE:
                    break
                if a.accepting[q] or q in a.close:
                    cut = (p + 1, () if a.accepting[q] else a.close[q])
            ended = q == DONE or a.accepting[q]
            out.append(ids if ended else [*ids[: cut[0]], *cut[1], a.eos])
        return out
