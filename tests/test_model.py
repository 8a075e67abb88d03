"""Modalities, heads and the multi-head model: shapes, stop-gradients, the loss, Eq. 6's reduction to DDPM."""

import pytest
import torch
from conftest import tiny

from mtdiff.build import build_model, build_process
from mtdiff.loss import mt_loss
from mtdiff.modalities import LabelModality, SegmentationModality, VectorModality

B = 4


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.rand(B, 1, 32, 32, generator=g) * 2 - 1,
        "label": torch.randint(0, 10, (B,), generator=g),
        "vector": torch.randn(B, 6, generator=g),
        "segmentation": torch.randint(0, 3, (B, 32, 32), generator=g),
    }


ALL = [
    "modalities.label.kind=label",
    "modalities.seg.kind=segmentation",
    "modalities.seg.num_classes=3",
    "modalities.vec.kind=vector",
    "modalities.vec.dim=6",
]


@pytest.mark.parametrize(
    "variant,extra",
    [
        ("X", []),
        ("U", []),
        ("M", ALL),
        ("E", ALL),
        ("X", ALL),
        ("X", ALL + ["modalities.label.encoder=backbone", "modalities.vec.encoder=backbone"]),
        ("X", ALL + ["modalities.seg.head=middle-up"]),
        ("X", ALL + ["modalities.label.encoder=backbone", "model.encoded_flags=true"]),
    ],
)
def test_every_modality_trains_through_the_loss(variant, extra):
    cfg = tiny("mnist-masked-x", f"model.variant={variant}", *extra)
    model, proc = build_model(cfg), build_process(cfg)
    batch = _batch()
    g = torch.Generator().manual_seed(1)
    data = {n: m.derive(batch, g) for n, m in model.modalities.items()}
    t = torch.randint(0, 1000, (B,), generator=g)
    noise = torch.randn(B, 1, 32, 32, generator=g)
    with torch.no_grad():  # heads start from zero: make every path carry gradient
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    loss, terms = mt_loss(model, proc, batch["image"], data, t=t, noise=noise)
    assert set(terms) == {"eps_mse", *model.modalities}
    loss.backward()
    for name, m in model.modalities.items():
        assert all(p.grad is not None for p in m.decoder.parameters()), f"head of {name} gets no gradient"
    if model.flag_embed is not None:
        assert model.flag_embed.weight.grad.abs().sum() > 0
    eps, preds = model(torch.zeros(B, 1, 32, 32), t, data)
    assert eps.shape == (B, 1, 32, 32)
    shapes = {"masked_image": (B, 1, 32, 32), "label": (B, 10), "segmentation": (B, 3, 32, 32), "vector": (B, 6)}
    for name, m in model.modalities.items():
        assert preds[name].shape == shapes[m.kind]
        assert model.encode({name: data[name]})[name].shape == (B, 1, 32, 32)


def test_zero_weights_and_lambda_zero_reduce_eq6_to_the_ddpm_loss():
    cfg_mt = tiny("mnist-masked-u", "modalities.masked.aggregation=constant", "modalities.masked.weight=0.0")
    cfg_ddpm = tiny("mnist-ddpm")
    torch.manual_seed(0)
    mt = build_model(cfg_mt)
    ddpm = build_model(cfg_ddpm)
    ddpm.backbone.load_state_dict(mt.backbone.state_dict())
    with torch.no_grad():
        for p in list(mt.backbone.parameters()):
            p.add_(0.01 * torch.randn_like(p))
        ddpm.backbone.load_state_dict(mt.backbone.state_dict())
    batch = _batch()
    g = torch.Generator().manual_seed(2)
    data = {"masked": mt.modalities["masked"].derive(batch, g)}
    t, noise = torch.randint(0, 1000, (B,), generator=g), torch.randn(B, 1, 32, 32, generator=g)
    l_mt, _ = mt_loss(mt, build_process(cfg_mt), batch["image"], data, t=t, noise=noise, lam=0.0)
    l_dd, _ = mt_loss(ddpm, build_process(cfg_ddpm), batch["image"], {}, t=t, noise=noise, lam=0.0)
    assert torch.equal(l_mt, l_dd)


