"""``--train-size``: the encoder and ProtoNets train on smaller images than they embed and are evaluated on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cactus.core.errors import CactusError
from cactus.learners.protonets import ProtoNets
from cactus.learners.registry import learner_config
from cactus.nets import resize_images
from embeddings.augment import AugmentConfig, NaturalAugmentConfig, augment
from embeddings.contrastive import ContrastiveEncoder


def _photos(batch: int = 6, size: int = 16, channels: int = 3) -> torch.Tensor:
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(0))


def test_a_whole_image_view_at_half_the_side_is_its_two_by_two_average():
    x = _photos()
    whole = NaturalAugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), p_flip=0.0, p_jitter=0.0, p_grey=0.0)
    view = augment(x, torch.Generator().manual_seed(1), whole, side=8)
    assert view.shape == (6, 3, 8, 8)
    assert torch.allclose(view, F.avg_pool2d(x, 2), atol=1e-6)


@pytest.mark.parametrize("config", [NaturalAugmentConfig(), AugmentConfig()])
def test_views_of_either_set_come_at_the_training_side_and_follow_the_generator(config):
    x = _photos(channels=1 if isinstance(config, AugmentConfig) else 3)
    a = augment(x, torch.Generator().manual_seed(2), config, side=10)
    b = augment(x, torch.Generator().manual_seed(2), config, side=10)
    assert a.shape == (*x.shape[:2], 10, 10) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1


def test_resize_images_keeps_the_size_it_is_asked_for_and_the_range():
    x = _photos(size=21)
    assert resize_images(x, 21) is x
    small = resize_images(x, 8)
    assert small.shape == (6, 3, 8, 8) and small.min() >= 0 and small.max() <= 1
    flat = torch.full((2, 3, 20, 20), 0.25)
    assert torch.allclose(resize_images(flat, 7), torch.full((2, 3, 7, 7), 0.25))


def _record_input_sides(module: torch.nn.Module) -> list[int]:
    sides: list[int] = []
    first_conv = next(m for m in module.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_pre_hook(lambda _m, args: sides.append(args[0].shape[-1]))
    return sides


def test_the_contrastive_encoder_trains_on_small_views_and_embeds_any_size():
    images = np.random.default_rng(0).integers(0, 256, (24, 16, 16, 3), dtype=np.uint8)
    encoder = ContrastiveEncoder(width=4, dim=8, proj_dim=4, epochs=1, batch_size=8, train_size=8, device="cpu",
                                 threads=1)
    original_build = encoder._build

    def build_and_record(shape):
        original_build(shape)
        encoder._sides = _record_input_sides(encoder.backbone_)

    encoder._build = build_and_record
    encoder.fit(images)
    assert set(encoder._sides) == {8}  # every training step and the batch-norm re-estimate saw 8x8 images
    assert encoder.transform(images).shape == (24, 8)
    assert encoder._sides[-1] == 16  # the embedding is computed at the images' own size ...
    larger = np.random.default_rng(1).integers(0, 256, (3, 24, 24, 3), dtype=np.uint8)
    assert encoder.transform(larger).shape == (3, 8)  # ... and at any other
    with pytest.raises(CactusError, match="trained on"):
        encoder.transform(larger[..., :1])
    with pytest.raises(CactusError, match="--train-size 20: larger than the 16x16 images"):
        ContrastiveEncoder(width=4, dim=8, epochs=1, train_size=20, device="cpu").fit(images)


def _task_batch(size: int = 16):
    g = torch.Generator().manual_seed(4)
    support_x = torch.rand(2, 3, 3, size, size, generator=g)
    query_x = torch.rand(2, 6, 3, size, size, generator=g)
    return support_x, torch.arange(3).expand(2, -1), query_x, torch.arange(3).repeat_interleave(2).expand(2, -1)


def test_protonets_meta_train_on_resized_tasks_as_if_given_the_small_images():
    support_x, support_y, query_x, query_y = _task_batch()
    resized = ProtoNets(3, 16, 3, filters=4, seed=1, train_size=8)
    reference = ProtoNets(3, 8, 3, filters=4, seed=1)
    sides = _record_input_sides(resized.net)
    small = [resize_images(x.flatten(0, 1), 8).unflatten(0, x.shape[:2]) for x in (support_x, query_x)]
    assert resized.meta_step(support_x, support_y, query_x, query_y) == reference.meta_step(
        small[0], support_y, small[1], query_y)
    for mine, theirs in zip(resized.net.parameters(), reference.net.parameters(), strict=True):
        assert torch.equal(mine, theirs)  # the same Adam step
    assert set(sides) == {8}
    resized.predict(support_x, support_y, query_x)
    assert sides[-1] == 16  # predictions at the images' own size


def test_only_protonets_take_a_train_size():
    assert learner_config("protonets", 5, {"train_size": 42})["train_size"] == 42
    assert "train_size" not in learner_config("protonets", 5, {})  # the key of older artifacts is unchanged
    with pytest.raises(CactusError, match="--train-size: only ProtoNets"):
        learner_config("maml", 5, {"train_size": 42})
