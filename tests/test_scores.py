"""Each score against a direct NumPy computation on small random features."""

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.linear_model import LogisticRegression

from resend_jax.evaluate import Features, evaluate_features, metrics, score_features, scores
from resend_jax.evaluate.neighbours import kth_nearest_sq_distance
from resend_jax.evaluate.scales import scale_vectors

DIM = 16


def make_features(seed=0, n_support=60, n_test=40, classes=3, scales=True):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes + 1, DIM)) * 2
    support_labels = np.arange(n_support) % classes
    test_labels = rng.integers(-1, classes, n_test)
    support = centres[support_labels] + rng.normal(size=(n_support, DIM))
    test = centres[test_labels] + rng.normal(size=(n_test, DIM))  # label -1 -> the extra centre
    support_scales = test_scales = None
    if scales:
        support_scales = support[:, None] + rng.normal(size=(n_support, 6, DIM))
        test_scales = test[:, None] + rng.normal(size=(n_test, 6, DIM))
    return Features(support, support_labels, support_scales), Features(test, test_labels, test_scales)


def normalise(x):
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-10)


def brute_kth_sq(queries, bank, k):
    sq = ((queries[:, None].astype(np.float64) - bank[None]) ** 2).sum(-1)
    return np.sort(sq, axis=1)[:, k - 1]


@pytest.mark.parametrize("query_chunk, bank_chunk", [(7, 13), (1024, 8192)])
def test_kth_nearest_equals_brute_force(query_chunk, bank_chunk):
    rng = np.random.default_rng(0)
    queries, bank = rng.normal(size=(50, DIM)), rng.normal(size=(90, DIM))
    for k in (1, 5, 90):
        ours = kth_nearest_sq_distance(queries, bank, k, query_chunk, bank_chunk)
        np.testing.assert_allclose(ours, brute_kth_sq(queries, bank, k), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="at least k"):
        kth_nearest_sq_distance(queries, bank, 91)


def test_knn_equals_brute_force_numpy():
    support, test = make_features()
    result = score_features(support, test, ["knn"], options={"knn": {"k": 7}})["knn"]
    expected = -np.sqrt(brute_kth_sq(normalise(test.features), normalise(support.features), 7))
    np.testing.assert_allclose(result[0], expected, rtol=1e-5, atol=1e-5)
    assert result[1] is None
    with pytest.raises(ValueError, match="smaller k"):
        score_features(support, test, ["knn"], options={"knn": {"k": 61}})


def test_csd_equals_loop_over_six_scales():
    support, test = make_features()
    bank = normalise(support.scales).reshape(-1, DIM)
    per_scale = [-brute_kth_sq(normalise(test.scales[:, s]), bank, 10) for s in range(6)]
    expected = np.max(per_scale, axis=0)
    ours, predictions = score_features(support, test, ["csd"])["csd"]
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
    assert predictions is None