def test_label_fixed_encoder_is_linear_in_class_probabilities():
    m = LabelModality("y", num_classes=3, z_shape=(1, 4, 4), features={"middle": 8, "output": 8})
    e = m.encode(torch.tensor([0, 2]))
    torch.testing.assert_close(e, m.class_images[[0, 2]])
    p = torch.tensor([[0.25, 0.5, 0.25]])
    torch.testing.assert_close(
        m.encode(p)[0], 0.25 * m.class_images[0] + 0.5 * m.class_images[1] + 0.25 * m.class_images[2]
    )
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        m.encode(torch.tensor([3]))


def test_backbone_encoder_is_under_stop_gradient():
    cfg = tiny("mnist-masked-x", *ALL[:1], "modalities.label.encoder=backbone")
    model = build_model(cfg)
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    e = model.encode({"label": torch.tensor([1, 2])})["label"]
    assert e.shape == (2, 1, 32, 32) and not e.requires_grad and e.abs().sum() > 0


def test_segmentation_and_vector_encoders():
    seg = SegmentationModality("s", num_classes=3, z_shape=(2, 4, 4), features={"middle": 8, "output": 8})
    x = torch.randint(0, 3, (2, 4, 4))
    e = seg.encode(x)
    torch.testing.assert_close(e.permute(0, 2, 3, 1), seg.class_values[x])
    vec = VectorModality("v", dim=5, z_shape=(1, 4, 4), features={"middle": 8, "output": 8})
    v = torch.randn(3, 5)
    torch.testing.assert_close(vec.encode(2 * v), 2 * vec.encode(v))


def test_x_variant_needs_its_inputs():
    model = build_model(tiny("mnist-masked-x"))
    with pytest.raises(ValueError, match="masked"):
        model(torch.zeros(1, 1, 32, 32), torch.zeros(1, dtype=torch.long), {})


def test_inverse_mode_reads_a_label_distribution_from_the_head():
    """Image -> label (classification) through the label head, from one model."""
    from mtdiff.sampling import inverse

    cfg = tiny("mnist-masked-u", *ALL[:1], "model.variant=M")
    model, proc = build_model(cfg).eval(), build_process(cfg)
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    z0 = _batch()["image"]
    probs = inverse(model, proc, z0, "label", generator=torch.Generator().manual_seed(0))
    assert probs.shape == (B, 10)
    torch.testing.assert_close(probs.sum(1), torch.ones(B))
    again = inverse(model, proc, z0, "label", generator=torch.Generator().manual_seed(0))
    assert torch.equal(probs, again)


FLAGGED = [*ALL, "model.encoded_flags=true"]


@pytest.mark.parametrize(
    "encoder,precision", [("fixed", torch.float32), ("fixed", torch.bfloat16), ("backbone", torch.float32)]
)
def test_encoded_flags_say_which_encodings_formed_z_t(encoder, precision):
    """The flags of encoding dropout's rows are 0 (the "nothing known" shift), the rest 1 (but a completely
    masked image, which is "nothing known" itself), also under bf16 autocast and with the backbone as encoder
    (whose label encodings differ from E(null) by only 1e-5 in a randomised network); a head's estimate (a
    generated modality) counts as encoded."""
    model, _ = _randomised(tiny("mnist-masked-x", *FLAGGED, f"modalities.label.encoder={encoder}"))
    assert model.flagged == ("masked", "label", "seg", "vec")
    g = torch.Generator().manual_seed(3)
    data = {n: m.derive(_batch(), g) for n, m in model.modalities.items()}
    drop = {n: torch.rand(B, generator=g) < 0.5 for n in model.flagged}
    drop["label"] = torch.tensor([True, False, True, False])  # both kinds of rows for every kind at least once
    encoded = {n: model.modalities[n].drop(x, drop[n]) for n, x in data.items()}
    with torch.autocast("cpu", dtype=precision, enabled=precision != torch.float32):
        flags = model.encoded(model.encode(encoded), B)
    null = model.null_data(model.flagged, 1)
    known = {n: (encoded[n] != null[n]).flatten(1).any(1) for n in model.flagged}  # the data, not its encoding
    assert torch.equal(flags, torch.stack([known[n].float() for n in model.flagged], 1))
    assert not all(known["masked"] == ~drop["masked"])  # a complete mask (full_mask_prob) among the rows
    estimates = {n: p for n, p in model.predict(torch.randn(B, 1, 32, 32), torch.full((B,), 999), data)[1].items()}
    generated = model.encoded(model.encode(estimates), B)[:, 1:]  # label, seg, vec from their heads
    assert generated.all() if encoder == "fixed" else generated[:, 1:].all()  # (not the random backbone's 1e-9s)
    assert not model.encoded({}, B).any()


