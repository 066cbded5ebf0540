"""Greedy decoding drops finished rows from the decoder's batch and still returns every row's tokens."""

from __future__ import annotations

import numpy as np

from tiercel.runtime.generate import GenerationConfig, greedy

EOS, PAD, V = 2, 1, 10
SCRIPTS = [[0, 5, 2], [0, 6, 7, 8, 9, 2], [0, 2], [0, 7, 7, 7, 7, 7, 7, 7]]  # token each row picks at each step


class Scripted:
    """A decoder whose row r emits SCRIPTS[r] step by step; with `keep_rows` it can shrink its batch."""

    def __init__(self, compact: bool):
        self.rows, self.step_no, self.batches = list(range(len(SCRIPTS))), 0, []
        if compact:
            self.keep_rows = lambda rows: setattr(self, "rows", [self.rows[i] for i in rows])

    def step(self, tokens):
        assert len(tokens) == len(self.rows)
        self.batches.append(len(self.rows))
        logits = np.zeros((len(self.rows), V), np.float32)
        for i, r in enumerate(self.rows):
            script = SCRIPTS[r]
            logits[i, script[min(self.step_no, len(script) - 1)]] = 1.0
        self.step_no += 1
        return logits


def test_finished_rows_leave_the_batch_and_tokens_do_not_change():
    cfg = GenerationConfig(num_beams=1, max_new_tokens=8, forced_bos_token_id=None, forced_eos_token_id=None,
                           eos_token_id=EOS, pad_token_id=PAD)
    plain, compact = Scripted(False), Scripted(True)
    want = [s[: s.index(EOS) + 1] if EOS in s else s for s in SCRIPTS]
    assert greedy(plain, len(SCRIPTS), cfg) == want
    assert greedy(compact, len(SCRIPTS), cfg) == want
    assert plain.batches == [4] * 8
    # row 2 ends at step 2 (1 of 4 done: compact), row 0 at step 3 (1 of 3), row 1 at step 6 (1 of 2)
    assert compact.batches == [4, 4, 3, 2, 2, 2, 1, 1]


class ArgmaxScripted(Scripted):
    """The same decoder exposing step_argmax (argmax taken on its side), counting which entry greedy uses."""

    def __init__(self):
        super().__init__(False)
        self.argmax_calls = 0

    def step_argmax(self, tokens):
        self.argmax_calls += 1
        return self.step(tokens).argmax(-1)


def test_step_argmax_gives_the_tokens_of_logits_and_processors():
    """Forced bos/eos replace the decoder's argmax; with no-repeat n-grams the logits path is used instead."""
    forced = [[4, 5, 2], [4, 6, 7, 8, 2], [4, 2], [4, 7, 7, 7, 2]]  # bos 4 at the first step, eos at the fifth
    for cfg in (GenerationConfig(num_beams=1, max_new_tokens=5, forced_bos_token_id=4, forced_eos_token_id=EOS,
                                 eos_token_id=EOS, pad_token_id=PAD),
                GenerationConfig(num_beams=1, max_new_tokens=8, forced_bos_token_id=None, forced_eos_token_id=None,
                                 eos_token_id=EOS, pad_token_id=PAD, no_repeat_ngram_size=2)):
        fast, plain = ArgmaxScripted(), Scripted(False)
        got, want = greedy(fast, len(SCRIPTS), cfg), greedy(plain, len(SCRIPTS), cfg)
        assert got == want
        assert fast.argmax_calls == (0 if cfg.no_repeat_ngram_size else len(fast.batches))
        assert cfg.no_repeat_ngram_size or got == forced
