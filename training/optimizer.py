"""One AdamW per agent over the stacked adapter tensors, with per-agent gradient clipping.

All agents' adapters live in the same tensors (dimension 0 is the agent, agents/lora.py), so a
joint step updates many agents at once. To equal training the agents one by one, everything that
couples parameters is kept per agent: the gradient norm that clipping scales by is the agent's
own (over all its slices), and each agent has its own step count, so an agent that has no rows in
a step is not stepped at all (its moments do not decay, its bias correction does not advance).
The update is torch's AdamW formula (weight decay 0), slice by slice.
"""

from __future__ import annotations

import torch


class AgentAdam:
    def __init__(self, params: list[torch.nn.Parameter], agents: int, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.exp_avg = [torch.zeros_like(param) for param in params]
        self.exp_avg_sq = [torch.zeros_like(param) for param in params]
        self.steps = torch.zeros(agents, dtype=torch.float64)

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None

    def clip(self, max_norm: float) -> torch.Tensor:
        """Scale each agent's gradient to norm <= max_norm, as `clip_grad_norm_` does for one
        agent's parameters; returns each agent's norm before clipping: [agents]."""
        squares = sum(param.grad.double().pow(2).flatten(1).sum(1) for param in self.params if param.grad is not None)
        norms = torch.as_tensor(squares).sqrt()
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for param in self.params:
            if param.grad is not None:
                param.grad.mul_(scale.to(param.grad.dtype).to(param.grad.device).view(-1, *[1] * (param.grad.dim() - 1)))
        return norms.float()

    @torch.no_grad()
    def step(self, active: torch.Tensor) -> None:
        """One AdamW step for the agents where `active` ([agents] bool) is true; the others are untouched."""
        if not bool(active.any()):
            return
        self.steps += active.double()
        beta1, beta2 = self.betas
        where = active.nonzero().squeeze(1)
        step = self.steps[where]
        bias_correction1 = (1 - beta1 ** step).float()
        bias_correction2_sqrt = (1 - beta2 ** step).sqrt().float()
        for param, exp_avg, exp_avg_sq in zip(self.params, self.exp_avg, self.exp_avg_sq):
            if param.grad is None:
                continue
            shape = (-1, *[1] * (param.dim() - 1))
            index = where.to(param.device)
            grad, avg, avg_sq = param.grad[index], exp_avg[index], exp_avg_sq[index]
            avg.lerp_(grad, 1 - beta1)
            avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (avg_sq.sqrt() / bias_correction2_sqrt.to(param.device).view(shape)).add_(self.eps)
            update = avg / denom * (self.lr / bias_correction1.to(param.device)).view(shape)
            exp_avg[index], exp_avg_sq[index] = avg, avg_sq
            param[index] = param[index] - update
