"""Flow building blocks shared by the built-in flows."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ifadit.flows.base import FlowLayer


def mlp(
    in_features: int, hidden: Sequence[int], out_features: int, negative_slope: float = 0.01
) -> nn.Sequential:
    """A coupling subnet: Linear/LeakyReLU stack (the official iFADIT subnet is one of these)."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.LeakyReLU(negative_slope)]
        width = h
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def seeded_permutation(dim: int, seed: int) -> Tensor:
    """A fixed random permutation from a private generator, so a rebuilt flow gets the same one."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(dim, generator=generator)


class FixedPermutation(FlowLayer):
    """Shuffles coordinates by a permutation stored as a buffer (saved in the state dict); log-det is 0."""

    def __init__(self, dim: int, seed: int) -> None:
        super().__init__()
        perm = seeded_permutation(dim, seed)
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    def forward(self, x: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        # index_select is ~9x faster than advanced indexing here (0.04 vs 0.35 ms at 256 x 512)
        return x.index_select(1, self.perm), x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor, cond: Tensor | None) -> Tensor:
        return y.index_select(1, self.inv_perm)


def soft_clamp(s: Tensor, clamp: float) -> Tensor:
    """Bounds log-scales smoothly to (-clamp, clamp): exp() can neither explode nor vanish, so the
    inverse stays well conditioned however far training pushes the subnet."""
    return clamp * torch.tanh(s / clamp)


def tensor_version_key(tensor: Tensor) -> tuple[int, int]:
    """Identifies a tensor's current contents cheaply: in-place updates (optimizer steps, ``load_state_dict``)
    bump ``_version``, replacing or moving the tensor changes ``data_ptr``."""
    version = -1 if tensor.is_inference() else tensor._version
    return tensor.data_ptr(), version


def permutation_index(matrix: Tensor) -> Tensor:
    """The gather index of a hard 0/1 permutation matrix: ``x @ matrix.T == x[:, index]``.

    Gathering is exact and O(dim) per sample where the matmul is O(dim²); a matrix that is not a hard
    permutation (e.g. a soft, orthogonal one) is refused rather than silently mis-applied.
    """
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"a permutation matrix must be square, got shape {tuple(matrix.shape)}")
    index = matrix.argmax(dim=1)
    expected = torch.zeros_like(matrix)
    expected[torch.arange(matrix.shape[0], device=matrix.device), index] = 1
    if not torch.equal(matrix, expected) or not torch.equal(
        torch.sort(index).values, torch.arange(matrix.shape[0], device=matrix.device)
    ):
        raise ValueError("expected a hard 0/1 permutation matrix (one 1 per row and column)")
    return index


class ActNorm(FlowLayer):
    """Per-feature affine ``y = (x + bias) * exp(log_scale)`` whose first training batch sets it to
    zero mean / unit variance (Glow's data-dependent init), so deep stacks start well scaled.

    ``initialized`` is a buffer, so a loaded model never re-initialises on its first batch.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.register_buffer("initialized", torch.tensor(False))
        # A Python mirror of the buffer: reading the tensor each call would force a device sync.
        self._initialized = False
        self.register_load_state_dict_post_hook(ActNorm._sync_initialized)

    @staticmethod
    def _sync_initialized(module: ActNorm, incompatible_keys: object) -> None:
        module._initialized = bool(module.initialized)

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        mean = x.mean(dim=0)
        std = x.std(dim=0, unbiased=False)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + self.eps))
        self.initialized.fill_(True)
        self._initialized = True

    def forward(self, x: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        # A single sample has no variance to normalise by, so initialisation waits for a real batch.
        if self.training and not self._initialized and x.shape[0] > 1:
            self._initialize(x)
        y = (x + self.bias) * torch.exp(self.log_scale)
        return y, self.log_scale.sum().expand(x.shape[0])

    def inverse(self, y: Tensor, cond: Tensor | None) -> Tensor:
        return y * torch.exp(-self.log_scale) - self.bias


class InvertibleLinearLU(FlowLayer):
    """A learned full-rank mixing ``y = W x`` with ``W = P L (U + diag(sign * exp(log_abs_diag)))``.

    The LU form makes ``log|det W| = sum(log_abs_diag)`` free and keeps ``W`` invertible by construction.
    While gradients flow into ``W`` the factors are applied directly (triangular solves for the inverse);
    otherwise ``W`` and ``W⁻¹`` are composed once in float64 and cached until a parameter changes, so
    repeated inference costs one matmul each way. ``exact_inference`` keeps that cached mixing in float64:
    a dense 512-wide float32 matmul each way costs ~1.5e-7 of round-trip error (3x a coupling flow's),
    float64 brings it to ~4e-8 for ~1.4x the mixing time.
    """

    def __init__(self, dim: int, exact_inference: bool = False) -> None:
        super().__init__()
        self.exact_inference = exact_inference
        q, _ = torch.linalg.qr(torch.randn(dim, dim, dtype=torch.float64))
        p, lower, upper = torch.linalg.lu(q)
        diag = torch.diagonal(upper)
        self.register_buffer("perm", p.argmax(dim=1))  # P as a gather index: (P M) == M[perm]
        self.register_buffer("sign", torch.sign(diag).float())
        self.lower = nn.Parameter(torch.tril(lower, -1).float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_abs_diag = nn.Parameter(torch.log(diag.abs()).float())
        self._cache_key: tuple | None = None
        self._cached_weight: Tensor | None = None
        self._cached_inverse: Tensor | None = None

    def _factors(self, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        lower, upper = self.lower, self.upper
        diag = self.sign * torch.exp(self.log_abs_diag)
        if dtype is not None:
            lower, upper, diag = lower.to(dtype), upper.to(dtype), diag.to(dtype)
        eye = torch.eye(lower.shape[0], dtype=lower.dtype, device=lower.device)
        return torch.tril(lower, -1) + eye, torch.triu(upper, 1) + torch.diag(diag)

    def _needs_grad(self) -> bool:
        return torch.is_grad_enabled() and (
            self.lower.requires_grad or self.upper.requires_grad or self.log_abs_diag.requires_grad
        )

    def _cached(self) -> tuple[Tensor, Tensor]:
        tensors = (self.lower, self.upper, self.log_abs_diag, self.sign, self.perm)
        key = (
            *(tensor_version_key(t) for t in tensors),
            self.lower.dtype,
            self.lower.device,
        )
        if key != self._cache_key:
            # Normal (not inference-mode) tensors, so a cache built under inference_mode still serves a
            # later call that differentiates with respect to the input.
            with torch.inference_mode(False), torch.no_grad():
                lower, upper = self._factors(torch.float64)
                weight = (lower @ upper)[self.perm]
                inverse = torch.linalg.inv(weight)
                dtype = torch.float64 if self.exact_inference else self.lower.dtype
                self._cached_weight = weight.to(dtype)
                self._cached_inverse = inverse.to(dtype)
            self._cache_key = key
        return self._cached_weight, self._cached_inverse

    def forward(self, x: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        logdet = self.log_abs_diag.sum().expand(x.shape[0])
        if self._needs_grad():
            lower, upper = self._factors()
            # y = W x per row: x Uᵀ Lᵀ, then P gathers the rows of W (columns of the batch).
            return (x @ upper.T @ lower.T)[:, self.perm], logdet
        weight, _ = self._cached()
        return nn.functional.linear(x.to(weight.dtype), weight).to(x.dtype), logdet

    def inverse(self, y: Tensor, cond: Tensor | None) -> Tensor:
        if self._needs_grad():
            lower, upper = self._factors()
            v = y[:, torch.argsort(self.perm)]
            v = torch.linalg.solve_triangular(lower.T, v, upper=True, left=False, unitriangular=True)
            return torch.linalg.solve_triangular(upper.T, v, upper=False, left=False)
        _, inverse = self._cached()
        return nn.functional.linear(y.to(inverse.dtype), inverse).to(y.dtype)


class AffineCoupling(FlowLayer):
    """Conditional affine coupling: the first ``dim - dim // 2`` features (and the condition) drive a
    soft-clamped scale and a shift for the rest.

    The subnet's last layer starts small but not zero, so the flow starts near the identity yet already
    depends on the condition — a wrong key fails to invert even before training.
    """

    def __init__(
        self,
        dim: int,
        cond_dim: int,
        hidden: Sequence[int],
        clamp: float = 2.0,
        init_scale: float = 0.1,
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        if clamp <= 0:
            raise ValueError(f"clamp must be > 0, got {clamp}")
        self.passive = dim - dim // 2
        self.active = dim // 2
        self.clamp = clamp
        self.subnet = mlp(self.passive + cond_dim, hidden, 2 * self.active, negative_slope)
        last = self.subnet[-1]
        with torch.no_grad():
            last.weight.mul_(init_scale)
            last.bias.mul_(init_scale)

    def _scale_shift(self, x_passive: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        inputs = x_passive if cond is None else torch.cat((x_passive, cond), dim=1)
        out = self.subnet(inputs)
        return soft_clamp(out[:, : self.active], self.clamp), out[:, self.active :]

    def forward(self, x: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        x_passive, x_active = x[:, : self.passive], x[:, self.passive :]
        log_scale, shift = self._scale_shift(x_passive, cond)
        y_active = x_active * torch.exp(log_scale) + shift
        return torch.cat((x_passive, y_active), dim=1), log_scale.sum(dim=1)

    def inverse(self, y: Tensor, cond: Tensor | None) -> Tensor:
        y_passive, y_active = y[:, : self.passive], y[:, self.passive :]
        log_scale, shift = self._scale_shift(y_passive, cond)
        x_active = (y_active - shift) * torch.exp(-log_scale)
        return torch.cat((y_passive, x_active), dim=1)
