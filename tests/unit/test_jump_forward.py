"""Jump-forward in greedy decoding, on a scripted decoder and a two-state grammar: a token the grammar drafts
costs no decoder step of its own, and the step that feeds it checks it, so the tokens never change."""

from __future__ import annotations

import numpy as np
import pytest

from tiercel.runtime.constrain import Automaton, Constraint
from tiercel.runtime.generate import GenerationConfig, generate

EOS, OPEN, CLOSE, OTHER, V = 2, 5, 6, 7, 8


def grammar() -> Automaton:
    """(OPEN CLOSE)*: after OPEN only CLOSE, or an eos that cuts the open pair back."""
    a = Automaton("pair", V, EOS, eos_anywhere=True)
    between, inside = a.state(accepting=True), a.state()
    a.edge(between, [OPEN], inside)
    a.edge(inside, [CLOSE], between)
    a.close[inside] = (CLOSE,)
    return a.finish()


class Scripted:
    """Logits that put the next token at `after[token just fed]`; records the shape of every call."""

    def __init__(self, after: dict[int, int], multi_token: bool):
        self.after, self.multi_token, self.calls = after, multi_token, []

    def step(self, tokens: np.ndarray) -> np.ndarray:
        self.calls.append(tokens.shape)
        fed = tokens.reshape(len(tokens), -1)
        logits = np.zeros((*fed.shape, V), np.float32)
        for (r, t), tok in np.ndenumerate(fed):
            logits[r, t, self.after.get(int(tok), OTHER)] = 5.0
        return logits[:, -1] if tokens.ndim == 1 else logits


CFG = GenerationConfig(decoder_start_token_id=0, forced_bos_token_id=None, forced_eos_token_id=None, num_beams=1,
                       max_new_tokens=8)


def run(after: dict[int, int], multi_token: bool, rows: int = 1, **overrides):
    cfg = CFG.with_overrides(**overrides)
    decoder, constraint = Scripted(after, multi_token), Constraint([grammar()] * rows, cfg)
    return generate(decoder, rows, cfg, constraint), decoder.calls, constraint.jumped


@pytest.mark.parametrize("after, want, drafts", [
    # pairs up to the budget: every CLOSE but the last is drafted (the last has no step left to check it)
    ({0: OPEN, OPEN: CLOSE, CLOSE: OPEN}, [OPEN, CLOSE] * 4, 3),
    # the model stops inside the pair (eos and CLOSE tie: eos): the checking step cuts the draft, and the answer is
    # cut back and closed as without jump-forward
    ({0: OPEN, OPEN: OTHER}, [OPEN, CLOSE, EOS], 0),
    ({0: OPEN, OPEN: EOS}, [OPEN, CLOSE, EOS], 0),
    ({0: OPEN, OPEN: CLOSE, CLOSE: EOS}, [OPEN, CLOSE, EOS], 1),
])
def test_drafted_tokens_cost_no_step_and_change_no_token(after, want, drafts):
    plain, plain_calls, _ = run(after, multi_token=False)
    jumped, calls, n = run(after, multi_token=True)
    assert plain == jumped == [want]
    assert set(plain_calls) == {(1,)}
    assert n == drafts and len(calls) == len(plain_calls) - drafts
    assert calls.count((1, 2)) >= drafts  # each kept draft was fed with the token before it


def test_off_by_setting_and_only_when_every_live_row_has_a_draft():
    after = {0: OPEN, OPEN: CLOSE, CLOSE: EOS}
    assert run(after, True, jump_forward=False)[1] == [(1,)] * 3
    # two rows with the same script: both drafted at once
    ids, calls, n = run(after, True, rows=2)
    assert ids == [[OPEN, CLOSE, EOS]] * 2 and calls == [(2,), (2, 2)] and n == 2