def test_scale_vectors_on_4x4_and_7x7_maps():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    expected = [m[:, :2, :2], m[:, :2, 2:], m[:, 2:, :2], m[:, 2:, 2:], m, m[:, 1:3, 1:3]]
    expected = np.stack([e.mean((1, 2)) for e in expected], 1)
    np.testing.assert_allclose(np.asarray(scale_vectors(m)), expected, rtol=1e-6)
    m = rng.normal(size=(2, 7, 7, 3)).astype(np.float32)
    expected = [m[:, :4, :4], m[:, :4, 3:], m[:, 3:, :4], m[:, 3:, 3:], m, m[:, 2:5, 2:5]]
    expected = np.stack([e.mean((1, 2)) for e in expected], 1)
    np.testing.assert_allclose(np.asarray(scale_vectors(m)), expected, rtol=1e-6)
    m = rng.normal(size=(2, 2, 2, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(scale_vectors(m))[:, 5], m.mean((1, 2)), rtol=1e-6)


def test_prototype_and_mahalanobis_scores_equal_direct_loops():
    support, test = make_features()
    results = score_features(support, test, ["proto_euclid", "proto_cosine", "mahalanobis"])
    means = np.stack([support.features[support.labels == c].mean(0) for c in range(3)]).astype(np.float64)
    x = test.features.astype(np.float64)
    euclid = np.array([[np.linalg.norm(f - mu) for mu in means] for f in x])
    cosine = np.array([[f @ mu / np.linalg.norm(f) / np.linalg.norm(mu) for mu in means] for f in x])
    centred = support.features - means[support.labels]
    precision = np.linalg.pinv(np.cov(centred.T, bias=True))
    maha = np.array([[(f - mu) @ precision @ (f - mu) for mu in means] for f in x])
    for name, expected, predictions in [
        ("proto_euclid", 1 - euclid.min(1), euclid.argmin(1)),
        ("proto_cosine", cosine.max(1), cosine.argmax(1)),
        ("mahalanobis", -maha.min(1), maha.argmin(1)),
    ]:
        np.testing.assert_allclose(results[name][0], expected, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(results[name][1], predictions)


def test_shrunk_mahalanobis_equals_a_direct_loop():
    support, test = make_features()
    shrinkage = 0.3
    result = score_features(support, test, ["mahalanobis"], options={"mahalanobis": {"shrinkage": shrinkage}})
    means = np.stack([support.features[support.labels == c].mean(0) for c in range(3)]).astype(np.float64)
    covariance = np.cov((support.features - means[support.labels]).T, bias=True)
    dim = len(covariance)
    precision = np.linalg.inv(
        (1 - shrinkage) * covariance + shrinkage * np.trace(covariance) / dim * np.eye(dim)
    )
    maha = np.array(
        [[(f - mu) @ precision @ (f - mu) for mu in means] for f in test.features.astype(np.float64)]
    )
    np.testing.assert_allclose(result["mahalanobis"][0], -maha.min(1), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(result["mahalanobis"][1], maha.argmin(1))
    with pytest.raises(ValueError, match="shrinkage must be in"):
        score_features(support, test, ["mahalanobis"], options={"mahalanobis": {"shrinkage": 1.5}})


def test_probe_scores_match_sklearn_logistic_regression():
    support, test = make_features(n_support=90)
    l2 = 1e-2
    probes = ("msp_probe", "maxlogit_probe", "energy_probe")
    options = {m: {"l2": l2, "steps": 100} for m in probes}
    results = score_features(support, test, probes, options=options)
    reference = LogisticRegression(C=1 / (l2 * len(support)), tol=1e-10, max_iter=10000)
    probabilities = reference.fit(support.features, support.labels).predict_proba(test.features)
    np.testing.assert_allclose(results["msp_probe"][0], probabilities.max(1), atol=2e-3)
    np.testing.assert_array_equal(results["msp_probe"][1], probabilities.argmax(1))
    # MaxLogit and energy are functions of the same logits: recover them from the other two.
    logits_max, energy = results["maxlogit_probe"][0], results["energy_probe"][0]
    np.testing.assert_allclose(np.exp(logits_max - energy), results["msp_probe"][0], rtol=1e-5)
    again = score_features(support, test, ["msp_probe"], options=options)["msp_probe"][0]
    np.testing.assert_array_equal(again, results["msp_probe"][0])


def with_logits(features: Features, logits: np.ndarray) -> Features:
    return Features(features.features, features.labels, features.scales, features.paths, logits)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_classifier_scores_are_the_formulas_on_the_networks_logits(temperature):
    support, test = make_features(scales=False)
    logits = np.random.default_rng(1).normal(size=(len(test), 3)) * 4
    logits[0] = [30.0, 30.0, -5.0]  # a tie and large logits: the max-subtracted forms stay exact
    test = with_logits(test, logits.astype(np.float32))
    methods = ("msp", "maxlogit", "energy")
    results = score_features(support, test, methods, options={"energy": {"temperature": temperature}})
    z = logits.astype(np.float32).astype(np.float64)
    top = z.max(1)
    expected = {
        "msp": 1 / np.exp(z - top[:, None]).sum(1),
        "maxlogit": top,
        "energy": top + temperature * np.log(np.exp((z - top[:, None]) / temperature).sum(1)),
    }
    for name in methods:
        np.testing.assert_allclose(results[name][0], expected[name], rtol=1e-12, atol=0)
        np.testing.assert_array_equal(results[name][1], z.argmax(1))
    # The fitted probe is another classifier: its scores differ from the network's.
    probe = score_features(support, test, ["msp_probe"])["msp_probe"][0]
    assert not np.allclose(probe, results["msp"][0], atol=1e-2)


def test_openset_confidence_is_msp_on_the_same_logits():
    from resend_jax.openset import evaluate as openset_evaluate

    support, test = make_features(scales=False)
    logits = np.random.default_rng(2).normal(size=(len(test), 3)).astype(np.float32)
    outputs = {"logits": logits, "feature": test.features, "label": test.labels}
    msp = score_features(support, with_logits(test, logits), ["msp"])["msp"][0]
    np.testing.assert_array_equal(openset_evaluate.scores(outputs), msp)


def test_resend_chunked_equals_unchunked(converted):
    import resend_jax

    model = resend_jax.load_model(converted)
    rng = np.random.default_rng(0)
    support = Features(rng.random((12, 512)), np.arange(12) % 4)
    test = Features(rng.random((9, 512)), rng.integers(-1, 4, 9))
    chunked = score_features(support, test, ["resend"], model=model, options={"resend": {"max_pairs": 5}})
    whole = score_features(support, test, ["resend"], model=model, options={"resend": {"max_pairs": 10**6}})
    np.testing.assert_allclose(chunked["resend"][0], whole["resend"][0], rtol=1e-5)
    np.testing.assert_array_equal(chunked["resend"][1], whole["resend"][1])
    # Direct: every (test, prototype) pair through relate, softmax over -logits.
    prototypes = np.stack([support.features[support.labels == c].mean(0) for c in range(4)])
    pairs = model.relate(np.repeat(test.features, 4, 0), np.tile(prototypes, (9, 1))).reshape(9, 4)
    probabilities = softmax(-pairs.astype(np.float64), axis=1)
    np.testing.assert_allclose(whole["resend"][0], probabilities.max(1), rtol=1e-4)
    np.testing.assert_array_equal(whole["resend"][1], probabilities.argmax(1))
    # calibrate: each class's mean -logit over its own support images is subtracted first.
    own = -model.relate(support.features, prototypes[support.labels])
    offsets = np.array([own[support.labels == c].mean() for c in range(4)])
    calibrated = score_features(
        support, test, ["resend"], model=model, options={"resend": {"softmax": False, "calibrate": True}}
    )["resend"]
    # relate_all (each feature projected once) and relate (per pair) sum in other orders: float32
    # agreement to about 1e-5 of the logits' scale.
    np.testing.assert_allclose(calibrated[0], (-pairs - offsets).max(1), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(calibrated[1], (-pairs - offsets).argmax(1))


def test_method_selection_and_errors():
    support, test = make_features(scales=False)
    probes_and_distances = {
        "energy_probe",
        "knn",
        "mahalanobis",
        "maxlogit_probe",
        "msp_probe",
        "proto_cosine",
        "proto_euclid",
    }
    assert set(score_features(support, test)) == probes_and_distances
    logits = np.zeros((len(test), 3))
    assert set(score_features(support, with_logits(test, logits))) == {
        *probes_and_distances,
        "energy",
        "maxlogit",
        "msp",
    }
    with pytest.raises(ValueError, match="unknown method.*'nope'"):
        score_features(support, test, ["nope"])
    with pytest.raises(ValueError, match="needs a ReSeND model"):
        score_features(support, test, ["resend"])
    with pytest.raises(ValueError, match="'msp' needs the network's own classifier logits"):
        score_features(support, test, ["msp"])
    with pytest.raises(ValueError, match=r"expected \(N, C\) logits for 40 labels, got \(39, 3\)"):
        with_logits(test, np.zeros((39, 3)))
    with pytest.raises(ValueError, match="needs CSD scale vectors"):
        score_features(support, test, ["csd"])
    with pytest.raises(ValueError, match=r"unknown options \['K'\]"):
        score_features(support, test, ["knn"], options={"knn": {"K": 3}})
    with pytest.raises(ValueError, match="no support images"):
        evaluate_features(Features(support.features, support.labels % 2), test, ["knn"])
    with pytest.raises(ValueError, match="0 unknown"):
        evaluate_features(support, Features(test.features, test.labels % 3), ["knn"])
    assert "knn" in scores.default_options()


def test_evaluate_features_metrics():
    support, test = make_features()
    result = evaluate_features(support, test, ["proto_euclid", "knn"], options={"knn": {"k": 5}})
    assert set(result.metrics["proto_euclid"]) == set(metrics.METRIC_NAMES)
    assert "closed_set_acc" not in result.metrics["knn"]
    assert result.metrics["knn"]["n_known"] + result.metrics["knn"]["n_unknown"] == len(test)
    # Well-separated clusters: both scores separate the unknown cluster almost perfectly.
    assert result.metrics["proto_euclid"]["auroc"] > 0.9
    assert result.metrics["knn"]["auroc"] > 0.9
