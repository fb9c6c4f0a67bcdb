"""One training step as one call: eager (also with gradient accumulation), or replayed from CUDA
graphs (TRAIN.CUDA_GRAPHS). main_finetune.py and main_simmim.py train with it.

    step = TrainStep(model, criterion, optimizer, scaler, clip_grad, autocast_dtype, cuda_graphs=True)
    stats = step(samples, targets, key=bare_model.num_kept_tokens())  # device tensor [loss, grad norm]
    loss, grad_norm = stats.tolist()   # the caller's one read, after the sync that times the step

A step is forward (autocast), loss, backward (GradScaler), the clip at `clip_grad`
(optimizer.clip_and_step) and the optimizer step, with no host sync. With `cuda_graphs` it is
captured once per `key` (the kept-token count: the shapes differ) and replayed as one launch, which
at small rho is most of a GPU step's time (benchmarks/RESULTS.md). What outlives a step (weights,
optimizer state, the LRs as device tensors, the scaler's scale) lives outside the graphs' shared
memory pool, so graphs replay in any order; gradients live inside it. `check_cuda_graphs` lists what
a capture needs.
"""
from contextlib import contextmanager, nullcontext

import torch

from config import ConfigError
from optimizer import clip_and_step


class CudaGraphsError(ConfigError):
    """TRAIN.CUDA_GRAPHS asked for with a setting it cannot work with; the message says which."""


def check_cuda_graphs(config, world_size):
    """Raise CudaGraphsError unless a whole step can be captured with this config; the message says why."""
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
    """One micro-batch per call, `accumulation_steps` of them per optimizer step; see the module
    docstring. With `criterion` None the model returns its own loss: model(samples, targets)."""

    def __init__(self, model, criterion, optimizer, scaler, clip_grad=0.0, autocast_dtype=None,
                 cuda_graphs=False, accumulation_steps=1):
        self.model, self.criterion, self.optimizer, self.scaler = model, criterion, optimizer, scaler
        self.max_norm = clip_grad if clip_grad > 0 else float('inf')
        self.autocast_dtype = autocast_dtype
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.device = model_device(model)
        self.cuda_graphs = cuda_graphs and self.device.type == 'cuda'
        self.accumulation_steps = max(1, accumulation_steps)
        if self.cuda_graphs and self.accumulation_steps > 1:
            raise ValueError('TrainStep: CUDA graphs take one micro-batch per step')
        self.micro_batches = 0  # of the optimizer step under way
        self.loss_sum = 0.0  # its loss so far, a float64 device tensor after the first micro-batch
        self.graphs = {}  # key -> torch.cuda.CUDAGraph
        self.warmed_up = set()  # keys whose first (eager) step has run
        self.pool = None  # the memory pool all graphs share
        self.static_samples = self.static_targets = None
        self.static_stats = None  # [loss, grad norm], written by every replay
        self.lrs = None  # [groups] learning rates on the device, read by the captured optimizer step

    # --- the step itself ---------------------------------------------------------------------------
    def _loss(self, samples, targets):
        autocast = nullcontext()
        if self.autocast_dtype is not None:  # the cast cache must not outlive a capture
            autocast = torch.autocast(self.device.type, dtype=self.autocast_dtype, cache_enabled=not self.cuda_graphs)
        with autocast:
            if self.criterion is None:  # the model's own loss (SimMIM: the targets are the masks)
                return self.model(samples, targets)
            return self.criterion(self.model(samples), targets)

    def _forward_backward_update(self, samples, targets):
        """The step as operators, no host sync: -> (loss, grad_norm) device tensors."""
        loss = self._loss(samples, targets)
        self.scaler.scale(loss).backward()
        # the fp16 skip of an overflowed step happens on the device
        grad_norm = clip_and_step(self.optimizer, self.scaler, self.params, self.max_norm)
        return loss.detach(), grad_norm

    def __call__(self, samples, targets, key=None):
        """One micro-batch (samples, targets). After the last one of an optimizer step (every call
        without accumulation) the optimizer steps, and the result is a [2] device tensor: the loss and
        the gradient norm before clipping (fp32; float64 with accumulation); None before that. With
        CUDA graphs the tensor is overwritten by the next call."""
        if self.accumulation_steps > 1:
            return self._accumulate(samples, targets)
        if not self.cuda_graphs:
            loss, grad_norm = self._forward_backward_update(samples, targets)
            # the next backward allocates them afresh (no zero fill); on CPU
            # utils.keep_freed_cpu_memory keeps that from faulting in fresh pages
            self.optimizer.zero_grad(set_to_none=True)
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

    def _accumulate(self, samples, targets):
        """An accumulated step's micro-batch: DDP all-reduces the gradients only on the last one."""
        self.micro_batches += 1
        last = self.micro_batches == self.accumulation_steps
        with nullcontext() if last or not hasattr(self.model, 'no_sync') else self.model.no_sync():
            loss = self._loss(samples, targets)
            self.scaler.scale(loss / self.accumulation_steps).backward()
        self.loss_sum = self.loss_sum + loss.detach().double() / self.accumulation_steps  # no sync
        if not last:
            return None
        grad_norm = clip_and_step(self.optimizer, self.scaler, self.params, self.max_norm)
        self.optimizer.zero_grad(set_to_none=True)
        stats = torch.stack([self.loss_sum, grad_norm.double()])
        self.micro_batches, self.loss_sum = 0, 0.0
        return stats

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
