"""A plain-loop mixture-of-experts layer: the oracle for MoeFeedForward and both dispatch backends.

It shares no routing or dispatch code with switchrepro.moe. Discrete decisions (which expert, which
slot, kept or dropped) are made token by token in Python with explicit counters; the differentiable
part (gates, expert FFNs, losses) is then written with per-token jnp ops over those fixed decisions, so
jax.grad of `forward` is the true gradient wherever no decision sits on a tie.

Random draws follow the recipe documented in `switchrepro.moe.routing.route` (same key, same calls), so
the training paths can be compared too.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.stats import norm

NOISE_EPSILON = 1e-2


@dataclasses.dataclass
class Assignment:
    group: int
    token: int
    choice: int  # 0 = first choice
    expert: int
    position: int
    kept: bool
    top: tuple  # the token's best experts whose probabilities normalise the gate (top-2, noisy top-k)


def _groups(t, group_size):
    """(G, S): the fewest equal groups of at most group_size tokens."""
    g = next(n for n in range(1, t + 1) if t % n == 0 and t // n <= group_size)
    return g, t // g


def _draws(cfg, xg, key):
    """The router input (with exploration applied) and the router's random draws, as `route` makes them."""
    g, s, m = xg.shape
    e = cfg.num_experts
    x_r = xg.astype(jnp.float32)
    draws = {}
    if key is None:
        return x_r, draws
    k_input, k_route = jax.random.split(key)
    if cfg.router == "switch":
        if cfg.exploration == "input_jitter" and cfg.jitter_eps > 0:
            x_r = x_r * jax.random.uniform(k_input, (g, s, m), jnp.float32, 1 - cfg.jitter_eps, 1 + cfg.jitter_eps)
        elif cfg.exploration == "input_dropout" and cfg.input_dropout_rate > 0:
            keep = jax.random.bernoulli(k_input, 1 - cfg.input_dropout_rate, (g, s, m))
            x_r = jnp.where(keep, x_r / (1 - cfg.input_dropout_rate), 0.0)
        elif cfg.exploration == "sample_softmax":
            draws["sample_key"] = k_route
    elif cfg.router == "top2":
        draws["coin"] = np.asarray(jax.random.uniform(k_route, (g, s)))
    else:
        draws["noise"] = jax.random.normal(k_route, (g, s, e))
    return x_r, draws


def _token_logits(cfg, params, x_r, draws, gi, si):
    """Router logits of one token (for noisy top-k: H, the clean logits and the noise std)."""
    clean = x_r[gi, si] @ params["router"]
    if cfg.router != "noisy_topk":
        return clean, clean, None
    std = jax.nn.softplus(x_r[gi, si] @ params["router_noise"]) + NOISE_EPSILON
    h = clean + draws["noise"][gi, si] * std if "noise" in draws else clean
    return h, clean, std


def _choices(cfg, h, draws, gi, si):
    """(experts the token requests, its best experts that normalise the gate), best first."""
    p = np.asarray(jax.nn.softmax(h))
    if cfg.router == "switch":
        if "sample_key" in draws:
            # The only vectorised draw: categorical over all tokens' logits at once, as the router does.
            return [int(draws["sampled"][gi, si])], ()
        return [int(np.argmax(p))], ()
    if cfg.router == "top2":
        e1 = int(np.argmax(p))
        rest = p.copy()
        rest[e1] = -1.0
        e2 = int(np.argmax(rest))
        g2 = p[e2] / (p[e1] + p[e2] + 1e-9)
        use_second = "coin" not in draws or draws["coin"][gi, si] < g2 / cfg.second_expert_threshold
        return ([e1, e2] if use_second else [e1]), (e1, e2)
    top = tuple(int(i) for i in np.argsort(-np.asarray(h), kind="stable")[: cfg.noisy_top_k])
    return list(top), top


def decide(cfg, params, x, token_mask, capacity, group_size, key=None):
    """Route every token with loops and counters. Returns a list of Assignment (requested ones only)."""
    b, length, m = x.shape
    g, s = _groups(b * length, group_size)
    xg = x.reshape(g, s, m)
    mask = np.ones((g, s), bool) if token_mask is None else np.asarray(token_mask).reshape(g, s)
    x_r, draws = _draws(cfg, xg, key)
    if "sample_key" in draws:
        logits = jnp.einsum("gsm,me->gse", x_r, params["router"])
        draws["sampled"] = np.asarray(jax.random.categorical(draws["sample_key"], logits, axis=-1))
    out = []
    for gi in range(g):
        wanted, tops = {}, {}  # (choice, token) -> expert ; token -> its best experts
        for si in range(s):
            if not mask[gi, si]:
                continue  # padding requests nothing
            h, _, _ = _token_logits(cfg, params, x_r, draws, gi, si)
            requested, tops[si] = _choices(cfg, h, draws, gi, si)
            for k, e in enumerate(requested):
                wanted[(k, si)] = e
        count = [0] * cfg.num_experts  # slots taken per expert in this group
        for (k, si) in sorted(wanted):  # all first choices in sequence order, then all second choices
            e = wanted[(k, si)]
            out.append(Assignment(gi, si, k, e, count[e], count[e] < capacity, tops[si]))
            count[e] += 1
    return out


