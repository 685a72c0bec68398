"""ONNX Runtime side: bundle loading, inference sessions and the Ray Data stages.

Never imports torch: GPU workers need only onnxruntime-gpu, numpy, pyarrow and ray.
"""
