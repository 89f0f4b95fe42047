"""In-process CPU engine: small Llama-style models over the BERT WordPiece vocabulary."""

from serving.engines.cpu.engine import CpuEngine, CpuGenerationStream, StepRecord
from serving.engines.cpu.model import MODEL_CONFIGS, ModelConfig

__all__ = ["CpuEngine", "CpuGenerationStream", "StepRecord", "MODEL_CONFIGS", "ModelConfig"]
