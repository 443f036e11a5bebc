"""What the MMSelfSup hooks read from the Runner and their configs: the model behind MMEngine's
wrappers, the ``MultiView`` transforms of the (possibly wrapped) dataset's pipeline, and the option
names a hook accepts (with the message for unknown ones)."""

from __future__ import annotations

import difflib
import inspect

from mmengine.model import is_model_wrapper


def unwrap(model):
    """The model behind MMEngine's wrappers (DDP, ...)."""
    return model.module if is_model_wrapper(model) else model


def iter_datasets(dataset, depth: int = 0):
    """The dataset and the datasets it wraps (ConcatDataset, RepeatDataset, ClassBalancedDataset, ...)."""
    if dataset is None or depth > 8:
        return
    yield dataset
    for attr in ("dataset", "datasets"):
        inner = getattr(dataset, attr, None)
        if isinstance(inner, (list, tuple)):
            for d in inner:
                yield from iter_datasets(d, depth + 1)
        elif inner is not None and inner is not dataset:
            yield from iter_datasets(inner, depth + 1)


def find_multiviews(dataset) -> list:
    """Every ``MultiView`` transform in the (possibly wrapped) dataset's pipeline."""
    found = []
    for ds in iter_datasets(dataset):
        pipeline = getattr(ds, "pipeline", None)
        for t in getattr(pipeline, "transforms", None) or []:
            if type(t).__name__ == "MultiView" and hasattr(t, "num_views"):
                found.append(t)
    return found


def options_of(hook_cls: type) -> list[str]:
    """The option names a hook class accepts (its constructor's keyword arguments)."""
    params = inspect.signature(hook_cls.__init__).parameters.values()
    return [p.name for p in params if p.name != "self" and p.kind is not p.VAR_KEYWORD]


def unknown_options_text(owner: str, valid: list[str], unknown, note: str = "") -> str:
    """The error for option names a hook does not know: each with the closest valid name, if any,
    ``note`` (a sentence, leading space), and the list of valid names."""
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
        parts.append(repr(key) + (f" (did you mean {close[0]!r}?)" if close else ""))
    return (
        f"{owner} got unknown option{'s' if len(parts) > 1 else ''} {', '.join(parts)}.{note} "
        f"Valid options: {', '.join(valid)} (see help({owner}) for what each does)"
    )
