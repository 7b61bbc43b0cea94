import pytest
import torch

from nemo_craft.rollout import StopCriteria, sample_next_tokens


def _gen(seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _draw(logits, n=4000, **kw):
    """n independent draws from one row (the row repeated n times)."""
    kw = dict(vocab_size=logits.shape[-1], temperature=1.0, top_k=0, top_p=1.0, generator=_gen()) | kw
    tokens, _ = sample_next_tokens(logits.expand(n, -1).clone(), **kw)
    return torch.bincount(tokens, minlength=logits.shape[-1]).float() / n


def test_greedy_is_the_argmax_of_the_true_vocabulary_and_logprobs_are_the_models():
    logits = torch.tensor([[0.0, 3.0, 1.0, 9.0], [2.0, 0.0, 1.0, 9.0]])  # column 3: vocab padding
    tokens, logprobs = sample_next_tokens(logits, vocab_size=3, temperature=0.0, top_k=0, top_p=1.0, generator=None)
    assert tokens.tolist() == [1, 0]
    expect = torch.log_softmax(logits[:, :3], -1)[torch.arange(2), tokens]
    assert torch.allclose(logprobs, expect)


def test_padding_columns_are_never_sampled():
    logits = torch.tensor([[0.0, 0.0, 50.0, 50.0]])
    freq = _draw(logits, vocab_size=2, n=500)
    assert freq[2:].sum() == 0


def test_logprobs_are_of_the_tempered_behaviour_distribution_before_truncation():
    """What the trainer recomputes as pi_old: softmax(logits / T) over the true vocabulary."""
    logits = torch.tensor([[1.0, 2.0, 0.5]])
    for top_k, top_p in ((0, 1.0), (2, 0.5)):
        tokens, logprobs = sample_next_tokens(
            logits.expand(50, -1), vocab_size=3, temperature=0.3, top_k=top_k, top_p=top_p, generator=_gen()
        )
        assert torch.allclose(logprobs, torch.log_softmax(logits / 0.3, -1)[0, tokens])
        assert not torch.allclose(logprobs, torch.log_softmax(logits, -1)[0, tokens])


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert set(_draw(logits, top_p=0.7).nonzero().flatten().tolist()) == {0, 1}
    assert set(_draw(logits, top_p=0.5).nonzero().flatten().tolist()) == {0}
    assert set(_draw(logits, top_p=0.81).nonzero().flatten().tolist()) == {0, 1, 2}
    # renormalised frequencies inside the nucleus
    freq = _draw(logits, top_p=0.7, n=20000)
    assert abs(freq[0] - 0.5 / 0.8) < 0.02


def test_top_k_then_top_p_and_temperature():
    probs = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    assert set(_draw(probs.log(), top_k=3).nonzero().flatten().tolist()) == {0, 1, 2}
    # top-k 3 renormalises to (4/9, 3/9, 2/9); top-p 0.7 then keeps tokens 0 and 1
    assert set(_draw(probs.log(), top_k=3, top_p=0.7).nonzero().flatten().tolist()) == {0, 1}
    cold = _draw(probs.log(), temperature=0.25, n=20000)
    expect = torch.softmax(probs.log() / 0.25, -1)[0]
    assert torch.allclose(cold, expect, atol=0.02)


def test_same_generator_seed_same_tokens():
    logits = torch.randn(8, 50, generator=_gen(3))
    kw = dict(vocab_size=50, temperature=1.0, top_k=0, top_p=0.9)
    a, _ = sample_next_tokens(logits, generator=_gen(5), **kw)
    b, _ = sample_next_tokens(logits, generator=_gen(5), **kw)
    c, _ = sample_next_tokens(logits, generator=_gen(6), **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_stop_criteria():
    chars = {i: c for i, c in enumerate("ab</action>xyz")}

    def decode(ids):
        return "".join(chars[i] for i in ids)

    stop = StopCriteria([99], ["</action>"], decode)
    enc = {c: i for i, c in chars.items()}
    tokens = [enc[c] for c in "ab</action"]
    assert stop.check(tokens, budget=20) is None
    assert stop.check(tokens + [enc[">"]], budget=20) == "stop"
    assert stop.check([0, 1, 99], budget=3) == "eos"  # EOS wins over the budget
    assert stop.check([0, 1, 1], budget=3) == "length"
    assert StopCriteria([99]).check([0, 1], budget=5) is None
    with pytest.raises(ValueError, match="decode"):
        StopCriteria([1], ["x"])


def _multinomial_reference(logits_BV, vocab_size, temperature, top_k, top_p, generator):
    """The draw as torch.multinomial makes it (the sampler before the race was written out)."""
    from nemo_craft.rollout.sampling import _top_p_filter

    scores_BV = logits_BV[:, :vocab_size].float() / temperature
    if 0 < top_k < vocab_size:
        scores_BV = scores_BV.masked_fill(scores_BV < torch.topk(scores_BV, top_k, dim=-1).values[:, -1:], -torch.inf)
    if top_p < 1.0:
        scores_BV = _top_p_filter(scores_BV, top_p)
    return torch.multinomial(torch.softmax(scores_BV, -1), 1, generator=generator).squeeze(1)


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (5, 0.9)])
def test_draws_are_torch_multinomials_bit_for_bit_and_rows_of_a_batchs_noise_draw_as_that_batch(top_k, top_p):
    from nemo_craft.rollout.sampling import exponential_noise

    logits = torch.randn(6, 40, generator=_gen(3)) * 3
    kw = dict(vocab_size=37, temperature=0.7, top_k=top_k, top_p=top_p)
    for seed in range(10):
        g = _gen(seed)
        expect = [_multinomial_reference(logits, generator=g, **kw) for _ in range(3)]
        g = _gen(seed)
        drawn = [sample_next_tokens(logits, generator=g, **kw)[0] for _ in range(3)]
        assert [t.tolist() for t in drawn] == [t.tolist() for t in expect]
        # rows 1, 4 and 5 alone, drawing with their rows of the whole batch's noise
        g, rows = _gen(seed), torch.tensor([5, 1, 4])
        for step in range(3):
            noise = exponential_noise(6, 37, generator=g, device=logits.device)
            tokens, _ = sample_next_tokens(logits[rows], generator=None, noise_BV=noise[rows], **kw)
            assert tokens.tolist() == expect[step][rows].tolist()


def test_first_stop_cuts_a_free_run_where_check_would_have_ended_it():
    from nemo_craft.rollout import StopCriteria

    decode = lambda ids: "".join(chr(96 + i) for i in ids)  # noqa: E731  1 -> "a", 2 -> "b", ...
    stop = StopCriteria([9], ["cd"], decode)
    assert stop.first_stop([1, 3, 4, 5, 9], budget=10) == (3, "stop")  # "acd": the stop string's last token
    assert stop.first_stop([1, 9, 3, 4], budget=10) == (2, "eos")
    assert stop.first_stop([1, 2, 5, 6], budget=3) == (3, "length")
    assert stop.first_stop([1, 2], budget=10) == (2, "length")  # nothing ended it: all of it
