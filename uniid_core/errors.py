"""Exceptions with messages a user can act on; every module raises one of these."""


class UniIDError(Exception):
    """Base class for every error this project raises on purpose."""


class CheckpointError(UniIDError):
    """A weights file is missing, of the wrong kind, truncated or does not fit the model."""


class FaceDetectionError(UniIDError):
    """Face detection could not run (missing models, broken install, unreadable image)."""


class NoFaceError(FaceDetectionError):
    """An image holds no detectable face."""


class ModelFamilyError(UniIDError):
    """The base model is not the family UniID was trained for (SDXL)."""


class IdentityMismatchError(UniIDError):
    """An identity was encoded with other UniID weights than the ones applied."""
