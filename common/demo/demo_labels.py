"""The demo's weak labels, as in HPA (S0's synthetic data, :mod:`common.demo.demo_data`).

An image's label set is drawn from the real label combinations of the HPA 2021 training set
(:data:`LABEL_COMBOS_TEXT`, tempered so rare classes show up in a small demo;
:func:`sample_image_labels`). Each cell then expresses a random non-empty subset of those classes,
and in some images a fraction of cells is Negative (class 18) (:func:`assign_cell_labels`). The
image label is the union of its cells' labels, so giving every cell the image label is measurably
worse than predicting each cell's own classes. Mitotic spindle (11) is only expressed by rounded
mitotic cells.
"""
from __future__ import annotations

import numpy as np

from common.constants import CLASS_NAMES, NEGATIVE, NUM_CLASSES

LABEL_TEMPER = 0.5             # combo weight = count ** LABEL_TEMPER (1 = real frequencies)
RARE_BOOST = 0.5               # chance to draw a combo containing a uniformly chosen class
CELL_EXPRESS_PROB = 0.7        # chance a cell shows each class of its image (at least one kept)
NEG_IMAGE_PROB = 0.35          # chance an image (not all-Negative) has some Negative cells
NEG_CELL_FRAC = (0.1, 0.4)     # fraction of Negative cells in such an image
DISTRACTOR_MITOSIS_PROB = 0.3  # chance of one mitotic cell that does not show class 11

# ----------------------------------------------------------------------------- label table
# Label combinations of the HPA 2021 competition train set (21,806 images; labels as sets,
# class ids ascending) seen in at least 3 images, with their image counts ("combo:count").
# Derived from train_labels.csv; tests/test_demo_data.py checks it against ../shared.
N_REAL_IMAGES = 21806
LABEL_COMBOS_TEXT = """
0:1551 0|16:1278 14:1054 16:906 13:880 4:788 7:719 5:636 0|2:596 0|13:588 12:561 3:549 8:529 2:515
0|7:481 6:476 0|12:414 10:404 0|5:383 0|14:378 13|16:365 0|1:305 17:302 9:300 0|3:286 5|16:238
2|16:225 1:221 4|16:211 0|13|16:188 12|16:188 0|2|16:157 0|8:136 0|12|16:135 0|9:132 0|17:113
0|10:103 9|13:99 9|16:99 0|5|16:98 3|16:98 4|13:93 14|16:91 7|16:88 0|7|16:87 10|16:87 1|16:85 15:82
2|13:78 2|14:78 0|3|16:76 0|1|16:70 6|16:61 8|16:59 0|2|13:55 0|2|7:54 1|2:53 0|4:51 0|1|2:50
0|9|16:50 2|7:46 0|2|14:45 16|17:43 9|13|16:42 5|13:38 7|13:38 0|15:37 0|14|16:36 5|7:36 12|13:35
15|16:35 0|6:34 4|14:34 18:34 0|5|13:32 2|6|16:31 2|10:31 12|14:30 0|8|16:29 0|9|13:29 3|14:29
0|10|16:25 1|4:25 2|8:25 2|12:25 6|13:25 0|2|13|16:24 0|5|7:24 0|12|13:24 2|13|16:24 0|7|13:23
1|14:23 2|6:23 5|15:23 3|7:22 4|13|16:22 5|14:22 13|14:22 1|6:21 0|2|5:20 2|4:20 2|13|14:20 9|12:20
4|7:19 7|12:19 12|13|16:19 1|13:18 4|9:18 6|7:18 0|2|8|16:17 0|11|16:17 3|6:17 5|12:17 4|10:16
8|15:16 0|1|13:15 0|2|8:15 0|2|10:15 0|2|12:15 0|7|9:15 0|13|14:15 10|13:15 0|3|14:14 0|14|17:14
0|16|17:14 1|5:14 1|13|16:14 2|5|16:14 3|13:14 8|13:14 11|16:14 0|1|12:13 0|6|16:13 4|17:13 10|12:13
0|1|9:12 0|8|12:12 0|9|13|16:12 0|13|17:12 5|8:12 5|9:12 5|10:12 5|13|16:12 0|5|14:11 0|9|14:11
2|5:11 4|8:11 4|12:11 7|13|16:11 0|1|14:10 0|2|9:10 0|3|10:10 0|3|12:10 0|15|16:10 2|7|16:10
2|14|16:10 2|17:10 9|10:10 9|12|16:10 10|11:10 12|15:10 13|16|17:10 0|3|7:9 0|5|8:9 0|5|12:9 1|7:9
1|12:9 3|10:9 3|13|16:9 3|17:9 6|12:9 8|9:9 0|1|7|16:8 0|1|8:8 0|2|17:8 0|5|9:8 1|2|16:8 1|3:8
2|10|16:8 4|9|13:8 4|12|13:8 8|13|16:8 10|13|16:8 13|14|16:8 0|1|5:7 0|2|15:7 0|3|8:7 0|5|9|17:7
0|7|13|16:7 0|9|12:7 0|11:7 3|9:7 4|7|16:7 5|12|16:7 8|12:7 11|13:7 0|1|2|7:6 0|2|9|16:6 0|5|15:6
0|12|13|14:6 1|5|7:6 1|5|13:6 1|8:6 2|8|16:6 2|12|13:6 5|6:6 6|17:6 11|12:6 0|1|3:5 0|1|7:5
0|1|7|13:5 0|2|12|13:5 0|3|5|16:5 0|3|6|16:5 0|4|5:5 0|4|13:5 0|7|12|16:5 0|12|13|16:5 0|12|14:5
1|5|16:5 1|9|13:5 2|4|7:5 2|9|16:5 3|4|16:5 3|8:5 4|5:5 4|15:5 10|11|13:5 13|15:5 0|2|6:4
0|2|12|16:4 0|3|13:4 0|5|13|16:4 0|7|9|16:4 0|7|14:4 0|10|11:4 0|10|13:4 0|12|17:4 1|4|16:4 2|9:4
3|4:4 3|5:4 3|12:4 3|14|16:4 4|9|16:4 4|12|16:4 6|13|16:4 7|9:4 7|10:4 9|14:4 0|1|3|13:3 0|2|3:3
0|2|7|16:3 0|6|13|16:3 0|7|12:3 0|13|15:3 1|17:3 2|4|16:3 2|7|12:3 2|9|13:3 3|15:3 4|7|13:3 5|7|16:3
6|9:3 6|14:3 7|8|10:3 7|14:3 8|10|16:3 10|11|12:3 13|17:3 14|15:3
"""
# Images per class in the same file (all 21,806 images, duplicates within a label removed).
CLASS_COUNTS = (8797, 1095, 2451, 1262, 1425, 1792, 775, 1846, 964, 998, 818, 78, 1734, 3111, 2013,
                252, 5685, 593, 34)


