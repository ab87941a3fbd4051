"""Losses: hand-computed KL / clipped surrogate / reductions, and a plain-loop reference of
the paper's objective vs the vectorised one (values and gradients) for every mode."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from grpo_core.algorithm.losses import AGGREGATIONS, aggregate, policy_loss, token_kl, token_weights

LN = math.log


def test_token_kl_hand_computed():
    logp = torch.tensor([[LN(0.5), LN(0.3)]])
    ref = torch.tensor([[LN(0.25), LN(0.3)]])
    # d = ln(0.25/0.5) = -ln 2: exp(d) - d - 1 = 0.5 + ln 2 - 1
    torch.testing.assert_close(token_kl(logp, ref), torch.tensor([[0.5 + LN(2) - 1, 0.0]]))
    assert (token_kl(torch.randn(50), torch.randn(50)) >= 0).all()


def test_clipped_surrogate_hand_computed_asymmetric_clip():
    # ratios 1.5, 1.25, 0.5, 0.5 with A = +1, +1, +1, -1; clip_low 0.2, clip_high 0.28
    old = torch.zeros(4, 1)
    logp = torch.tensor([[LN(1.5)], [LN(1.25)], [LN(0.5)], [LN(0.5)]], requires_grad=True)
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0])
    loss, m = policy_loss(logp, old, adv, torch.ones(4, 1), clip_low=0.2, clip_high=0.28)
    # 1.5 > 1.28 clipped: -1.28; 1.25 inside: -1.25; 0.5 with A>0: -0.5 (min picks rho A);
    # 0.5 with A<0: max(0.5, 0.8) = 0.8 (lower bound active)
    torch.testing.assert_close(loss, torch.tensor([[-1.28], [-1.25], [-0.5], [0.8]]))
    assert m["clip_frac_high"].item() == pytest.approx(0.25)
    assert m["clip_frac_low"].item() == pytest.approx(0.25)
    assert m["ratio_min"].item() == pytest.approx(0.5) and m["ratio_max"].item() == pytest.approx(1.5)
    loss.sum().backward()
    # clipped tokens carry no gradient; unclipped ones d(-rho A)/dlogp = -rho A
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0], [-1.25], [-0.5], [0.0]]))


def test_sequence_ratio_gspo_hand_computed():
    # token log-ratios ln 2 and 0 (+ a masked token with a huge ratio): rho = exp(ln2 / 2)
    logp = torch.tensor([[LN(2), 0.0, 30.0]])
    loss, m = policy_loss(logp, torch.zeros(1, 3), torch.tensor([1.0]),
                          torch.tensor([[1.0, 1.0, 0.0]]), ratio_level="sequence", clip_high=0.5)
    rho = math.sqrt(2)
    torch.testing.assert_close(loss, torch.tensor([[-rho, -rho, 0.0]]))
    assert m["ratio_mean"].item() == pytest.approx(rho)


def test_kl_term_and_fully_masked_row():
    logp = torch.tensor([[LN(0.5), LN(0.5)], [LN(0.2), LN(0.2)]])
    ref = torch.tensor([[LN(0.25), LN(0.5)], [LN(0.9), LN(0.9)]])
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]])  # row 1 fully masked
    loss, m = policy_loss(logp, logp, torch.tensor([2.0, 3.0]), mask, ref_logp=ref, beta=0.1)
    k = 0.5 + LN(2) - 1
    torch.testing.assert_close(loss, torch.tensor([[-2.0 + 0.1 * k, -2.0], [0.0, 0.0]]))
    assert m["kl"].item() == pytest.approx(k / 2)
    with pytest.raises(ValueError, match="beta > 0 needs ref_logp"):
        policy_loss(logp, logp, torch.ones(2), mask, beta=0.1)


def test_aggregations_hand_computed():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [9.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # row 2 empty
    loss = loss * mask
    assert aggregate(loss, mask, "seq_mean_token_mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate(loss, mask, "token_mean").item() == pytest.approx(10 / 4)
    # Dr. GRPO counts all 3 rows, the empty one too: 10 / (B * T) and 10 / (B * max_len)
    assert aggregate(loss, mask, "seq_mean_token_sum_norm").item() == pytest.approx(10 / (3 * 3))
    assert aggregate(loss, mask, "seq_mean_token_sum_norm", max_len=5).item() == pytest.approx(
        10 / (3 * 5))
    with pytest.raises(ValueError, match="unknown loss aggregation 'sum'"):
        aggregate(loss, mask, "sum")


@pytest.mark.parametrize("mode", sorted(AGGREGATIONS))
def test_single_token_completions(mode):
    loss, mask = torch.tensor([[3.0], [5.0]]), torch.ones(2, 1)
    assert aggregate(loss, mask, mode).item() == pytest.approx(4.0)


@pytest.mark.parametrize("mode", sorted(AGGREGATIONS))
def test_all_masked_batch_is_zero_not_nan(mode):
    assert aggregate(torch.zeros(2, 3), torch.zeros(2, 3), mode).item() == 0.0


def _paper_objective(logp, old, ref, adv, mask, mode, level, beta, cl, ch, max_len):
    """The objective written out token by token, as in DeepSeekMath eq. 3 plus the variants."""
    rows = [i for i in range(len(mask)) if sum(float(x) for x in mask[i]) > 0]
    total_tokens = sum(float(x) for row in mask for x in row)
    t_width = len(mask[0]) if max_len is None else max_len
    out = 0.0
    for i in rows:
        toks = [t for t in range(len(mask[i])) if mask[i][t] > 0]
        seq_lr = sum(logp[i][t] - old[i][t] for t in toks) / len(toks)
        for t in toks:
            rho = torch.exp(seq_lr if level == "sequence" else logp[i][t] - old[i][t])
            surrogate = torch.minimum(rho * adv[i], torch.clamp(rho, 1 - cl, 1 + ch) * adv[i])
            d = ref[i][t] - logp[i][t]
            term = -surrogate + beta * (torch.exp(d) - d - 1)
            norm = {"seq_mean_token_mean": len(rows) * len(toks), "token_mean": total_tokens,
                    "seq_mean_token_sum_norm": len(mask) * t_width}[mode]  # every row
            out = out + term / norm
    return out


@pytest.mark.parametrize("mode,level,beta", list(itertools.product(
    sorted(AGGREGATIONS), ["token", "sequence"], [0.0, 0.05])))
def test_vectorised_equals_loop_reference(mode, level, beta):
    g = torch.Generator().manual_seed(7)
    b, t = 5, 6
    old = torch.randn(b, t, generator=g, dtype=torch.float64) * 0.3 - 2
    logp0 = old + torch.randn(b, t, generator=g, dtype=torch.float64) * 0.3  # some clipped
    ref = old + torch.randn(b, t, generator=g, dtype=torch.float64) * 0.2
    adv = torch.randn(b, generator=g, dtype=torch.float64)
    lengths = [6, 1, 3, 0, 4]  # includes a single-token and a fully masked row
    mask = torch.tensor([[1.0] * n + [0.0] * (t - n) for n in lengths], dtype=torch.float64)
    kw = dict(beta=beta, clip_low=0.2, clip_high=0.28, ratio_level=level)

    logp = logp0.clone().requires_grad_(True)
    loss, _ = policy_loss(logp, old, adv, mask, ref_logp=ref, **kw)
    value = aggregate(loss, mask, mode, max_len=8)
    value.backward()

    logp_ref = logp0.clone().requires_grad_(True)
    expected = _paper_objective(logp_ref, old, ref, adv, mask, mode, level, beta, 0.2, 0.28, 8)
    expected.backward()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(logp.grad, logp_ref.grad)
    assert logp.grad[3].abs().sum() == 0  # the fully masked row gets no gradient


def _loop_aggregate(loss, mask, mode, max_len):
    """Each reduction written out over rows and tokens, from its definition (not from the
    weights): token_mean = sum / all unmasked tokens; seq_mean_token_mean = mean over the
    rows that have a token of each row's token mean; seq_mean_token_sum_norm = sum / (every
    row, empty ones included, times the budget)."""
    rows, width = len(mask), len(mask[0])
    budget = width if max_len is None else max_len
    kept = [[t for t in range(width) if float(mask[i][t]) > 0] for i in range(rows)]
    nonempty = [i for i in range(rows) if kept[i]]
    total_tokens = sum(len(k) for k in kept)
    if mode == "token_mean":
        terms = [loss[i][t] / total_tokens for i in range(rows) for t in kept[i]]
    elif mode == "seq_mean_token_mean":
        terms = [sum(loss[i][t] for t in kept[i]) / len(kept[i]) / len(nonempty) for i in nonempty]
    elif mode == "seq_mean_token_sum_norm":
        terms = [loss[i][t] / (rows * budget) for i in range(rows) for t in kept[i]]
    else:
        raise AssertionError(f"no loop reference for aggregation {mode!r}")
    return sum(terms, torch.zeros((), dtype=loss.dtype))


@pytest.mark.parametrize("mode", sorted(AGGREGATIONS))
@pytest.mark.parametrize("max_len", [None, 9])
def test_aggregate_equals_loop_reference_values_and_gradients(mode, max_len):
    g = torch.Generator().manual_seed(3)
    lengths = [0, 5, 1, 0, 7, 3, 0]  # fully masked rows first, in the middle and last
    mask = torch.tensor([[1.0] * n + [0.0] * (7 - n) for n in lengths], dtype=torch.float64)
    # masked positions hold loss too: they must get neither weight nor gradient
    loss0 = torch.randn(len(lengths), 7, generator=g, dtype=torch.float64)
    loss = loss0.clone().requires_grad_(True)
    value = aggregate(loss, mask, mode, max_len=max_len)
    value.backward()
    ref_loss = loss0.clone().requires_grad_(True)
    expected = _loop_aggregate(ref_loss, mask, mode, max_len)
    expected.backward()
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(loss.grad, ref_loss.grad, rtol=1e-12, atol=1e-14)
    assert (loss.grad[mask == 0] == 0).all()


def test_dr_grpo_weight_does_not_depend_on_which_rows_are_masked():
    # mask_truncated zeroes a truncated row's mask: the other rows' weights must not change
    # (Dr. GRPO's constant is B * max_len, B every sampled completion: TRL's size(0) * L)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    truncated = torch.tensor([True, False, False, True])
    masked = mask * (~truncated).unsqueeze(1)
    before = token_weights(mask, "seq_mean_token_sum_norm", max_len=3)
    after = token_weights(masked, "seq_mean_token_sum_norm", max_len=3)
    keep = ~truncated
    torch.testing.assert_close(after[keep], before[keep], rtol=0, atol=0)
    assert (after[truncated] == 0).all()
    assert after[masked > 0].unique().tolist() == [pytest.approx(1 / (4 * 3))]
    # every row masked: the weights are all zero, not NaN
    assert torch.equal(token_weights(torch.zeros(3, 2), "seq_mean_token_sum_norm", max_len=4),
                       torch.zeros(3, 2))


def test_seq_mean_token_mean_skips_empty_rows():
    # an empty row has no 1/|o_i|: it is not one of the sequences the mean runs over
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    w = token_weights(mask, "seq_mean_token_mean")
    torch.testing.assert_close(w, torch.tensor([[0.25, 0.25], [0.0, 0.0], [0.5, 0.0]]))


@pytest.mark.parametrize("mode", sorted(AGGREGATIONS))
def test_token_weights_sum_over_microbatches_equals_whole(mode):
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0],
                         [0.0, 0.0, 0.0]])  # empty rows inside a micro-batch and alone in one
    loss0 = torch.arange(15.0, dtype=torch.float64).reshape(5, 3)
    full = loss0.clone().requires_grad_(True)
    aggregate(full, mask, mode, max_len=4).backward()
    micro = loss0.clone().requires_grad_(True)
    w = token_weights(mask, mode, max_len=4).double()  # once over the whole batch
    total = torch.zeros((), dtype=torch.float64)
    for idx in (slice(0, 2), slice(2, 4), slice(4, 5)):
        part = (micro[idx] * w[idx]).sum()
        part.backward()
        total = total + part.detach()
    torch.testing.assert_close(total, aggregate(loss0, mask, mode, max_len=4))
    torch.testing.assert_close(micro.grad, full.grad)
