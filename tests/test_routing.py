"""Routers, capacity, losses and dispatch on hand-worked literal inputs.

Routers are called through jax.jit: one compilation per shape is much cheaper than running op by op.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from switchrepro.moe import dispatch, routing

pytestmark = pytest.mark.usefixtures("cheap_compiles")


LN3 = math.log(3.0)
E2 = math.exp(2.0)

switch_route = jax.jit(routing.switch_route, static_argnames="capacity")
top2_route = jax.jit(routing.top2_route, static_argnames=("capacity", "second_expert_threshold"))
noisy_topk_route = jax.jit(routing.noisy_topk_route, static_argnames=("capacity", "k"))


def _logits(rows):
    """<float32>[1, S, E]: one group holding the given rows of logits."""
    return jnp.asarray([rows], jnp.float32)


# --- groups and capacity -----------------------------------------------------------------------------


@pytest.mark.parametrize("tokens,group_size,expected", [
    (16, 8, 2), (12, 5, 3), (24, 10, 3), (7, 3, 7), (1000, 1024, 1), (1024, 1024, 1), (2048, 1024, 2)])
def test_num_groups_is_smallest_divisor_within_group_size(tokens, group_size, expected):
    assert routing.num_groups(tokens, group_size) == expected


@pytest.mark.parametrize("s,e,cf,min_cap,expected", [
    # (round, floor, ceil); round is half UP: 2.5 -> 3
    (1024, 8, 1.25, 4, (160, 160, 160)),
    (1024, 8, 2.0, 4, (256, 256, 256)),
    (10, 4, 1.0, 0, (3, 2, 3)),  # 2.5
    (6, 4, 1.0, 0, (2, 1, 2)),  # 1.5
    (9, 4, 1.0, 0, (2, 2, 3)),  # 2.25
    (10, 4, 1.0, 4, (4, 4, 4)),  # min_capacity wins
    (16, 4, 1e-6, 0, (0, 0, 1)),  # 4e-6
])
def test_expert_capacity_table(s, e, cf, min_cap, expected):
    got = tuple(routing.expert_capacity(s, e, cf, min_cap, r) for r in ("round", "floor", "ceil"))
    assert got == expected


def test_expert_capacity_rejects_unknown_rounding():
    with pytest.raises(ValueError, match="'round', 'floor' or 'ceil'"):
        routing.expert_capacity(8, 2, 1.0, 0, "nearest")


# --- Switch (top-1) -------------------------------------------------------------------------------------

# Six tokens, three experts. First choices: e0, e0, e1, e0, e2, e0.
SWITCH_LOGITS = [[2, 0, 0], [2, 0, 0], [0, 2, 0], [2, 0, 0], [0, 0, 2], [1, 0, 0]]


def test_switch_drops_overflow_in_sequence_order():
    r = switch_route(_logits(SWITCH_LOGITS), capacity=2)
    np.testing.assert_array_equal(r.expert_index[0, :, 0], [0, 0, 1, 0, 2, 0])
    np.testing.assert_array_equal(r.position[0, :, 0], [0, 1, 0, 2, 0, 3])
    # Expert 0 has two slots: tokens 0 and 1 take them, tokens 3 and 5 are dropped.
    np.testing.assert_array_equal(r.kept[0, :, 0], [True, True, True, False, True, False])


def test_switch_gate_is_raw_probability_and_zero_when_dropped():
    r = switch_route(_logits(SWITCH_LOGITS), capacity=2)
    p = E2 / (E2 + 2)  # softmax([2, 0, 0])[0], not renormalised to 1
    np.testing.assert_allclose(r.gate[0, :, 0], [p, p, p, 0, p, 0], rtol=1e-6)
    assert r.probs.dtype == jnp.float32


def test_switch_padding_takes_no_capacity():
    mask = jnp.asarray([[True, False, True, True, True, True]])
    r = switch_route(_logits(SWITCH_LOGITS), capacity=2, token_mask=mask)
    # Token 1 is padding: it requests nothing, so token 3 moves up into expert 0's second slot.
    np.testing.assert_array_equal(r.routed[0, :, 0], [True, False, True, True, True, True])
    np.testing.assert_array_equal(r.kept[0, :, 0], [True, False, True, True, True, False])
    assert float(r.gate[0, 1, 0]) == 0.0


def test_switch_sample_softmax_samples_from_the_softmax():
    logits = jnp.tile(jnp.asarray([[[LN3, 0.0]]]), (1, 4000, 1))  # p = (0.75, 0.25)
    r = switch_route(logits, capacity=4000, sample_key=jax.random.PRNGKey(0))
    share = float(jnp.mean(r.expert_index == 0))
    assert abs(share - 0.75) < 0.03
    # The gate is the probability of the sampled expert.
    np.testing.assert_allclose(r.gate[..., 0], jnp.where(r.expert_index[..., 0] == 0, 0.75, 0.25), rtol=1e-6)


# --- top-2 ------------------------------------------------------------------------------------------------

# First choices e0, e1, e0, e2; second choices e1, e0, e2, e0.
TOP2_LOGITS = [[2, 1, 0], [1, 2, 0], [2, 0, 1], [1, 0, 2]]


def test_top2_second_choices_queue_after_all_first_choices():
    r = top2_route(_logits(TOP2_LOGITS), capacity=2)
    np.testing.assert_array_equal(r.expert_index[0], [[0, 1], [1, 0], [0, 2], [2, 0]])
    # Expert 0: first choices of tokens 0 and 2 fill it; the second choices of tokens 1 and 3 come after.
    # (Interleaving by token would have let token 1's second choice push out token 2's first choice.)
    np.testing.assert_array_equal(r.position[0], [[0, 1], [0, 2], [1, 1], [0, 3]])
    np.testing.assert_array_equal(r.kept[0], [[True, True], [True, False], [True, True], [True, False]])


@pytest.mark.parametrize("sorted_queue", [False, True])
def test_queue_positions_literal_both_methods(monkeypatch, sorted_queue):
    """The one-hot cumsum (few experts) and the sort (many) give the hand-worked positions."""
    monkeypatch.setattr(routing, "SORTED_QUEUE_MIN_EXPERTS", 1 if sorted_queue else 10**9)
    # Switch: first choices e0, e0, e1, e0, e2, e0; token 1 is padding (requests nothing, counts nothing).
    expert = jnp.asarray([[[0], [0], [1], [0], [2], [0]]], jnp.int32)
    routed = jnp.asarray([[[True], [False], [True], [True], [True], [True]]])
    np.testing.assert_array_equal(routing.queue_positions(expert, routed, 3)[0, :, 0], [0, 1, 0, 1, 0, 2])
    # top-2 (TOP2_LOGITS' choices): all first choices queue before any second choice.
    expert = jnp.asarray([[[0, 1], [1, 0], [0, 2], [2, 0]]], jnp.int32)
    np.testing.assert_array_equal(routing.queue_positions(expert, jnp.ones_like(expert, bool), 3)[0],
                                  [[0, 1], [0, 2], [1, 1], [0, 3]])


@pytest.mark.parametrize("k", [1, 2])
def test_queue_positions_sort_equals_cumsum_on_random_routing(k):
    rng = np.random.default_rng(k)
    expert = jnp.asarray(rng.integers(0, 7, size=(3, 50, k)), jnp.int32)
    routed = jnp.asarray(rng.random((3, 50, k)) < 0.7)
    g, s = expert.shape[:2]
    order = jnp.swapaxes(expert, 1, 2).reshape(g, k * s)
    request = jnp.swapaxes(routed, 1, 2).reshape(g, k * s).astype(jnp.int32)
    by_sort = jnp.swapaxes(routing._queue_positions_sorted(order, request).reshape(g, k, s), 1, 2)
    np.testing.assert_array_equal(by_sort, routing.queue_positions(expert, routed, 7))  # 7 < 64: cumsum
    # The plain count, token by token, for the routed assignments of group 0.
    seen = np.zeros(7, int)
    for c in range(k):
        for t in range(s):
            e = int(expert[0, t, c])
            assert int(by_sort[0, t, c]) == seen[e]
            seen[e] += int(routed[0, t, c])


def test_top2_gates_are_renormalised():
    r = top2_route(_logits(TOP2_LOGITS), capacity=2)
    g1 = 1 / (1 + math.exp(-1))  # e^2 / (e^2 + e^1)
    g2 = 1 - g1
    np.testing.assert_allclose(r.gate[0], [[g1, g2], [g1, 0], [g1, g2], [g1, 0]], rtol=1e-6)


def test_top2_random_second_expert_policy():
    # Even tokens: renormalised g2 = 1 / (1 + e) = 0.2689, used w.p. g2 / 0.5. Odd tokens: g2 = 0.5, always.
    logits = jnp.tile(_logits([[2, 1, 0], [1, 1, -9]]), (1, 2000, 1))
    r = top2_route(logits, capacity=4000, second_expert_threshold=0.5, key=jax.random.PRNGKey(0))
    assert abs(float(jnp.mean(r.routed[0, ::2, 1])) - (1 / (1 + math.e)) / 0.5) < 0.03
    assert bool(jnp.all(r.routed[0, 1::2, 1]))
    assert bool(jnp.all(r.routed[..., 0]))
    r = top2_route(logits, capacity=4000, second_expert_threshold=0.5, key=None)
    assert bool(jnp.all(r.routed[..., 1]))  # evaluation: always, deterministic


def test_top2_load_balance_counts_first_choices_only():
    r = top2_route(_logits([[LN3, 0.0], [LN3, 0.0]]), capacity=4)
    np.testing.assert_allclose(r.load_balance_loss, 1.5, rtol=1e-6)  # as for Switch: f = (1, 0)


# --- noisy top-k --------------------------------------------------------------------------------------------


def test_noisy_topk_eval_gates_and_losses():
    logits = _logits([[LN3, 0.0, -5.0], [0.0, LN3, -5.0]])
    r = noisy_topk_route(logits, jnp.zeros_like(logits), capacity=4, k=2)
    np.testing.assert_array_equal(r.expert_index[0], [[0, 1], [1, 0]])
    np.testing.assert_allclose(r.gate[0], [[0.75, 0.25], [0.75, 0.25]], rtol=1e-6)  # softmax over the top 2
    # Importance = (1, 1, 0) and hard load = (2, 2, 0): CV^2 = var / mean^2 = (2/9) / (4/9) = 0.5 for both.
    np.testing.assert_allclose(r.importance_loss, 0.5, rtol=1e-5)
    np.testing.assert_allclose(r.load_loss, 0.5, rtol=1e-5)


def test_noisy_topk_noise_only_with_key():
    logits = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 4)), jnp.float32)
    a = noisy_topk_route(logits, jnp.zeros_like(logits), capacity=8, k=2)
    b = noisy_topk_route(logits, jnp.zeros_like(logits), capacity=8, k=2)
    c = noisy_topk_route(logits, jnp.zeros_like(logits), capacity=8, k=2, key=jax.random.PRNGKey(1))
    np.testing.assert_array_equal(a.gate, b.gate)
    assert not np.allclose(a.probs, c.probs)


# --- losses ------------------------------------------------------------------------------------------------


def test_load_balance_loss_is_one_under_uniform_routing():
    # Balanced assignments and probabilities: f = P = (1/2, 1/2).
    r = switch_route(_logits([[1.0, 0.0], [0.0, 1.0]]), capacity=2)
    np.testing.assert_allclose(r.load_balance_loss, 1.0, rtol=1e-6)
    # Uniform probabilities: N * sum_i f_i / N = 1 whatever f is.
    r = switch_route(jnp.zeros((3, 5, 4)), capacity=2)
    np.testing.assert_allclose(r.load_balance_loss, 1.0, rtol=1e-6)


def test_load_balance_loss_hand_value_groups_and_padding():
    # Group 0: both tokens pick e0 with p = (3/4, 1/4): 2 * (1 * 3/4 + 0 * 1/4) = 1.5.
    # Group 1: balanced, 1.0. Mean over groups: 1.25. The padded third tokens change nothing.
    logits = jnp.asarray([[[LN3, 0.0], [LN3, 0.0], [0.0, 9.0]], [[1.0, 0.0], [0.0, 1.0], [9.0, 0.0]]])
    mask = jnp.asarray([[True, True, False], [True, True, False]])
    r = switch_route(logits, capacity=3, token_mask=mask)
    np.testing.assert_allclose(r.load_balance_loss, 1.25, rtol=1e-6)
    # A group of padding only does not enter the mean.
    r = switch_route(logits, capacity=3, token_mask=jnp.asarray([[True, True, False], [False] * 3]))
    np.testing.assert_allclose(r.load_balance_loss, 1.5, rtol=1e-6)


def test_router_z_loss_hand_value():
    # logsumexp: ln 2 and ln 4 = 2 ln 2, so mean of squares = (1 + 4) / 2 * (ln 2)^2; padding excluded.
    logits = _logits([[0.0, 0.0], [LN3, 0.0], [50.0, 0.0]])
    mask = jnp.asarray([[True, True, False]])
    r = switch_route(logits, capacity=3, token_mask=mask)
    np.testing.assert_allclose(r.z_loss, 2.5 * math.log(2) ** 2, rtol=1e-6)


# --- dispatch backends on literal routing ------------------------------------------------------------------


def _scale_by_expert(h):
    """expert_fn: expert e multiplies its input by e + 1, so outputs reveal who processed what."""
    return h * (1.0 + jnp.arange(h.shape[0], dtype=h.dtype))[:, None, None]


def _scale_by_expert_ragged(rows, sizes):
    """ragged_expert_fn: the same, for rows sorted by expert."""
    expert = jnp.repeat(jnp.arange(sizes.shape[0]), sizes, total_repeat_length=rows.shape[0])
    return rows * (1.0 + expert.astype(rows.dtype))[:, None]


CAPACITIES = (0, 1, 2, 4)


@functools.partial(jax.jit, static_argnames="router")
def _dispatch_all(x, logits, router):
    """Every (capacity, backend) pair in one compilation."""
    out = {}
    for capacity in CAPACITIES:
        if router == "switch":
            r = routing.switch_route(logits, capacity)
        else:
            r = routing.top2_route(logits, capacity)
        for backend in ("einsum", "scatter", "dropless"):  # dropless computes all, weights dropped ones 0
            out[capacity, backend] = (r, dispatch.run_experts(backend, x, r, capacity, _scale_by_expert,
                                                              _scale_by_expert_ragged))
    return out


@pytest.mark.parametrize("router", ["switch", "top2"])
def test_dispatch_literal(router):
    x = jnp.arange(1.0, 1.0 + 4 * 3).reshape(1, 4, 3)
    for (capacity, backend), (r, y) in _dispatch_all(x, _logits(TOP2_LOGITS), router).items():
        expected = np.zeros((1, 4, 3), np.float32)
        for s in range(4):
            for k in range(r.expert_index.shape[-1]):
                if r.kept[0, s, k]:
                    expected[0, s] += float(r.gate[0, s, k]) * (int(r.expert_index[0, s, k]) + 1) * np.asarray(x[0, s])
        np.testing.assert_allclose(y, expected, rtol=1e-6, err_msg=f"{backend} at capacity {capacity}")
        if capacity == 0:
            assert np.all(np.asarray(y) == 0.0)
        if capacity == 4:
            assert bool(jnp.all(r.kept))


def test_unknown_backend_message():
    r = top2_route(_logits(TOP2_LOGITS), capacity=2)
    with pytest.raises(ValueError, match="dispatch must be one of"):
        dispatch.run_experts("sort", jnp.zeros((1, 4, 3)), r, 2, _scale_by_expert)
    with pytest.raises(ValueError, match="dropless backend needs ragged_expert_fn"):
        dispatch.run_experts("dropless", jnp.zeros((1, 4, 3)), r, 2, _scale_by_expert)


def test_expert_counts_literal():
    # Group 0 sends tokens to e1, e1, e0 (the last one weight 0); group 1 to e2 with weights 1 and 0.5.
    index = jnp.asarray([[1, 1, 0], [2, 2, 2]], jnp.int32)
    weight = jnp.asarray([[1.0, 1.0, 0.0], [1.0, 0.5, 0.0]])
    np.testing.assert_array_equal(routing.expert_counts(index, weight, 3), [[0, 2, 0], [0, 0, 1.5]])
    # [G, S, K] indices: counts over tokens and choices.
    twice = lambda a: a[:, :, None].repeat(2, -1)
    np.testing.assert_array_equal(routing.expert_counts(twice(index), twice(weight), 3), [[0, 4, 0], [0, 0, 3]])


def test_argmax_last_axis_literal_ties_nan_inf():
    """First maximum wins; a NaN beats everything (the first NaN); +-inf are ordinary values. 20 columns,
    above FAST_ARGMAX_MIN, so the two-reduction path runs."""
    assert routing.FAST_ARGMAX_MIN <= 20
    nan, inf = np.nan, np.inf
    rows = np.zeros((6, 20), np.float32)
    rows[0, [3, 7]] = 5.0                    # tie: first one, 3
    rows[1, [2, 9]] = nan                    # first NaN, 2, though 9.0 is larger
    rows[1, 4] = 9.0
    rows[2] = -1.0                           # all equal: 0
    rows[3] = -inf                           # 11
    rows[3, [11, 19]] = -2.0
    rows[4, [5, 6]] = inf                    # 5
    rows[5, 19] = 1e-30                      # last column: 19
    got = np.asarray(routing.argmax_last_axis(jnp.asarray(rows)))
    np.testing.assert_array_equal(got, [3, 2, 0, 11, 5, 19])
    np.testing.assert_array_equal(got, np.asarray(jnp.argmax(jnp.asarray(rows), axis=-1)))


@pytest.mark.parametrize("n", [2, 16, 17, 128, 4099])
def test_argmax_last_axis_equals_jnp_argmax(n):
    # small integers as floats: many ties, some NaN rows
    x = np.random.default_rng(n).integers(0, 5, size=(3, 40, n)).astype(np.float32)
    x[0, :5, n // 2] = np.nan
    got = routing.argmax_last_axis(jnp.asarray(x))
    assert got.dtype == jnp.int32 and got.shape == (3, 40)
    np.testing.assert_array_equal(got, jnp.argmax(jnp.asarray(x), axis=-1))
