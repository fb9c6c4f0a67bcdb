"""Imported before timm by every module that imports it: timm warns at import that
`torch.jit.interface` is deprecated (its HRNet file still uses it), two lines that would stand above
every command's one-line error. The filter matches that message only.

    import quiet_timm  # noqa: F401  (before timm)
"""
import warnings

warnings.filterwarnings('ignore', message='`torch.jit.interface` is deprecated', category=FutureWarning)
