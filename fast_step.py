"""One training step as one call, run eagerly or replayed from CUDA graphs (TRAIN.CUDA_GRAPHS).

    step = TrainStep(model, criterion, optimizer, scaler, clip_grad, autocast_dtype, cuda_graphs=True)
    stats = step(samples, targets, key=bare_model.num_kept_tokens())  # device tensor [loss, grad norm]
    loss, grad_norm = stats.tolist()   # the caller's one read, after the sync that times the step

A call is one optimizer step on one batch: forward (under autocast), loss, backward (scaled by the
GradScaler), unscale, gradient-norm clip at `clip_grad` (0: no clipping, the norm is still
returned), the optimizer step (skipped by the scaler when fp16 gradients overflowed), scaler update.
Without an enabled GradScaler the clip does not rescale the gradients in place: the fused AdamW
divides them by the clip factor as it steps (`optimizer.clip_and_step`, also used by engine.py).
It returns the loss and the gradient norm before clipping as one device tensor and never waits for
the device: no `.item()`, no Python branch on a tensor's value.

Eager (`cuda_graphs=False`, and always on CPU) it does what engine.train_one_epoch's own loop does
with one micro-batch per step, operator for operator, so both give bit-identical runs
(tests/test_fast_step.py).

With `cuda_graphs` the whole step is captured as a CUDA graph, one graph per `key`, the kept-token
count (a fixed set of shapes each; five on the 0.2 grid), all in one memory pool. Replaying a
graph is one launch instead of about 920 for an eager ViT-B step, which at small rho is most of a GPU
step's time (benchmarks/RESULTS.md). The first step with a key runs eagerly on a side stream (it
creates the optimizer state, and warms up cuBLAS and the autograd engine), the second is captured
and then replayed, every later one only replayed. What must outlive a step lives outside the pool,
so that graphs can be replayed in any order: the weights, the optimizer state (created by the first
eager step), the learning rates (one device tensor per parameter group, refreshed from
`param_groups` before every step, so the LR scheduler works unchanged) and the GradScaler's scale.
Gradients live within a step only: they come from the pool (set to None before each step, as in
PyTorch's whole-network capture example), so one graph's gradients may share memory with another
graph's temporaries; so does the clip factor the optimizer divides them by (each replay computes it
from its own norm before the captured optimizer kernel reads it). What the graphs bake in: the batch
shape (every batch is copied into one static input), the weight decay, betas and eps of every group,
`clip_grad`, the model's train mode and structure. Random numbers (drop path, random selection)
differ between replays: PyTorch advances the CUDA generator for every replay.

Requirements, checked by `check_cuda_graphs` (main_finetune.py turns a failure into `error: ...`):
one process (DDP's gradient all-reduce runs from autograd hooks that a captured graph does not
re-run), one micro-batch per step, no activation checkpointing (its recomputation reads the RNG
state from the host), no TRAIN.COMPILE (a compiled model inside a capture is untested), a fused
AdamW (its fp16 skip happens on the device; any other optimizer's needs a host sync).
"""
from contextlib import contextmanager, nullcontext

import torch

from config import ConfigError
from optimizer import clip_and_step


class CudaGraphsError(ConfigError):
    """TRAIN.CUDA_GRAPHS asked for with a setting it cannot work with; the message says which."""


def check_cuda_graphs(config, world_size):
    """Raise CudaGraphsError unless a whole step can be captured with this config (see module docstring)."""
    problems = []
    if world_size > 1:
        problems.append(f'it runs in one process only, not {world_size} (DDP all-reduces gradients from '
                        'autograd hooks, which a replayed graph does not run); use TRAIN.COMPILE for several GPUs')
    if config.TRAIN.ACCUMULATION_STEPS > 1:
        problems.append(f'TRAIN.ACCUMULATION_STEPS is {config.TRAIN.ACCUMULATION_STEPS}: one micro-batch per step only')
    if config.TRAIN.USE_CHECKPOINT:
        problems.append('TRAIN.USE_CHECKPOINT (activation checkpointing) reads the RNG state on the host')
    if config.TRAIN.COMPILE:
        problems.append('TRAIN.COMPILE is on: a compiled model inside a captured step is untested; use one of the two')
    if config.TRAIN.OPTIMIZER.NAME.lower() != 'adamw':
        problems.append(f"it needs the fused AdamW (TRAIN.OPTIMIZER.NAME adamw, not '{config.TRAIN.OPTIMIZER.NAME}')")
    if problems:
        raise CudaGraphsError('TRAIN.CUDA_GRAPHS: ' + '; '.join(problems))


def model_device(model):
    return next(model.parameters()).device