def test_all_flags_off_is_the_network_without_flags():
    """The flags enter only as an added embedding: with every encoding "nothing known" the flagged network is the
    plain one with the same weights; one encoding present changes its output."""
    flagged, _ = _randomised(tiny("mnist-masked-x", *FLAGGED))
    plain = build_model(tiny("mnist-masked-x", *ALL)).eval()
    missing, unexpected = plain.load_state_dict(flagged.state_dict(), strict=False)
    assert missing == [] and unexpected == ["flag_embed.weight"]
    z, t = torch.randn(B, 1, 32, 32), torch.full((B,), 400)
    nothing = flagged.null_data(list(flagged.modalities), B)
    torch.testing.assert_close(flagged.predict(z, t, nothing)[0], plain.predict(z, t, nothing)[0], rtol=0, atol=0)
    label = {**nothing, "label": torch.nn.functional.one_hot(torch.arange(B), 10).float()}
    enc = flagged.encode(label)
    assert not torch.allclose(flagged.predict(z, t, nothing, enc)[0], plain.predict(z, t, nothing, enc)[0])


def test_condition_dropout_replaces_exactly_the_dropped_samples():
    model = build_model(tiny("mnist-masked-x", *ALL[:1]))
    dropped = torch.tensor([True, False, True, False])
    y = torch.tensor([1, 2, 3, 4])
    out = model.modalities["label"].drop(y, dropped)
    torch.testing.assert_close(out[dropped], torch.full((2, 10), 0.1))
    torch.testing.assert_close(out[~dropped], torch.nn.functional.one_hot(y[~dropped], 10).float())
    img = _batch()["image"]
    out = model.modalities["masked"].drop(img, dropped)
    assert out[dropped].abs().max() == 0 and torch.equal(out[~dropped], img[~dropped])


def _randomised(cfg):
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model, build_process(cfg)


def test_classifier_free_guidance_interpolates_conditional_and_unconditional():
    from mtdiff.sampling import ClassifierFreeGuidance

    model, _ = _randomised(tiny("mnist-masked-x"))
    z, t = torch.randn(B, 1, 32, 32), torch.full((B,), 500)
    data = {"masked": _batch()["image"]}
    eps_c, _ = model.predict(z, t, data)
    eps_u, _ = model.predict(z, t, {"masked": torch.zeros(B, 1, 32, 32)})
    assert not torch.allclose(eps_c, eps_u)
    torch.testing.assert_close(ClassifierFreeGuidance(model, 1.0).predict(z, t, data)[0], eps_c)
    torch.testing.assert_close(ClassifierFreeGuidance(model, 0.0).predict(z, t, data)[0], eps_u)
    torch.testing.assert_close(ClassifierFreeGuidance(model, 3.0).predict(z, t, data)[0], eps_u + 3 * (eps_c - eps_u))


