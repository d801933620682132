"""CleanNet (Lee et al., CVPR 2018): a joint embedding of a query image and its noisy class.

Built to docs/cleannet-spec.md §3 (layer sizes, tanh everywhere, attention over K reference vectors,
cosine relevance). Section numbers below refer to that spec. The module consumes precomputed feature
vectors (B, d), never pixels.

Relevance r(q, c) = cos(phi_q, phi_s) lies in [-1, 1]; higher = the noisy label c is more likely correct.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

EMBED_NORMS = ("log", "l2", "none")


@dataclass
class CleanNetConfig:
    img_dim: int = 2048        # d: input feature size (ResNet-50 pool5 = 2048), §1
    num_ref: int = 32          # K: reference vectors per class (k-means centres), §2
    query_hidden: int = 256    # f_q enc1 / dec1 width, §3.1
    embed_dim: int = 128       # phi_q and phi_s size, §3.1-3.2
    ref_hidden: int = 512      # f_s first layer g1, §3.2
    ref_out: int = 256         # f_s second layer g2 = attention size, §3.2
    dropout: float = 0.0       # after g1 only, training only (code default 0.0; README example 0.2), §3.2
    embed_norm: str = "log"    # input transform: log(1+v) | l2 | none, §1

    def __post_init__(self) -> None:
        if self.embed_norm not in EMBED_NORMS:
            raise ValueError(f"embed_norm must be one of {EMBED_NORMS}, got {self.embed_norm!r}")


def _fc(n_in: int, n_out: int) -> nn.Linear:
    """TF `fully_connected` init: Xavier-uniform weight, zero bias (§3, §10)."""
    layer = nn.Linear(n_in, n_out)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class QueryEncoder(nn.Module):
    """f_q: tanh autoencoder 2048-256-128-256-2048 (§3.1). No dropout."""

    def __init__(self, cfg: CleanNetConfig):
        super().__init__()
        self.enc1 = _fc(cfg.img_dim, cfg.query_hidden)
        self.enc2 = _fc(cfg.query_hidden, cfg.embed_dim)
        self.dec1 = _fc(cfg.embed_dim, cfg.query_hidden)
        self.dec2 = _fc(cfg.query_hidden, cfg.img_dim)

    def forward(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        phi_q = torch.tanh(self.enc2(torch.tanh(self.enc1(v))))      # (B, 128)
        v_hat = torch.tanh(self.dec2(torch.tanh(self.dec1(phi_q))))  # (B, d), tanh-bounded as in the code
        return phi_q, v_hat


class ReferenceEncoder(nn.Module):
    """f_s: shared FC on each reference, attention with a learned context vector, projection (§3.2)."""

    def __init__(self, cfg: CleanNetConfig):
        super().__init__()
        self.g1 = _fc(cfg.img_dim, cfg.ref_hidden)
        self.drop = nn.Dropout(cfg.dropout)  # inverted dropout, like TF
        self.g2 = _fc(cfg.ref_hidden, cfg.ref_out)
        self.att = _fc(cfg.ref_out, cfg.ref_out)
        bound = math.sqrt(3.0 / cfg.ref_out)  # TF Xavier on a 1-D [256] tensor: fan_in = fan_out = 256 (§10)
        self.context = nn.Parameter(torch.empty(cfg.ref_out).uniform_(-bound, bound))
        self.proj = _fc(cfg.ref_out, cfg.embed_dim)

    def first_layer(self, refs: torch.Tensor) -> torch.Tensor:
        """(..., K, d) -> (..., K, 512): g1, the costly part, separated so it runs once per class."""
        return torch.tanh(self.g1(refs))

    def pool(self, h1: torch.Tensor) -> torch.Tensor:
        """(B, K, 512) first-layer activations -> phi_s (B, 128)."""
        h = torch.tanh(self.g2(self.drop(h1)))          # (B, K, 256)
        u = torch.tanh(self.att(h))                     # (B, K, 256)
        alpha = torch.softmax(u @ self.context, dim=1)  # (B, K) attention over the K references
        h_bar = (alpha.unsqueeze(-1) * h).sum(dim=1)    # (B, 256)
        return torch.tanh(self.proj(h_bar))             # (B, 128)

    def forward(self, refs: torch.Tensor) -> torch.Tensor:
        return self.pool(self.first_layer(refs))


class CleanNet(nn.Module):
    """Query encoder + reference-set encoder; relevance = cosine of the two 128-d embeddings (§3.3)."""

    def __init__(self, cfg: CleanNetConfig | None = None):
        super().__init__()
        self.cfg = cfg or CleanNetConfig()
        self.query = QueryEncoder(self.cfg)
        self.reference = ReferenceEncoder(self.cfg)

    def normalize(self, v: torch.Tensor) -> torch.Tensor:
        """The `embed_norm` input transform (§1), applied to queries and references alike."""
        v = v.float()
        if self.cfg.embed_norm == "log":
            return torch.log1p(v.clamp_min(0))  # log(v + 1); features are post-ReLU, so >= 0
        if self.cfg.embed_norm == "l2":
            return F.normalize(v, dim=-1, eps=1e-12)
        return v

    def forward(self, query: torch.Tensor, labels: torch.Tensor, refs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Score queries against the references of their noisy class.

        query: (B, d) raw features; labels: (B,) int64 noisy class ids; refs: (C, K, d) raw reference vectors.
        Returns sim (B,) cosine relevance, v (B, d) normalised input, v_hat (B, d) reconstruction.
        """
        v = self.normalize(query)                                      # (B, d)
        phi_q, v_hat = self.query(v)                                   # (B, 128), (B, d)
        # g1 runs once per distinct class in the batch, not once per sample: identical result, as the
        # same K references are fed for every query of a class (§2). Dropout still gets its own mask per
        # sample, as in the official code, because it is applied after the gather.
        classes, inverse = torch.unique(labels, return_inverse=True)
        h1 = self.reference.first_layer(self.normalize(refs[classes]))  # (U, K, 512)
        if self.training and self.cfg.dropout > 0:
            phi_s = self.reference.pool(h1[inverse])                   # (B, 128)
        else:
            phi_s = self.reference.pool(h1)[inverse]                   # (U, 128) -> (B, 128)
        sim = cosine(phi_q, phi_s)                                     # (B,)
        return {"sim": sim, "v": v, "v_hat": v_hat}

    @torch.no_grad()
    def class_embeddings(self, refs: torch.Tensor) -> torch.Tensor:
        """All class embeddings at once, unit length: (C, K, d) -> (C, 128). Eval-mode (no dropout)."""
        was_training = self.training
        self.eval()
        phi_s = self.reference(self.normalize(refs))
        self.train(was_training)
        return F.normalize(phi_s, dim=1, eps=1e-12)

    @torch.no_grad()
    def query_embeddings(self, query: torch.Tensor) -> torch.Tensor:
        """Unit-length query embeddings: (B, d) -> (B, 128)."""
        phi_q, _ = self.query(self.normalize(query))
        return F.normalize(phi_q, dim=1, eps=1e-12)

    def checkpoint(self) -> dict:
        """A dict that rebuilds this model with `CleanNet.from_checkpoint`."""
        return {"format": 1, "config": asdict(self.cfg), "state_dict": self.state_dict()}

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> "CleanNet":
        model = cls(CleanNetConfig(**ckpt["config"]))
        model.load_state_dict(ckpt["state_dict"])
        return model


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity (B, n), (B, n) -> (B,), eps 1e-12 as TF l2_normalize (§3.3, §10)."""
    return (F.normalize(a, dim=1, eps=1e-12) * F.normalize(b, dim=1, eps=1e-12)).sum(dim=1)
