"""The SFT trainer: data pipeline, training on Ray Train workers, artifacts in object storage.

Runs inside the trainer image as `python -m sftjob_trainer` (config JSON from the operator)
and locally through `sftjob run`. It never imports the operator, kopf or a Kubernetes client.
"""
