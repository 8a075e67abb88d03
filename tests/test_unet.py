"""Property tests for the ADM U-Net backbone (tiny models, CPU, fast)."""

import copy

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from mtdiff.models import unet
from mtdiff.models.unet import AttentionBlock, UNet, group_norm, output_block, timestep_embedding

TINY = dict(
    image_size=8,
    in_channels=3,
    out_channels=3,
    model_channels=8,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(4,),
    num_heads=2,
)


def make(seed: int = 0, **overrides) -> UNet:
    torch.manual_seed(seed)
    return UNet(**{**TINY, **overrides})


def inputs(model: UNet, batch: int = 2, seed: int = 1, context_len: int = 5):
    g = torch.Generator().manual_seed(seed)
    s = model.image_size
    z = torch.randn(batch, model.in_channels, s, s, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    kw = {}
    if model.cond_channels:
        kw["cond"] = torch.randn(batch, model.cond_channels, s, s, generator=g)
    if model.context_dim:
        kw["context"] = torch.randn(batch, context_len, model.context_dim, generator=g)
    return z, t, kw


def perturb(model: UNet, seed: int = 2, std: float = 0.1) -> UNet:
    """Add noise to every parameter, so zero-initialised layers stop hiding the trunk."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    return model


CONFIGS = {
    "plain": {},
    "cond": dict(cond_channels=2),
    "context": dict(context_dim=6),
    "cond+context": dict(cond_channels=1, context_dim=6),
    "no_scale_shift": dict(use_scale_shift_norm=False),
    "resblock_updown": dict(resblock_updown=True),
    "attn_all": dict(image_size=16, channel_mult=(1, 2, 2), attention_resolutions=(16, 8, 4)),
    "head_channels": dict(model_channels=16, num_head_channels=8, attention_resolutions=(8, 4)),
    "three_levels": dict(
        image_size=16,
        channel_mult=(1, 1, 2),
        num_res_blocks=2,
        attention_resolutions=(8,),
        out_channels=5,
        resblock_updown=True,
        context_dim=4,
    ),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_shapes_and_zero_eps_at_init(name):
    model = make(**CONFIGS[name])
    z, t, kw = inputs(model, batch=2)
    out = model(z, t, **kw)
    cfg = {**TINY, **CONFIGS[name]}
    s, mid = cfg["image_size"], cfg["image_size"] // 2 ** (len(cfg["channel_mult"]) - 1)
    assert model.output_channels == cfg["model_channels"] * cfg["channel_mult"][0]
    assert model.middle_channels == cfg["model_channels"] * cfg["channel_mult"][-1]
    assert out["middle"].shape == (2, model.middle_channels, mid, mid)
    assert out["output"].shape == (2, model.output_channels, s, s)
    assert out["eps"].shape == (2, cfg["out_channels"], s, s)
    assert torch.equal(out["eps"], torch.zeros_like(out["eps"]))  # zero-init out conv
    assert out["output"].abs().sum() > 0


def test_every_parameter_gets_a_gradient():
    model = make(cond_channels=1, context_dim=6, resblock_updown=True)
    torch.nn.init.normal_(model.out[-1].weight, std=0.1)  # only the out conv re-initialised
    z, t, kw = inputs(model)
    model(z, t, **kw)["eps"].square().mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []

    perturb(model).zero_grad(set_to_none=True)  # with all zero-init layers perturbed: grads are non-zero
    model(z, t, **kw)["eps"].square().mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0] == []


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_gradient_checkpointing_matches(dropout, monkeypatch):
    ref = perturb(make(context_dim=6, cond_channels=1, dropout=dropout)).train()
    ckpt = copy.deepcopy(ref)
    ckpt.gradient_checkpointing = True
    z, t, kw = inputs(ref)
    calls = []
    monkeypatch.setattr(unet, "checkpoint", lambda *a, **k: calls.append(k) or checkpoint(*a, **k))
    with torch.no_grad():
        ckpt(z, t, **kw)
    assert calls == []  # no checkpointing without grad
    outs = []
    for model in (ref, ckpt):
        torch.manual_seed(3)
        out = model(z, t, **kw)
        (out["eps"].square().mean() + out["middle"].mean()).backward()
        outs.append(out)
    n_blocks = len(ref.input_blocks) + 1 + len(ref.output_blocks)
    assert len(calls) == n_blocks and all(k == {"use_reentrant": False} for k in calls)
    for key in outs[0]:
        torch.testing.assert_close(outs[0][key], outs[1][key])
    for (n, p), q in zip(ref.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=n)


def test_samples_are_independent_of_the_batch():
    model = perturb(make(cond_channels=1, context_dim=6)).eval()
    z, t, kw = inputs(model, batch=3)
    with torch.no_grad():
        batched = model(z, t, **kw)
        for i in range(3):
            single = model(z[i : i + 1], t[i : i + 1], **{k: v[i : i + 1] for k, v in kw.items()})
            for key in batched:
                torch.testing.assert_close(batched[key][i : i + 1], single[key], atol=1e-5, rtol=1e-4)


def test_conditioning_inputs_matter():
    model = perturb(make(cond_channels=1, context_dim=6)).eval()
    z, t, kw = inputs(model)
    with torch.no_grad():
        eps = model(z, t, **kw)["eps"]
        assert not torch.allclose(eps, model(z, t + 1, **kw)["eps"])
        assert not torch.allclose(eps, model(z, t, cond=-kw["cond"], context=kw["context"])["eps"])
        assert not torch.allclose(eps, model(z, t, cond=kw["cond"], context=kw["context"].flip(1) + 1)["eps"])
        assert not torch.allclose(eps, model(z, t, cond=kw["cond"])["eps"])  # context=None skips cross-attention
        # float timesteps with integer values equal long timesteps; a scalar t broadcasts
        torch.testing.assert_close(eps, model(z, t.float(), **kw)["eps"])
        torch.testing.assert_close(model(z, t[:1].expand(2), **kw)["eps"], model(z, t[0], **kw)["eps"])


def test_context_is_ignored_at_init():
    model = perturb(make(context_dim=6)).eval()
    for m in model.modules():  # cross-attention out projections back to their zero init
        if isinstance(m, AttentionBlock):
            torch.nn.init.zeros_(m.cross.proj.weight)
            torch.nn.init.zeros_(m.cross.proj.bias)
    z, t, kw = inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(model(z, t, **kw)["eps"], model(z, t)["eps"])


def test_channels_last_matches():
    model = perturb(make(context_dim=6, resblock_updown=True)).eval()
    z, t, kw = inputs(model)
    with torch.no_grad():
        ref = model(z, t, **kw)
        model = model.to(memory_format=torch.channels_last)
        out = model(z.to(memory_format=torch.channels_last), t, **kw)
    for key in ref:
        torch.testing.assert_close(ref[key], out[key], atol=1e-5, rtol=1e-4)


def test_attention_is_permutation_equivariant():
    torch.manual_seed(0)
    block = perturb(AttentionBlock(16, heads=4, context_dim=6)).eval()
    x, context = torch.randn(2, 16, 4, 4), torch.randn(2, 3, 6)
    perm = torch.randperm(16)
    with torch.no_grad():
        out = block(x, None, context).flatten(2)[..., perm]
        out_perm = block(x.flatten(2)[..., perm].reshape(2, 16, 4, 4), None, context).flatten(2)
        torch.testing.assert_close(out, out_perm, atol=1e-5, rtol=1e-4)
        # permuting the context tokens changes nothing either
        torch.testing.assert_close(block(x, None, context), block(x, None, context.flip(1)), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cond", [None, "wrong_channels", "wrong_size"])
def test_wrong_cond_raises(cond):
    model = make(cond_channels=2)
    z, t, _ = inputs(model)
    bad = {None: None, "wrong_channels": torch.randn(2, 1, 8, 8), "wrong_size": torch.randn(2, 2, 4, 4)}[cond]
    with pytest.raises(ValueError, match=r"\[2, 2, 8, 8\]"):
        model(z, t, cond=bad)


def test_unexpected_inputs_raise():
    model = make()
    z, t, _ = inputs(model)
    with pytest.raises(ValueError, match="cond_channels=0"):
        model(z, t, cond=torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match="context_dim=None"):
        model(z, t, context=torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match=r"\[2, L, 6\]"):
        make(context_dim=6)(z, t, context=torch.randn(2, 3, 5))


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(image_size=10, channel_mult=(1, 2, 2)), "divisible"),
        (dict(attention_resolutions=(4, 3)), r"\[3\] are not reached"),
        (dict(attention_resolutions=(16,)), "not reached"),
        (dict(num_heads=3), "num_heads=3"),
        (dict(num_head_channels=3), "num_head_channels=3"),
        (dict(num_res_blocks=0), "num_res_blocks"),
        (dict(channel_mult=()), "channel_mult"),
        (dict(cond_channels=-1), "cond_channels"),
    ],
)
def test_invalid_config_raises(overrides, match):
    with pytest.raises(ValueError, match=match):
        make(**overrides)


def test_timestep_embedding():
    t = torch.tensor([0, 1, 10, 999])
    for dim in (16, 17):
        emb = timestep_embedding(t, dim)
        assert emb.shape == (4, dim) and emb.dtype == torch.float32
        assert torch.all(torch.cdist(emb, emb) + torch.eye(4) > 1e-3)  # pairwise distinct
    emb = timestep_embedding(t.double(), 16)
    assert emb.dtype == torch.float32 and emb.abs().max() <= 1


def test_group_norm_groups():
    """At least 4 channels per group (so the mean survives normalisation), at most 32 groups."""
    for c in (4, 7, 8, 12, 16, 40, 64, 96, 128, 192, 256):
        g = group_norm(c).num_groups
        assert c % g == 0 and c // g >= 4 or c < 8, c
        assert g <= 32
    assert group_norm(128).num_groups == 32 and group_norm(192).num_groups == 32


def test_output_block():
    block = output_block(16, 3)
    assert [type(m) for m in block] == [torch.nn.GroupNorm, torch.nn.SiLU, torch.nn.Conv2d]
    assert block[-1].kernel_size == (3, 3) and block(torch.randn(2, 16, 4, 4)).abs().sum() == 0


def test_attention_hands_sdpa_unit_stride_qkv(monkeypatch):
    """Fused CUDA SDPA kernels need q/k/v with last-dim stride 1, else the quadratic math kernel runs."""
    strides, sdpa = [], torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        strides.append(tuple(a.stride(-1) for a in (q, k, v)))
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(unet.F, "scaled_dot_product_attention", spy)
    model = make(context_dim=6).eval()
    z, t, kw = inputs(model)
    with torch.no_grad():
        model(z, t, **kw)
    n_blocks = sum(isinstance(m, AttentionBlock) for m in model.modules())
    assert len(strides) == 2 * n_blocks  # self- and cross-attention in each block
    assert all(s == (1, 1, 1) for s in strides), strides


def test_attention_block_matches_reference_float64():
    """Self-attention equals softmax(q^T k / sqrt(d)) v written out by hand; the parameters are unchanged."""
    torch.manual_seed(0)
    C, n, B, H, W = 16, 4, 2, 3, 5
    block = perturb(AttentionBlock(C, heads=n)).double().eval()
    assert {k: tuple(v.shape) for k, v in block.state_dict().items()} == {
        "norm.weight": (C,),
        "norm.bias": (C,),
        "qkv.weight": (3 * C, C, 1, 1),
        "qkv.bias": (3 * C,),
        "proj.weight": (C, C, 1, 1),
        "proj.bias": (C,),
    }
    x = torch.randn(B, C, H, W, dtype=torch.float64)
    h = block.norm(x).flatten(2)  # [B, C, HW]
    qkv = torch.einsum("oc,bcl->bol", block.qkv.weight[..., 0, 0], h) + block.qkv.bias[:, None]
    q, k, v = qkv.reshape(B, 3, n, C // n, H * W).unbind(1)  # [B, n, d, HW] each
    attn = torch.softmax(torch.einsum("bndi,bndj->bnij", q, k) / (C // n) ** 0.5, dim=-1)
    a = torch.einsum("bnij,bndj->bndi", attn, v).reshape(B, C, H * W)
    ref = x + (torch.einsum("oc,bcl->bol", block.proj.weight[..., 0, 0], a) + block.proj.bias[:, None]).reshape(
        B, C, H, W
    )
    with torch.no_grad():
        torch.testing.assert_close(block(x), ref, atol=1e-12, rtol=1e-12)
