"""Error types raised by the pipeline library."""


class PipelineError(Exception):
    """Base class for errors raised by ``worker.pipeline``."""


class ModelConfigError(PipelineError):
    """The models cannot be built as configured (missing checkpoint, bad device, ...)."""


class CheckpointMismatchError(ModelConfigError):
    """A checkpoint's tensors do not fit the module it is loaded into."""

    def __init__(self, path: str, missing: list[str], unexpected: list[str], mismatched: list[str]):
        self.path = path
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_preview(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {_preview(mismatched)}")
        super().__init__(f"checkpoint {path} does not fit the model: " + "; ".join(parts))


class ImageDecodeError(PipelineError):
    """The uploaded bytes are not an image this service can read."""


class MetadataError(PipelineError, ValueError):
    """Patient metadata (age, sex, site) outside the accepted values."""


def _preview(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")
