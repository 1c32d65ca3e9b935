"""Map friendly accelerator names (CPU, CUDA, ...) to onnxruntime providers, failing clearly when absent."""

from __future__ import annotations

from uniid_core.errors import FaceDetectionError

PROVIDERS = {
    "CPU": "CPUExecutionProvider",
    "CUDA": "CUDAExecutionProvider",
    "ROCM": "ROCMExecutionProvider",
    "CoreML": "CoreMLExecutionProvider",
    "DirectML": "DmlExecutionProvider",
    "OpenVINO": "OpenVINOExecutionProvider",
    "TensorRT": "TensorrtExecutionProvider",
    "MIGraphX": "MIGraphXExecutionProvider",
}
"""Accelerator names the front ends offer (CPU first, the fallback) -> onnxruntime provider names."""

INSTALL_HINTS = {
    "CUDAExecutionProvider": "pip uninstall onnxruntime && pip install onnxruntime-gpu (matching CUDA/cuDNN)",
    "TensorrtExecutionProvider": "install onnxruntime-gpu and TensorRT",
    "ROCMExecutionProvider": "install the ROCm build of onnxruntime (onnxruntime-rocm) for your ROCm version",
    "MIGraphXExecutionProvider": "install the ROCm build of onnxruntime with MIGraphX",
    "CoreMLExecutionProvider": "use the standard onnxruntime wheel on macOS",
    "DmlExecutionProvider": "pip uninstall onnxruntime && pip install onnxruntime-directml (Windows)",
    "OpenVINOExecutionProvider": "pip install onnxruntime-openvino",
}


def available_providers() -> list[str]:
    """The onnxruntime providers this install offers (empty when onnxruntime is missing or broken)."""
    try:
        import onnxruntime
    except ImportError:
        return []
    return list(onnxruntime.get_available_providers())


def resolve_providers(provider: str = "CPU") -> list[str]:
    """Provider list for an onnxruntime session: the requested one first, CPU as fallback."""
    key = provider.strip().lower()
    known = {name.lower(): full for name, full in PROVIDERS.items()}
    known.update({full.lower(): full for full in PROVIDERS.values()})
    full = known.get(key)
    if full is None and key.endswith("executionprovider"):
        full = provider.strip()
    if full is None:
        raise FaceDetectionError(
            f"unknown execution provider {provider!r}; choose one of {', '.join(PROVIDERS)} "
            "or give an onnxruntime provider name"
        )
    present = available_providers()
    if not present:
        raise FaceDetectionError(
            "onnxruntime is not installed or does not import; pip install onnxruntime "
            "(or onnxruntime-gpu for CUDA), or use the mtcnn face detector, which runs on OpenCV alone"
        )
    if full not in present:
        hint = INSTALL_HINTS.get(full, "install an onnxruntime build that includes it")
        raise FaceDetectionError(
            f"execution provider {provider!r} ({full}) is not available in this onnxruntime; available: "
            f"{', '.join(present)}. To use it: {hint}. Or choose CPU."
        )
    return [full] if full == "CPUExecutionProvider" else [full, "CPUExecutionProvider"]
