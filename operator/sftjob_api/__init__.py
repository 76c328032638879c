"""The SFTJob API: pydantic types that are the single source of truth, and the CRD rendered from them.

This package imports only pydantic and the standard library; the operator, the trainer and the
command line all depend on it.
"""

from sftjob_api.types import API_VERSION, GROUP, KIND, PLURAL, VERSION, SFTJob, SFTJobSpec, SFTJobStatus, parse_sftjob

__all__ = ["API_VERSION", "GROUP", "KIND", "PLURAL", "VERSION", "SFTJob", "SFTJobSpec", "SFTJobStatus", "parse_sftjob"]
