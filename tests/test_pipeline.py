"""Pipeline pieces that need no images: the full round's weights, the verdict split, the input size."""
import numpy as np

from annotator import backbone, pipeline
from annotator.store import Store


def test_full_round_weights_are_train_classifiers_soft_weights(tmp_path):
    """w_soft = max(0, s), verdicts override (1 correct, 0 wrong, unsure ignored), images without a score 1,
    then divided by the mean: the same weights `train-classifier` (cleannet_core.alternate) trains with."""
    store = Store(tmp_path / "a.db")
    ids = store.ensure_classes(["cat", "dog"])
    store.add_images({"path": f"/img/{k}.jpg", "hash": str(k), "label_id": ids["cat" if k < 4 else "dog"]}
                     for k in range(1, 7))
    v = store.add_model(delta=0.1)
    scores = {1: 0.8, 2: -0.5, 3: 0.3, 4: 0.6, 5: 0.2}                   # image 6 has no score yet
    store.write_scores(v, [(k, ids["cat" if k < 4 else "dog"], s, abs(s - 0.1)) for k, s in scores.items()])
    store.make_current(v)
    store.record_verdict(1, "ann", "wrong", reason="audit")              # odd id + audit: a validation verdict
    store.record_verdict(2, "ann", "correct", reason="uncertain")
    store.record_verdict(3, "ann", "unsure", reason="uncertain")
    data = pipeline.load_data(store)
    w = pipeline.full_round_weights(store, data, store.current_model())
    raw = np.array([0.0, 1.0, 0.3, 0.6, 0.2, 1.0])                       # by image id 1..6
    np.testing.assert_allclose(w[np.argsort(data.ids)], raw / raw.mean(), rtol=1e-6)


def test_verdict_split_leaves_out_unreadable_images(tmp_path):
    """Audit verdicts on odd ids validate, the rest train, 'unsure' is dropped, and so is any verdict on an
    image without features (not readable); the verdict itself stays in the log."""
    store = Store(tmp_path / "a.db")
    ids = store.ensure_classes(["cat"])
    store.add_images({"path": f"/img/{k}.jpg", "hash": str(k), "label_id": ids["cat"]} for k in range(1, 6))
    for image_id, verdict, reason in [(1, "wrong", "audit"), (2, "correct", "audit"), (3, "correct", "uncertain"),
                                      (4, "unsure", "uncertain"), (5, "wrong", "audit")]:
        store.record_verdict(image_id, "ann", verdict, reason=reason)
    data = pipeline.load_data(store)
    row = {int(i): k for k, i in enumerate(data.ids)}
    split = pipeline.verdict_split(store, data)
    assert sorted(data.ids[split.val].tolist()) == [1, 5] and sorted(data.ids[split.train].tolist()) == [2, 3]
    readable = np.ones(len(data.ids), bool)
    readable[[row[3], row[5]]] = False
    split = pipeline.verdict_split(store, data, readable)
    assert data.ids[split.val].tolist() == [1] and split.val_correct.tolist() == [False]
    assert data.ids[split.train].tolist() == [2] and split.train_correct.tolist() == [True]
    rows, correct = split.every()
    assert data.ids[rows].tolist() == [2, 1] and correct.tolist() == [True, False] and split.n == 2
    assert store.verdict_count() == 5


def test_image_size_is_chosen_by_image_side_and_store_size(tmp_path):
    """Automatic size: small images (median side <= 64 px) go to Lite0 at 128 px below UPSCALE_224_FROM images
    and at 224 px from there, to a ResNet at 32 px; larger images to 224 px; a set image_size always wins."""
    from annotator.round_config import RoundConfig
    small, large = Store(tmp_path / "small.db"), Store(tmp_path / "large.db")
    for store, side in ((small, 32), (large, 300)):
        cat = store.ensure_classes(["cat"])["cat"]
        store.add_images({"path": f"/img/{k}.png", "hash": str(k), "label_id": cat, "width": side,
                          "height": side + 10} for k in range(5))
    edge = backbone.UPSCALE_224_FROM
    lite, resnet = RoundConfig(), RoundConfig(arch="resnet18")
    assert [backbone.pick_image_size(small, lite, n_images=n) for n in (5, edge - 1, edge)] == [128, 128, 224]
    assert backbone.pick_image_size(small, resnet, n_images=edge) == 32
    assert [backbone.pick_image_size(large, c, n_images=5) for c in (lite, resnet)] == [224, 224]
    assert backbone.pick_image_size(small, RoundConfig(image_size=96), n_images=edge) == 96


def test_a_current_model_without_a_readable_checkpoint_does_not_stop_the_next_round(tmp_path):
    """The next round continues from the current model's checkpoint (a probe to reuse, a CleanNet to warm-start);
    a model registered without one, or whose file is missing or not a checkpoint, is fitted from scratch."""
    assert pipeline.warm_state(None) is None
    assert pipeline.warm_state({"checkpoint": None}) is None
    assert pipeline.warm_state({"checkpoint": str(tmp_path / "gone.pt")}) is None
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert pipeline.warm_state({"checkpoint": str(junk)}) is None


def test_verdict_split_orders_rows_oldest_verdict_first(tmp_path):
    """The stopping signal leaves out each class's newest verdicts: train rows come in the order the live
    verdicts were given, whatever the image ids; a verdict given again after an undo counts as new."""
    store = Store(tmp_path / "a.db")
    ids = store.ensure_classes(["cat"])
    store.add_images({"path": f"/img/{k}.jpg", "hash": str(k), "label_id": ids["cat"]} for k in range(1, 6))
    for image_id in (4, 2, 3):
        store.record_verdict(image_id, "ann", "correct", reason="uncertain")
    store.undo_last("ann")  # the verdict on 3
    store.record_verdict(5, "ann", "wrong", reason="uncertain")
    store.record_verdict(3, "ann", "wrong", reason="uncertain")
    data = pipeline.load_data(store)
    split = pipeline.verdict_split(store, data)
    assert data.ids[split.train].tolist() == [4, 2, 5, 3]
    assert split.train_correct.tolist() == [True, True, False, False]
