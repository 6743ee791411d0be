"""The federation's accelerator catalogue: the models a job may ask for and a pool may
offer. A job names a model id or "any"; anything else is refused at submit."""

from __future__ import annotations

from dataclasses import dataclass

ANY = "any"


@dataclass(frozen=True, slots=True, kw_only=True)
class AcceleratorModel:
    model_id: str
    vendor: str
    name: str
    memory_gb: int
    fp16_tflops: int
    power_w: int


CATALOGUE: dict[str, AcceleratorModel] = {
    m.model_id: m
    for m in (
        AcceleratorModel(
            model_id="ascend-910",
            vendor="Huawei",
            name="Ascend 910",
            memory_gb=32,
            fp16_tflops=256,
            power_w=310,
        ),
        AcceleratorModel(
            model_id="ascend-910b",
            vendor="Huawei",
            name="Ascend 910B",
            memory_gb=64,
            fp16_tflops=320,
            power_w=400,
        ),
        AcceleratorModel(
            model_id="ascend-910c",
            vendor="Huawei",
            name="Ascend 910C",
            memory_gb=128,
            fp16_tflops=800,
            power_w=600,
        ),
        AcceleratorModel(
            model_id="nvidia-h800",
            vendor="NVIDIA",
            name="H800",
            memory_gb=80,
            fp16_tflops=989,
            power_w=700,
        ),
        AcceleratorModel(
            model_id="nvidia-a800",
            vendor="NVIDIA",
            name="A800",
            memory_gb=80,
            fp16_tflops=312,
            power_w=400,
        ),
        AcceleratorModel(
            model_id="nvidia-a100",
            vendor="NVIDIA",
            name="A100",
            memory_gb=80,
            fp16_tflops=312,
            power_w=400,
        ),
        AcceleratorModel(
            model_id="nvidia-h100",
            vendor="NVIDIA",
            name="H100",
            memory_gb=80,
            fp16_tflops=989,
            power_w=700,
        ),
        AcceleratorModel(
            model_id="nvidia-h200",
            vendor="NVIDIA",
            name="H200",
            memory_gb=141,
            fp16_tflops=989,
            power_w=700,
        ),
        AcceleratorModel(
            model_id="cambricon-mlu370",
            vendor="Cambricon",
            name="MLU370-X8",
            memory_gb=48,
            fp16_tflops=96,
            power_w=250,
        ),
        AcceleratorModel(
            model_id="enflame-s60",
            vendor="Enflame",
            name="S60 (inference)",
            memory_gb=48,
            fp16_tflops=140,
            power_w=300,
        ),
    )
}


def is_known(model_id: str) -> bool:
    return model_id in CATALOGUE