def label_table() -> list[tuple[tuple[int, ...], int]]:
    """The embedded combinations as ``[((class ids ascending), image count), ...]``, most frequent first."""
    out = []
    for tok in LABEL_COMBOS_TEXT.split():
        combo, count = tok.split(":")
        out.append((tuple(int(c) for c in combo.split("|")), int(count)))
    return out


_TABLE = label_table()


def sample_image_labels(rng: np.random.Generator, temper: float = LABEL_TEMPER,
                        rare_boost: float = RARE_BOOST, must_have: int | None = None) -> list[int]:
    """Draw one image label set (ascending class ids) from the real HPA combinations.

    A combination is drawn with weight ``count ** temper``; with probability ``rare_boost`` a
    class is first chosen uniformly among the 19 and the combination among those containing it.
    ``must_have`` forces that class (the draw is among the combinations containing it).
    """
    combos = [c for c, _ in _TABLE]
    w = np.array([n for _, n in _TABLE], float) ** temper
    if must_have is not None or rng.random() < rare_boost:
        k = int(rng.integers(NUM_CLASSES)) if must_have is None else int(must_have)
        keep = np.array([k in c for c in combos])
        w = np.where(keep, w, 0.0)
    return list(combos[int(rng.choice(len(combos), p=w / w.sum()))])


# ----------------------------------------------------------------------------- cell labels
def assign_cell_labels(rng, image_classes: list[int], n: int) -> tuple[list[list[int]], list[bool]]:
    """Per-cell class lists and mitotic flags; every class of the image is shown by some cell."""
    classes = sorted(set(int(c) for c in image_classes))
    if not classes:
        raise ValueError("image_classes is empty")
    bad = [c for c in classes if not 0 <= c < NUM_CLASSES]
    if bad:
        raise ValueError(f"class ids {bad} outside 0..{NUM_CLASSES - 1}")
    pos = [c for c in classes if c != NEGATIVE]
    if not pos:
        return [[NEGATIVE] for _ in range(n)], [False] * n
    n_neg = 0
    if n >= 2 and (NEGATIVE in classes or rng.random() < NEG_IMAGE_PROB):
        n_neg = int(np.clip(round(rng.uniform(*NEG_CELL_FRAC) * n), 1, n - 1))
    order = rng.permutation(n)
    neg = set(order[:n_neg].tolist())
    live = order[n_neg:]
    labels: list[list[int]] = [[NEGATIVE] if i in neg else [] for i in range(n)]
    mitotic = [False] * n
    other = [c for c in pos if c != 11]
    if 11 in pos:  # 1-3 mitotic cells show the spindle (and maybe the other classes)
        k = int(min(len(live), rng.integers(1, 4)))
        for i in live[:k]:
            mitotic[i] = True
            labels[i] = [11] + [c for c in other if rng.random() < CELL_EXPRESS_PROB]
        live_rest = live[k:] if other else []
    else:
        live_rest = live
    for i in live_rest:
        got = [c for c in other if rng.random() < CELL_EXPRESS_PROB]
        labels[i] = got or [other[int(rng.integers(len(other)))]]
    if len(live_rest) == 0 and other and 11 in pos:  # all live cells mitotic: they carry the rest
        for i in live:
            labels[i] = sorted(set(labels[i]) | set(other))
    for c in other:  # every image class is shown by at least one live cell
        if not any(c in labels[i] for i in live_rest) and len(live_rest):
            i = live_rest[int(rng.integers(len(live_rest)))]
            labels[i].append(c)
    if 11 not in pos and len(live) > 1 and rng.random() < DISTRACTOR_MITOSIS_PROB:
        mitotic[int(live[int(rng.integers(len(live)))])] = True  # mitotic, no spindle protein
    return [sorted(set(x)) for x in labels], mitotic


assert len(CLASS_NAMES) == NUM_CLASSES == len(CLASS_COUNTS)
