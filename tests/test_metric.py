"""The competition metric (common.competition.metric), checked against hand-computed values."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from common.competition import encoding, metric

H = W = 20


def _square(r, c, size=5):
    m = np.zeros((H, W), bool)
    m[r:r + size, c:c + size] = True
    return m


def _enc(m):
    return encoding.encode_binary_mask(m)


def _truth(cells):
    """cells: list of (image ID, cell_id, mask, [labels]) -> truth DataFrame (one row per label)."""
    rows = [{"ID": i, "ImageWidth": W, "ImageHeight": H, "cell_id": c, "Label": lab, "EncodedMask": _enc(m)}
            for i, c, m, labs in cells for lab in labs]
    return pd.DataFrame(rows)


def _sub(dets, ids):
    """dets: list of (image ID, label, conf, mask) in submission order -> submission DataFrame."""
    strings = {i: [] for i in ids}
    for i, lab, conf, m in dets:
        strings[i].append(f"{lab} {conf:.6g} {_enc(m)}")
    return pd.DataFrame({"ID": ids, "ImageWidth": W, "ImageHeight": H,
                         "PredictionString": [" ".join(strings[i]) for i in ids]})


A, B, C = _square(0, 0), _square(0, 10), _square(10, 0)
BLOB = _square(14, 14)  # overlaps no true cell


def test_average_precision_core_uses_the_precision_envelope():
    # FP, TP, TP with 3 GT: precision 0, 1/2, 2/3 at recall 0, 1/3, 2/3; envelope 2/3 -> AP 4/9
    ap, p, r = metric.average_precision(np.array([0, 1, 1]), 3)
    assert ap == pytest.approx(4 / 9)
    assert np.allclose(p, [0, 0.5, 2 / 3]) and np.allclose(r, [0, 1 / 3, 2 / 3])
    assert metric.average_precision(np.zeros(0), 2)[0] == 0.0


def test_perfect_submission_scores_one_in_both_modes():
    cells = [("i1", 1, A, [0, 16]), ("i1", 2, B, [16]), ("i2", 1, C, [5, 18])]
    truth = _truth(cells)
    sub = _sub([(i, lab, 1.0, m) for i, _, m, labs in cells for lab in labs], ["i1", "i2"])
    for mode in ("strict", "lenient"):
        res = metric.score_submission(sub, truth, mode)
        assert res["mAP"] == 1.0
        assert set(res["per_class"]) == {0, 5, 16, 18}
        assert res["n_gt"][16] == 2 and res["n_gt"][1] == 0


def test_hand_worked_three_detection_example():
    # class 0 has 3 GT cells over 2 images. Detections by confidence: 0.9 on a blob (FP),
    # 0.8 on A (TP), 0.7 on C (TP); B is missed. AP = 2/3 recall * 2/3 envelope precision = 4/9.
    truth = _truth([("i1", 1, A, [0]), ("i1", 2, B, [0]), ("i2", 1, C, [0])])
    sub = _sub([("i2", 0, 0.7, C), ("i1", 0, 0.8, A), ("i1", 0, 0.9, BLOB)], ["i1", "i2"])
    for mode in ("strict", "lenient"):
        res = metric.score_submission(sub, truth, mode)
        assert res["per_class"][0] == pytest.approx(4 / 9)
        assert res["mAP"] == pytest.approx(4 / 9)
        p, r = res["pr"][0]
        assert np.allclose(p, [0, 0.5, 2 / 3]) and np.allclose(r, [0, 1 / 3, 2 / 3])


def test_duplicate_detection_of_one_cell_is_a_false_positive():
    # GT A, B of class 3. A at 0.9 (TP), A again at 0.8 (FP: A already matched), B at 0.7 (TP):
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    truth = _truth([("i1", 1, A, [3]), ("i1", 2, B, [3])])
    sub = _sub([("i1", 3, 0.9, A), ("i1", 3, 0.8, A), ("i1", 3, 0.7, B)], ["i1"])
    assert metric.score_submission(sub, truth)["per_class"][3] == pytest.approx(5 / 6)


def test_iou_threshold_055_is_fp_and_065_is_tp():
    big = np.zeros((H, W), bool)
    big[0:10, 0:10] = True  # 100 px
    flat = np.flatnonzero(big.ravel())

    def part(k):  # the first k pixels of the GT cell: IoU k/100
        m = np.zeros(H * W, bool)
        m[flat[:k]] = True
        return m.reshape(H, W)

    truth = _truth([("i1", 1, big, [2])])
    assert metric.score_submission(_sub([("i1", 2, 0.9, part(55))], ["i1"]), truth)["mAP"] == 0.0
    assert metric.score_submission(_sub([("i1", 2, 0.9, part(65))], ["i1"]), truth)["mAP"] == 1.0
    assert metric.score_submission(_sub([("i1", 2, 0.9, part(60))], ["i1"]), truth)["mAP"] == 1.0  # >=
    assert metric.score_submission(_sub([("i1", 2, 0.9, part(55))], ["i1"]), truth,
                                   iou_threshold=0.5)["mAP"] == 1.0


def test_strict_and_lenient_differ_on_a_planted_wrong_class_detection():
    # i2 has no class-0 cell; its class-0 detection at 0.95 ranks first. Strict: FP then TP
    # (precision 1/2 at recall 1 -> AP 0.5); lenient ignores it (AP 1). Class 7 is perfect.
    truth = _truth([("i1", 1, A, [0]), ("i2", 1, C, [7])])
    sub = _sub([("i1", 0, 0.9, A), ("i2", 7, 0.9, C), ("i2", 0, 0.95, C)], ["i1", "i2"])
    strict = metric.score_submission(sub, truth, "strict")
    lenient = metric.score_submission(sub, truth, "lenient")
    assert strict["per_class"] == pytest.approx({0: 0.5, 7: 1.0})
    assert strict["mAP"] == pytest.approx(0.75)
    assert lenient["per_class"] == pytest.approx({0: 1.0, 7: 1.0})
    assert lenient["mAP"] == 1.0


def test_classes_without_gt_are_skipped_and_missing_images_are_misses():
    truth = _truth([("i1", 1, A, [0]), ("i2", 1, C, [0])])
    sub = _sub([("i1", 0, 0.9, A), ("i1", 5, 1.0, A), ("zz", 5, 1.0, A)], ["i1", "zz"])
    res = metric.score_submission(sub, truth, "strict")
    assert set(res["per_class"]) == {0} and 5 not in res["pr"]
    assert res["per_class"][0] == pytest.approx(0.5)  # i2's cell is missed
    assert res["n_images_ignored"] == 1


def test_bad_input_errors():
    truth = _truth([("i1", 1, A, [0])])
    sub = _sub([("i1", 0, 0.9, A)], ["i1"])
    with pytest.raises(ValueError, match="mode"):
        metric.score_submission(sub, truth, "loose")
    with pytest.raises(ValueError, match="i1.*size"):
        metric.score_submission(sub.assign(ImageWidth=30), truth)
    with pytest.raises(ValueError, match="EncodedMask"):
        metric.score_submission(sub, truth.drop(columns="EncodedMask"))


def test_score_cells_agrees_with_score_submission():
    rng = np.random.default_rng(0)
    cells, truth_dict, ids, cids, probs, masks = [], {}, [], [], [], []
    for img in ("a", "b", "c"):
        for k in range(6):
            m = _square(5 * (k // 3), 5 * (k % 3), 4)
            labs = sorted(set(rng.integers(0, 6, rng.integers(1, 3)).tolist()))
            cells.append((img, k, m, labs))
            truth_dict[(img, k)] = labs
    pred_cells = [c for c in cells if not (c[0] == "b" and c[1] == 5)]  # one true cell missed
    pred_cells.insert(2, cells[0])                                       # one cell predicted twice
    strings = {}
    for img, k, m, _ in pred_cells:
        p = np.round(rng.random(19), 1)  # coarse values: many confidence ties
        ids.append(img)
        cids.append(k)
        probs.append(p)
        masks.append(m)
        strings.setdefault(img, []).append(encoding.prediction_string([_enc(m)], p[None]))
    sub = pd.DataFrame({"ID": list(strings), "ImageWidth": W, "ImageHeight": H,
                        "PredictionString": [" ".join(v) for v in strings.values()]})
    truth = _truth(cells)
    for mode in ("strict", "lenient"):
        a = metric.score_submission(sub, truth, mode)
        b = metric.score_cells(ids, cids, np.array(probs), truth_dict, mode)
        assert a["per_class"].keys() == b["per_class"].keys()
        for c in a["per_class"]:
            assert a["per_class"][c] == pytest.approx(b["per_class"][c], abs=1e-12)
        assert a["mAP"] == pytest.approx(b["mAP"]) and 0 < a["mAP"] < 1
        assert a["n_gt"] == b["n_gt"]
    s = metric.score_cells(ids, cids, np.array(probs), truth_dict, "strict")["mAP"]
    assert s < metric.score_cells(ids, cids, np.array(probs), truth_dict, "lenient")["mAP"]


def test_image_level_map_is_macro_ap_over_classes_with_positives():
    y = np.zeros((3, 19))
    y[[0, 2], 4] = 1
    y[1, 7] = 1
    s = np.zeros((3, 19))
    s[:, 4] = [0.9, 0.8, 0.1]   # AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    s[:, 7] = [0.1, 0.9, 0.2]   # AP = 1
    m, per = metric.image_level_map(y, s)
    assert set(per) == {4, 7}
    assert per[4] == pytest.approx(5 / 6) and per[7] == 1.0
    assert m == pytest.approx((5 / 6 + 1) / 2)
