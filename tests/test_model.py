import math

import pytest
import torch
import torch.nn.functional as F

from vit_lightning.layers import (
    ConvTokenizer,
    MultiHeadSelfAttention,
    SequencePooling,
    TokenGridConv,
    ViTBlock,
    create_patches,
    get_positional_embeddings,
    stochastic_depth,
)
from vit_lightning.model import VisionTransformer


def tiny_vit(**overrides) -> VisionTransformer:
    kwargs = dict(image_size=28, patch_size=7, dim=32, depth=2, heads=4, mlp_ratio=2.0, num_classes=10)
    return VisionTransformer(**{**kwargs, **overrides})


def test_create_patches_matches_unfold():
    images = torch.randn(3, 2, 8, 12)
    patches = create_patches(images, 4)
    expected = F.unfold(images, kernel_size=4, stride=4).transpose(1, 2)  # [B, N, C*p*p], row-major patches
    assert patches.shape == (3, 6, 32)
    torch.testing.assert_close(patches, expected)


def test_positional_embeddings_are_sinusoidal_and_distinct():
    pe = get_positional_embeddings(50, 64)
    assert pe.shape == (50, 64)
    torch.testing.assert_close(pe[0, 0::2], torch.zeros(32))  # sin(0)
    torch.testing.assert_close(pe[0, 1::2], torch.ones(32))  # cos(0)
    assert pe[:, 0].sub(torch.sin(torch.arange(50.0))).abs().max() < 1e-5
    distances = torch.cdist(pe, pe) + torch.eye(50) * 1e3
    assert distances.min() > 0.1  # every position has its own code


