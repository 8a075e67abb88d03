import math

import pytest
import torch

from mtdiff.metrics import SegmentationMeter, confusion_matrix, segmentation_scores


def _pairs(counts: dict[tuple[int, int], int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffled (pred, target) pixels with exactly counts[(t, p)] pixels of each pair."""
    t = torch.tensor([k[0] for k in counts]).repeat_interleave(torch.tensor(list(counts.values())))
    p = torch.tensor([k[1] for k in counts]).repeat_interleave(torch.tensor(list(counts.values())))
    perm = torch.randperm(t.numel(), generator=torch.Generator().manual_seed(seed))
    return p[perm], t[perm]


def test_perfect_prediction():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (3, 8, 8), generator=g)
    s = segmentation_scores(confusion_matrix(target, target, 4))
    assert s["pixel_accuracy"] == s["class_accuracy"] == s["class_iou"] == 1.0
    assert s["per_class_iou"] == [1.0] * 4


def test_known_two_class_case():
    a, b, c, d = 5, 2, 1, 4  # (target, pred): (0,0), (0,1), (1,0), (1,1)
    pred, target = _pairs({(0, 0): a, (0, 1): b, (1, 0): c, (1, 1): d})
    conf = confusion_matrix(pred.reshape(3, 4), target.reshape(3, 4), 2)
    assert conf.dtype == torch.long
    assert conf.tolist() == [[a, b], [c, d]]
    s = segmentation_scores(conf)
    assert s["pixel_accuracy"] == pytest.approx((a + d) / (a + b + c + d))
    assert s["class_accuracy"] == pytest.approx((a / (a + b) + d / (c + d)) / 2)
    iou0, iou1 = a / (a + b + c), d / (d + b + c)
    assert s["per_class_iou"] == pytest.approx([iou0, iou1])
    assert s["class_iou"] == pytest.approx((iou0 + iou1) / 2)
    assert all(isinstance(s[k], float) for k in ("pixel_accuracy", "class_accuracy", "class_iou"))


def test_ignore_index_pixels_do_not_count():
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 3, (2, 6, 6), generator=g)
    pred = torch.randint(0, 3, (2, 6, 6), generator=g)
    ignored = torch.rand(2, 6, 6, generator=g) < 0.3
    t_ign = target.masked_fill(ignored, 255)
    p_ign = pred.masked_fill(ignored, 77)  # predictions at ignored pixels are irrelevant
    conf = confusion_matrix(p_ign, t_ign, 3, ignore_index=255)
    assert torch.equal(conf, confusion_matrix(pred[~ignored], target[~ignored], 3))
    assert int(conf.sum()) == int((~ignored).sum())
    # an in-range ignore_index drops that target class entirely
    conf0 = confusion_matrix(pred, target, 3, ignore_index=0)
    assert int(conf0[0].sum()) == 0
    assert torch.equal(conf0[1:], confusion_matrix(pred, target, 3)[1:])
    with pytest.raises(ValueError, match="range"):
        confusion_matrix(pred, t_ign, 3)  # 255 without ignore_index


def test_only_present_classes_are_averaged():
    # K = 4: class 2 never occurs; class 3 is only predicted (never in the target).
    counts = {(0, 0): 6, (0, 1): 2, (1, 1): 3, (1, 3): 1, (0, 3): 2}
    pred, target = _pairs(counts, seed=2)
    s = segmentation_scores(confusion_matrix(pred, target, 4))
    n00, n01, n11, n13, n03 = 6, 2, 3, 1, 2
    recall0, recall1 = n00 / (n00 + n01 + n03), n11 / (n11 + n13)
    assert s["class_accuracy"] == pytest.approx((recall0 + recall1) / 2)  # class 3 excluded
    iou0 = n00 / (n00 + n01 + n03)
    iou1 = n11 / (n11 + n13 + n01)
    iou3 = 0.0  # present in the prediction: counts, with IoU 0
    per = s["per_class_iou"]
    assert math.isnan(per[2])
    assert [per[0], per[1], per[3]] == pytest.approx([iou0, iou1, iou3])
    assert s["class_iou"] == pytest.approx((iou0 + iou1 + iou3) / 3)


def test_random_predictions_accuracy_near_chance():
    k, n = 5, 200_000
    g = torch.Generator().manual_seed(3)
    target = torch.arange(n) % k
    pred = torch.randint(0, k, (n,), generator=g)
    s = segmentation_scores(confusion_matrix(pred, target, k))
    p = 1 / k
    se = math.sqrt(p * (1 - p) / n)
    assert abs(s["pixel_accuracy"] - p) < 4 * se
    assert abs(s["class_accuracy"] - p) < 4 * se * math.sqrt(k)  # mean of k recalls, each on n/k pixels
    assert s["class_iou"] == pytest.approx(1 / (2 * k - 1), abs=0.01)  # (n/k^2) / (2n/k - n/k^2)


def test_meter_two_batches_equals_concatenation():
    g = torch.Generator().manual_seed(4)
    t1, t2 = torch.randint(0, 4, (2, 5, 5), generator=g), torch.randint(0, 4, (3, 5, 5), generator=g)
    p1, p2 = torch.randint(0, 4, (2, 5, 5), generator=g), torch.randint(0, 4, (3, 5, 5), generator=g)
    t1[0, 0] = 255
    meter = SegmentationMeter(4, ignore_index=255)
    meter.update(p1, t1)
    meter.update(p2, t2)
    whole = confusion_matrix(torch.cat([p1, p2]), torch.cat([t1, t2]), 4, ignore_index=255)
    assert torch.equal(meter.confusion, whole)
    assert meter.compute() == segmentation_scores(whole)
    meter.reset()
    assert int(meter.confusion.sum()) == 0
    with pytest.raises(ValueError, match="conf"):
        meter.compute()


def test_meter_logits_equal_argmax():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 6, 7, 7, generator=g)
    target = torch.randint(0, 6, (2, 7, 7), generator=g)
    a, b = SegmentationMeter(6), SegmentationMeter(6)
    a.update(logits, target)
    b.update(logits.argmax(dim=1), target)
    assert torch.equal(a.confusion, b.confusion)
    assert a.compute() == b.compute()
    with pytest.raises(ValueError, match="logits"):
        a.update(torch.randn(2, 5, 7, 7), target)  # wrong number of classes


def test_out_of_range_and_bad_inputs():
    t = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match=r"pred values must be in the range \[0, 2\]"):
        confusion_matrix(torch.tensor([0, 1, 3]), t, 3)
    with pytest.raises(ValueError, match=r"target values must be in the range \[0, 2\]"):
        confusion_matrix(t, torch.tensor([0, -1, 2]), 3)
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(t, t[:2], 3)
    with pytest.raises(ValueError, match="pred must be an integer tensor"):
        confusion_matrix(t.float(), t, 3)
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix(t, t, 0)
    with pytest.raises(ValueError, match="conf"):
        segmentation_scores(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationMeter(0)