class TrainStep:
    """One optimizer step per call, eager or from CUDA graphs; see the module docstring."""

    def __init__(self, model, criterion, optimizer, scaler, clip_grad=0.0, autocast_dtype=None,
                 cuda_graphs=False):
        self.model, self.criterion, self.optimizer, self.scaler = model, criterion, optimizer, scaler
        self.max_norm = clip_grad if clip_grad > 0 else float('inf')
        self.autocast_dtype = autocast_dtype
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.device = model_device(model)
        self.cuda_graphs = cuda_graphs and self.device.type == 'cuda'
        self.graphs = {}  # key -> torch.cuda.CUDAGraph
        self.warmed_up = set()  # keys whose first (eager) step has run
        self.pool = None  # the memory pool all graphs share
        self.static_samples = self.static_targets = None
        self.static_stats = None  # [loss, grad norm], written by every replay
        self.lrs = None  # [groups] learning rates on the device, read by the captured optimizer step

    # --- the step itself ---------------------------------------------------------------------------
    def _forward_backward_update(self, samples, targets):
        """The step as operators, no host sync: -> (loss, grad_norm) device tensors."""
        autocast = nullcontext()
        if self.autocast_dtype is not None:  # the cast cache must not outlive a capture
            autocast = torch.autocast(self.device.type, dtype=self.autocast_dtype, cache_enabled=not self.cuda_graphs)
        with autocast:
            loss = self.criterion(self.model(samples), targets)
        self.scaler.scale(loss).backward()
        # the fp16 skip of an overflowed step happens on the device
        grad_norm = clip_and_step(self.optimizer, self.scaler, self.params, self.max_norm)
        return loss.detach(), grad_norm

    def __call__(self, samples, targets, key=None):
        """One optimizer step on (samples, targets); returns a [2] fp32 device tensor: the loss and
        the gradient norm before clipping. With CUDA graphs the tensor is overwritten by the next call."""
        if not self.cuda_graphs:
            loss, grad_norm = self._forward_backward_update(samples, targets)
            self.optimizer.zero_grad(set_to_none=True)  # as engine.py
            return torch.stack([loss.float(), grad_norm.float()])
        self._copy_inputs(samples, targets)
        with self._device_learning_rates():
            if key not in self.warmed_up:
                self._warm_up()
                self.warmed_up.add(key)
            elif key not in self.graphs:
                self.graphs[key] = self._capture(key)
                self.graphs[key].replay()
            else:
                self.graphs[key].replay()
        return self.static_stats

    # --- CUDA graphs --------------------------------------------------------------------------------
    def _graphed_step(self):
        """The captured body. Gradients are set to None first (no kernel), so that backward
        allocates them inside the capture, from the graphs' pool."""
        self.optimizer.zero_grad(set_to_none=True)
        loss, grad_norm = self._forward_backward_update(self.static_samples, self.static_targets)
        self.static_stats.copy_(torch.stack([loss.float(), grad_norm.float()]))

    def _copy_inputs(self, samples, targets):
        if self.static_samples is None:  # outside the pool: they outlive every graph
            self.static_samples = torch.empty_like(samples)
            self.static_targets = torch.empty_like(targets)
            self.static_stats = torch.zeros(2, device=self.device)
            self.lrs = torch.zeros(len(self.optimizer.param_groups), device=self.device)
        if samples.shape != self.static_samples.shape or targets.shape != self.static_targets.shape:
            raise ValueError(f'TRAIN.CUDA_GRAPHS: every batch must have the shape of the first one '
                             f'({tuple(self.static_samples.shape)}, targets {tuple(self.static_targets.shape)}), '
                             f'got {tuple(samples.shape)}, targets {tuple(targets.shape)}')
        self.static_samples.copy_(samples, non_blocking=True)
        self.static_targets.copy_(targets, non_blocking=True)

    @contextmanager
    def _device_learning_rates(self):
        """Within it every param group's 'lr' is its slot in self.lrs (a device tensor, filled from
        the groups' current floats) and 'capturable' is on, as a captured optimizer step needs; the
        floats and flags are put back afterwards (for checkpoints, the LR scheduler and the log)."""
        groups = self.optimizer.param_groups
        saved = [(g['lr'], g.get('capturable', False)) for g in groups]
        # a fresh pinned tensor per step: the caching host allocator keeps it alive until the copy ran
        host = torch.tensor([lr for lr, _ in saved], pin_memory=self.device.type == 'cuda')
        self.lrs.copy_(host, non_blocking=True)
        for i, g in enumerate(groups):
            g['lr'], g['capturable'] = self.lrs[i], True
        try:
            yield
        finally:
            for g, (lr, capturable) in zip(groups, saved):
                g['lr'], g['capturable'] = lr, capturable

    def _warm_up(self):
        """The key's first step, eager, on a side stream (as torch.cuda.graph's documentation asks)."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self._graphed_step()
        torch.cuda.current_stream(self.device).wait_stream(side)

    def _capture(self, key):
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: the loader's pin-memory thread may allocate pinned memory meanwhile,
            # which the default 'global' mode counts as an error of this capture
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode='thread_local'):
                self._graphed_step()
        except RuntimeError as e:
            raise RuntimeError(f'capturing the training step as a CUDA graph (key {key}) failed: {e}; '
                               'train without TRAIN.CUDA_GRAPHS') from e
        if self.pool is None:
            self.pool = graph.pool()
        return graph