def test_head_guidance_follows_the_gradient_of_the_label_head():
    from mtdiff.sampling import HeadGuidance

    model, proc = _randomised(tiny("mnist-masked-u", *ALL[:1], "model.variant=M"))
    z, t = torch.randn(B, 1, 32, 32, dtype=torch.float64), torch.full((B,), 300)
    model = model.double()
    y = torch.tensor([0, 3, 5, 9])
    eps, _ = model.predict(z, t, {})
    torch.testing.assert_close(HeadGuidance(model, proc, "label", y, 0.0).predict(z, t, {})[0], eps)
    guided, _ = HeadGuidance(model, proc, "label", y, 2.0).predict(z, t, {})
    grad = (eps - guided) / (2.0 * proc.noise_std(t, z))  # = grad_z sum_b log p(y_b | z_b)

    def logp(zz):
        return torch.log_softmax(model(zz, t, {})[1]["label"], 1).gather(1, y[:, None]).sum()

    v = torch.randn_like(z)
    h = 1e-5
    numeric = (logp(z + h * v) - logp(z - h * v)) / (2 * h)
    torch.testing.assert_close((grad * v).sum(), numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("variant", ["M", "E"])
def test_head_detach_keeps_the_head_loss_out_of_the_backbone_in_training_only(variant):
    """With ``head_detach`` the label head's loss trains the head and leaves every backbone gradient at zero;
    without it the same loss reaches the backbone. In eval mode the head reads the features as they are, so
    the gradient with respect to z_t that head guidance follows is the same with and without the switch."""
    batch, t = _batch(), torch.full((B,), 300)
    grads, z_grads = {}, {}
    for detach in (False, True):
        torch.manual_seed(0)  # the same weights both times
        model, _ = _randomised(
            tiny("mnist-masked-u", *ALL[:1], f"model.variant={variant}", f"modalities.label.head_detach={detach}")
        )
        model.train()
        z = batch["image"].clone().requires_grad_(True)
        _, preds = model(z, t, {})
        torch.nn.functional.cross_entropy(preds["label"], batch["label"]).backward()
        grads[detach] = {n: p.grad for n, p in model.backbone.named_parameters()}
        assert all(
            p.grad is not None and p.grad.abs().sum() > 0
            for p in model.modalities["label"].parameters()
            if p.requires_grad
        )
        model.eval()
        z = batch["image"].clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(model(z, t, {})[1]["label"], batch["label"]).backward()
        z_grads[detach] = z.grad
    assert all(g is None or g.abs().sum() == 0 for g in grads[True].values())
    assert sum(float(g.abs().sum()) for g in grads[False].values() if g is not None) > 0
    torch.testing.assert_close(z_grads[True], z_grads[False])
    assert z_grads[True].abs().sum() > 0


def test_head_detach_needs_a_head():
    from mtdiff.config import ConfigError

    with pytest.raises(ConfigError, match="caption.head_detach"):
        tiny("mnist-text2img", "modalities.caption.head_detach=true")


def test_per_modality_loss_weights_scale_each_head_term_of_eq6():
    """L(lambda_i) = eps term + lam * sum_i lambda_i KL_i: with every weight 0 the loss is the eps term alone,
    and raising one modality's weight by 1 adds exactly lam times its own logged term."""
    base = ["modalities.label.kind=label", "modalities.label.num_classes=10"]
    g = torch.Generator().manual_seed(3)
    batch = _batch()
    t = torch.randint(0, 1000, (B,), generator=g)
    noise = torch.randn(B, 1, 32, 32, generator=g)

    def loss_with(*weights):
        torch.manual_seed(0)
        cfg = tiny("mnist-masked-x", *base, *weights)
        model, proc = build_model(cfg), build_process(cfg)
        with torch.no_grad():
            for p in model.parameters():
                if p.abs().sum() == 0:
                    p.normal_(0, 0.02)
        data = {n: m.derive(batch, torch.Generator().manual_seed(1)) for n, m in model.modalities.items()}
        return mt_loss(model, proc, batch["image"], data, t=t, noise=noise, lam=0.1)

    zero, terms = loss_with("modalities.label.loss_weight=0", "modalities.masked.loss_weight=0")
    one, _ = loss_with("modalities.masked.loss_weight=0")
    three, _ = loss_with("modalities.masked.loss_weight=0", "modalities.label.loss_weight=3")
    assert terms["label"] > 0
    torch.testing.assert_close(one - zero, 0.1 * terms["label"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(three - zero, 3 * (one - zero), rtol=1e-5, atol=1e-7)
    with pytest.raises(Exception, match="loss_weight must be >= 0"):
        tiny("mnist-masked-x", "modalities.masked.loss_weight=-1")
