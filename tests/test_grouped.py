"""The grouped matmul of the dropless backend against a per-group numpy loop, and its two implementations
against each other (values and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from switchrepro.moe import grouped


def _loop(lhs, rhs, sizes):
    out, start = np.zeros((lhs.shape[0], rhs.shape[2]), np.float64), 0
    for e, n in enumerate(sizes):
        out[start:start + n] = np.asarray(lhs[start:start + n], np.float64) @ np.asarray(rhs[e], np.float64)
        start += n
    return out


# rows per group: empty groups first, in the middle and last; a group larger than a block; A = 13
SIZES = [0, 5, 1, 0, 7, 0]


@pytest.mark.parametrize("impl,block", [("ragged_dot", None), ("blocks", 1), ("blocks", 2), ("blocks", 4),
                                        ("blocks", 64), ("auto", None)])
def test_grouped_matmul_equals_the_per_group_loop(impl, block):
    rng = np.random.default_rng(0)
    lhs = rng.standard_normal((sum(SIZES), 3)).astype(np.float32)
    rhs = rng.standard_normal((len(SIZES), 3, 2)).astype(np.float32)
    out = grouped.grouped_matmul(jnp.asarray(lhs), jnp.asarray(rhs), jnp.asarray(SIZES), impl, block)
    np.testing.assert_allclose(out, _loop(lhs, rhs, SIZES), rtol=1e-5, atol=1e-5)


def test_grouped_matmul_literal():
    # group 0: rows 0-1 times [[1], [0]] (first column); group 1 empty; group 2: row 2 times [[0], [2]]
    lhs = jnp.asarray([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    rhs = jnp.asarray([[[1.0], [0.0]], [[9.0], [9.0]], [[0.0], [2.0]]])
    for impl in ("ragged_dot", "blocks"):
        out = grouped.grouped_matmul(lhs, rhs, jnp.asarray([2, 0, 1]), impl, block=2)
        np.testing.assert_array_equal(out, [[1.0], [3.0], [12.0]])


def test_both_implementations_have_the_same_gradients():
    rng = np.random.default_rng(1)
    lhs = jnp.asarray(rng.standard_normal((sum(SIZES), 4)), jnp.float32)
    rhs = jnp.asarray(rng.standard_normal((len(SIZES), 4, 3)), jnp.float32)
    cot = jnp.asarray(rng.standard_normal((sum(SIZES), 3)), jnp.float32)

    def grads(impl):
        return jax.grad(lambda a, b: jnp.sum(grouped.grouped_matmul(a, b, jnp.asarray(SIZES), impl, 2) * cot),
                        argnums=(0, 1))(lhs, rhs)

    for g_ragged, g_blocks in zip(grads("ragged_dot"), grads("blocks"), strict=True):
        np.testing.assert_allclose(g_blocks, g_ragged, rtol=1e-5, atol=1e-5)
    # empty groups get zero weight gradients
    assert not np.any(np.asarray(grads("blocks")[1])[[0, 3, 5]])


def test_default_block_bounds_the_padding():
    assert grouped.default_block(4096, 128) == 32 and grouped.default_block(8192, 8) == 256
    assert grouped.default_block(1000, 3) == 256 and grouped.default_block(10, 64) == 8  # within [8, 256]
    for rows, groups in [(4096, 128), (8192, 64), (1000, 3), (16384, 8)]:
        b = grouped.default_block(rows, groups)
        assert groups * (b - 1) <= rows + 8 * groups  # padding rows at most about the real rows


def test_grouped_matmul_bad_input():
    with pytest.raises(ValueError, match="impl must be one of"):
        grouped.grouped_matmul(jnp.zeros((2, 3)), jnp.zeros((1, 3, 4)), jnp.asarray([2]), "megablox")
    with pytest.raises(ValueError, match=r"needs lhs \[A, K\], rhs \[E, K, N\], sizes \[E\]"):
        grouped.grouped_matmul(jnp.zeros((2, 3)), jnp.zeros((1, 4, 4)), jnp.asarray([2]))
