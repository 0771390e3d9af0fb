"""EER and AUC against scikit-learn, an independent implementation."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from streamer.metrics import auc, eer, minmax_per_video, roc_curve


def sklearn_eer(scores, labels):
    """EER from scikit-learn's ROC, interpolated where fpr crosses the miss rate."""
    fpr, tpr, _ = sk_roc_curve(labels, scores, drop_intermediate=False)
    fnr = 1 - tpr
    i = np.flatnonzero(fpr - fnr >= 0)[0]
    g0, g1 = fpr[i - 1] - fnr[i - 1], fpr[i] - fnr[i]
    return fpr[i - 1] + (fpr[i] - fpr[i - 1]) * (-g0) / (g1 - g0)


@pytest.mark.parametrize("seed", range(5))
def test_against_sklearn_random(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 500)
    scores = rng.normal(size=500) + labels * rng.uniform(0, 2)
    if seed % 2:
        scores = np.round(scores, 1)  # many ties
    fpr, tpr, _ = roc_curve(scores, labels)
    assert auc(fpr, tpr) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert eer(fpr, tpr) == pytest.approx(sklearn_eer(scores, labels), abs=1e-12)


def test_known_cases():
    labels = np.array([0, 0, 1, 1])
    fpr, tpr, _ = roc_curve(np.array([0.1, 0.2, 0.8, 0.9]), labels)
    assert auc(fpr, tpr) == 1.0 and eer(fpr, tpr) == 0.0
    fpr, tpr, _ = roc_curve(np.array([0.9, 0.8, 0.2, 0.1]), labels)
    assert auc(fpr, tpr) == 0.0 and eer(fpr, tpr) == 1.0
    fpr, tpr, _ = roc_curve(np.ones(4), labels)  # one tie: the diagonal
    assert auc(fpr, tpr) == 0.5 and eer(fpr, tpr) == 0.5
    # Hand-computed: scores 4 3 2 1 with labels 1 0 1 0 -> ROC (0,0) (0,.5) (.5,.5) (.5,1) (1,1)
    fpr, tpr, _ = roc_curve(np.array([4, 3, 2, 1]), np.array([1, 0, 1, 0]))
    assert fpr.tolist() == [0, 0, 0.5, 0.5, 1] and tpr.tolist() == [0, 0.5, 0.5, 1, 1]
    assert auc(fpr, tpr) == 0.75 and eer(fpr, tpr) == 0.5


def test_roc_input_errors():
    with pytest.raises(ValueError, match="both"):
        roc_curve(np.array([1.0, 2.0]), np.array([1, 1]))
    with pytest.raises(ValueError, match="finite"):
        roc_curve(np.array([np.nan, 2.0]), np.array([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        roc_curve(np.array([1.0, 2.0, 3.0]), np.array([0, 1]))


def test_minmax_per_video():
    scores = np.array([1.0, 3.0, 10.0, 20.0, 5.0])
    videos = np.array(["a", "a", "b", "b", "c"])
    assert minmax_per_video(scores, videos).tolist() == [0, 1, 0, 1, 0]