def _ffn(params, activation, v, e):
    if activation == "geglu":
        a = jax.nn.gelu(v @ params["wi_0"][e]) * (v @ params["wi_1"][e])
    else:
        a = jax.nn.relu(v @ params["wi"][e])
    return a @ params["wo"][e]


def _cv2(v):
    return jnp.var(v) / (jnp.mean(v) ** 2 + 1e-10)


def forward(cfg, params, x, token_mask, assignments, group_size, activation, key=None):
    """Layer output <float32>[B, L, M] and a dict of losses, for fixed routing decisions."""
    b, length, m = x.shape
    g, s = _groups(b * length, group_size)
    e_count = cfg.num_experts
    xg = x.reshape(g, s, m)
    mask = np.ones((g, s), bool) if token_mask is None else np.asarray(token_mask).reshape(g, s)
    x_r, draws = _draws(cfg, xg, key)
    by_token = {}
    for a in assignments:
        by_token.setdefault((a.group, a.token), []).append(a)

    rows = []
    lb, z, imp, load, z_tokens = [], [], [], [], 0
    for gi in range(g):
        n_real = int(mask[gi].sum())
        f = np.zeros(e_count, np.float32)  # fraction of real tokens whose first choice is e
        p_sum = jnp.zeros(e_count)  # mean router probability
        importance = jnp.zeros(e_count)  # noisy top-k: sum of gates
        load_i = jnp.zeros(e_count)  # noisy top-k: (smooth) number of tokens per expert
        for si in range(s):
            h, clean, std = _token_logits(cfg, params, x_r, draws, gi, si)
            p = jax.nn.softmax(h)
            y = jnp.zeros((m,), jnp.float32)
            mine = sorted(by_token.get((gi, si), []), key=lambda a: a.choice)
            for a in mine:
                if cfg.router == "switch":
                    gate = p[a.expert]  # raw probability
                elif cfg.router == "top2":
                    gate = p[a.expert] / (p[a.top[0]] + p[a.top[1]] + 1e-9)  # renormalised over the top 2
                else:
                    gate = jax.nn.softmax(jnp.stack([h[e] for e in a.top]))[a.choice]  # softmax over the top k
                    importance = importance.at[a.expert].add(gate)
                if a.kept:
                    y = y + gate * _ffn(params, activation, xg[gi, si], a.expert)
            rows.append(y)
            if not mask[gi, si]:
                continue
            f[mine[0].expert] += 1.0 / n_real  # the first choice, before capacity
            p_sum = p_sum + p / n_real
            z.append(jax.nn.logsumexp(h) ** 2)
            z_tokens += 1
            if cfg.router == "noisy_topk":
                chosen = np.isin(np.arange(e_count), [a.expert for a in mine])
                if "noise" not in draws:
                    load_i = load_i + chosen
                else:
                    # Phi((clean_e - k-th largest H among the other experts) / noise std_e)
                    k = cfg.noisy_top_k
                    ranked = jnp.sort(h)[::-1]
                    bar_in = ranked[k] if k < e_count else -jnp.inf  # e is in the top k: the next one
                    load_i = load_i + norm.cdf((clean - jnp.where(chosen, bar_in, ranked[k - 1])) / std)
        if n_real:
            lb.append(e_count * jnp.sum(f * p_sum))
            if cfg.router == "noisy_topk":
                imp.append(_cv2(importance))
                load.append(_cv2(load_i))

    def mean(v):
        return sum(v) / len(v) if v else jnp.zeros(())

    losses = {"load_balance_loss": mean(lb), "z_loss": sum(z) / max(z_tokens, 1),
              "importance_loss": mean(imp), "load_loss": mean(load)}
    if cfg.router == "noisy_topk":
        balance = cfg.importance_loss_coef * losses["importance_loss"] + cfg.load_loss_coef * losses["load_loss"]
    else:
        balance = cfg.aux_loss_coef * losses["load_balance_loss"]
    losses["total_aux_loss"] = balance + cfg.z_loss_coef * losses["z_loss"]
    return jnp.stack(rows).reshape(b, length, m), losses
