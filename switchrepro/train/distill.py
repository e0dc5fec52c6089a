"""Distilling a sparse teacher into a FLOP-matched dense student (paper section 4.2, Tables 6 to 8).

Two pieces, both pure functions:

* `distillation_loss`: the student's loss against a mix of hard (ground-truth) and soft (teacher
  probability) targets. The paper's best recipe puts weight 0.25 on the teacher and 0.75 on the labels
  ("0.75 mix of hard and soft loss"); its temperature and exact loss form are not published, so the form
  here is Hinton et al.'s:

      loss = (1 - w) * CE(labels, student) + w * T^2 * CE(softmax(teacher / T), student / T)

  At T = 1 this is exactly the cross-entropy against the mixed target distribution
  (1 - w) * one_hot(label) + w * softmax(teacher), the paper's description; T^2 keeps the soft term's
  gradient scale independent of T.
* `transfer_non_expert`: the student starts from the teacher's non-expert weights ("Init. non-expert
  weights from teacher"): every teacher tensor whose path and shape match the student's is copied; the
  experts and the router (under a `moe` module) never are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Tuple

import jax
import jax.numpy as jnp
from flax import traverse_util

Array = jax.Array


def distillation_loss(student_logits: Array, teacher_logits: Array, targets: Array, weights: Array,
                      teacher_weight: float = 0.25, temperature: float = 1.0) -> Tuple[Array, Array, Array]:
    """Sums over target tokens of the hard/soft distillation loss (see the module docstring).

    Args:
      student_logits: <float32>[batch, length, vocab].
      teacher_logits: <float32>[batch, length, vocab]; no gradient flows into the teacher.
      targets: <int32>[batch, length] ground-truth ids.
      weights: <float32>[batch, length], 0 on padding.
      teacher_weight: w in [0, 1], the soft targets' share (0.25 is the paper's "0.75 mix"; 1.0 soft only).
      temperature: T > 0, applied to both teacher and student in the soft term.
    Returns: (sum of weighted loss, sum of weighted hard cross-entropy, sum of weights), float32 scalars.
    """
    if not 0.0 <= teacher_weight <= 1.0:
        raise ValueError(f"teacher_weight must be in [0, 1] (0.25 = the paper's 0.75 hard/soft mix), "
                         f"got {teacher_weight}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (1.0 = no softening), got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"teacher logits {teacher_logits.shape} and student logits {student_logits.shape} differ: "
                         "teacher and student must share the vocabulary and the batch")
    student_logits = student_logits.astype(jnp.float32)
    teacher_logits = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32))
    log_p = jax.nn.log_softmax(student_logits, axis=-1)
    hard = -jnp.take_along_axis(log_p, targets[..., None], axis=-1)[..., 0]
    soft_targets = jax.nn.softmax(teacher_logits / temperature, axis=-1)
    soft = -jnp.sum(soft_targets * jax.nn.log_softmax(student_logits / temperature, axis=-1), axis=-1)
    loss = (1.0 - teacher_weight) * hard + teacher_weight * temperature**2 * soft
    return jnp.sum(loss * weights), jnp.sum(hard * weights), jnp.sum(weights)


@dataclass(frozen=True)
class Transfer:
    """What transfer_non_expert did, by '/'-joined parameter path."""

    copied: Tuple[str, ...]
    expert_or_router: Tuple[str, ...]  # teacher tensors under a `moe` module: never copied
    shape_mismatch: Tuple[str, ...]  # same path, different shape: left at the student's init
    student_only: Tuple[str, ...]  # student tensors the teacher does not have (e.g. dense FFNs of sparse layers)


def _is_expert_or_router(path: Tuple[str, ...]) -> bool:
    return "moe" in path


def transfer_non_expert(teacher_params: Any, student_params: Any) -> Tuple[Any, Transfer]:
    """The student's params with every non-expert teacher tensor of the same path and shape copied in.

    Args:
      teacher_params: the teacher's parameter tree (a Switch model: experts and router under `.../moe/`).
      student_params: the freshly initialised student's parameter tree (a dense model).
    Returns: (new student params, Transfer report).
    """
    teacher = traverse_util.flatten_dict(teacher_params)
    student = traverse_util.flatten_dict(student_params)
    out, copied, mismatch, only = dict(student), [], [], []
    for path, value in student.items():
        source = teacher.get(path)
        if source is None or _is_expert_or_router(path):
            only.append(path)
        elif source.shape != value.shape:
            mismatch.append(path)
        else:
            out[path] = jnp.asarray(source, value.dtype)
            copied.append(path)
    name = "/".join
    report = Transfer(copied=tuple(name(p) for p in copied),
                      expert_or_router=tuple(name(p) for p in teacher if _is_expert_or_router(p)),
                      shape_mismatch=tuple(name(p) for p in mismatch), student_only=tuple(name(p) for p in only))
    return traverse_util.unflatten_dict(out), report