def test_attention_equals_naive_reference():
    torch.manual_seed(0)
    attention = MultiHeadSelfAttention(dim=24, heads=3).eval()
    x = torch.randn(2, 5, 24)
    q, k, v = attention.qkv(x).reshape(2, 5, 3, 3, 8).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), dim=-1)
    expected = attention.proj((weights @ v).transpose(1, 2).reshape(2, 5, 24))
    torch.testing.assert_close(attention(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attention.attention_weights(x), weights, atol=1e-6, rtol=1e-5)


def test_locality_attention_equals_naive_reference():
    """LSA: per-head learned scales of q k^T, and the diagonal (each token's attention to itself) masked out."""
    torch.manual_seed(0)
    attention = MultiHeadSelfAttention(dim=24, heads=3, locality=True).eval()
    with torch.no_grad():
        attention.scale.copy_(torch.tensor([0.5, 1.0, 2.0]))  # distinct heads: a scale applied to the wrong head fails
    x = torch.randn(2, 5, 24)
    q, k, v = attention.qkv(x).reshape(2, 5, 3, 3, 8).permute(2, 0, 3, 1, 4)
    weights = torch.zeros(2, 3, 5, 5)
    for b in range(2):
        for h in range(3):
            for i in range(5):
                others = [j for j in range(5) if j != i]
                scores = torch.stack([q[b, h, i] @ k[b, h, j] for j in others]) * attention.scale[h]
                weights[b, h, i, others] = torch.softmax(scores, dim=0)
    expected = attention.proj((weights @ v).transpose(1, 2).reshape(2, 5, 24))
    torch.testing.assert_close(attention.attention_weights(x), weights, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(attention(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(MultiHeadSelfAttention(24, 3, locality=True).scale.detach(),
                               torch.full((3,), 8**-0.5))  # starts at the usual 1/sqrt(d)
    assert attention.attention_weights(torch.randn(2, 1, 24)).eq(1).all()  # a lone token attends to itself, no NaN


@pytest.mark.parametrize("tokenizer, patch_size, stem_channels", [("patch", 7, 0), ("conv", 4, 0), ("conv", 4, 8)])
@pytest.mark.parametrize("pool, conv_mlp", [("cls", False), ("mean", False), ("seq", False), ("seq", True),
                                            ("cls", True)])
@pytest.mark.parametrize("pos_embedding, locality_attention", [("sincos", False), ("learned", False), ("sincos", True)])
def test_forward_shapes_and_every_parameter_gets_a_gradient(tokenizer, patch_size, stem_channels, pool, conv_mlp,
                                                            pos_embedding, locality_attention):
    torch.manual_seed(0)
    model = tiny_vit(tokenizer=tokenizer, patch_size=patch_size, stem_channels=stem_channels, pool=pool,
                     conv_mlp=conv_mlp, pos_embedding=pos_embedding, dropout=0.1,
                     drop_path=0.1, locality_attention=locality_attention)
    with torch.no_grad():
        model.head.weight.normal_()  # the head starts at zero, which would stop gradients reaching the body
    logits = model(torch.randn(4, 1, 28, 28))
    assert logits.shape == (4, 10)
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        assert torch.isfinite(parameter.grad).all(), name


def test_block_keeps_shape():
    assert ViTBlock(dim=16, heads=2)(torch.randn(2, 9, 16)).shape == (2, 9, 16)
    assert ViTBlock(dim=16, heads=2, conv_grid=3)(torch.randn(2, 9, 16)).shape == (2, 9, 16)


def test_token_grid_conv_equals_a_naive_neighbourhood_sum():
    """Token (r, c) of a row-major grid becomes the sum over its 3x3 neighbours (zero outside) of kernel x token."""
    torch.manual_seed(0)
    conv = TokenGridConv(channels=2, grid=3)
    tokens = torch.randn(1, 9, 2)
    weight, bias = conv.conv.weight[:, 0], conv.conv.bias  # [C, 3, 3], [C]
    expected = torch.zeros(1, 9, 2)
    for r in range(3):
        for c in range(3):
            total = bias.clone()
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    if 0 <= r + dr < 3 and 0 <= c + dc < 3:
                        total = total + weight[:, dr + 1, dc + 1] * tokens[0, (r + dr) * 3 + c + dc]
            expected[0, r * 3 + c] = total
    torch.testing.assert_close(conv(tokens), expected)
    class_token = torch.randn(1, 1, 2)  # a token before the grid passes through
    torch.testing.assert_close(conv(torch.cat([class_token, tokens], dim=1)), torch.cat([class_token, expected], 1))


def test_eval_is_deterministic_and_train_dropout_is_not():
    torch.manual_seed(0)
    model = tiny_vit(dropout=0.5)
    model.head.weight.data.normal_()
    x = torch.randn(2, 1, 28, 28)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    assert not torch.allclose(model(x), model(x))


def test_stochastic_depth_drops_whole_images_and_keeps_the_expected_value():
    torch.manual_seed(0)
    branch = torch.ones(4000, 3, 5)
    kept = stochastic_depth(branch, 0.25, training=True)
    per_image = kept.flatten(1)
    assert (per_image == per_image[:, :1]).all()  # an image's branch is dropped or kept as a whole
    assert per_image[:, 0].unique().tolist() == pytest.approx([0.0, 4 / 3])
    assert per_image[:, 0].eq(0).float().mean().item() == pytest.approx(0.25, abs=0.03)
    assert kept.mean().item() == pytest.approx(1.0, abs=0.05)
    assert stochastic_depth(branch, 0.25, training=False) is branch
    assert stochastic_depth(branch, 0.0, training=True) is branch


def test_block_with_drop_path_equals_a_naive_per_image_reference():
    """In training each image takes one of the four paths: attention and MLP branches each kept (scaled by 1/keep)
    or skipped; in evaluation the block is the plain block."""
    torch.manual_seed(0)
    block = ViTBlock(dim=16, heads=2, drop_path=0.5)
    x = torch.randn(16, 5, 16)
    out = block(x)

    def naive(image, keep_attention, keep_mlp):
        y = image + keep_attention * block.attn(block.norm1(image)) / 0.5
        return y + keep_mlp * block.mlp(block.norm2(y)) / 0.5

    paths = []
    for image, result in zip(x.unsqueeze(1), out.unsqueeze(1)):
        matches = [(a, m) for a in (0, 1) for m in (0, 1) if torch.allclose(naive(image, a, m), result, atol=1e-5)]
        assert len(matches) == 1
        paths += matches
    assert len(set(paths)) > 1  # per image, not per batch
    block.eval()
    torch.testing.assert_close(block(x), x + block.attn(block.norm1(x)) + block.mlp(block.norm2(
        x + block.attn(block.norm1(x)))))


def test_drop_path_rises_over_the_blocks_and_leaves_evaluation_and_checkpoints_unchanged():
    torch.manual_seed(0)
    model = tiny_vit(depth=3, drop_path=0.2)
    assert [block.drop_path for block in model.blocks] == pytest.approx([0.0, 0.1, 0.2])
    plain = tiny_vit(depth=3)
    plain.load_state_dict(model.state_dict())  # no parameters of its own: the same checkpoint either way
    model.head.weight.data.normal_()
    plain.head.weight.data.copy_(model.head.weight.data)
    x = torch.randn(8, 1, 28, 28)
    torch.testing.assert_close(model.eval()(x), plain.eval()(x))
    assert not torch.allclose(model.train()(x), plain.train()(x))


@pytest.mark.parametrize("pool", ["cls", "mean", "seq"])
def test_attention_rollout_is_a_distribution_over_the_patch_grid(pool):
    model = tiny_vit(pool=pool).eval()
    rollout = model.attention_rollout(torch.randn(3, 1, 28, 28))
    assert rollout.shape == (3, 4, 4)
    torch.testing.assert_close(rollout.sum(dim=(1, 2)), torch.ones(3))
    assert (rollout >= 0).all()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(patch_size=5), "not divisible by patch_size"),
        (dict(dim=30, heads=4), "not divisible by heads"),
        (dict(pool="max"), "pool must be"),
        (dict(tokenizer="resnet"), "tokenizer must be"),
        (dict(tokenizer="conv", patch_size=7), "power of two"),
        (dict(dropout=1.0), "dropout"),
        (dict(drop_path=1.0), "drop_path"),
        (dict(drop_path=-0.1), "drop_path"),
        (dict(tokenizer="conv", patch_size=4, stem_channels=-1), "stem_channels"),
    ],
)
def test_invalid_settings_raise_value_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_vit(**overrides)


def test_wrong_image_size_is_reported():
    with pytest.raises(ValueError, match="expected 28x28 images"):
        tiny_vit()(torch.randn(1, 1, 32, 32))


def test_conv_tokenizer_halves_the_image_per_stage_and_doubles_channels_to_the_width():
    tokenizer = ConvTokenizer(in_channels=1, dim=32, downsample=4)
    convs = [layer for layer in tokenizer.stem if isinstance(layer, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in convs] == [(1, 16, (2, 2)), (16, 32, (2, 2))]
    assert tokenizer(torch.randn(2, 1, 28, 28)).shape == (2, 49, 32)  # 28 -> 14 -> 7: a 7x7 grid of tokens
    assert ConvTokenizer(in_channels=3, dim=8, downsample=2)(torch.randn(1, 3, 28, 28)).shape == (1, 196, 8)


def test_stem_channels_put_a_full_resolution_convolution_before_the_strided_ones():
    tokenizer = ConvTokenizer(in_channels=1, dim=32, downsample=4, stem_channels=8)
    convs = [layer for layer in tokenizer.stem if isinstance(layer, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in convs] == [(1, 8, (1, 1)), (8, 16, (2, 2)),
                                                                          (16, 32, (2, 2))]
    assert tokenizer(torch.randn(2, 1, 28, 28)).shape == (2, 49, 32)


def test_conv_tokens_are_row_major_like_patches():
    """Token i of the conv stem sees the image region of patch i: the grid is flattened row by row."""
    torch.manual_seed(0)
    model = tiny_vit(tokenizer="conv", patch_size=4).eval()
    image = torch.zeros(1, 1, 28, 28)
    image[..., 0:4, 24:28] = 5.0  # the top-right patch: token 6 of a 7x7 grid
    changed = (model.patch_embed(image) - model.patch_embed(torch.zeros_like(image))).abs().sum(-1)[0]
    assert changed.argmax() == 6


def test_sequence_pooling_equals_naive_weighted_sum():
    torch.manual_seed(0)
    pool = SequencePooling(dim=8)
    tokens = torch.randn(3, 5, 8)
    weights = torch.softmax(tokens @ pool.score.weight[0], dim=1)  # [B, N]
    expected = (weights.unsqueeze(-1) * tokens).sum(dim=1)
    torch.testing.assert_close(pool(tokens), expected)
    torch.testing.assert_close(pool.weights(tokens).sum(dim=1), torch.ones(3))


def test_a_state_dict_with_the_old_pooling_bias_loads_and_predicts_what_it_predicted():
    """Earlier versions had a bias on the pooling score, which softmax ignores: old weights load, outputs unchanged."""
    torch.manual_seed(0)
    model = tiny_vit(pool="seq").eval()
    with torch.no_grad():
        model.head.weight.normal_()
    old_state = {**model.state_dict(), "sequence_pool.score.bias": torch.tensor([3.7])}
    images = torch.randn(2, 1, 28, 28)
    with torch.no_grad():  # what the old model computed: the score with its bias
        features = model.forward_features(images)
        weights = torch.softmax(features @ model.sequence_pool.score.weight[0] + 3.7, dim=1)
        old_logits = model.head((weights.unsqueeze(-1) * features).sum(dim=1))
    reloaded = tiny_vit(pool="seq").eval()
    reloaded.load_state_dict(old_state, strict=True)
    assert "sequence_pool.score.bias" not in reloaded.state_dict()
    torch.testing.assert_close(reloaded(images), old_logits)


def test_no_weight_decay_names_the_class_token_and_learned_positions_only():
    assert tiny_vit(pool="cls", pos_embedding="learned").no_weight_decay() == {"cls_token", "pos_embedding"}
    assert tiny_vit(pool="seq", pos_embedding="sincos").no_weight_decay() == set()  # a buffer is not decayed anyway


def test_sequence_pooled_rollout_weights_the_rows_by_the_pooling_weights():
    torch.manual_seed(0)
    model = tiny_vit(pool="seq").eval()
    images = torch.randn(2, 1, 28, 28)
    maps = model.attention_maps(images).mean(dim=2)
    eye = torch.eye(maps.shape[-1])
    rollout = eye.expand_as(maps[0])
    for attention in maps:
        attention = 0.5 * attention + 0.5 * eye
        rollout = (attention / attention.sum(dim=-1, keepdim=True)) @ rollout
    with torch.no_grad():
        weights = model.sequence_pool.weights(model.forward_features(images))
    expected = (weights.unsqueeze(1) @ rollout).squeeze(1)
    expected = (expected / expected.sum(dim=-1, keepdim=True)).reshape(2, 4, 4)
    torch.testing.assert_close(model.attention_rollout(images), expected)
