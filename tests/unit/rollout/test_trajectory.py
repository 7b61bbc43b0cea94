import pytest
import torch

from nemo_craft.rollout import Trajectory, align_teacher_logprobs, collate_teacher, collate_trajectories


def _trajectory(prompt, actions, continuations, teacher_prompt, group=0, reward=1.0):
    tr = Trajectory(task_seed=1, group_id=group, sibling_index=0, reward=reward)
    tr.append(prompt)
    tr.prompt_length = len(prompt)
    tr.teacher_prompt_ids = teacher_prompt
    for k, action in enumerate(actions):
        tr.append(action, turn=k, logprobs=[-0.1 * (k + 1)] * len(action))
        if k < len(continuations):
            tr.append(continuations[k])
    tr.num_turns = len(actions)
    return tr


def _batch():
    a = _trajectory([1, 2, 3], [[10, 11, 12], [13]], [[4, 5]], [7, 7, 7, 7, 7, 1, 2, 3])
    b = _trajectory([1, 2], [[20], [21, 22], [23]], [[4], [5, 6]], [8, 1, 2], group=1, reward=0.0)
    return [a, b]


def test_collate_shifts_and_marks_action_targets():
    a, b = _batch()
    batch = collate_trajectories([a, b], pad_id=0)
    S = max(len(a), len(b)) - 1
    assert batch.input_ids.shape == batch.targets.shape == batch.loss_mask.shape == (2, S)
    assert batch.input_ids[0, : len(a) - 1].tolist() == a.token_ids[:-1]
    assert batch.targets[0, : len(a) - 1].tolist() == a.token_ids[1:]
    # row a: tokens 1 2 3 | 10 11 12 | 4 5 | 13 -> targets 2 3 10 11 12 4 5 13
    assert batch.loss_mask[0, : len(a) - 1].tolist() == [False, False, True, True, True, False, False, True]
    assert batch.turn_ids[0, : len(a) - 1].tolist() == [0, 0, 0, 0, 0, 0, 0, 1]
    assert batch.pos_in_turn[0, : len(a) - 1].tolist() == [0, 0, 0, 1, 2, 0, 0, 0]
    assert batch.rollout_logprobs[0, 2].item() == pytest.approx(-0.1)
    assert not batch.loss_mask[0, len(a) - 1 :].any()  # padding
    assert batch.rewards.tolist() == [1.0, 0.0] and batch.group_ids.tolist() == [0, 1]
    assert batch.lengths.tolist() == [len(a) - 1, len(b) - 1]
    assert batch.loss_mask.dtype == torch.bool and batch.turn_ids.dtype == torch.long
    padded = collate_trajectories([a, b], pad_id=0, pad_to_multiple_of=4)
    assert padded.input_ids.shape[1] % 4 == 0


def test_teacher_view_aligns_every_action_token():
    trajectories = _batch()
    student = collate_trajectories(trajectories, pad_id=0)
    teacher = collate_teacher(trajectories, pad_id=0)
    mask = student.loss_mask
    mapped = torch.gather(teacher.targets, 1, teacher.gather_index)
    assert torch.equal(mapped[mask], student.targets[mask])
    # and the context right before each action token is the student's context after the prompt
    assert torch.equal(torch.gather(teacher.input_ids, 1, teacher.gather_index)[mask], student.input_ids[mask])
    # teacher log-probs come back on the student's positions
    logp_T = torch.arange(teacher.targets.numel(), dtype=torch.float32).view_as(teacher.targets)
    aligned = align_teacher_logprobs(logp_T, teacher.gather_index)
    assert aligned.shape == student.targets.shape
    assert torch.equal(aligned[mask], logp_T.gather(1, teacher.gather_index)[mask])
    a = trajectories[0]
    assert teacher.input_ids[0, :5].tolist() == [7, 7, 7, 7, 7]
    assert teacher.gather_index[0, 2].item() == 2 + a.teacher_offset


def test_teacher_view_for_a_padded_student_batch():
    trajectories = _batch()
    student = collate_trajectories(trajectories, pad_id=0, pad_to_multiple_of=8)
    teacher = collate_teacher(trajectories, pad_id=0, student_length=student.targets.shape[1])
    assert teacher.gather_index.shape == student.targets.shape
    with pytest.raises(ValueError, match="student_length"):
        collate_teacher(trajectories, pad_id=0, student_length=3)
