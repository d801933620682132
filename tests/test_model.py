"""CleanNet module: sizes from the spec, init, attention, the per-class shortcut, losses by hand."""
import math

import pytest
import torch

from cleannet_core.losses import cleannet_loss, pseudo_label_loss, reconstruction_loss, verification_loss
from cleannet_core.model import CleanNet, CleanNetConfig, cosine


def test_parameter_count_matches_spec():
    model = CleanNet()
    assert sum(p.numel() for p in model.parameters()) == 2_396_160
    assert sum(p.numel() for p in model.query.parameters()) == 1_116_800
    assert sum(p.numel() for p in model.reference.parameters()) == 1_279_360


def test_init_xavier_uniform_zero_bias_and_context_bound():
    model = CleanNet()
    w = model.query.enc1.weight  # (256, 2048)
    bound = math.sqrt(6 / (2048 + 256))
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert all((m.bias == 0).all() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert model.reference.context.abs().max() <= math.sqrt(3 / 256)


def test_forward_shapes_range_and_gradients():
    torch.manual_seed(0)
    model = CleanNet(CleanNetConfig(img_dim=64, num_ref=5, dropout=0.2))
    q, refs = torch.rand(7, 64), torch.rand(3, 5, 64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    out = model(q, labels, refs)
    assert out["sim"].shape == (7,) and out["v_hat"].shape == (7, 64)
    assert (out["sim"].abs() <= 1 + 1e-6).all() and not out["sim"].isnan().any()
    assert (out["v_hat"].abs() < 1).all()  # tanh decoder
    loss = cleannet_loss(out["sim"], torch.ones(7), torch.ones(7), out["v"], out["v_hat"])
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_per_class_shortcut_equals_per_sample_attention():
    """Running g1 once per class gives exactly the per-sample result of the spec's B x K x d path."""
    torch.manual_seed(1)
    model = CleanNet(CleanNetConfig(img_dim=32, num_ref=4)).eval()
    q, refs = torch.rand(6, 32), torch.rand(3, 4, 32)
    labels = torch.tensor([2, 0, 2, 1, 0, 2])
    sim = model(q, labels, refs)["sim"]
    phi_q, _ = model.query(model.normalize(q))
    phi_s = model.reference(model.normalize(refs[labels]))  # (B, K, d) per sample
    torch.testing.assert_close(sim, cosine(phi_q, phi_s))
    # and the all-classes embedding path used for scoring agrees too
    all_sims = model.query_embeddings(q) @ model.class_embeddings(refs).T
    torch.testing.assert_close(all_sims[torch.arange(6), labels], sim)


def test_attention_is_softmax_over_references():
    model = CleanNet(CleanNetConfig(img_dim=8, num_ref=3)).eval()
    h1 = torch.rand(2, 3, 512)
    h = torch.tanh(model.reference.g2(h1))
    alpha = torch.softmax(torch.tanh(model.reference.att(h)) @ model.reference.context, dim=1)
    expected = torch.tanh(model.reference.proj((alpha.unsqueeze(-1) * h).sum(1)))
    torch.testing.assert_close(model.reference.pool(h1), expected)
    torch.testing.assert_close(alpha.sum(1), torch.ones(2))


@pytest.mark.parametrize("norm", ["log", "l2", "none"])
def test_embed_norms(norm):
    model = CleanNet(CleanNetConfig(img_dim=3, num_ref=2, embed_norm=norm))
    v = torch.tensor([[0.0, 1.0, 3.0]])
    expected = {"log": torch.log(v + 1), "l2": v / math.sqrt(10), "none": v}[norm]
    torch.testing.assert_close(model.normalize(v), expected)


def test_unknown_embed_norm_lists_choices():
    with pytest.raises(ValueError, match="log"):
        CleanNetConfig(embed_norm="l2_norm")


def test_checkpoint_round_trip():
    model = CleanNet(CleanNetConfig(img_dim=16, num_ref=2))
    again = CleanNet.from_checkpoint(model.checkpoint())
    q, refs = torch.rand(3, 16), torch.rand(2, 2, 16)
    labels = torch.tensor([0, 1, 1])
    torch.testing.assert_close(model.eval()(q, labels, refs)["sim"], again.eval()(q, labels, refs)["sim"])


# ---- losses, against values computed by hand (spec §4.1) ----

def test_verification_loss_by_hand():
    s = torch.tensor([0.8, 0.8, 0.05, -0.3])
    l = torch.tensor([1.0, 0.0, 0.0, 1.0])
    # 1-0.8 = 0.2 | 5*(0.8-0.1) = 3.5 | 5*max(0, -0.05) = 0 | 1-(-0.3) = 1.3
    torch.testing.assert_close(verification_loss(s, l), torch.tensor([0.2, 3.5, 0.0, 1.3]))
    torch.testing.assert_close(verification_loss(s, l, neg_weight=2.5), torch.tensor([0.2, 1.75, 0.0, 1.3]))


def test_reconstruction_loss_is_a_sum_of_squares():
    v = torch.tensor([[1.0, 2.0, 0.0]])
    v_hat = torch.tensor([[0.5, 0.0, -1.0]])
    torch.testing.assert_close(reconstruction_loss(v, v_hat), torch.tensor([0.25 + 4.0 + 1.0]))


def test_pseudo_label_loss_is_detached_and_one_sided():
    s = torch.tensor([0.6, 0.1, 0.09, -0.5], requires_grad=True)
    loss = pseudo_label_loss(s)
    torch.testing.assert_close(loss.detach(), torch.tensor([0.4, 0.9, 0.0, 0.0]))
    loss.sum().backward()
    # the pseudo label is a constant: gradient of 1[s>=0.1](1-s) is -1 where s >= 0.1, 0 elsewhere
    torch.testing.assert_close(s.grad, torch.tensor([-1.0, -1.0, 0.0, 0.0]))


def test_total_loss_by_hand():
    s = torch.tensor([0.5, 0.3])
    l = torch.tensor([0.0, 0.0])          # sample 0 verified "wrong"; sample 1 is from the pool (dummy label)
    f = torch.tensor([1.0, 0.0])
    v = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    v_hat = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    # sample 0: 5*(0.5-0.1) + 0.1*1 = 2.1 ; sample 1: 0.1*4 + 0.1*(1-0.3) = 0.47 ; mean = 1.285
    torch.testing.assert_close(cleannet_loss(s, l, f, v, v_hat), torch.tensor(1.285))
