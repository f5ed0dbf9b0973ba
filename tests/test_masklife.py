"""MaskLife bookkeeping against hand-computed drifts, flip rates and masked steps."""

from __future__ import annotations

import math

import pytest
import torch

from castlab.sparsity.masklife import MaskLife, measured_decay_distance


def masks(*rows):
    return [torch.tensor(rows, dtype=torch.bool)]


def test_drift_flip_rate_and_masked_step_by_hand():
    life = MaskLife(total_steps=4, eval_every=2)
    m0 = masks([True, True, False, False], [True, False, True, False])
    w0 = [torch.tensor([[4.0, 3.0, -0.5, 0.1], [2.0, -0.4, 1.0, 0.2]])]
    life.start(m0, w0)
    assert life.typical_masked == pytest.approx((0.5 + 0.1 + 0.4 + 0.2) / 4)
    life.at_step_start(0, lambda: m0)  # T // 2 = 2: nothing recorded at step 0
    assert math.isnan(life.half)
    assert life.samples_step(1) and not life.samples_step(0) and life.samples_step(3)
    # the step before the eval at 2: masked entries move towards zero by 0.1, 0.05, 0.1, -0.1
    life.before_update(w0)
    w1 = [torch.tensor([[4.0, 3.0, -0.4, 0.05], [2.0, -0.3, 1.0, 0.3]])]
    assert life.after_update(1, w1, m0, lr=0.05) == pytest.approx((0.1 + 0.05 + 0.1 - 0.1) / 4 / 0.05)
    m2 = masks([True, False, True, False], [True, False, True, False])  # 2 of 8 entries moved
    record = life.record(2, m2, [0.25, 0.0])  # two refreshes so far, both count
    assert record["mask_drift_initial"] == pytest.approx(2 / 8)
    assert record["mask_flip_rate"] == pytest.approx(0.125)
    assert record["masked_step_lr"] == pytest.approx(0.75)
    life.at_step_start(2, lambda: m2)
    assert life.half == pytest.approx(2 / 8)
    m4 = masks([False, True, True, False], [True, False, False, True])
    record = life.record(4, m4, [0.25, 0.0, 0.5])  # only the refresh since the last eval
    assert record["mask_flip_rate"] == pytest.approx(0.5)
    assert math.isnan(record["masked_step_lr"])  # no sample at step 3 was taken
    curve = [{"step": 1}, {"step": 2}, {"step": 4}]
    life.fill_final(curve, m4)
    assert "mask_drift_final" not in curve[0]
    assert curve[1]["mask_drift_final"] == pytest.approx(4 / 8)
    assert curve[2]["mask_drift_final"] == 0.0
    summary = life.summary(m4, [0.25, 0.0, 0.5])
    assert summary == pytest.approx({"mask_drift": 4 / 8, "mask_drift_half": 2 / 8,
                                     "mask_flip_rate": 0.25, "masked_step_lr": 0.75})


def test_state_dict_round_trip_through_a_weights_only_load(tmp_path):
    life = MaskLife(total_steps=10, eval_every=5)
    m0 = masks([True, False, True, False] * 3)
    life.start(m0, [torch.ones(1, 12)])
    life.record(5, masks([False, True, True, False] * 3), [0.1])
    torch.save(life.state_dict(), tmp_path / "life.pt")
    back = MaskLife(total_steps=10, eval_every=5)
    back.load_state_dict(torch.load(tmp_path / "life.pt", weights_only=True))
    later = masks([False, True, False, True] * 3)
    assert back.record(10, later, [0.1, 0.3])["mask_flip_rate"] == pytest.approx(0.3)
    assert back.drift_from_initial(later) == 1.0
    curve = [{"step": 5}, {"step": 10}]
    back.fill_final(curve, later)
    assert curve[0]["mask_drift_final"] == pytest.approx(0.5)


def test_measured_decay_distance_weights_each_window_by_its_sample():
    lrs = [1.0, 1.0, 2.0, 2.0, 3.0]
    # sample at step 1 covers steps 0-1, the one at step 3 covers 2-4 (past the last sample)
    assert measured_decay_distance(lrs, [(1, 0.5), (3, 2.0)]) == pytest.approx(0.5 * 2 + 2.0 * 7)
    assert measured_decay_distance(lrs, [(1, float("nan")), (3, 1.0)]) == pytest.approx(9.0)
    assert math.isnan(measured_decay_distance(lrs, []))
