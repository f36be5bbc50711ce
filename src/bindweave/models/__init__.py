from .attention import BindWeaveAttnProcessor
from .checkpoint import CheckpointError
from .transformer import BindWeaveTransformer3DModel

__all__ = ["BindWeaveAttnProcessor", "BindWeaveTransformer3DModel", "CheckpointError"]
