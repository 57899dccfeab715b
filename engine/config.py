"""Engine configuration (pydantic: it comes from the command line and config files)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class EngineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description="path to a local Hugging Face model folder")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bfloat16 on CUDA and AMX CPUs, float32 on other CPUs")
    block_size: int = Field(16, ge=1, le=256)
    num_blocks: int | None = Field(None, ge=1, description="KV blocks; default from kv_cache_memory_gb")
    kv_cache_memory_gb: float | None = Field(
        None, gt=0, description="KV cache size; default 1 GiB on CPU, gpu_memory_utilization of free memory on CUDA")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_num_batched_tokens: int = Field(1024, ge=1, description="token budget of one step")
    max_num_seqs: int = Field(128, ge=1)
    max_model_len: int | None = Field(None, ge=1, description="cap on the model's context window")
    enable_prefix_caching: bool = True
    kernels: Literal["auto", "torch", "triton"] = "auto"
    num_threads: int | None = Field(None, ge=1, description="torch intra-op threads on CPU")

    @model_validator(mode="after")
    def _check(self) -> "EngineConfig":
        if self.num_blocks is not None and self.kv_cache_memory_gb is not None:
            raise ValueError("give num_blocks or kv_cache_memory_gb, not both")
        return self
