"""Examples built on the pipeline's outputs; not part of any stage.

- ``scaler``: a consumer of ``io.mfu.scale.v1`` policy events that turns scaling advice
  into ``kubectl scale`` (run as ``mfu policies scaler``; see deploy/autoscaler/README.md).
"""
